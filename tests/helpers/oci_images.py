"""Build, unpack and run the project's container images without a daemon (buildah, umoci, runc).

Why it exists: the image tests must run the *shipped* artefact (the OCI archive `make images`
writes) the way a kubelet would: read-only root filesystem, a writable ``/tmp``, the model mounted
read-only, the image's own user, entrypoint and environment. Docker is not available on CI
machines, so this module does what a container engine does with plain tools:

* ``build_images`` runs ``hack/images/build.sh`` (cached) and returns its JSON summaries;
* ``unpack`` turns an archive into a runtime bundle with ``skopeo`` + ``umoci`` (cached by image id);
* ``Container`` runs a bundle with ``runc``, host network (so a client on loopback reaches the
  server), a bounded lifetime and a memory limit, and always kills and deletes it by its id.

Also usable by hand (as root): ``python3 tests/helpers/oci_images.py run server --model DIR -- ARGS``
runs the server image with DIR at ``/models`` and ARGS in place of the image's Cmd.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("buildah", "runc", "skopeo", "umoci", "debootstrap")
IMAGE_NAMES = ("server", "server-cpu", "operator")
CONTAINER_PREFIX = "bertserve-test-"
IMAGE_CONFIG = "image-config.json"
HOST_CA_DIR = os.environ.get("BERTSERVE_CA_DIR", "/usr/local/share/ca-certificates")
"""Mounted into builds (see hack/images/common.sh); the tests check it does not ship."""


def toolchain_problems() -> list[str]:
    """Why images cannot be built or run here ([] when they can)."""
    problems = []
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        problems.append(f"missing tools {missing}: apt-get install {' '.join(missing)} (make system-deps)")
    if os.geteuid() != 0:
        problems.append("image builds and runc need root on these machines (debootstrap, mounts, cgroups)")
    return problems


def store_env(root: Path = REPO_ROOT) -> dict[str, str]:
    """The environment that selects the project's container store, as hack/images/common.sh sets it.

    Asked from the shell script itself so the cache key and paths have one definition.
    """
    script = (
        f"source {root / 'hack/images/common.sh'} && images_env && "
        'printf "%s\\n" "$IMAGES_STATE" "$CONTAINERS_STORAGE_CONF" "$CONTAINERS_CONF" '
        '"$CONTAINERS_REGISTRIES_CONF" "$IMAGES_POLICY" "$IMAGES_OUT" "$(images_version)"'
    )
    proc = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    out = proc.stdout.split("\n")
    keys = (
        "IMAGES_STATE",
        "CONTAINERS_STORAGE_CONF",
        "CONTAINERS_CONF",
        "CONTAINERS_REGISTRIES_CONF",
        "IMAGES_POLICY",
        "IMAGES_OUT",
        "VERSION",
    )
    return dict(zip(keys, out, strict=False))


def _env_with_store(store: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF"):
        env[key] = store[key]
    return env


def build_images(names: Sequence[str] = IMAGE_NAMES, timeout: float = 3600) -> dict[str, dict[str, Any]]:
    """Run ``hack/images/build.sh`` for ``names`` and return each image's summary (see build.sh).

    Raises RuntimeError with the script's last lines when the build fails.
    """
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "hack/images/build.sh"), *names],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-80:])
        raise RuntimeError(f"hack/images/build.sh {' '.join(names)} failed ({proc.returncode}):\n{tail}")
    sys.stderr.write(proc.stdout)
    store = store_env()
    out_dir = Path(store["IMAGES_OUT"])
    return {n: json.loads((out_dir / f"bertserve-{n}-{store['VERSION']}.json").read_text()) for n in names}


def image_config(archive: str | Path, ref: str, transport: str = "oci-archive") -> dict[str, Any]:
    """The OCI image configuration (``config.User``, ``Entrypoint``, ``Volumes``...) of an archive."""
    out = subprocess.run(
        ["skopeo", "inspect", "--config", f"{transport}:{archive}:{ref}"],
        check=True,
        capture_output=True,
        text=True,
        # Even for an archive skopeo opens a container store: ours, never the host's default.
        env=_env_with_store(store_env()),
    ).stdout
    return json.loads(out)


def unpack(summary: Mapping[str, Any], bundles: Path | None = None) -> Path:
    """Unpack the archive described by ``summary`` into a runtime bundle; returns the bundle dir.

    Cached by image id beside the store (CI clones afresh each run): the root filesystem is only
    ever mounted read-only, so one unpack serves every run of the same image. Older bundles of the
    same image are deleted (they are GBs).
    """
    store = store_env()
    bundles = bundles or Path(store["IMAGES_STATE"]) / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    # Several checkouts or test runs may share the cache: one unpacks, the others wait and reuse.
    with (bundles / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _unpack_locked(summary, bundles, store)


def _unpack_locked(summary: Mapping[str, Any], bundles: Path, store: Mapping[str, str]) -> Path:
    name = Path(summary["archive"]).name.removesuffix(".tar")
    bundle = bundles / f"{name}-{summary['image_id'][:12]}"
    if (bundle / ".complete").exists():
        return bundle
    for old in [*bundles.glob(f"{name}-*"), *bundles.glob(".layout-*")]:
        shutil.rmtree(old)
    with tempfile.TemporaryDirectory(dir=bundles, prefix=".layout-") as layout:
        tag = summary["archive_ref"]
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--policy",
                store["IMAGES_POLICY"],
                f"oci-archive:{summary['archive']}:{tag}",
                f"oci:{layout}:{tag}",
            ],
            check=True,
            env=_env_with_store(store),
        )
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # umoci folds the image config into config.json (adding TERM, HOME...); keep the original.
        (bundle / IMAGE_CONFIG).write_text(json.dumps(image_config(f"{layout}", tag, transport="oci")))
    (bundle / ".complete").write_text(summary["image_id"])
    return bundle


def resolve_in_rootfs(rootfs: Path, command: str, path_env: str) -> Path | None:
    """Where ``command`` would be found inside the image (by its PATH), following no host paths."""
    dirs = [command] if "/" in command else [f"{d}/{command}" for d in path_env.split(":") if d]
    for candidate in dirs:
        p = rootfs / candidate.lstrip("/")
        if p.is_file() or p.is_symlink():
            return p
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cleanup_stale(runc_root: Path) -> None:
    """Delete containers that a killed test process left behind.

    Only ours: our runc root, our id prefix, and only when the process named in the id is gone
    (another test run may be using the same store right now).
    """
    proc = subprocess.run(
        ["runc", "--root", str(runc_root), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    for c in json.loads(proc.stdout or "null") or []:
        cid = c.get("id", "")
        owner = cid.removeprefix(CONTAINER_PREFIX).split("-", 1)[0]
        if cid.startswith(CONTAINER_PREFIX) and owner.isdigit() and not _pid_alive(int(owner)):
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid], check=False)


@dataclass
class Container:
    """One runc container made from an unpacked bundle, shaped like the pod the operator renders.

    ``command`` replaces the image's Entrypoint and ``args`` its Cmd, as in a pod; ``binds`` are
    ``host -> container`` read-only bind mounts; ``env`` is added to the image's environment. The
    root filesystem is read-only and ``/tmp`` is a fresh tmpfs, as with ``readOnlyRootFilesystem``
    and an emptyDir.
    The network namespace is the host's, so servers bound to 127.0.0.1 are reachable from the test.
    """

    bundle: Path
    args: Sequence[str] | None = None
    command: Sequence[str] | None = None
    binds: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    lifetime_s: float = 600.0
    memory_limit_bytes: int = 6 * 1024**3
    tmp_size: str = "512m"
    id: str = field(default_factory=lambda: f"{CONTAINER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        self._runc_root = Path(store_env()["IMAGES_STATE"]) / "runc"
        self._proc: subprocess.Popen[bytes] | None = None
        self._timer: threading.Timer | None = None
        self.log_path = self._workdir / "output.log"

    def _config(self) -> dict[str, Any]:
        config = json.loads((self.bundle / "config.json").read_text())
        image_cfg = json.loads((self.bundle / IMAGE_CONFIG).read_text()).get("config", {})
        process = config["process"]
        # The unpacked spec asks for a TTY, which a test has not got (runc: open /dev/tty failed).
        process["terminal"] = False
        # Kubernetes semantics: `command` replaces the Entrypoint, `args` the Cmd.
        if self.command is not None or self.args is not None:
            entrypoint = self.command if self.command is not None else image_cfg.get("Entrypoint") or []
            cmd = self.args if self.args is not None else [] if self.command else image_cfg.get("Cmd") or []
            process["args"] = [*entrypoint, *cmd]
        # Exactly the image's Env plus ours (umoci adds TERM and a HOME from /etc/passwd; a pod
        # gets neither).
        env = {k: v for k, v in (e.split("=", 1) for e in image_cfg.get("Env") or [])}
        env.update(self.env)
        process["env"] = [f"{k}={v}" for k, v in env.items()]
        # Like `capabilities: {drop: [ALL]}` and allowPrivilegeEscalation=false in the Deployment.
        process["capabilities"] = {
            k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
        }
        process["noNewPrivileges"] = True
        # A kubelet passes the runtime's file limit on; raising it past ours is not permitted here.
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": hard}]
        config["root"] = {"path": str((self.bundle / "rootfs").resolve()), "readonly": True}
        config["hostname"] = "bertserve-test"
        mounts = [m for m in config["mounts"] if m["destination"] != "/tmp"]
        mounts.append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", f"size={self.tmp_size}"],
            }
        )
        for host, dest in self.binds.items():
            mounts.append(
                {"destination": dest, "type": "bind", "source": str(host), "options": ["rbind", "ro"]}
            )
        config["mounts"] = mounts
        linux = config.setdefault("linux", {})
        # Host network: leave the network namespace out (no bridge, no firewall edits).
        linux["namespaces"] = [ns for ns in linux.get("namespaces", []) if ns["type"] != "network"]
        linux.setdefault("resources", {})["memory"] = {"limit": self.memory_limit_bytes}
        return config

    def start(self) -> Container:
        self._runc_root.mkdir(parents=True, exist_ok=True)
        _cleanup_stale(self._runc_root)
        (self._workdir / "config.json").write_text(json.dumps(self._config(), indent=1))
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            ["runc", "--root", str(self._runc_root), "run", "--bundle", str(self._workdir), self.id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        # Bounded lifetime even if the caller hangs: the timer kills the container by its id.
        self._timer = threading.Timer(self.lifetime_s, self.kill)
        self._timer.daemon = True
        self._timer.start()
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int:
        """Wait for the container's process to exit; returns its exit code."""
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the container (by id, never by name), then delete it. Idempotent."""
        runc = ["runc", "--root", str(self._runc_root)]
        subprocess.run([*runc, "kill", self.id, "KILL"], capture_output=True, check=False)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # runc itself is stuck: it is ours (its own session), so end it directly.
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        subprocess.run([*runc, "delete", "--force", self.id], capture_output=True, check=False)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.kill()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def run_image(summary: Mapping[str, Any], **kwargs: Any) -> Iterator[Container]:
    """Unpack (cached) and run one built image; the container is gone when the block ends."""
    with Container(unpack(summary), **kwargs) as container:
        yield container


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a built image (builds it first when needed)")
    run.add_argument("image", choices=IMAGE_NAMES)
    run.add_argument("--model", type=Path, help="host directory mounted read-only at /models")
    run.add_argument("--lifetime", type=float, default=600.0, help="seconds before the container is killed")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is the container's, never ours.
    split = argv.index("--") if "--" in argv else len(argv)
    argv, container_args = argv[:split], argv[split + 1 :]
    ns = parser.parse_args(argv)
    problems = toolchain_problems()
    if problems:
        parser.error("; ".join(problems))
    summary = build_images([ns.image])[ns.image]
    binds = {str(ns.model.resolve()): "/models"} if ns.model else {}
    with run_image(summary, args=container_args or None, binds=binds, lifetime_s=ns.lifetime) as c:
        print(f"container {c.id} running; Ctrl-C stops it", file=sys.stderr)
        try:
            while c.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        sys.stdout.write(c.output())
    return 0


if __name__ == "__main__":
    sys.exit(main())
