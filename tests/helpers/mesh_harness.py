"""In-process peer meshes for the scale-out tests: started replicas, a subscriber, their metrics.

Why it exists: the mesh tests (``tests/scaleout/test_peering.py``, ``test_mesh_losses.py``,
``test_mesh_wire.py``) each need a few ``BertServer`` replicas (numpy fake encoder, no
TensorFlow) peered through one ``-peer_service`` list on 127.0.0.1 with one mesh secret, fully
connected before the test starts. One way to build that, so the tests agree on what "the mesh is
up" means: every replica ready *and* connected to every other one (a replica also turns ready
when a silent peer's grace ends, which is not a mesh).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq
from peer_keys import write_peer_key
from ports import free_ports
from server_harness import fake_server, wait_until

from bertserve_server.app import BertServer


def spec_of(ports: list[int]) -> str:
    """A ``-peer_service`` list of these loopback ports."""
    return ",".join(f"127.0.0.1:{p}" for p in ports)


def _connected(server: BertServer) -> int:
    assert server.peering is not None
    return int(server.peering.describe()["connected"])


@contextlib.contextmanager
def mesh(tmp_path: Path, count: int, *, extra_slots: int = 0, **flags: Any) -> Iterator[list[BertServer]]:
    """``count`` started replicas sharing one peer list (plus ``extra_slots`` addresses nobody
    listens on) and one mesh secret (``servers[i].config.peer_key_file`` unless ``flags`` name
    another); shut down on exit."""
    ports = free_ports(count + extra_slots)
    flags.setdefault("peer_key_file", write_peer_key(tmp_path / "key"))
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                fake_server(
                    tmp_path / f"r{i}", peer_service=spec_of(ports), peer_port=ports[i], http_port=0, **flags
                )
            )
            for i in range(count)
        ]
        for server in servers:
            wait_until(
                lambda s=server: s.service.ready and _connected(s) == count - 1, 15, "the mesh to connect"
            )
        yield servers


class Sub:
    """A SUB socket on one replica's ``-port_out``, subscribed to one identity."""

    def __init__(self, server: BertServer, identity: bytes) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, identity)
        self.sock.connect(f"tcp://127.0.0.1:{server.config.port_out}")

    def recv(self, timeout_ms: int = 5000) -> list[bytes] | None:
        return list(self.sock.recv_multipart()) if self.sock.poll(timeout_ms) else None

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def metric(server: BertServer, name: str, **labels: str) -> float:
    """A sample of ``server``'s registry (0 when never recorded)."""
    return server.metrics.value(name, labels)
