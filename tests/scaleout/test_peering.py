"""The peer mesh in one process: discovery, readiness, routing, holding, dropping, leaving, hand-off.

Servers here are in-process ``BertServer`` instances with the numpy fake encoder (no TensorFlow),
peered through ``-peer_service`` lists on 127.0.0.1; clients are bare PUSH/SUB sockets speaking
the 1.10.0 frames, so each test chooses exactly which replica gets the request and which holds
the subscription. The multi-process, randomly balanced versions are in ``test_scaleout_*.py``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import zmq
from mesh_harness import Sub, mesh, metric, spec_of
from peer_keys import write_peer_key
from ports import free_port, free_ports
from server_harness import fake_server, wait_until

from bertserve_server.app import BertServer
from bertserve_server.mesh import node as mesh_node
from bertserve_server.mesh.discovery import parse_peer_service, resolve
from bertserve_server.mesh.handoff import hand_off_connections


@pytest.fixture
def peer_key(tmp_path: Path) -> str:
    """The mesh secret shared by the replicas of one test."""
    return write_peer_key(tmp_path / "key")


def push(server: BertServer, *frames: bytes) -> None:
    with zmq.Context() as context, context.socket(zmq.PUSH) as sock:
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(f"tcp://127.0.0.1:{server.config.port}")
        sock.send_multipart(list(frames))


def encode_frames(identity: bytes, texts: list[str], req_id: int) -> list[bytes]:
    return [identity, json.dumps(texts).encode(), b"%d" % req_id, b"%d" % len(texts)]


def announced(server: BertServer, identity: bytes) -> bool:
    """Whether ``server`` has learned, through gossip, that some peer holds ``identity``."""
    assert server.peering is not None
    return server.peering.peers.announced(identity)


def readyz(server: BertServer) -> tuple[int, dict]:
    r = requests.get(f"http://127.0.0.1:{server.config.http_port}/readyz", timeout=5)
    return r.status_code, r.json()


# -- discovery -------------------------------------------------------------------------------------


def test_peer_service_forms():
    assert parse_peer_service("bert-peers.ml.svc.cluster.local", 5557) == [
        ("bert-peers.ml.svc.cluster.local", 5557)
    ]
    assert parse_peer_service("10.0.0.1:6000, 10.0.0.2", 5557) == [("10.0.0.1", 6000), ("10.0.0.2", 5557)]
    assert parse_peer_service("[fd00::1]:7000,fd00::2", 5557) == [("fd00::1", 7000), ("fd00::2", 5557)]
    for bad in ("", " , ", "host:port", "host:0", "[fd00::1", "h:70000"):
        with pytest.raises(ValueError):
            parse_peer_service(bad, 5557)
    assert resolve([("127.0.0.1", 1), ("localhost", 2)]) >= {("127.0.0.1", 1)}
    assert resolve([("no-such-host.invalid", 1)]) is None


def test_a_bad_peer_service_fails_start_up_in_one_line(tmp_path, peer_key):
    with (
        fake_server(
            tmp_path, peer_key_file=peer_key, peer_service="127.0.0.1:notaport", start=False
        ) as server,
        pytest.raises(ValueError, match="notaport"),
    ):
        server.start()


# -- readiness -------------------------------------------------------------------------------------


def test_not_ready_until_the_peer_list_resolves_and_includes_this_replica(tmp_path, monkeypatch, peer_key):
    monkeypatch.setattr(mesh_node, "RESOLVE_INTERVAL_S", 0.2)
    with fake_server(
        tmp_path / "a", peer_key_file=peer_key, peer_service="no-such-host.invalid", http_port=0
    ) as unresolved:
        status, body = readyz(unresolved)
        assert status == 503 and "has not resolved" in body["reason"]
        assert unresolved.service.unready_reason() is not None
    other, own = free_ports(2)
    with fake_server(
        tmp_path / "b", peer_key_file=peer_key, peer_service=f"127.0.0.1:{other}", peer_port=own, http_port=0
    ) as alone:
        wait_until(lambda: "not (yet) among" in readyz(alone)[1].get("reason", ""), 10, "self-check")


def test_ready_once_connected_to_every_listed_peer_ignoring_addresses_where_nothing_listens(tmp_path):
    with mesh(tmp_path, 3, extra_slots=2) as servers:  # two slots nobody listens on: not waited for
        for server in servers:
            assert readyz(server) == (200, {"status": "ready"})
            assert server.peering.describe()["connected"] == 2
            assert metric(server, "bertserve_peers_connected") == 2
            assert metric(server, "bertserve_peer_addresses") == 5
        status = json.loads(
            requests.get(f"http://127.0.0.1:{servers[0].config.http_port}/status/server", timeout=5).text
        )
        assert status["peers"]["connected"] == 2


def test_a_peer_that_accepts_but_never_handshakes_delays_readiness_for_the_grace_only(
    tmp_path, monkeypatch, peer_key
):
    monkeypatch.setattr(mesh_node, "PEER_GRACE_S", 1.5)
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)  # accepts TCP, never speaks ZMTP: a pod that is there but not (yet) a peer
    own = free_port()
    try:
        with fake_server(
            tmp_path,
            peer_key_file=peer_key,
            peer_service=spec_of([own, mute.getsockname()[1]]),
            peer_port=own,
            http_port=0,
        ) as server:
            wait_until(
                lambda: "connecting to 1 peer" in readyz(server)[1].get("reason", ""), 5, "the handshake wait"
            )
            wait_until(lambda: readyz(server)[0] == 200, 10, "the grace to pass")
    finally:
        mute.close()


# -- routing ---------------------------------------------------------------------------------------


def test_an_answer_goes_to_the_replica_holding_the_subscription(tmp_path):
    with mesh(tmp_path, 3) as (a, b, c):
        identity = b"id#with@odd\xffbytes"
        sub = Sub(b, identity)
        try:
            wait_until(lambda: announced(a, identity) and announced(c, identity), 5, "gossip")
            push(a, *encode_frames(identity, ["hello world", "good day"], 7))
            frames = sub.recv()
            assert frames is not None and frames[0] == identity and frames[-1] == b"7"
            header = json.loads(frames[1])
            assert header["shape"] == [2, 8]
            assert np.frombuffer(frames[2], dtype=header["dtype"]).shape == (16,)
            push(c, identity, b"SHOW_CONFIG", b"8", b"0")
            frames = sub.recv()
            assert frames is not None and frames[-1] == b"8" and "max_seq_len" in json.loads(frames[1])
        finally:
            sub.close()
        assert metric(a, "bertserve_peer_answers_forwarded_total") == 1
        assert metric(c, "bertserve_peer_answers_forwarded_total") == 1
        assert metric(b, "bertserve_peer_answers_received_total") == 2
        assert metric(a, "bertserve_peer_answers_held_total") == 0


def test_answers_are_routed_by_exact_identity_never_to_a_prefix_subscriber(tmp_path, monkeypatch):
    """A tap on b subscribed to the first 20 bytes of a client's identity is announced like any
    subscriber; an answer for the full identity encoded on a must not be forwarded to b for it."""
    monkeypatch.setattr(mesh_node, "SUBSCRIPTION_WAIT_S", 0.5)
    identity = b"3f2b8c1e-5d4a-4e6f-9b7c-2a1d0e9f8c7b"
    with mesh(tmp_path, 2) as (a, b):
        tap = Sub(b, identity[:20])
        try:
            wait_until(lambda: announced(a, identity[:20]), 5, "the tap's gossip")
            assert not announced(a, identity)
            push(a, *encode_frames(identity, ["secret text"], 1))
            wait_until(
                lambda: metric(a, "bertserve_peer_answers_dropped_total", reason="no_subscriber") == 1,
                5,
                "the answer to wait for its own client and be dropped",
            )
            assert tap.recv(timeout_ms=200) is None
        finally:
            tap.close()
        assert metric(a, "bertserve_peer_answers_forwarded_total") == 0
        assert metric(b, "bertserve_peer_answers_received_total") == 0


def test_an_answer_waits_for_a_subscription_that_appears_later_anywhere(tmp_path):
    with mesh(tmp_path, 2) as (a, b):
        identity = b"late-joiner"
        push(a, *encode_frames(identity, ["hello"], 1))
        wait_until(lambda: metric(a, "bertserve_peer_answers_held_total") == 1, 5, "the answer to be held")
        assert a.peering.describe()["held"] == 1
        sub = Sub(b, identity)
        try:
            frames = sub.recv()
            assert frames is not None and frames[-1] == b"1"
        finally:
            sub.close()
        wait_until(lambda: metric(a, "bertserve_peer_answers_pending") == 0, 5, "the hold to empty")
        assert metric(a, "bertserve_peer_answers_forwarded_total") == 1


def test_an_answer_nobody_subscribes_to_is_dropped_counted_and_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mesh_node, "SUBSCRIPTION_WAIT_S", 0.5)
    with mesh(tmp_path, 2) as (a, _b):
        push(a, *encode_frames(b"nobody", ["hello"], 1))
        wait_until(
            lambda: metric(a, "bertserve_peer_answers_dropped_total", reason="no_subscriber") == 1,
            5,
            "the drop",
        )
        assert metric(a, "bertserve_answers_dropped_total", reason="no_subscriber") == 1
        wait_until(lambda: "no replica announced its subscription" in caplog.text, 5, "the log line")


def test_a_subscriber_that_moves_gets_its_answers_at_the_new_replica(tmp_path):
    with mesh(tmp_path, 3) as (a, b, c):
        identity = b"mover"
        first = Sub(b, identity)
        wait_until(lambda: announced(a, identity), 5, "gossip")
        push(a, *encode_frames(identity, ["one"], 1))
        assert first.recv() is not None
        first.close()  # the SUB connection drops (its replica died, or the client reconnected)
        wait_until(lambda: not announced(a, identity), 5, "the unsubscription to spread")
        second = Sub(c, identity)
        try:
            push(a, *encode_frames(identity, ["two"], 2))
            frames = second.recv()
            assert frames is not None and frames[-1] == b"2"
        finally:
            second.close()


def test_a_replica_restarted_at_the_same_address_is_recognised(tmp_path, peer_key):
    ports = free_ports(2)
    spec = spec_of(ports)
    with fake_server(
        tmp_path / "a", peer_key_file=peer_key, peer_service=spec, peer_port=ports[0], http_port=0
    ) as a:
        with fake_server(
            tmp_path / "b1", peer_key_file=peer_key, peer_service=spec, peer_port=ports[1], http_port=0
        ) as b1:
            wait_until(lambda: a.peering.describe()["connected"] == 1, 10, "first peer")
            first_id = b1.peering.node_id
        with fake_server(
            tmp_path / "b2", peer_key_file=peer_key, peer_service=spec, peer_port=ports[1], http_port=0
        ) as b2:
            assert b2.peering.node_id != first_id
            wait_until(lambda: b2.service.ready, 10, "the new replica")
            sub = Sub(b2, b"after-restart")
            try:
                wait_until(lambda: announced(a, b"after-restart"), 10, "the new node's gossip")
                push(a, *encode_frames(b"after-restart", ["hello"], 3))
                frames = sub.recv()
                assert frames is not None and frames[-1] == b"3"
            finally:
                sub.close()


def test_a_leaving_replica_is_no_longer_routed_to(tmp_path):
    with mesh(tmp_path, 3) as (a, b, c):
        identity = b"held-by-a-leaver"
        sub_b = Sub(b, identity)
        try:
            wait_until(lambda: announced(a, identity), 5, "gossip")
            assert b.shutdown(drain_timeout=3.0)
            # b said goodbye: a forgets b's subscribers instead of sending into a closed socket.
            assert not announced(a, identity)
            push(a, *encode_frames(identity, ["x"], 4))
            wait_until(lambda: metric(a, "bertserve_peer_answers_held_total") == 1, 5, "the hold")
        finally:
            sub_b.close()
        sub_c = Sub(c, identity)  # the client's SUB reconnects through the Service, to c
        try:
            frames = sub_c.recv()
            assert frames is not None and frames[-1] == b"4"
        finally:
            sub_c.close()


def test_readiness_drops_first_when_a_replica_drains(tmp_path):
    with mesh(tmp_path, 2) as (a, _b):
        seen: list[str | None] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(a.service.unready_reason())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        a.shutdown(drain_timeout=2.0)
        stop.set()
        watcher.join(5)
        assert seen[-1] == "draining" and None in seen


# -- hand-off --------------------------------------------------------------------------------------


def test_half_closing_push_connections_moves_clients_without_losing_a_message():
    """A PUSH client sending ~100-byte requests back to back is handed off again and again while
    the server keeps reading (as the frontend's thread does during a drain): every message arrives
    exactly once."""
    port = free_port()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)  # as the frontend
    pull.bind(f"tcp://127.0.0.1:{port}")
    total = 8000
    sent = threading.Event()

    def client() -> None:
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as sock:
            sock.setsockopt(zmq.LINGER, 5000)
            sock.connect(f"tcp://127.0.0.1:{port}")
            for i in range(total):
                sock.send(b"%d " % i + b"x" * 100)
                if i % 10 == 0:
                    time.sleep(0.0002)
        sent.set()

    handoffs = [0]

    def hand_off_repeatedly() -> None:
        while not sent.is_set():
            hand_off_connections(port, 2.0)
            handoffs[0] += 1
            time.sleep(0.03)

    threads = [threading.Thread(target=f, daemon=True) for f in (client, hand_off_repeatedly)]
    for t in threads:
        t.start()
    got: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < total and time.monotonic() < deadline:
            if pull.poll(20):
                got.append(int(pull.recv().split()[0]))
    finally:
        for t in threads:
            t.join(10)
        pull.close()
        context.term()
    assert handoffs[0] >= 3
    assert sorted(got) == list(range(total))
