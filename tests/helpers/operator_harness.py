"""Run the operator the way the chart runs it, against the local control plane, for e2e tests.

Why it exists: the end-to-end tests must prove the *shipped* pieces work together — the chart's
RBAC, the image's entrypoint, the Deployment's arguments and environment — not a developer's
convenient invocation. So the operator is started as a local process whose command line is the
image's ``ENTRYPOINT`` (read from ``operator/Dockerfile``) plus the ``args`` and ``env`` of the
operator Deployment that ``helm install`` created (read back from the API server), and whose
only credentials are a token of the chart's ServiceAccount. Nothing in the pod actually runs
(kwok nodes), so this local process is the one and only active operator.

Also: bounded polling with clear failure messages, and JSON helpers around ``kubectl``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import polling
from ports import free_port

from bertserve_api import names

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "bertserve-operator"
DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
T = TypeVar("T")

RESYNC_S = 5
"""``BERTSERVE_RESYNC_SECONDS`` of the e2e operators that need periodic passes within a test."""
ALLOW_HOST_PATH = "operator.allowHostPath=true"
"""Chart value for BertServers whose model is a node directory (kwok never reads it)."""


def localcluster() -> ModuleType:
    """``hack/cluster/localcluster.py`` (shared with tests/k8s/conftest.py through sys.modules)."""
    name = "bertserve_localcluster"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO_ROOT / "hack" / "cluster" / "localcluster.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value.

    A poll that raises (e.g. object not there yet) is "not yet" (``polling.wait_for``)."""
    return polling.wait_for(check, timeout, what, interval=interval, retry_on=(Exception,))


def get_json(cluster: Any, *args: str, check: bool = True) -> Any:
    """``kubectl get ... -o json`` parsed (``None`` when not found and ``check`` is false)."""
    proc = cluster.kubectl("get", *args, "-o", "json", check=check)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def condition(obj: Mapping[str, Any] | None, ctype: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def get_bertserver(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    """The BertServer ``ns/name`` as the API server has it."""
    return dict(get_json(cluster, "bertserver", name, "-n", ns))


def bertserver_events(cluster: Any, ns: str, name: str) -> list[dict[str, Any]]:
    """The Events whose involved object is the BertServer ``ns/name``."""
    items = get_json(cluster, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if e["involvedObject"].get("kind") == names.KIND]


def wait_bertserver_ready(cluster: Any, op: OperatorProcess, ns: str, name: str, timeout: int = 120) -> None:
    """``kubectl wait --for=condition=Ready`` with the evidence attached when it fails."""
    proc = cluster.kubectl(
        "wait", "--for=condition=Ready", f"bertserver/{name}", "-n", ns, f"--timeout={timeout}s",
        check=False, timeout=timeout + 30,
    )  # fmt: skip
    if proc.returncode != 0:
        describe = cluster.kubectl("describe", "bertserver", name, "-n", ns, check=False).stdout
        pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
        raise AssertionError(
            f"{ns}/{name} not Ready: {proc.stderr}\n{describe}\n{pods}\noperator log:\n{op.tail()}"
        )


def apply_yaml(cluster: Any, text: str, namespace: str | None = None, check: bool = True) -> Any:
    args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
    return cluster.kubectl(*args, input=text, check=check)


def install_chart(cluster: Any, release: str, namespace: str, *values: str) -> None:
    """``helm install --wait`` of the chart (the CRD comes from its crds/ on first install)."""
    sets = [a for v in values for a in ("--set", v)]
    cluster.helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
        *sets,
    )


def service_account_kubeconfig(cluster: Any, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig holding nothing but a token of ServiceAccount ``namespace/name``."""
    token = cluster.kubectl("-n", namespace, "create", "token", name, "--duration=6h").stdout.strip()
    return Path(cluster.write_token_kubeconfig(path, token))


def operator_as_chart_account(
    cluster: Any,
    work: Path,
    release: str,
    namespace: str,
    extra_env: Mapping[str, str] | None = None,
    *,
    values: Sequence[str] = (),
) -> OperatorProcess:
    """``helm install`` the chart as ``release`` in ``namespace`` (``values``: ``--set`` items),
    then a started local operator that runs with the chart's command line and environment and only
    a token of the chart's ServiceAccount, so the chart's RBAC is what every test exercises."""
    install_chart(cluster, release, namespace, *values)
    fullname = chart_fullname(release)
    kubeconfig = service_account_kubeconfig(cluster, namespace, fullname, work / "sa.kubeconfig")
    op = OperatorProcess.like_the_chart(
        cluster,
        namespace=namespace,
        deployment=fullname,
        kubeconfig=kubeconfig,
        log_dir=work,
        extra_env=dict(extra_env or {}),
    )
    return op.start()


def chart_fullname(release: str) -> str:
    """The chart's ``fullname`` for ``release``: its Deployment and ServiceAccount name."""
    return f"{release}-bertserve-operator"


@contextlib.contextmanager
def chart_operator(
    cluster: Any,
    work: Path,
    release: str,
    namespace: str,
    extra_env: Mapping[str, str] | None = None,
    *,
    values: Sequence[str] = (ALLOW_HOST_PATH,),
    resync_s: float | None = None,
    clean_log: bool = True,
) -> Iterator[OperatorProcess]:
    """A test module's operator: :func:`operator_as_chart_account`, stopped (SIGTERM) at the end.

    ``resync_s``: sets ``BERTSERVE_RESYNC_SECONDS``. At the end an operator still running must
    exit 0 on SIGTERM, and (``clean_log``) its log must hold no Traceback; pass ``clean_log=False``
    only where a test causes faults the operator logs with one (an API server restart).
    """
    env = dict(extra_env or {})
    if resync_s is not None:
        env["BERTSERVE_RESYNC_SECONDS"] = str(resync_s)
    op = operator_as_chart_account(cluster, work, release, namespace, env, values=values)
    try:
        yield op
    finally:
        rc = op.stop() if op.alive else None
    assert rc in (None, 0), f"operator did not stop cleanly (exit {rc}):\n{op.tail()}"
    if clean_log:
        assert "Traceback" not in op.log(), op.tail(80)


def image_entrypoint() -> list[str]:
    """The operator image's ENTRYPOINT (JSON form) from operator/Dockerfile."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            return list(json.loads(line.removeprefix("ENTRYPOINT ")))
    raise AssertionError(f"no ENTRYPOINT in {DOCKERFILE}")


class OperatorProcess:
    """The operator as a local process; ``start``/``stop`` (SIGTERM)/``kill`` (SIGKILL)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, health_url: str) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.health_url = health_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @classmethod
    def like_the_chart(
        cls,
        cluster: Any,
        *,
        namespace: str,
        deployment: str,
        kubeconfig: Path,
        log_dir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> OperatorProcess:
        """Entrypoint from the Dockerfile + args/env of the installed operator Deployment.

        Only the liveness endpoint is moved (to a free loopback port): every other setting is
        what the chart, and its ``extraEnv``, gave the pod."""
        dep = get_json(cluster, "deployment", deployment, "-n", namespace)
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        port = free_port()
        entry = image_entrypoint()
        # The image's console script is the venv's one here.
        entry[0] = str(Path(sys.executable).with_name(entry[0]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        env.update(extra_env or {})
        # The pod's HOME=/tmp (its emptyDir) would be this machine's /tmp: keep the caller's.
        env["HOME"] = os.environ.get("HOME", "/tmp")
        env["BERTSERVE_LIVENESS_ENDPOINT"] = f"http://127.0.0.1:{port}/healthz"
        env["KUBECONFIG"] = str(kubeconfig)
        log_dir.mkdir(parents=True, exist_ok=True)
        argv = [*entry, *container.get("args", [])]
        return cls(argv, env, log_dir / "operator.log", f"http://127.0.0.1:{port}/healthz")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> OperatorProcess:
        assert not self.alive, "already running"
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
        log.close()
        if wait:
            try:
                self.wait_healthy()
            except BaseException:
                self.kill()  # a failed start must not leave an operator running
                raise
        return self

    def healthy(self) -> bool:
        if not self.alive:
            raise AssertionError(
                f"operator exited with {self.proc.returncode if self.proc else None}:\n{self.tail()}"
            )
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_for(self.healthy, timeout, f"operator liveness {self.health_url}")

    def health_detail(self) -> dict[str, Any]:
        """The runtime's probe answer: ``passes``, ``queued``, ``resyncs``, ``sinceResyncSeconds``."""
        with urllib.request.urlopen(self.health_url, timeout=5) as resp:
            return dict(json.loads(resp.read())["bertserve"])

    def wait_resyncs(self, count: int, period: float) -> dict[str, Any]:
        """Wait until ``count`` periodic resyncs started after this call and their queue drained.

        The positive marker for "the operator has looked at every BertServer again". kopf caches
        probe answers for 10 s, so the first answer may be older than this call: wait for a fresh
        one (it differs: ``sinceResyncSeconds`` moves) and count resyncs from there.
        """
        first = self.health_detail()
        fresh = wait_for(lambda: (d := self.health_detail()) != first and d, 15, "a fresh probe answer")
        target = int(fresh["resyncs"]) + count
        return wait_for(
            lambda: (d := self.health_detail())["resyncs"] >= target and d["queued"] == 0 and d,
            count * period + 25,
            f"{count} resyncs after {fresh} and their queue drained",
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path a kubelet takes. Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"operator ignored SIGTERM for {timeout}s:\n{self.tail()}") from None
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a node crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive:
            self.stop()
