"""Answers the mesh used to lose without counting, and the bounds on what it keeps.

In-process replicas (numpy fake encoder) peered on 127.0.0.1 with one mesh secret. Where a test
needs an answer to be *in flight* at a precise moment (forwarded by a peer just before something
changed), it sends that forward itself through a socket holding the mesh key, exactly as the peer
would have; where it needs a subscriber to vanish at the very moment of forwarding, it closes the
replica's local delivery without the gossip that normally follows.
"""

from __future__ import annotations

import json
import threading

import pytest
import zmq
from mesh_harness import Sub, mesh, metric
from server_harness import wait_until

from bertserve_server.app import BertServer
from bertserve_server.mesh import links as mesh_links
from bertserve_server.mesh import routing, wire
from bertserve_server.mesh.security import MeshKeys, load_secret

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def identity(n: int) -> bytes:
    return b"%08d-0000-4000-8000-000000000000" % n


def forward(server: BertServer, key: str, sender: bytes, ident: bytes, req_id: bytes) -> None:
    """What a peer ``sender`` sends to ``server`` when it forwards an answer for ``ident``."""
    keys = MeshKeys.from_secret(load_secret(key))
    header = json.dumps({"dtype": "float32", "shape": [1, 2], "tokens": ""}).encode()
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.connect(f"tcp://127.0.0.1:{server.config.peer_port}")
        sock.send_multipart(wire.answer(sender, 1, [ident, header, b"\0" * 8, req_id]))


def push(server: BertServer, ident: bytes, req_id: int) -> None:
    with zmq.Context() as context, context.socket(zmq.PUSH) as sock:
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(f"tcp://127.0.0.1:{server.config.port}")
        sock.send_multipart([ident, b'["hello world"]', b"%d" % req_id, b"1"])


def dropped(servers: list[BertServer], reason: str) -> float:
    return sum(metric(s, "bertserve_peer_answers_dropped_total", reason=reason) for s in servers)


@pytest.fixture
def pair(tmp_path):
    with mesh(tmp_path, 2) as (a, b):
        yield a, b, a.config.peer_key_file


@pytest.fixture
def three(tmp_path):
    with mesh(tmp_path, 3) as servers:
        yield servers


def test_a_held_forward_reaches_its_sender_when_the_client_reconnects_there(pair):
    """a forwarded an answer to b, whose subscriber had just left; b holds it. The client then
    re-subscribes on a. b must not exclude a (no bouncing back) once the gossip has changed."""
    a, b, key = pair
    ident = identity(1)
    forward(b, key, a.peering.node_id, ident, b"11")
    wait_until(lambda: metric(b, "bertserve_peer_answers_held_total") == 1, 5, "b to hold the answer")
    sub = Sub(a, ident)
    try:
        frames = sub.recv()
        assert frames is not None and frames[0] == ident and frames[-1] == b"11"
    finally:
        sub.close()
    assert metric(b, "bertserve_peer_answers_forwarded_total") == 1
    assert dropped([a, b], "no_subscriber") == 0


def test_an_answer_whose_announced_holders_all_lost_the_client_is_counted(three):
    """b and c both announced the client (it moved); by the time the answer arrives, neither has
    it. The answer may be lost, but never uncounted."""
    a, b, c = three
    for s in three:
        s.peering.routes.answer_wait_s = 0.5
    ident = identity(2)
    subs = [Sub(b, ident), Sub(c, ident)]
    try:
        wait_until(lambda: len(a.peering.peers.holders(ident)) == 2, 5, "both announcements")
        for s in (b, c):  # the subscriber vanishes at both, before any gossip says so
            s.peering._local_open = False
        push(a, ident, 3)
        wait_until(lambda: dropped(three, "no_subscriber") == 1, 5, "the loss to be counted")
    finally:
        for sub in subs:
            sub.close()
    assert metric(a, "bertserve_peer_answers_forwarded_total") == 1  # one target, not every holder


def test_answers_arriving_while_port_out_closes_follow_the_client(pair):
    """Between ``-port_out`` closing and the mesh stopping, a peer's in-flight forward arrives for a
    client that was subscribed here; the client reconnects to b and must get it there."""
    a, b, key = pair
    ident = identity(3)
    sub_a = Sub(a, ident)
    wait_until(lambda: b.peering.peers.announced(ident), 5, "gossip")
    moved: list[Sub] = []
    assert a.zmq is not None
    stop = a.zmq.stop

    def stop_then_receive(*args, **kwargs):
        # Once: the fixture's teardown stops the server again, and a second forward would leave
        # a subscriber behind whose context, collected unclosed, blocks interpreter exit.
        a.zmq.stop = stop  # type: ignore[method-assign]
        stop(*args, **kwargs)
        forward(a, key, b.peering.node_id, ident, b"33")
        wait_until(lambda: metric(a, "bertserve_peer_answers_received_total") == 1, 5, "the forward")
        moved.append(Sub(b, ident))  # the client's SUB reconnects through the Service, to b

    a.zmq.stop = stop_then_receive  # type: ignore[method-assign]
    try:
        a.shutdown(drain_timeout=3.0)
        frames = moved[0].recv()
        assert frames is not None and frames[-1] == b"33"
        assert dropped([a, b], "shutdown") == 0
    finally:
        sub_a.close()
        for sub in moved:
            sub.close()


def test_the_hold_list_is_bounded_by_count_and_by_bytes(pair, monkeypatch, caplog):
    a, b, _key = pair
    monkeypatch.setattr(routing, "MAX_HELD_ANSWERS", 3)
    for n in range(5):
        push(a, identity(10 + n), n)
    wait_until(lambda: dropped([a], "hold_full") == 2, 5, "the oldest two to be dropped")
    assert a.peering.describe()["held"] == 3
    # The newest three are still there, and reach their clients.
    subs = [Sub(b, identity(10 + n)) for n in (2, 3, 4)]
    try:
        assert all(sub.recv() is not None for sub in subs)
    finally:
        for sub in subs:
            sub.close()
    assert "the hold list was full" in caplog.text
    assert caplog.text.count("the hold list was full") == 1  # logged once per interval

    monkeypatch.setattr(routing, "MAX_HELD_ANSWERS", 10000)
    monkeypatch.setattr(routing, "MAX_HELD_BYTES", 1)  # every answer alone is over it
    push(a, identity(20), 20)
    push(a, identity(21), 21)
    wait_until(lambda: dropped([a], "hold_full") == 3, 5, "the byte bound")
    assert a.peering.describe()["held"] == 1


def test_answers_queued_towards_a_stalled_peer_are_bounded_by_bytes(pair, monkeypatch):
    """b stops reading its peer port (a stuck process); a keeps at most PEER_QUEUE_BYTES of answers
    unconfirmed on the link and holds the rest, which follow once b reads again."""
    a, b, _key = pair
    ident = identity(4)
    sub = Sub(b, ident)
    try:
        wait_until(lambda: a.peering.peers.announced(ident), 5, "gossip")
        monkeypatch.setattr(mesh_links, "PEER_QUEUE_BYTES", 1)  # one answer at a time
        release = threading.Event()
        on_router = b.peering._on_router

        def stalled(*args):
            release.wait(10)
            on_router(*args)

        b.peering._on_router = stalled  # type: ignore[method-assign]
        for n in range(3):
            push(a, ident, n)
        wait_until(lambda: a.peering.describe()["held"] == 2, 5, "two answers to wait at a")
        assert metric(a, "bertserve_peer_answers_forwarded_total") == 1
        release.set()
        got = sorted(int(frames[-1]) for frames in (sub.recv() for _ in range(3)) if frames)
        assert got == [0, 1, 2]
    finally:
        release.set()
        sub.close()
