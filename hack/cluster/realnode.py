"""A real node for the local cluster: kubelet + containerd + runc, CoreDNS and kube-proxy.

Why it exists: kwok's fake nodes run nothing, so probes, volumes, the read-only root, the
non-root user, init containers, preStop hooks, Services and cluster DNS are never exercised.
This module adds one real node to a :class:`localcluster.LocalCluster`, following the recipe in
the project's real-node reference (kubelet v1.35 on cgroup v1, containerd 2.x, Debian's runc):

* a network namespace of its own (``bertserve-node``) joined to the host by a veth pair on a
  private /24: the node is ``10.250.0.1``, the host side ``10.250.0.254`` (where the API server
  listens in real-node mode). Pods get ``10.245.0.0/24`` on a CNI bridge inside the namespace;
* containerd with its own root, state and socket; kubelet, kube-proxy (iptables mode, rules only
  inside the namespace) and CoreDNS (cluster DNS on the node IP) in that namespace;
* every process it starts runs in a cgroup subtree of its own (``/bertserve-node`` in every
  hierarchy, also the kubelet's ``cgroupRoot``), so stopping means: stop the recorded pids,
  kill whatever is left in the subtree (containers, shims), remove the subtree;
* machine-wide state the kubelet and containerd change (sysctls, fixed paths such as
  ``/var/lib/kubelet/pki``, mounts) is recorded before start in ``/run/bertserve-realnode.json``
  and restored at stop. That file also lets a second ``up`` after a crash clean up first.

Only one real node can run per machine (fixed paths, the namespace name); the record file says
whose it is. Needs root (namespaces, mounts, cgroups): :func:`preflight` names what is missing,
and ``up`` refuses with one line.

Standard library only, like localcluster.py, which loads this file by path.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


def _load_procs() -> ModuleType:
    """``procs.py`` beside this file (pid + start-time bookkeeping shared with localcluster.py).

    Loaded by path under the name localcluster.py uses, so both scripts share one copy.
    """
    name = "bertserve_procs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("procs.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


procs = _load_procs()

NETNS = "bertserve-node"
NETNS_PATH = Path("/run/netns") / NETNS
HOST_VETH = "bsnode-host"
NODE_VETH = "eth0"
HOST_IP = "10.250.0.254"
NODE_IP = "10.250.0.1"
LINK_PREFIX = 24
POD_SUBNET = "10.245.0.0/24"
NODE_NAME = "bertserve-node-0"
CLUSTER_DOMAIN = "cluster.local"
#: Every process of the node lives below this cgroup in every hierarchy (kubelet's cgroupRoot).
CGROUP_ROOT = "bertserve-node"
CGROUP_FS = Path("/sys/fs/cgroup")
#: Machine-wide record of a running (or crashed) node: owner state dir, pids, saved host state.
MACHINE_RECORD = Path("/run/bertserve-realnode.json")

#: Workloads opt in to the real node with this toleration and node selector.
NODE_LABEL = ("bertserve.io/node", "real")
NODE_TAINT = {"key": "bertserve.io/real-node", "value": "true", "effect": "NoSchedule"}

PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses

#: Sysctls the kubelet (and kube-proxy/containerd, if misconfigured) set machine-wide.
HOST_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
#: Paths kubelet/containerd/CNI use whatever their configured roots are.
FIXED_PATHS = (
    "/run/containerd",
    "/run/nri",
    "/opt/containerd",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/cni/net.d",
)

TOOLS = ("ip", "nsenter", "iptables", "iptables-restore", "runc", "mount", "umount")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "ctr", "containerd-shim-runc-v2", "coredns", "pause")
#: Start order; stop is the reverse.
NODE_COMPONENTS = ("containerd", "coredns", "kube-proxy", "kubelet")

CAP_SYS_ADMIN = 21
CAP_NET_ADMIN = 12


class RealNodeError(RuntimeError):
    """The real node cannot be prepared, started, or stopped cleanly (message names why)."""


# ---------------------------------------------------------------------------------- preflight


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def preflight() -> list[str]:
    """Why a real node cannot run here ([] when it can); each entry is one short clause."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(f"must run as root (uid {os.geteuid()}): namespaces, mounts and cgroups need it")
    else:
        caps = _capabilities()
        missing = [
            n
            for n, bit in (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_NET_ADMIN", CAP_NET_ADMIN))
            if not caps >> bit & 1
        ]
        if missing:
            problems.append(f"missing capabilities {', '.join(missing)}")
    tools = [
        t for t in TOOLS if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    if tools:
        problems.append(f"missing tools {' '.join(tools)} (hack/ci-system-deps.sh installs them)")
    plugins = [p for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    if plugins:
        problems.append(
            f"missing CNI plugins {' '.join(plugins)} in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)"
        )
    if not (CGROUP_FS / "memory").is_dir() and not (CGROUP_FS / "cgroup.controllers").exists():
        problems.append(f"no cgroup hierarchy under {CGROUP_FS}")
    return problems


def refusal() -> str | None:
    """The one-line refusal ``up --real-node`` prints, or None when the node can run."""
    problems = preflight()
    if not problems:
        return None
    return "real node refused: " + "; ".join(problems)


# ---------------------------------------------------------------------------------- processes


def _run(
    *args: str, check: bool = True, netns: bool = False, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    cmd = [*(["nsenter", f"--net={NETNS_PATH}", "--"] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RealNodeError(
            f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


# ---------------------------------------------------------------------------------- cgroups


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones and the unified v2 mount)."""
    out: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            mount_point = Path(left.split()[4])
            if mount_point.is_relative_to(CGROUP_FS):
                out.append(mount_point)
    return sorted(set(out))


def _make_cgroup(hierarchy: Path, relative: str) -> Path:
    """Create ``relative`` below ``hierarchy``; cpuset children inherit their parent's cpus/mems."""
    path = hierarchy
    for part in relative.strip("/").split("/"):
        parent, path = path, path / part
        if not path.exists():
            path.mkdir()
        for knob in ("cpuset.cpus", "cpuset.mems"):
            mine = path / knob
            if mine.exists() and not mine.read_text().strip():
                mine.write_text((parent / knob).read_text())
    return path


def _cgroup_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    if not root.is_dir():
        return pids
    for member_file in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in member_file.read_text().split())
    return pids


def kill_cgroup_subtree(timeout: float = 20.0) -> int:
    """SIGKILL every process below ``/bertserve-node`` in every hierarchy; wait until none is left.

    Returns how many were killed. Only processes this node started (its components, their
    children, the containers and the shims) can be in that subtree.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = set().union(*(_cgroup_pids(h / CGROUP_ROOT) for h in cgroup_hierarchies()))
        pids.discard(os.getpid())
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        if time.monotonic() > deadline:
            raise RealNodeError(f"processes {sorted(pids)} in cgroup /{CGROUP_ROOT} survive SIGKILL")
        time.sleep(0.1)


def remove_cgroup_subtree() -> None:
    """Remove ``/bertserve-node`` (depth first) from every hierarchy."""
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.is_dir():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, root]:
            for attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if attempt == 49:
                        raise RealNodeError(f"cannot remove cgroup {d}: {exc}") from exc
                    time.sleep(0.1)


def _join_cgroup(relative: str) -> Callable[[], None]:
    """preexec hook: move the child into ``relative`` in every hierarchy before it execs."""
    targets = [h / relative / "cgroup.procs" for h in cgroup_hierarchies()]

    def hook() -> None:
        for member_file in targets:
            with contextlib.suppress(OSError):
                member_file.write_text("0")  # "0" = the writing process itself

    return hook


# ---------------------------------------------------------------------------------- mounts


def mounts_below(*roots: Path) -> list[str]:
    """Mount points at or below any of ``roots``, deepest first (the order to unmount them)."""
    resolved = [str(r) for r in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == r or point.startswith(r + "/") for r in resolved):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_below(*roots: Path) -> None:
    for _ in range(5):  # stacked and propagated mounts can need more than one pass
        points = mounts_below(*roots)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    left = mounts_below(*roots)
    if left:
        raise RealNodeError(f"mounts left after unmounting: {left[:5]}")


# ---------------------------------------------------------------------------------- host state


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def read_sysctls(names: Iterable[str] = HOST_SYSCTLS) -> dict[str, str]:
    out = {}
    for name in names:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


def snapshot_host() -> dict[str, Any]:
    """What the node may change machine-wide: sysctls, fixed paths (and their entries), mounts."""
    paths: dict[str, list[str] | None] = {}
    for p in FIXED_PATHS:
        path = Path(p)
        paths[p] = sorted(e.name for e in path.iterdir()) if path.is_dir() else None
    return {
        "sysctls": read_sysctls(),
        "paths": paths,
        "netns": NETNS_PATH.exists(),
    }


def restore_host(saved: Mapping[str, Any]) -> list[str]:
    """Put back what :func:`snapshot_host` recorded; returns what could not be restored."""
    problems: list[str] = []
    for name, value in saved.get("sysctls", {}).items():
        path = _sysctl_path(name)
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as exc:
            problems.append(f"sysctl {name}: {exc}")
    for p, entries in saved.get("paths", {}).items():
        path = Path(p)
        if not path.exists() and not path.is_symlink():
            continue
        with contextlib.suppress(OSError):
            unmount_below(path)
        try:
            if entries is None:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            elif path.is_dir():
                for entry in path.iterdir():
                    if entry.name not in entries:
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError as exc:
            problems.append(f"{p}: {exc}")
    return problems


def host_differences(saved: Mapping[str, Any]) -> dict[str, Any]:
    """What differs now from ``saved`` (tests assert this is empty after ``down``)."""
    now = snapshot_host()
    diff: dict[str, Any] = {}
    for key in ("sysctls", "paths"):
        for name, before in saved.get(key, {}).items():
            after = now[key].get(name)
            if after != before:
                diff[f"{key}:{name}"] = (before, after)
    return diff


# ---------------------------------------------------------------------------------- network


_NETNS_DIR_MARK = Path("/run/bertserve-realnode.netns-dir-created")


def setup_network() -> None:
    """Namespace, veth pair, addresses, default route; loopback and forwarding inside."""
    if not NETNS_PATH.parent.exists():
        _NETNS_DIR_MARK.write_text("ip netns add created /run/netns for the real node\n")
    _run("ip", "netns", "add", NETNS)
    _run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NODE_VETH, "netns", NETNS)
    _run("ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_VETH)
    _run("ip", "link", "set", HOST_VETH, "up")
    _run("ip", "link", "set", "lo", "up", netns=True)
    _run("ip", "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", NODE_VETH, netns=True)
    _run("ip", "link", "set", NODE_VETH, "up", netns=True)
    _run("ip", "route", "add", "default", "via", HOST_IP, netns=True)
    # Inside the namespace only (these are per-namespace on Linux >= 5.3): pods reach the
    # host through the node (masqueraded), and Service traffic between pods on the bridge
    # goes through kube-proxy's rules.
    for name, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        _run("sh", "-c", f"echo {value} > /proc/sys/{name}", netns=True)


def teardown_network() -> None:
    """Delete the veth pair and the namespace (and ``/run/netns`` if ``ip netns add`` made it for us)."""
    _run("ip", "link", "del", HOST_VETH, check=False)
    if NETNS_PATH.exists():
        _run("ip", "netns", "del", NETNS, check=False)
    if NETNS_PATH.exists():
        subprocess.run(["umount", "--lazy", str(NETNS_PATH)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            NETNS_PATH.unlink()
    run_netns = NETNS_PATH.parent
    if _NETNS_DIR_MARK.exists() and run_netns.is_dir() and not any(run_netns.iterdir()):
        # iproute2 bind-mounts /run/netns onto itself (shared) when it creates it.
        subprocess.run(["umount", str(run_netns)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            run_netns.rmdir()
    with contextlib.suppress(OSError):
        _NETNS_DIR_MARK.unlink()


# ---------------------------------------------------------------------------------- images


def _tar_bytes(members: Sequence[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_single_binary_image(binary: Path, archive: Path, ref_name: str, entrypoint: str) -> Path:
    """An OCI archive whose one layer is ``binary`` at ``entrypoint`` (the pause image).

    Written by hand (a layer tar, a config, a manifest, an index): there is no registry to
    pull ``registry.k8s.io/pause`` from, and the layout is small enough to state exactly.
    """
    layer_tar = _tar_bytes([(entrypoint.lstrip("/"), binary.read_bytes(), 0o755)])
    layer_gz = gzip.compress(layer_tar, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **blob(json.dumps(config).encode()),
    }
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer_gz)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **blob(json.dumps(manifest).encode()),
        "annotations": {
            "io.containerd.image.name": ref_name,
            "org.opencontainers.image.ref.name": ref_name.rpartition(":")[2],
        },
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }
    members = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        ("index.json", json.dumps(index).encode(), 0o644),
    ]
    members += [(f"blobs/sha256/{d.split(':')[1]}", data, 0o644) for d, data in blobs.items()]
    archive.write_bytes(_tar_bytes(members))
    return archive


def archive_manifest_digest(archive: Path) -> str:
    """The digest of the (first) manifest an OCI archive's index points at."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise RealNodeError(f"{archive}: no index.json")
        index = json.load(member)
    return str(index["manifests"][0]["digest"])


# ---------------------------------------------------------------------------------- records


@dataclass
class Proc:
    name: str
    pid: int
    start_time: int | None
    log: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "log": self.log}


def read_machine_record() -> dict[str, Any] | None:
    try:
        return dict(json.loads(MACHINE_RECORD.read_text()))
    except (OSError, ValueError):
        return None


def _write_machine_record(data: Mapping[str, Any]) -> None:
    tmp = MACHINE_RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(MACHINE_RECORD)


def _shim_pids(bin_dir: str, socket_path: str) -> list[int]:
    """containerd shims of *our* containerd: our shim binary, our socket on the command line."""
    shim = str(Path(bin_dir) / "containerd-shim-runc-v2")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if exe == shim and socket_path.encode() in cmdline:
            found.append(int(entry.name))
    return found


def cleanup_recorded(record: Mapping[str, Any] | None = None, *, timeout: float = 5.0) -> list[str]:
    """Stop and undo everything a node recorded in :data:`MACHINE_RECORD` (running or crashed).

    Order: recorded pids (kubelet first), whatever is left in the node's cgroup subtree and
    our shims, mounts under the node's dirs, the network namespace and veth, the cgroup
    subtree, then the saved sysctls and fixed paths. Returns problems it could not fix.
    """
    record = record if record is not None else read_machine_record()
    if record is None:
        return []
    problems: list[str] = []
    for rec in reversed(record.get("processes", [])):
        if not procs.stop(int(rec["pid"]), rec.get("start_time"), timeout):
            problems.append(f"{rec['name']}: pid {rec['pid']} did not exit after SIGKILL")
    for pid in _shim_pids(record.get("bin_dir", ""), record.get("containerd_socket", "")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        kill_cgroup_subtree()
    except RealNodeError as exc:
        problems.append(str(exc))
    dirs = [Path(d) for d in record.get("dirs", [])]
    try:
        unmount_below(*dirs)
    except RealNodeError as exc:
        problems.append(str(exc))
    teardown_network()
    try:
        remove_cgroup_subtree()
    except RealNodeError as exc:
        problems.append(str(exc))
    problems += restore_host(record.get("host", {}))
    for d in record.get("scratch_dirs", []):
        shutil.rmtree(d, ignore_errors=True)
    if not problems:
        with contextlib.suppress(FileNotFoundError):
            MACHINE_RECORD.unlink()
    return problems


# ---------------------------------------------------------------------------------- the node


@dataclass
class RealNode:
    """One real node; ``state_dir`` holds its configs, logs, kubelet root and containerd state.

    ``containerd_root`` (images, snapshots) may live outside ``state_dir`` so that imported
    images survive between sessions (importing the multi-GB server image takes minutes).
    """

    state_dir: Path
    bin_dir: Path
    kubeconfig: Path
    containerd_root: Path
    die_with_parent: bool = False
    processes: dict[str, Proc] = field(default_factory=dict)
    ready_timeout: float = 120.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.containerd_root = Path(self.containerd_root).resolve()

    # ------------------------------------------------------------------ paths

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def containerd_state(self) -> Path:
        return self.state_dir / "containerd-state"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def cni_dir(self) -> Path:
        return self.state_dir / "cni"

    def binary(self, name: str) -> Path:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise RealNodeError(f"{path} missing: run hack/cluster/build.sh --node first")
        return path

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def prepare_host() -> None:
        """Clean up a crashed node, then create the namespace (before the API server starts:
        in real-node mode it listens on the host side of the veth)."""
        record = read_machine_record()
        if record is not None:
            problems = cleanup_recorded(record)
            if problems:
                raise RealNodeError("cleaning up the previous real node failed: " + "; ".join(problems))
        elif NETNS_PATH.exists():
            teardown_network()
        setup_network()

    def start(self) -> None:
        """Record host state, start containerd, CoreDNS, kube-proxy and kubelet; wait until Ready.

        Call after the API server is up (with the real-node flags) and :meth:`prepare_host`.
        """
        for name in NODE_BINARIES:
            self.binary(name)
        host = snapshot_host()
        for d in (
            self.state_dir,
            self.log_dir,
            self.containerd_state,
            self.kubelet_root,
            self.containerd_root,
            self.cni_dir / "net.d",
            self.cni_dir / "ipam",
            self.state_dir / "pod-logs",
        ):
            d.mkdir(parents=True, exist_ok=True)
        for hierarchy in cgroup_hierarchies():
            _make_cgroup(hierarchy, f"{CGROUP_ROOT}/components")
        self._record(host)
        self._write_configs()
        try:
            self._start(
                "containerd",
                [str(self.binary("containerd")), "--config", str(self.state_dir / "containerd.toml")],
            )
            self._wait(
                "containerd socket", lambda: self._ctr("version", check=False).returncode == 0, "containerd"
            )
            self._forget_old_containers()
            self.import_archive(self._pause_archive(), PAUSE_IMAGE.rpartition(":")[0])
            self._start("coredns", [str(self.binary("coredns")), "-conf", str(self.state_dir / "Corefile")])
            self._start(
                "kube-proxy",
                [str(self.binary("kube-proxy")), f"--config={self.state_dir / 'kube-proxy.yaml'}"],
            )
            self._start(
                "kubelet",
                [
                    str(self.binary("kubelet")),
                    f"--config={self.state_dir / 'kubelet.yaml'}",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--root-dir={self.kubelet_root}",
                    f"--cert-dir={self.state_dir / 'kubelet-pki'}",
                    f"--node-ip={NODE_IP}",
                    f"--hostname-override={NODE_NAME}",
                    f"--node-labels={NODE_LABEL[0]}={NODE_LABEL[1]}",
                    "--v=1",
                ],
            )
            self._wait("CoreDNS ready", lambda: self._http_ok(f"http://{NODE_IP}:8181/ready"), "coredns")
            self._wait(
                "kube-proxy healthz", lambda: self._http_ok(f"http://{NODE_IP}:10256/healthz"), "kube-proxy"
            )
            self._wait("kubelet healthz", lambda: self._http_ok(f"http://{NODE_IP}:10248/healthz"), "kubelet")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> list[str]:
        """Stop everything by pid (and the cgroup subtree), restore host state; returns problems."""
        record = read_machine_record()
        self.processes = {}
        if record is None:
            # Failed before anything ran (e.g. the API server did not start): only the network.
            teardown_network()
            return []
        return cleanup_recorded(record)

    def _forget_old_containers(self) -> None:
        """containerd's root persists (cached images); containers of an earlier session do not."""
        ids = self._ctr("containers", "ls", "-q").stdout.split()
        if ids:
            self._ctr("containers", "rm", *ids, check=False)

    def _record_data(self, host: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "bin_dir": str(self.bin_dir),
            "containerd_socket": str(self.containerd_socket),
            "dirs": [str(self.state_dir), str(self.containerd_root)],
            "scratch_dirs": [str(self.containerd_state), str(self.kubelet_root)],
            "processes": [p.to_json() for p in self.processes.values()],
            "host": host,
        }

    def _record(self, host: Mapping[str, Any] | None = None) -> None:
        if host is None:
            existing = read_machine_record() or {}
            host = existing.get("host", {})
        _write_machine_record(self._record_data(host))

    def _start(self, name: str, args: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        env = {
            # The shim and runc are found on PATH; iptables for kube-proxy and the CNI plugins.
            "PATH": f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.state_dir),
            "LANG": "C.UTF-8",
        }
        join = _join_cgroup(f"{CGROUP_ROOT}/components")

        def preexec() -> None:
            join()
            if self.die_with_parent:
                procs.die_with_parent()

        with log.open("ab") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(args)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                ["nsenter", f"--net={NETNS_PATH}", "--", *args],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509
            )
        self.processes[name] = Proc(name, proc.pid, procs.start_time(proc.pid), str(log))
        self._record()

    def _wait(
        self, what: str, check: Callable[[], bool], component: str, timeout: float | None = None
    ) -> None:
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while True:
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                if check():
                    return
            rec = self.processes.get(component)
            if rec is not None and not procs.alive(rec.pid, rec.start_time):
                raise RealNodeError(
                    f"{component} exited while waiting for {what}; log {rec.log}:\n{procs.log_tail(rec.log, 30)}"
                )
            if time.monotonic() > deadline:
                log = rec.log if rec else str(self.log_dir)
                raise RealNodeError(f"timed out waiting for {what}; log {log}:\n{procs.log_tail(log, 30)}")
            time.sleep(0.2)

    @staticmethod
    def _http_ok(url: str) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=3) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    # ------------------------------------------------------------------ containerd / images

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(self.binary("ctr")),
            "--address",
            str(self.containerd_socket),
            "--namespace",
            K8S_NAMESPACE,
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this node's containerd, namespace ``k8s.io`` (what the CRI uses)."""
        return self._ctr(*args, check=check, timeout=timeout)

    def image_digests(self) -> dict[str, str]:
        """Image name → target digest, as containerd (and so the kubelet) sees them."""
        out = self._ctr("images", "ls").stdout.splitlines()[1:]
        return {line.split()[0]: line.split()[2] for line in out if line.strip()}

    def image_unpacked(self) -> dict[str, str]:
        """Image name → digest, for images whose layers are unpacked for the CRI's snapshotter.

        An interrupted import leaves the name pointing at a manifest that is not unpacked; the
        kubelet would then unpack multi-GB layers inside CreateContainer and hit its 2-minute
        deadline (``context deadline exceeded``), so such an image is imported again.
        """
        out = self._ctr("images", "check").stdout.splitlines()[1:]
        found = {}
        for line in out:
            parts = line.split()
            if len(parts) > 3 and parts[-1] == "true":
                found[parts[0]] = parts[2]
        return found

    def import_archive(self, archive: Path, base_name: str, timeout: float = 1200.0) -> str:
        """Import an OCI archive as ``<base_name>:<its tag>`` unless that exact manifest is there.

        containerd's root may persist between sessions, so an unchanged image costs nothing.
        Returns the image name.
        """
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            assert member is not None
            index = json.load(member)
        desc = index["manifests"][0]
        tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name", "latest")
        name = f"{base_name}:{tag}"
        if self.image_unpacked().get(name) == desc["digest"]:
            return name
        # --local: unpack in this process rather than through containerd's transfer service;
        # --discard-unpacked-layers: the compressed layers go once unpacked (GBs for the server).
        self._ctr(
            "images",
            "import",
            "--local",
            "--discard-unpacked-layers",
            "--base-name",
            base_name,
            "--snapshotter",
            "overlayfs",
            str(archive),
            timeout=timeout,
        )
        self._drop_superseded(base_name, name)
        got = self.image_unpacked().get(name)
        if got != desc["digest"]:
            raise RealNodeError(
                f"importing {archive} gave {name} at {got} (unpacked), expected {desc['digest']}"
            )
        return name

    def _drop_superseded(self, base_name: str, keep: str) -> None:
        """Delete older tags of ``base_name`` and the digest-named records ``ctr import`` adds.

        containerd's root persists between sessions; without this every changed image would
        keep its predecessor's GBs (the server image is 6.8 GB unpacked) alive forever.
        """
        stale = [
            n
            for n in self.image_digests()
            if n != keep and (n.startswith(base_name + ":") or n.startswith("sha256:"))
        ]
        if stale:
            self._ctr("images", "rm", "--sync", *stale, check=False, timeout=300)

    def _pause_archive(self) -> Path:
        archive = self.state_dir / "pause.oci.tar"
        if not archive.exists():
            write_single_binary_image(self.binary("pause"), archive, PAUSE_IMAGE, "/pause")
        return archive

    # ------------------------------------------------------------------ configs

    def _write_configs(self) -> None:
        sd = self.state_dir
        (sd / "containerd.toml").write_text(
            containerd_config(
                root=self.containerd_root,
                state=self.containerd_state,
                socket_path=self.containerd_socket,
                runc_root=self.state_dir / "runc",
                cni_conf_dir=self.cni_dir / "net.d",
                opt_dir=self.state_dir / "opt",
            )
        )
        (self.cni_dir / "net.d" / "10-bertserve.conflist").write_text(cni_config(self.cni_dir / "ipam"))
        (sd / "Corefile").write_text(corefile(self.kubeconfig))
        (sd / "kube-proxy.yaml").write_text(kube_proxy_config(self.kubeconfig))
        (sd / "kubelet.yaml").write_text(
            kubelet_config(self.containerd_socket, sd / "pod-logs", sd / "volume-plugins")
        )


def containerd_config(
    *, root: Path, state: Path, socket_path: Path, runc_root: Path, cni_conf_dir: Path, opt_dir: Path
) -> str:
    """containerd 2.x config (version 3) with its own root, state, socket, runc root and CNI dir.

    ``restrict_oom_score_adj``: runc cannot lower a container's oom_score_adj below its own
    here (``nsexec: failed to update /proc/self/oom_score_adj: Permission denied``);
    ``netns_mounts_under_state_dir`` keeps pod network namespaces out of ``/var/run/netns``.
    """
    return f"""version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket_path}"

[ttrpc]
  address = "{socket_path}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt_dir}"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
"""


def cni_config(ipam_dir: Path) -> str:
    """Bridge + host-local on the node's pod subnet; masquerade pod traffic leaving the node."""
    return (
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "bertserve",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipMasq": True,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_SUBNET}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(ipam_dir),
                        },
                    }
                ],
            },
            indent=2,
        )
        + "\n"
    )


def corefile(kubeconfig: Path) -> str:
    """Cluster DNS on the node IP; short TTLs so new replicas are discovered quickly."""
    return f""".:53 {{
    bind {NODE_IP}
    errors
    ready {NODE_IP}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} bertserve-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 2
    }}
    loadbalance
}}
"""


def kube_proxy_config(kubeconfig: Path) -> str:
    """iptables mode; conntrack settings zeroed so kube-proxy leaves the global sysctls alone."""
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
clusterCIDR: {POD_SUBNET}
healthzBindAddress: {NODE_IP}:10256
metricsBindAddress: {NODE_IP}:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 30s
  minSyncPeriod: 0s
"""


def kubelet_config(socket_path: Path, pod_logs: Path, volume_plugins: Path) -> str:
    """KubeletConfiguration for this machine kind (see the module docstring for each choice)."""
    taint = NODE_TAINT
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines are cgroup v1 (hybrid); kubelet 1.35 refuses v1 unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_ROOT}
failSwapOn: false
containerRuntimeEndpoint: unix://{socket_path}
imageServiceEndpoint: unix://{socket_path}
# A test node inside a private network namespace: the API server calls it for logs and exec.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
address: {NODE_IP}
readOnlyPort: 0
healthzBindAddress: {NODE_IP}
healthzPort: 10248
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
resolvConf: ""
clusterDNS: [{NODE_IP}]
clusterDomain: {CLUSTER_DOMAIN}
# Imported images cannot be pulled again: never garbage-collect them, and the shared disk's
# fill level must not evict pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
registerWithTaints:
  - key: {taint["key"]}
    value: "{taint["value"]}"
    effect: {taint["effect"]}
serializeImagePulls: false
maxPods: 40
syncFrequency: 10s
protectKernelDefaults: false
"""
