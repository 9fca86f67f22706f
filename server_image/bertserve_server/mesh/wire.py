"""The frames replicas send each other, in one place.

Why it exists: every mesh message is a ZeroMQ multipart message whose first frame says what it
is and whose second frame is the sender's node id. Keeping the kinds and layouts here, and only
here, lets the other modules speak in terms of pings, deltas and answers.

Layouts (after the ROUTER's routing id, on the receiving side):

* ``P node version`` — ping; answered with ``W node resync leaving``
* ``S node version topic...`` — the sender's full subscription list (snapshot)
* ``+ node version topic`` / ``- node version topic`` — one subscription added / removed
* ``A node hops sole identity frame...`` — an answer for the client ``identity``
* ``L node`` — the sender is leaving; answered with ``F node`` once nothing more will come
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bertserve_server.frontends.zmq import Frame

K_PING = b"P"
K_SNAPSHOT = b"S"
K_SUB = b"+"
K_UNSUB = b"-"
K_ANSWER = b"A"
K_LEAVING = b"L"
K_FLUSHED = b"F"
K_WELCOME = b"W"


def ping(node_id: bytes, version: int) -> list[Frame]:
    return [K_PING, node_id, b"%d" % version]


def welcome(node_id: bytes, *, resync: bool, leaving: bool) -> list[Frame]:
    return [K_WELCOME, node_id, b"1" if resync else b"0", b"1" if leaving else b"0"]


def delta(node_id: bytes, version: int, topic: bytes, *, subscribed: bool) -> list[Frame]:
    return [K_SUB if subscribed else K_UNSUB, node_id, b"%d" % version, topic]


def snapshot(node_id: bytes, version: int, topics: Iterable[bytes]) -> list[Frame]:
    return [K_SNAPSHOT, node_id, b"%d" % version, *sorted(topics)]


def answer(node_id: bytes, hops: int, *, sole: bool, frames: Sequence[Frame]) -> list[Frame]:
    return [K_ANSWER, node_id, b"%d" % hops, b"1" if sole else b"0", *frames]


def leaving(node_id: bytes) -> list[Frame]:
    return [K_LEAVING, node_id]


def flushed(node_id: bytes) -> list[Frame]:
    return [K_FLUSHED, node_id]
