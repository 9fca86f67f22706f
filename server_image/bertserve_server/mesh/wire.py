"""The frames replicas send each other, in one place: building them and checking them.

Why it exists: every mesh message is a ZeroMQ multipart message; keeping the layouts here, and
only here, lets the other modules speak in terms of pings, deltas and answers, and gives one
place where a message from the network is checked before anything acts on it.

Every message starts with the protocol frame :data:`PROTOCOL` (``bertserve-mesh <n>``), then the
kind and the sender's node id. A replica speaking another protocol version is refused (logged,
counted), so a mixed-version rollout fails loudly instead of routing answers wrongly. Layouts
after ``PROTOCOL kind node`` (and after the ROUTER's routing id, on the receiving side):

* ``P version seq`` — ping; answered with ``W resync leaving seq`` (the same ``seq``: everything
  sent on the link before that ping has been read by the peer, or was lost with its connection)
* ``S version identity...`` — the sender's full subscription list (snapshot)
* ``+ version identity`` / ``- version identity`` — one subscription added / removed
* ``A hops answer-frame...`` — an answer for one replica; its first frame is the client identity
* ``L`` — the sender is leaving; answered with ``F`` once nothing more will come

:func:`decode` raises :class:`RejectedMessageError` (with a metric label) for anything else; the caller
drops and counts it and carries on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bertserve_server.frontends.zmq import Frame

PROTOCOL_VERSION = 2
"""Bumped whenever a layout below changes. (1: the unversioned, unauthenticated mesh.)"""
PROTOCOL_PREFIX = b"bertserve-mesh "
PROTOCOL = PROTOCOL_PREFIX + b"%d" % PROTOCOL_VERSION

K_PING = b"P"
K_WELCOME = b"W"
K_SNAPSHOT = b"S"
K_SUB = b"+"
K_UNSUB = b"-"
K_ANSWER = b"A"
K_LEAVING = b"L"
K_FLUSHED = b"F"

MAX_NODE_ID = 64
"""Node ids are 16 hex characters; anything much longer is not a node id."""
MAX_NUMBER_DIGITS = 18
"""Versions and hop counts fit in 18 digits; more is refused before ``int()`` sees it."""
ANSWER_FRAMES = (3, 4)
"""A status answer is ``[identity, document, req_id]``; an encode answer has the array too."""

# The fixed frames after PROTOCOL, kind and node id, per kind (ANSWER and SNAPSHOT take more).
_MIN_FIELDS = {
    K_PING: 2,
    K_WELCOME: 3,
    K_SNAPSHOT: 1,
    K_SUB: 2,
    K_UNSUB: 2,
    K_ANSWER: 1,
    K_LEAVING: 0,
    K_FLUSHED: 0,
}


class RejectedMessageError(Exception):
    """A message that is not acted on; ``reason`` is the metric label, the text says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class Message:
    """One checked mesh message."""

    kind: bytes
    node_id: bytes
    version: int = 0
    seq: int = 0
    hops: int = 0
    resync: bool = False
    leaving: bool = False
    identities: list[bytes] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)


def _number(frame: bytes) -> int:
    if not frame.isdigit() or len(frame) > MAX_NUMBER_DIGITS:
        raise RejectedMessageError("malformed", f"expected a number, got {frame[:24]!r}")
    return int(frame)


def _flag(frame: bytes) -> bool:
    if frame not in (b"0", b"1"):
        raise RejectedMessageError("malformed", f"expected 0 or 1, got {frame[:24]!r}")
    return frame == b"1"


def decode(message: Sequence[bytes]) -> Message:
    """Check one received message (routing id already removed); :class:`RejectedMessageError` if unusable."""
    if not message:
        raise RejectedMessageError("malformed", "an empty message")
    if message[0] != PROTOCOL:
        if message[0].startswith(PROTOCOL_PREFIX):
            theirs = message[0][len(PROTOCOL_PREFIX) :][:16].decode("ascii", "replace")
            raise RejectedMessageError(
                "version", f"speaks mesh protocol {theirs}, this replica {PROTOCOL_VERSION}"
            )
        raise RejectedMessageError(
            "version", "speaks no versioned mesh protocol (an older replica, or not a replica)"
        )
    if len(message) < 3:
        raise RejectedMessageError("malformed", f"{len(message)} frames, expected at least 3")
    kind, node_id, rest = message[1], message[2], list(message[3:])
    if kind not in _MIN_FIELDS:
        raise RejectedMessageError("malformed", f"unknown message kind {kind[:8]!r}")
    if not node_id.isalnum() or len(node_id) > MAX_NODE_ID:
        raise RejectedMessageError(
            "malformed", f"a node id of {len(node_id)} bytes that is not alphanumeric ASCII"
        )
    if len(rest) < _MIN_FIELDS[kind]:
        raise RejectedMessageError("malformed", f"{kind.decode('ascii')} message with {len(rest)} fields")
    out = Message(kind, node_id)
    if kind == K_PING:
        out.version, out.seq = _number(rest[0]), _number(rest[1])
    elif kind in (K_SNAPSHOT, K_SUB, K_UNSUB):
        out.version = _number(rest[0])
        out.identities = rest[1:]
        if kind in (K_SUB, K_UNSUB) and len(out.identities) != 1:
            raise RejectedMessageError(
                "malformed", f"a subscription change with {len(out.identities)} identities"
            )
    elif kind == K_WELCOME:
        out.resync, out.leaving, out.seq = _flag(rest[0]), _flag(rest[1]), _number(rest[2])
    elif kind == K_ANSWER:
        out.hops = _number(rest[0])
        out.frames = rest[1:]
        if len(out.frames) not in ANSWER_FRAMES or not out.frames[0]:
            raise RejectedMessageError("malformed", f"an answer of {len(out.frames)} frames")
    return out


def _head(kind: bytes, node_id: bytes) -> list[Frame]:
    return [PROTOCOL, kind, node_id]


def ping(node_id: bytes, version: int, seq: int = 0) -> list[Frame]:
    return [*_head(K_PING, node_id), b"%d" % version, b"%d" % seq]


def welcome(node_id: bytes, *, resync: bool, leaving: bool, seq: int) -> list[Frame]:
    return [*_head(K_WELCOME, node_id), b"1" if resync else b"0", b"1" if leaving else b"0", b"%d" % seq]


def delta(node_id: bytes, version: int, identity: bytes, *, subscribed: bool) -> list[Frame]:
    return [*_head(K_SUB if subscribed else K_UNSUB, node_id), b"%d" % version, identity]


def snapshot(node_id: bytes, version: int, identities: Iterable[bytes]) -> list[Frame]:
    return [*_head(K_SNAPSHOT, node_id), b"%d" % version, *sorted(identities)]


def answer(node_id: bytes, hops: int, frames: Sequence[Frame]) -> list[Frame]:
    return [*_head(K_ANSWER, node_id), b"%d" % hops, *frames]


def size(frames: Sequence[Frame]) -> int:
    """Bytes of an answer's frames (what it costs to hold or queue it)."""
    return sum(f.nbytes if isinstance(f, memoryview) else len(f) for f in frames)


def leaving(node_id: bytes) -> list[Frame]:
    return _head(K_LEAVING, node_id)


def flushed(node_id: bytes) -> list[Frame]:
    return _head(K_FLUSHED, node_id)
