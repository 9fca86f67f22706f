"""The peer sockets' own limits, with real ``bert-serving-start`` replicas: ``MAXMSGSIZE`` and
ZeroMQ heartbeats on ``-peer_port``.

Two replicas share one mesh secret; a client's PUSH goes to one and its SUB to the other, so
every answer crosses the mesh. The "peers" that misbehave hold the mesh key (they complete the
CURVE handshake, as a compromised or buggy replica would):

* one sends a frame larger than the peer port's limit (``max_response_bytes + 2 x
  max_request_bytes``): libzmq closes the connection from the size in the frame's header, before
  assembling it — the replica never sees the frame (it counts no malformed message), its peak
  memory does not grow by the frame's size, and it keeps serving across the mesh;
* another completes the handshake and then goes silent without closing its TCP connection
  (SIGSTOP: a frozen or vanished pod): the replica drops it after ``-heartbeat_timeout``, while a
  peer that answers the heartbeats keeps its connection.

This module starts its own replicas and processes on its own free ports, and stops them all by
pid: it shares nothing with the other scale-out tests and runs in any order among them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from bert_serving.client import BertClient
from polling import wait_for
from replicas import Cluster, Replica, cluster
from zmq.utils.monitor import recv_monitor_message

from bertserve_server.mesh import wire
from bertserve_server.mesh.security import MeshKeys, load_secret

pytestmark = [pytest.mark.tf, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

HEARTBEAT_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 1024 * 1024
PEER_FRAME_LIMIT = MAX_RESPONSE_BYTES + 2 * MAX_REQUEST_BYTES
"""``mesh.node.max_peer_frame`` for the flags below: the peer ROUTER's ``MAXMSGSIZE``."""
OVERSIZED = 128 * 1024 * 1024
"""Far above the limit: had libzmq assembled it, the replica's peak memory would show it."""

TCP_STATES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT"}


@pytest.fixture(scope="module")
def two(scaleout_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    flags = [
        f"-heartbeat_timeout={HEARTBEAT_TIMEOUT_S}",
        f"-max_request_bytes={MAX_REQUEST_BYTES}",
        f"-max_response_bytes={MAX_RESPONSE_BYTES}",
    ]
    log_dir = tmp_path_factory.mktemp("mesh-socket-limits")
    with cluster(scaleout_model_dir, log_dir, replicas=2, flags=flags) as c:
        yield c


def crossing_client(two: Cluster) -> BertClient:
    """PUSH to replica 0, SUB on replica 1: every answer must cross the mesh."""
    r0, r1 = two.replicas[:2]
    return BertClient(ip="127.0.0.1", port=r0.port, port_out=r1.port_out, timeout=20000)


def peak_rss_bytes(replica: Replica) -> int:
    for line in Path(f"/proc/{replica.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def keyed_dealer(context: zmq.Context[Any], keys: MeshKeys) -> zmq.Socket[Any]:
    """A DEALER holding the mesh key: it completes the handshake like a replica's link."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    return sock


def wait_event(monitor: zmq.Socket[Any], wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if monitor.poll(int(left * 1000)) and recv_monitor_message(monitor)["event"] == wanted:
            return
    raise AssertionError(f"no ZeroMQ socket event {wanted} within {timeout}s")


def test_a_peer_frame_over_the_limit_closes_the_connection_and_the_replica_keeps_serving(two: Cluster):
    r0, _ = two.replicas[:2]
    with crossing_client(two) as bc:
        before = bc.encode(["hello world"])
    keys = MeshKeys.from_secret(load_secret(two.peer_key_file))
    malformed = r0.metric("bertserve_peer_frames_rejected_total", reason="malformed")
    peak_before = peak_rss_bytes(r0)
    context = zmq.Context()
    try:
        sock = keyed_dealer(context, keys)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        sock.connect(f"tcp://127.0.0.1:{r0.peer_port}")
        wait_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, 20)

        # Control: a frame under the limit reaches the mesh (not a valid message: counted, kept open).
        sock.send_multipart([wire.PROTOCOL, b"x" * (PEER_FRAME_LIMIT // 2)])
        wait_for(
            lambda: r0.metric("bertserve_peer_frames_rejected_total", reason="malformed") == malformed + 1,
            20,
            "the frame under the limit to reach the mesh and be counted malformed",
        )
        assert not monitor.poll(500), "a frame under the limit closed the connection"

        sock.send_multipart([wire.PROTOCOL, b"x" * OVERSIZED])
        wait_event(monitor, zmq.EVENT_DISCONNECTED, 30)
    finally:
        context.destroy(linger=0)  # every socket of this test, whatever failed
    # The oversized frame never reached the mesh, and was not assembled in the replica's memory.
    assert r0.metric("bertserve_peer_frames_rejected_total", reason="malformed") == malformed + 1
    assert peak_rss_bytes(r0) - peak_before < OVERSIZED // 2, (peak_before, peak_rss_bytes(r0))
    assert r0.proc.poll() is None, r0.log[-3000:]
    with crossing_client(two) as bc:
        for _ in range(3):
            np.testing.assert_allclose(bc.encode(["hello world"]), before, rtol=1e-6)
        assert not bc.pending_response
    for r in two.replicas:
        assert r.metric("bertserve_peers_connected") == 1


PEER_SCRIPT = """
import sys, zmq
from zmq.utils.monitor import recv_monitor_message
public, secret, port = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
context = zmq.Context()
sock = context.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.CURVE_SERVERKEY, public)
sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
sock.connect("tcp://127.0.0.1:" + port)
if not monitor.poll(20000) or recv_monitor_message(monitor)["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED:
    sys.exit("no handshake")
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def peer_process(keys: MeshKeys, port: int) -> subprocess.Popen[str]:
    """A process holding one keyed connection to ``port``; returns once the handshake is done."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER_SCRIPT, keys.public.decode(), keys.secret.decode(), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"peer process: {line!r}, exit {proc.poll()}"
    return proc


def tcp_states(pid: int, remote_port: int) -> list[str]:
    """States of ``pid``'s TCP connections to ``remote_port`` (from /proc: works while it is stopped)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                states.append(TCP_STATES.get(cols[3], cols[3]))
    return states


def test_a_silent_peer_connection_is_dropped_after_the_heartbeat_timeout(two: Cluster):
    r0, _ = two.replicas[:2]
    keys = MeshKeys.from_secret(load_secret(two.peer_key_file))
    silent = peer_process(keys, r0.peer_port)
    live = peer_process(keys, r0.peer_port)
    try:
        assert tcp_states(silent.pid, r0.peer_port) == ["ESTABLISHED"]
        os.kill(silent.pid, signal.SIGSTOP)  # frozen: its TCP connection stays open, it answers nothing
        stopped = time.monotonic()
        wait_for(
            lambda: tcp_states(silent.pid, r0.peer_port) == ["CLOSE_WAIT"],
            HEARTBEAT_TIMEOUT_S * 5,
            "the replica to close the silent peer's connection",
            interval=0.05,
        )
        waited = time.monotonic() - stopped
        assert waited >= HEARTBEAT_TIMEOUT_S / 2, f"dropped after {waited:.2f}s: not by the heartbeat"
        # The peer that answers the heartbeats keeps its connection over the same time.
        assert tcp_states(live.pid, r0.peer_port) == ["ESTABLISHED"]
    finally:
        for proc in (silent, live):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.stdout.close()
    assert r0.proc.poll() is None, r0.log[-3000:]
    with crossing_client(two) as bc:
        assert bc.encode(["still fine"]).shape == (1, 32)
    for r in two.replicas:
        assert r.metric("bertserve_peers_connected") == 1
