#!/usr/bin/env python3
"""A real, local Kubernetes control plane on 127.0.0.1 for tests and the demo.

Runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes whose
pods turn Running/Ready) from binaries built by ``hack/cluster/build.sh``. Nothing is mocked:
schemas, CEL rules, RBAC, admission, scheduling, watches and garbage collection are the real
Kubernetes code paths, which is the point of having this harness at all.

Standard library only (plus the ``openssl`` CLI for certificates) so that it runs before any
virtualenv exists and can be loaded by path from pytest.

CLI::

    python hack/cluster/localcluster.py up [--state-dir D] [--bin-dir B] [--real-node]
    python hack/cluster/localcluster.py status
    python hack/cluster/localcluster.py env        # prints shell exports (KUBECONFIG, PATH)
    python hack/cluster/localcluster.py down [--purge]

Python::

    c = LocalCluster(state_dir, bin_dir)
    c.up()
    c.kubectl("get", "nodes")
    c.restart_apiserver()
    c.down(purge=True)

``real_node=True`` (CLI ``--real-node``) adds one real node (kubelet + containerd + runc, CoreDNS,
kube-proxy) next to the kwok nodes: see ``realnode.py`` beside this file.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".local" / "cluster"
BUILD_SCRIPT = HERE / "build.sh"
KWOK_STAGES = HERE / "kwok-stages.yaml"

#: Start order; ``down`` stops them in reverse so that nothing logs errors about a dead etcd.
COMPONENTS: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)
BINARIES: tuple[str, ...] = (*COMPONENTS, "kubectl", "helm")

SERVICE_CIDR = "10.96.0.0/16"
FIRST_SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
#: kwok manages only nodes carrying this annotation, so stray real nodes are never touched.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
STATE_FILE = "cluster.json"
REAL_NODE_CACHE = (
    Path(os.environ.get("BERTSERVE_CACHE", str(Path.home() / ".cache" / "bertserve"))) / "realnode"
)


def _sibling(stem: str) -> ModuleType:
    """``<stem>.py`` beside this file, loaded by path once per process (as this file is by the tests)."""
    name = f"bertserve_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def realnode() -> ModuleType:
    """``realnode.py`` beside this file: the real node (loaded only when one is asked for)."""
    return _sibling("realnode")


procs = _sibling("procs")  # pid + start-time bookkeeping, shared with realnode.py


class ClusterError(RuntimeError):
    """Raised when a component fails to start, become ready or stop in bounded time."""


@dataclass(frozen=True)
class NodeSpec:
    """A fake node: GPU nodes get ``nvidia.com/gpu`` capacity plus the GPU label and taint."""

    name: str
    gpus: int = 0
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("gpu-node-0", gpus=4),
    NodeSpec("gpu-node-1", gpus=4),
    NodeSpec("cpu-node-0", gpus=0, cpu="16", memory="64Gi"),
)


@dataclass(frozen=True)
class Timeouts:
    """Upper bounds (seconds) for each wait; generous because CI has 2 slow cores."""

    etcd: float = 60.0
    apiserver: float = 180.0
    component: float = 90.0
    nodes: float = 120.0
    service_account: float = 90.0
    stop: float = 15.0


def build_binaries(*, quiet: bool = False) -> Path:
    """Run build.sh (a no-op taking seconds when the cache is warm) and return the bin dir.

    Raises ClusterError carrying the tail of the build output on failure, because a missing
    control plane must fail the caller loudly rather than let tests skip.
    """
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=None if not quiet else subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-4000:] if quiet else "(see build output above)"
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n{tail}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ClusterError(f"{BUILD_SCRIPT} printed no bin dir")
    return Path(lines[-1])


def build_node_binaries(*, quiet: bool = False) -> Path:
    """``build.sh --node`` (kubelet, kube-proxy, containerd, CoreDNS, pause); returns their bin dir."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--node"],
        stdout=subprocess.PIPE,
        stderr=None if not quiet else subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-4000:] if quiet else "(see build output above)"
        raise ClusterError(f"{BUILD_SCRIPT} --node failed with exit code {proc.returncode}:\n{tail}")
    return Path(proc.stdout.strip().splitlines()[-1])


def default_bin_dir(node: bool = False) -> Path:
    """The bin dir for the pinned versions (``build.sh --print-bin-dir``), built or not."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *(["--node"] if node else []), "--print-bin-dir"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def free_ports(count: int) -> list[int]:
    """Pick ``count`` distinct free loopback ports.

    The sockets stay open until all are chosen so the kernel cannot hand out one port twice.
    A port can still be taken between here and the component binding it; the start-up checks
    then fail with the component's log path instead of hanging.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


@dataclass
class ProcessRecord:
    """What ``down`` needs to stop a component safely from another Python process."""

    name: str
    pid: int
    start_time: int | None
    args: list[str]
    log: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "args": self.args,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProcessRecord:
        return cls(d["name"], int(d["pid"]), d.get("start_time"), list(d["args"]), d["log"])


@dataclass
class LocalCluster:
    """One local control plane rooted at ``state_dir``.

    State (pki/, etcd/, logs/, kubeconfig, cluster.json with ports and pids) lives in
    ``state_dir`` so that a separate ``down`` invocation can stop exactly what ``up`` started.
    """

    state_dir: Path = DEFAULT_STATE_DIR
    bin_dir: Path | None = None
    nodes: Sequence[NodeSpec] = DEFAULT_NODES
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Tie the components' lifetime to this Python process (tests); the CLI leaves it off.
    die_with_parent: bool = False
    #: Add a real node (kubelet + containerd); the API server then listens on the node link.
    real_node: bool = False
    node_bin_dir: Path | None = None
    #: containerd's root (imported images) for the real node; persists so imports are cached.
    containerd_root: Path = REAL_NODE_CACHE / "containerd"
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    _popen: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if self.bin_dir is not None:
            self.bin_dir = Path(self.bin_dir).resolve()
        self._load_state()

    # ------------------------------------------------------------------ paths and state

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def home_dir(self) -> Path:
        """HOME for every spawned process: kwok silently loads ``~/.kwok/kwok.yaml`` otherwise."""
        return self.state_dir / "home"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def api_host(self) -> str:
        """Where the API server listens: loopback, or the host side of the real node's link."""
        return str(realnode().HOST_IP) if self.real_node else "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.api_host}:{self.ports['apiserver']}"

    @functools.cached_property
    def node(self) -> Any:
        """The real node (a ``realnode.RealNode``); only meaningful with ``real_node=True``."""
        rn = realnode()
        return rn.RealNode(
            state_dir=self.state_dir / "node",
            bin_dir=self.node_bin_dir or default_bin_dir(node=True),
            kubeconfig=self.kubeconfig,
            containerd_root=self.containerd_root,
            die_with_parent=self.die_with_parent,
        )

    def binary(self, name: str) -> Path:
        """Path of one built binary; raises with the build command when it is missing."""
        if self.bin_dir is None:
            self.bin_dir = default_bin_dir()
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ClusterError(f"{path} missing: run {BUILD_SCRIPT} first")
        return path

    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load_state(self) -> None:
        path = self._state_path()
        if not path.exists():
            return
        data = json.loads(path.read_text())
        self.ports = {k: int(v) for k, v in data.get("ports", {}).items()}
        self.processes = {
            name: ProcessRecord.from_json(rec) for name, rec in data.get("processes", {}).items()
        }
        if self.bin_dir is None and data.get("bin_dir"):
            self.bin_dir = Path(data["bin_dir"])
        if data.get("real_node"):
            self.real_node = True
            if self.node_bin_dir is None and data.get("node_bin_dir"):
                self.node_bin_dir = Path(data["node_bin_dir"])

    def _save_state(self) -> None:
        data = {
            "bin_dir": str(self.bin_dir) if self.bin_dir else None,
            "ports": self.ports,
            "processes": {name: rec.to_json() for name, rec in self.processes.items()},
            "kubeconfig": str(self.kubeconfig),
            "real_node": self.real_node,
            "node_bin_dir": str(self.node_bin_dir) if self.node_bin_dir else None,
        }
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self._state_path())

    # ------------------------------------------------------------------ lifecycle

    def running(self) -> dict[str, bool]:
        """Which recorded components are alive (by pid *and* start time)."""
        return {name: procs.alive(rec.pid, rec.start_time) for name, rec in self.processes.items()}

    def up(self) -> LocalCluster:
        """Start everything and wait until the cluster is usable.

        Usable means: /readyz ok, every controller healthy, every fake node Ready without the
        not-ready taint, and ServiceAccount ``default/default`` present (pods in a namespace
        are rejected by admission until the controller-manager has created it).
        """
        if self.real_node:
            why = realnode().refusal()
            if why:
                raise ClusterError(why)
        alive = self.running()
        if not self.real_node and alive and all(alive.values()) and set(alive) == set(COMPONENTS):
            self.wait_ready()
            return self
        if any(alive.values()) or self.real_node:
            # Half-running from a crash: stop our leftovers rather than fight over ports.
            # A real node always starts afresh (its host state must be recorded before it runs).
            self.down(purge=False)
        for d in (self.state_dir, self.log_dir, self.etcd_dir, self.home_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.etcd_dir.chmod(0o700)  # etcd warns about anything wider
        for name in BINARIES:
            self.binary(name)
        self._ensure_pki()
        names = ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.processes = {}
        self._write_kubeconfig()
        try:
            if self.real_node:
                # Cleans up a crashed node first; creates the link the API server listens on.
                self.node.prepare_host()
            self._start("etcd")
            self._wait(
                "etcd /health",
                lambda: self._http_ok(f"http://127.0.0.1:{self.ports['etcd']}/health"),
                self.timeouts.etcd,
                "etcd",
            )
            self._start_apiserver()
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._start(name)
            self.wait_ready()
            if self.real_node:
                self.node.start()
                self._wait(
                    "real node Ready", self._real_node_ready, self.timeouts.nodes, "kube-controller-manager"
                )
        except BaseException:
            # Leave logs in place for the error message; stop what we started.
            self.down(purge=False)
            raise
        return self

    def wait_ready(self) -> None:
        """Wait for every readiness condition ``up`` promises (see ``up``)."""
        self._wait("kube-apiserver /readyz", self.apiserver_ready, self.timeouts.apiserver, "kube-apiserver")
        health = {
            "kube-controller-manager": f"https://127.0.0.1:{self.ports['controller-manager']}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{self.ports['scheduler']}/healthz",
            "kwok": f"http://127.0.0.1:{self.ports['kwok']}/healthz",
        }
        for name, url in health.items():
            self._wait(
                f"{name} /healthz",
                functools.partial(self._http_ok, url, insecure=True),
                self.timeouts.component,
                name,
            )
        self._ensure_nodes()
        self._wait(
            "fake nodes Ready without the not-ready taint", self._nodes_ready, self.timeouts.nodes, "kwok"
        )
        self.wait_for_service_account("default", "default")

    def restart_apiserver(self) -> None:
        """Stop and start only kube-apiserver on the same port (same kubeconfig).

        Lets operator tests prove that watches survive an API server outage; etcd keeps the
        data, so every object is still there afterwards.
        """
        rec = self.processes.get("kube-apiserver")
        if rec is not None:
            self._stop(rec)
        self._start_apiserver()

    def down(self, purge: bool = False) -> None:
        """Stop exactly the recorded pids (SIGTERM, then SIGKILL after a bounded wait).

        ``purge`` removes the whole state dir (etcd data, certificates, logs, kubeconfig).
        """
        errors: list[str] = []
        record = realnode().read_machine_record() if os.geteuid() == 0 else None
        if record is not None and record.get("state_dir") == str(self.state_dir / "node"):
            errors += self.node.stop()
        for name in reversed(COMPONENTS):
            rec = self.processes.get(name)
            if rec is None:
                continue
            try:
                self._stop(rec)
            except ClusterError as exc:
                errors.append(str(exc))
        self.processes = {}
        if self.state_dir.exists():
            if purge:
                shutil.rmtree(self.state_dir)
            else:
                self._save_state()
        if errors:
            raise ClusterError("; ".join(errors))

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down(purge=False)

    # ------------------------------------------------------------------ client helpers

    def env(self) -> dict[str, str]:
        """Environment for child tools: KUBECONFIG, the bin dir first on PATH, isolated caches."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECACHEDIR"] = str(self.state_dir / "kube-cache")
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[var] = str(self.state_dir / "helm" / sub)
        return env

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; ``check`` raises with stdout+stderr."""
        return self._run_tool(
            "kubectl",
            ["--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            input=input,
            timeout=timeout,
        )

    def helm(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster (config and caches inside the state dir)."""
        return self._run_tool(
            "helm", ["--kubeconfig", str(self.kubeconfig), *args], check=check, input=None, timeout=timeout
        )

    def _run_tool(
        self, name: str, args: list[str], *, check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary(name)), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{name} {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def write_token_kubeconfig(self, path: Path, token: str, namespace: str = "default") -> Path:
        """A kubeconfig that authenticates with a bearer token only (e.g. a ServiceAccount's).

        The admin kubeconfig carries a system:masters client certificate, which the API server
        would prefer over any --token flag, so acting *as* an account needs its own file.
        """
        ca = base64.b64encode((self.pki_dir / "ca.crt").read_bytes()).decode()
        path.write_text(_kubeconfig_yaml(self.server, ca, {"token": token}, namespace))
        path.chmod(0o600)
        return path

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Minimal admin REST call (stdlib only); returns (status, parsed JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener().open(req, timeout=10) as resp:
                return resp.status, _parse(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _parse(exc.read())

    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait for its ``default`` ServiceAccount (pods need it)."""
        status, body = self.api(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        if status not in (201, 409):
            raise ClusterError(f"creating namespace {name}: HTTP {status}: {body}")
        self.wait_for_service_account(name, "default")

    def wait_for_service_account(self, namespace: str, name: str) -> None:
        """Bounded wait for a ServiceAccount (the controller-manager creates ``default``)."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        self._wait(
            f"ServiceAccount {namespace}/{name}",
            lambda: self.api("GET", path)[0] == 200,
            self.timeouts.service_account,
            "kube-controller-manager",
        )

    # ------------------------------------------------------------------ internals

    def _ensure_pki(self) -> None:
        """Self-made CA, one admin cert (O=system:masters; also the serving cert) and sa.key.

        Reused across up/down so kubeconfigs handed out earlier stay valid until ``--purge``.
        """
        pki = self.pki_dir
        pki.mkdir(parents=True, exist_ok=True)
        if all(
            (pki / f).exists() for f in ("ca.crt", "ca.key", "admin.crt", "admin.key", "sa.key", "sa.pub")
        ):
            return
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=bertserve-local-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=pki,
        )
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/O=system:masters/CN=bertserve-admin",
            "-keyout",
            "admin.key",
            "-out",
            "admin.csr",
            cwd=pki,
        )
        sans = ",".join(
            [
                "IP:127.0.0.1",
                f"IP:{realnode().HOST_IP}",  # the API server's address in real-node mode
                f"IP:{FIRST_SERVICE_IP}",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
        )
        (pki / "admin.ext").write_text(
            f"subjectAltName={sans}\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "basicConstraints=critical,CA:FALSE\n"
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            "admin.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            "admin.ext",
            "-out",
            "admin.crt",
            cwd=pki,
        )
        # A key of its own for ServiceAccount tokens (kwokctl reuses the admin key).
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        for key in pki.glob("*.key"):
            key.chmod(0o600)

    def _write_kubeconfig(self) -> None:
        """Admin kubeconfig with embedded certs, so it can be copied or mounted as one file."""
        b64 = {
            n: base64.b64encode((self.pki_dir / n).read_bytes()).decode()
            for n in ("ca.crt", "admin.crt", "admin.key")
        }
        self.kubeconfig.write_text(
            _kubeconfig_yaml(
                self.server,
                b64["ca.crt"],
                {"client-certificate-data": b64["admin.crt"], "client-key-data": b64["admin.key"]},
                "default",
            )
        )
        self.kubeconfig.chmod(0o600)

    def _args(self, name: str) -> list[str]:
        """Command line of one component (flags chosen as kwokctl's binary runtime does)."""
        p = self.ports
        if name == "etcd":
            client, peer = f"http://127.0.0.1:{p['etcd']}", f"http://127.0.0.1:{p['etcd-peer']}"
            return [
                "--name=node0",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=node0={peer}",
                "--auto-compaction-retention=1",
                "--quota-backend-bytes=8589934592",
                # Test cluster: losing the last writes on a host crash is fine, speed is not.
                "--unsafe-no-fsync=true",
            ]
        if name == "kube-apiserver":
            return [*self._apiserver_args(), *self._real_node_apiserver_args()]
        return self._component_args(name)

    def _apiserver_args(self) -> list[str]:
        p, pki = self.ports, self.pki_dir
        return [
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            f"--bind-address={self.api_host}",
            f"--advertise-address={self.api_host}",
            f"--secure-port={p['apiserver']}",
            f"--cert-dir={pki / 'apiserver'}",
            f"--tls-cert-file={pki / 'admin.crt'}",
            f"--tls-private-key-file={pki / 'admin.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # ExtendedResourceToleration adds tolerations for taints named after extended
            # resources a pod requests, so GPU pods tolerate the nvidia.com/gpu taint without
            # writing it. OwnerReferencesPermissionEnforcement (on by default in OpenShift)
            # admits an ownerReference with blockOwnerDeletion only from a client that may
            # update the owner's finalizers: the operator's RBAC is tested under it.
            "--enable-admission-plugins=ExtendedResourceToleration,OwnerReferencesPermissionEnforcement",
        ]

    def _real_node_apiserver_args(self) -> list[str]:
        if not self.real_node:
            # The `kubernetes` Service endpoints would point at 127.0.0.1, which Endpoints
            # validation rejects (log noise every 10 s); nothing in-cluster can reach it anyway.
            return ["--endpoint-reconciler-type=none"]
        pki = self.pki_dir
        # Pods on the real node reach the API server through the `kubernetes` Service (whose
        # endpoint is the advertise address); the API server reaches the kubelet (logs, exec)
        # at the node's InternalIP, with the admin certificate as client certificate.
        return [
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
        ]

    def _component_args(self, name: str) -> list[str]:
        p, pki, kc = self.ports, self.pki_dir, str(self.kubeconfig)
        allow = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        if name == "kube-controller-manager":
            return [
                f"--kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller-manager']}",
                allow,
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                # Single instance: a restarted one must not wait for the old Lease to expire.
                "--leader-elect=false",
            ]
        if name == "kube-scheduler":
            return [
                f"--kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                allow,
                "--leader-elect=false",
            ]
        if name == "kwok":
            key, value = KWOK_NODE_ANNOTATION
            return [
                f"--kubeconfig={kc}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                # Lease renewed every 10 s; paired with the heartbeat-with-lease stage so the
                # controller-manager never marks the nodes NotReady and evicts pods.
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                f"--server-address=127.0.0.1:{p['kwok']}",
            ]
        raise ValueError(name)

    def _start(self, name: str) -> None:
        args = [str(self.binary(name)), *self._args(name)]
        log = self.log_dir / f"{name}.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home_dir),
            "LANG": "C.UTF-8",
        }
        with log.open("ab") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(args)}\n".encode())
            fh.flush()
            # New session: Ctrl-C in the terminal that ran `up` must not kill the cluster,
            # and the processes outlive the CLI process that started them.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=procs.die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        self._popen[name] = proc
        self.processes[name] = ProcessRecord(name, proc.pid, procs.start_time(proc.pid), args, str(log))
        self._save_state()

    def _start_apiserver(self) -> None:
        self._start("kube-apiserver")
        self._wait("kube-apiserver /readyz", self.apiserver_ready, self.timeouts.apiserver, "kube-apiserver")

    def _stop(self, rec: ProcessRecord) -> None:
        """SIGTERM, bounded wait, SIGKILL; only if the pid is still the process we started."""
        popen = self._popen.pop(rec.name, None)
        if not procs.stop(rec.pid, rec.start_time, self.timeouts.stop, popen=popen):
            raise ClusterError(f"{rec.name} (pid {rec.pid}) did not exit after SIGKILL")

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, component: str) -> None:
        """Poll ``check`` until true; fail fast if ``component`` died, with its log tail."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                if check():
                    return
            except (OSError, ValueError, KeyError):
                pass
            rec = self.processes.get(component)
            if rec is not None and not procs.alive(rec.pid, rec.start_time):
                raise ClusterError(
                    f"{component} exited while waiting for {what}; log {rec.log}:\n{procs.log_tail(rec.log, 25)}"
                )
            if time.monotonic() >= deadline:
                log = rec.log if rec else str(self.log_dir)
                raise ClusterError(
                    f"timed out after {timeout:.0f}s waiting for {what}; see {log}:\n"
                    f"{procs.log_tail(log, 25) if rec else ''}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _opener(self) -> urllib.request.OpenerDirector:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        # No proxies: urllib does not exempt 127.0.0.1 from HTTPS_PROXY by itself.
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )

    @staticmethod
    def _http_ok(url: str, insecure: bool = False) -> bool:
        """GET ``url``; the controllers serve in-memory self-signed certs, hence ``insecure``."""
        ctx = ssl.create_default_context()
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )
        try:
            with opener.open(url, timeout=5) as resp:
                body = resp.read().decode(errors="replace")
                return resp.status == 200 and ("ok" in body or '"health":"true"' in body)
        except (urllib.error.URLError, OSError):
            return False

    def apiserver_ready(self) -> bool:
        """True when GET /readyz answers ``ok`` (all post-start hooks done, etcd reachable)."""
        try:
            status, body = self.api("GET", "/readyz")
        except (urllib.error.URLError, OSError):
            return False
        return status == 200 and body == "ok"

    def _node_manifest(self, spec: NodeSpec, index: int) -> dict[str, Any]:
        key, value = KWOK_NODE_ANNOTATION
        labels = {
            "kubernetes.io/hostname": spec.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        resources = {"cpu": spec.cpu, "memory": spec.memory, "pods": str(spec.pods)}
        taints: list[dict[str, str]] = []
        if spec.gpus:
            labels[GPU_LABEL] = "true"
            resources[GPU_RESOURCE] = str(spec.gpus)
            taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
        # Status is accepted on create (and only there): kwok keeps the capacity we write.
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": spec.name,
                "labels": labels,
                "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": taints},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": f"192.168.100.{10 + index}"},
                    {"type": "Hostname", "address": spec.name},
                ],
            },
        }

    def _ensure_nodes(self) -> None:
        for index, spec in enumerate(self.nodes):
            status, body = self.api("POST", "/api/v1/nodes", self._node_manifest(spec, index))
            if status not in (201, 409):
                raise ClusterError(f"creating node {spec.name}: HTTP {status}: {body}")

    def _real_node_ready(self) -> bool:
        """The kubelet registered the node, it is Ready and the not-ready taint is gone."""
        status, node = self.api("GET", f"/api/v1/nodes/{realnode().NODE_NAME}")
        if status != 200:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        taints = node.get("spec", {}).get("taints") or []
        return ready and not any(t["key"] == NOT_READY_TAINT for t in taints)

    def _nodes_ready(self) -> bool:
        status, body = self.api("GET", "/api/v1/nodes")
        if status != 200:
            return False
        by_name = {n["metadata"]["name"]: n for n in body.get("items", [])}
        for spec in self.nodes:
            node = by_name.get(spec.name)
            if node is None:
                return False
            conditions = node.get("status", {}).get("conditions") or []
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
            if any(t["key"] == NOT_READY_TAINT for t in node.get("spec", {}).get("taints") or []):
                return False
        return True


def _parse(raw: bytes) -> Any:
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _kubeconfig_yaml(server: str, ca_b64: str, user: Mapping[str, str], namespace: str) -> str:
    """Render a one-context kubeconfig (JSON is valid YAML, but humans read this file)."""
    user_lines = "".join(f"    {k}: {v}\n" for k, v in user.items())
    return (
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- name: bertserve-local\n  cluster:\n"
        f"    server: {server}\n    certificate-authority-data: {ca_b64}\n"
        "users:\n- name: bertserve-local\n  user:\n"
        + user_lines
        + "contexts:\n- name: bertserve-local\n  context:\n"
        f"    cluster: bertserve-local\n    user: bertserve-local\n    namespace: {namespace}\n"
        "current-context: bertserve-local\n"
    )


def import_project_images(
    cluster: LocalCluster, out_dir: Path = REPO_ROOT / ".local" / "images"
) -> list[str]:
    """Import ``make images``' OCI archives (``bertserve-<name>-<version>.tar``) into the real node.

    Each becomes ``localhost/bertserve-<name>:<version>``, the names the chart and the operator
    are given in real-node mode (pods use ``imagePullPolicy: Never``: there is no registry).
    """
    names = []
    for archive in sorted(out_dir.glob("bertserve-*.tar")):
        stem = archive.name.removesuffix(".tar")
        base = "localhost/" + stem.rsplit("-", 1)[0]
        names.append(cluster.node.import_archive(archive, base))
    return names


@contextlib.contextmanager
def temporary_cluster(bin_dir: Path | None = None) -> Iterator[LocalCluster]:
    """A throwaway cluster in a temp dir (for scripts); purged on success, kept on error."""
    state = Path(tempfile.mkdtemp(prefix="bertserve-cluster-"))
    cluster = LocalCluster(state, bin_dir)
    ok = False
    try:
        cluster.up()
        yield cluster
        ok = True
    finally:
        cluster.down(purge=ok)
        if not ok:
            print(f"cluster state and logs kept in {state}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="state dir (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="build (cached) and start the cluster, wait until ready")
    p_up.add_argument("--bin-dir", type=Path, help="use these binaries instead of build.sh")
    p_up.add_argument(
        "--real-node",
        action="store_true",
        help="add a real node (kubelet + containerd + runc, CoreDNS, kube-proxy); needs root",
    )
    p_down = sub.add_parser("down", help="stop the processes this state dir recorded")
    p_down.add_argument("--purge", action="store_true", help="also delete etcd data, certs, logs")
    sub.add_parser("status", help="show processes, ports and readiness")
    sub.add_parser("env", help="print shell exports for KUBECONFIG and PATH")
    args = parser.parse_args(argv)

    if args.cmd == "up":
        if args.real_node:
            why = realnode().refusal()
            if why:
                print(f"localcluster: {why}", file=sys.stderr)
                return 2
        bin_dir = args.bin_dir or build_binaries()
        node_bin_dir = build_node_binaries() if args.real_node else None
        cluster = LocalCluster(args.state_dir, bin_dir, real_node=args.real_node, node_bin_dir=node_bin_dir)
        started = time.monotonic()
        try:
            cluster.up()
            if args.real_node:
                for image in import_project_images(cluster):
                    print(f"imported {image} into the real node", file=sys.stderr)
        except (ClusterError, realnode().RealNodeError) as exc:
            print(f"localcluster: {exc}", file=sys.stderr)
            return 1
        print(
            f"cluster ready in {time.monotonic() - started:.1f}s; "
            f"API {cluster.server}; logs in {cluster.log_dir}",
            file=sys.stderr,
        )
        print(cluster.kubectl("get", "nodes", "-o", "wide").stdout, file=sys.stderr)
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0

    cluster = LocalCluster(args.state_dir)
    if args.cmd == "down":
        try:
            cluster.down(purge=args.purge)
        except ClusterError as exc:
            print(f"localcluster: {exc}", file=sys.stderr)
            return 1
        print("stopped" + (" and purged" if args.purge else ""), file=sys.stderr)
        return 0
    if args.cmd == "env":
        if not cluster.kubeconfig.exists():
            print("localcluster: no cluster in this state dir; run `up` first", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        if cluster.bin_dir:
            print(f"export PATH={cluster.bin_dir}:$PATH")
        return 0
    # status
    alive = cluster.running()
    if not alive:
        known = cluster.kubeconfig.exists()
        print(f"cluster in {cluster.state_dir} is {'stopped' if known else 'not created'}")
        return 1
    for name in COMPONENTS:
        rec = cluster.processes.get(name)
        state = "running" if alive.get(name) else "stopped"
        print(f"{name:<24} {state:<8} pid={rec.pid if rec else '-'}")
    ready = all(alive.values()) and cluster.apiserver_ready()
    print(f"apiserver {cluster.server} readyz={'ok' if ready else 'no'}")
    print(f"kubeconfig {cluster.kubeconfig}")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
