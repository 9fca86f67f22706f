"""The peer port against sockets that are not well-behaved replicas: no key, another version, garbage.

In-process ``BertServer`` replicas (numpy fake encoder) peered on 127.0.0.1 with one mesh secret;
the test plays the intruder with its own ZeroMQ sockets. Every case is first checked to be
*reachable* (a socket with the right key and version gets a welcome), so "got nothing" means the
server refused, not that the test spoke to nobody.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from mesh_harness import mesh
from peer_keys import write_peer_key
from ports import free_ports
from server_harness import fake_server, wait_until

from bertserve_server.app import BertServer
from bertserve_server.mesh import wire
from bertserve_server.mesh.security import MeshKeys, load_secret

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IDENTITY = b"0123456789abcdef0123456789abcdef-sub"
"""36 bytes, like the 1.10.0 client's UUID identity."""


@contextlib.contextmanager
def pair(tmp_path: Path) -> Iterator[tuple[BertServer, BertServer, str]]:
    with mesh(tmp_path, 2) as (a, b):
        yield a, b, a.config.peer_key_file


class Intruder:
    """A DEALER on a replica's peer port, with the mesh key (``key``) or without (``None``)."""

    def __init__(self, server: BertServer, key: str | None) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if key is not None:
            keys = MeshKeys.from_secret(load_secret(key))
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        self.sock.connect(f"tcp://127.0.0.1:{server.config.peer_port}")

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout_ms: int) -> list[bytes] | None:
        return list(self.sock.recv_multipart()) if self.sock.poll(timeout_ms) else None

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def rejected(server: BertServer, reason: str) -> float:
    return server.metrics.value("bertserve_peer_frames_rejected_total", {"reason": reason})


def answer_frames(identity: bytes, req_id: bytes) -> list[bytes]:
    header = json.dumps({"dtype": "float32", "shape": [1, 2], "tokens": ""}).encode()
    return [identity, header, b"\0" * 8, req_id]


def test_a_socket_with_the_key_and_version_is_welcomed(tmp_path):
    """The positive control for the refusals below: the port is reachable and answers replicas."""
    with pair(tmp_path) as (a, _b, key):
        good = Intruder(a, key)
        try:
            good.send(*wire.ping(b"0123456789abcdef", 0))
            reply = good.recv(5000)
            assert reply is not None and wire.decode(reply).node_id == a.peering.node_id
        finally:
            good.close()


def test_forged_ping_leaving_and_answer_without_the_key_get_nothing_and_change_nothing(tmp_path):
    with pair(tmp_path) as (a, b, _key):
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, IDENTITY)
        sub.connect(f"tcp://127.0.0.1:{b.config.port_out}")
        wait_until(lambda: a.peering.peers.announced(IDENTITY), 5, "the subscription gossip")
        intruders = [Intruder(a, None), Intruder(b, None)]
        try:
            b_id = b.peering.node_id
            for forged in (
                [b"P", b"attacker", b"0"],  # the unversioned protocol
                wire.ping(b"attacker", 0),
                wire.leaving(b_id),  # "b is leaving": a must keep routing to b
                wire.answer(b_id, 1, answer_frames(IDENTITY, b"666")),
            ):
                for intruder in intruders:
                    intruder.send(*forged)
            for intruder in intruders:
                assert intruder.recv(1000) is None  # no welcome, no node id: nothing at all
            assert not sub.poll(300), "a forged answer was published"
            assert a.peering.peers.announced(IDENTITY) and a.peering.describe()["connected"] == 1
            # The healthy peer is still used: an answer encoded on a reaches b's subscriber.
            with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
                push.setsockopt(zmq.LINGER, 2000)
                push.connect(f"tcp://127.0.0.1:{a.config.port}")
                push.send_multipart([IDENTITY, b'["hello"]', b"7", b"1"])
            assert sub.poll(5000)
            assert sub.recv_multipart()[-1] == b"7"
        finally:
            for intruder in intruders:
                intruder.close()
            sub.close()


def test_a_replica_with_another_key_completes_no_handshake(tmp_path):
    ports = free_ports(2)
    spec = ",".join(f"127.0.0.1:{p}" for p in ports)
    keys = [write_peer_key(tmp_path / "k0"), write_peer_key(tmp_path / "k1")]
    with contextlib.ExitStack() as stack:
        a, b = (
            stack.enter_context(
                fake_server(
                    tmp_path / f"r{i}",
                    peer_service=spec,
                    peer_port=ports[i],
                    peer_key_file=keys[i],
                    http_port=0,
                )
            )
            for i in range(2)
        )
        for s in (a, b):  # each found itself (its own key), and refuses the other
            wait_until(lambda s=s: rejected(s, "handshake") >= 1, 10, "the refused handshake")
            wait_until(lambda s=s: "connecting to 1 peer" in (s.service.unready_reason() or ""), 5, "self")
        assert a.peering.describe()["connected"] == 0 and b.peering.describe()["connected"] == 0
        assert not a.peering.peers.nodes and not b.peering.peers.nodes


def test_a_client_key_other_than_the_mesh_key_is_refused_even_with_the_server_key(tmp_path):
    """The mesh's public key is not meant to leak, but if it does, ZAP still admits only the mesh
    key as a client: a CURVE client with its own key pair gets no handshake."""
    with pair(tmp_path) as (a, _b, key):
        mesh_public = MeshKeys.from_secret(load_secret(key)).public
        own_public, own_secret = zmq.curve_keypair()
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_SERVERKEY, mesh_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, own_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, own_secret)
            sock.connect(f"tcp://127.0.0.1:{a.config.peer_port}")
            sock.send_multipart(wire.ping(b"0123456789abcdef", 0))
            assert not sock.poll(1000)
        wait_until(lambda: rejected(a, "unknown_key") >= 1, 5, "the ZAP refusal to be counted")


def test_another_protocol_version_is_refused_with_a_log_line(tmp_path, caplog):
    with pair(tmp_path) as (a, _b, key):
        newer = Intruder(a, key)
        try:
            newer.send(wire.PROTOCOL_PREFIX + b"3", wire.K_PING, b"fromthefuture", b"0")
            assert newer.recv(1000) is None
        finally:
            newer.close()
        assert rejected(a, "version") == 1
        assert "fromthefuture" not in str(a.peering.peers.nodes)
        wait_until(lambda: "speaks mesh protocol 3, this replica 2" in caplog.text, 5, "the log line")


MALFORMED: list[list[bytes]] = [
    [wire.PROTOCOL],
    [wire.PROTOCOL, wire.K_PING, b"node"],  # no version
    [wire.PROTOCOL, wire.K_PING, b"node", b"9" * 5000, b"0"],  # int() refuses 5000 digits
    [wire.PROTOCOL, wire.K_PING, b"node", b"-1", b"0"],
    [wire.PROTOCOL, wire.K_PING, b"\xff\xfe", b"0", b"0"],  # not a node id
    [wire.PROTOCOL, b"Z", b"node"],
    [wire.PROTOCOL, wire.K_SUB, b"node", b"0"],  # no identity
    [wire.PROTOCOL, wire.K_ANSWER, b"node", b"1", b"1"],  # no answer frames
    [wire.PROTOCOL, wire.K_ANSWER, b"node", b"x", b"id", b"h", b"r"],  # hops not a number
    [wire.PROTOCOL, wire.K_WELCOME, b"node", b"0", b"0"],  # no seq
    wire.welcome(b"node", resync=False, leaving=False, seq=0),  # valid, but only DEALERs get welcomes
]


def test_malformed_peer_frames_are_dropped_counted_and_the_loop_carries_on(tmp_path, caplog):
    with pair(tmp_path) as (a, _b, key):
        sender = Intruder(a, key)
        try:
            for message in MALFORMED:
                sender.send(*message)
            sender.send(*wire.ping(b"0123456789abcdef", 0))
            reply = sender.recv(5000)
        finally:
            sender.close()
        assert reply is not None and wire.decode(reply).kind == wire.K_WELCOME
        assert rejected(a, "malformed") == len(MALFORMED)
        assert "loop error" not in caplog.text and "Traceback" not in caplog.text
        wait_until(lambda: "dropped a malformed mesh message" in caplog.text, 5, "the log line")


def test_decode_checks_every_field() -> None:
    message: Any = wire.decode(wire.answer(b"node", 2, answer_frames(IDENTITY, b"1")))
    assert (message.kind, message.node_id, message.hops) == (wire.K_ANSWER, b"node", 2)
    assert message.frames[0] == IDENTITY
    for bad in MALFORMED[:-1]:
        with pytest.raises(wire.RejectedMessageError) as info:
            wire.decode(bad)
        assert info.value.reason == "malformed", bad


@pytest.mark.parametrize(
    "secret",
    [b" " + bytes(range(128, 159)), bytes(range(128, 159)) + b"\n", b"\t" + bytes(range(130, 160)) + b"\r"],
    ids=["leading-space", "trailing-newline", "both"],
)
def test_a_binary_key_is_used_byte_for_byte_even_where_its_edge_bytes_look_like_whitespace(tmp_path, secret):
    """About 1 in 21 random 32-byte keys begins or ends with a whitespace byte; stripping it would
    shorten the key below the minimum (a crash-looping pod) or change it between replicas."""
    path = write_peer_key(tmp_path, secret=secret)
    assert load_secret(path) == secret


def test_a_text_key_loses_the_newline_around_it(tmp_path):
    """``head -c 48 /dev/urandom | base64 > peer.key`` ends in a newline another copy may lack."""
    text = b"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC1zZWNyZXQ="
    assert load_secret(write_peer_key(tmp_path, "a.key", text + b"\n")) == text
    assert load_secret(write_peer_key(tmp_path, "b.key", b"  " + text + b"\r\n")) == text
