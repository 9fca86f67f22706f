"""Several real ``bert-serving-start`` processes peered on loopback, behind a ``TcpBalancer``.

Why it exists: the scale-out tests and the scale-out benchmark need what a Kubernetes Service in
front of a Deployment gives — N replica processes that find each other through one peer list
(``-peer_service=127.0.0.1:p1,127.0.0.1:p2,…``, the stand-in for the headless Service) and one
address that balances every new connection at random (``TcpBalancer``, the stand-in for
kube-proxy). Every process is started by this module, on 127.0.0.1 only, and stopped by pid.

Every replica of a cluster reads the same mesh secret (``-peer_key_file``, as the operator's
Secret provides it); a replica given another file (``start(..., flags=[...])``) cannot join.

Peer ports are reserved per *slot*: a cluster with more slots than running replicas lists the
ports of replicas that do not exist yet (a rolling update's replacements), exactly as DNS lists
a pod that is still starting; the mesh ignores addresses where nothing listens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from peer_keys import write_peer_key
from ports import free_ports
from readyz import wait_readyz
from tcp_balancer import TcpBalancer

BERT_SERVING_START = str(Path(sys.executable).parent / "bert-serving-start")
SERVICES = ("zmq", "zmq_out", "http")

#: Keep each replica's TensorFlow small: replicas share the machine's cores.
REPLICA_ENV = {
    "PYTHONUNBUFFERED": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}


class Replica:
    """One ``bert-serving-start`` process with free ports; output in ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        log_dir: Path,
        *,
        peer_spec: str | None,
        peer_port: int | None,
        flags: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port, self.port_out, self.http_port = free_ports(3)
        self.peer_port = peer_port
        argv = [
            BERT_SERVING_START,
            f"-model_dir={model_dir}",
            "-bind_host=127.0.0.1",
            "-cpu",
            f"-port={self.port}",
            f"-port_out={self.port_out}",
            f"-http_port={self.http_port}",
            *flags,
        ]
        if peer_spec is not None:
            argv += [f"-peer_service={peer_spec}", f"-peer_port={peer_port}"]
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **REPLICA_ENV}
        )

    @property
    def backends(self) -> dict[str, int]:
        return {"zmq": self.port, "zmq_out": self.port_out, "http": self.http_port}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def readyz(self) -> tuple[int, str]:
        try:
            r = requests.get(self.url("/readyz"), timeout=2)
            return r.status_code, r.text
        except requests.RequestException as exc:
            return 0, str(exc)

    def wait_ready(self, timeout: float) -> None:
        wait_readyz(self.proc, self.http_port, lambda: self.log, timeout, what=self.name)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from ``GET /metrics`` (0 when absent)."""
        text = requests.get(self.url("/metrics"), timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        key = f"{name}{{{want}}}" if want else name
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if _normalize(sample) == key:
                return float(value)
        return 0.0

    def encoded_ok(self, frontend: str = "zmq") -> float:
        return self.metric("bertserve_requests_total", frontend=frontend, kind="encode", outcome="ok")

    def kill(self) -> None:
        """SIGKILL: the pod dies without any chance to drain."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM: what the kubelet sends after preStop; the replica drains and exits."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def _normalize(sample: str) -> str:
    """``name{b="2",a="1"}`` with labels sorted, to compare samples whatever the label order."""
    if "{" not in sample:
        return sample
    name, _, rest = sample.partition("{")
    labels = sorted(part for part in rest.rstrip("}").split(",") if part)
    return f"{name}{{{','.join(labels)}}}"


class Cluster:
    """Replicas sharing one peer list, plus a balancer over the live ones."""

    def __init__(self, model_dir: Path, log_dir: Path, *, slots: int, flags: Sequence[str] = ()) -> None:
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.flags = list(flags)
        self.peer_ports = free_ports(slots)
        self.peer_spec = ",".join(f"127.0.0.1:{p}" for p in self.peer_ports)
        self.peer_key_file = write_peer_key(log_dir / "secrets")
        self.replicas: list[Replica] = []
        self.live: list[Replica] = []
        self.balancer = TcpBalancer({name: [] for name in SERVICES})

    def start(self, count: int, *, timeout: float = 120.0, flags: Sequence[str] = ()) -> list[Replica]:
        """Start ``count`` replicas on the next free slots, wait until all are ready, add them to the balancer.

        ``flags`` come after the cluster's own (the mesh key among them), so they can override them.
        """
        new = []
        for _ in range(count):
            slot = len(self.replicas)
            if slot >= len(self.peer_ports):
                raise AssertionError(f"no peer slot left ({len(self.peer_ports)} reserved)")
            replica = Replica(
                f"replica-{slot}",
                self.model_dir,
                self.log_dir,
                peer_spec=self.peer_spec,
                peer_port=self.peer_ports[slot],
                flags=[f"-peer_key_file={self.peer_key_file}", *self.flags, *flags],
            )
            self.replicas.append(replica)
            new.append(replica)
        with ThreadPoolExecutor(len(new)) as pool:
            list(pool.map(lambda r: r.wait_ready(timeout), new))
        self.live.extend(new)
        self._sync_balancer()
        return new

    def remove(self, replica: Replica) -> None:
        """Take a replica out of the balancer (new connections only, like an Endpoints update)."""
        if replica in self.live:
            self.live.remove(replica)
        self._sync_balancer()

    def _sync_balancer(self) -> None:
        for name in SERVICES:
            self.balancer.set_backends(name, [r.backends[name] for r in self.live])

    def client(self, **kw: object) -> object:
        from bert_serving.client import BertClient

        return BertClient(
            ip="127.0.0.1", port=self.balancer.ports["zmq"], port_out=self.balancer.ports["zmq_out"], **kw
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.balancer.ports['http']}{path}"

    def close(self) -> None:
        self.balancer.close()
        for replica in self.replicas:
            replica.stop()


@contextlib.contextmanager
def cluster(
    model_dir: Path, log_dir: Path, *, replicas: int, slots: int | None = None, flags: Sequence[str] = ()
) -> Iterator[Cluster]:
    c = Cluster(model_dir, log_dir, slots=slots or replicas, flags=flags)
    try:
        c.start(replicas)
        yield c
    finally:
        c.close()
