"""Links between replicas and the handshake that identifies them.

Why it exists: each replica binds one ROUTER on ``-bind_host:-peer_port`` (what peers send to)
and connects one DEALER to every address discovery resolved (what it sends with). An address
says nothing about *who* is there — a pod IP is reused, the list includes the replica itself —
so every link pings, and the ``welcome`` reply carries the peer's random node id:

* the id is our own → the address is this replica; its link is closed;
* a new id at a known address → a new process there (a restart); gossip starts afresh;
* no reply for :data:`LINK_TIMEOUT_S` → the link is not used for routing until one comes.

Each ping carries a sequence number that the welcome echoes. The peer reads a link's messages in
order, so a welcome for ping ``n`` means every answer sent before ping ``n`` has been read there
(or was lost with its connection). That bounds the answers queued towards a peer by bytes, not
only by count (:data:`PEER_QUEUE_BYTES`, :data:`DEALER_HWM`): a slow or stalled peer stops
getting answers, which wait in the (bounded) hold list instead of piling up in libzmq.

Owned by the mesh's I/O thread; nothing here locks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from bertserve_server.frontends.zmq import Frame
from bertserve_server.mesh import wire
from bertserve_server.mesh.discovery import Address, endpoint
from bertserve_server.mesh.security import MeshKeys, secure_client, secure_server

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 0.25
"""How often each link pings its peer (liveness, identity, and gossip consistency check)."""
LINK_TIMEOUT_S = 1.5
"""A link whose peer has not answered for this long is not used for routing."""
DEALER_HWM = 10000
"""Answers queued per link before it counts as congested (the answer then waits in the hold)."""
PEER_QUEUE_BYTES = 256 * 1024 * 1024
"""Answer bytes sent on a link and not yet confirmed read by the peer, at most (one larger
answer may go alone)."""
MAX_PING_MARKS = 64
"""Unanswered pings remembered per link (older ones no longer confirm anything)."""
WELCOME_MAX_BYTES = 64 * 1024
"""A DEALER only ever receives welcomes (a few bytes each): its ``MAXMSGSIZE``."""


@dataclass(frozen=True)
class SocketLimits:
    """What every mesh socket gets: the mesh key, ZeroMQ heartbeats, the largest frame accepted.

    Heartbeats (ZMTP 3.1 PING/PONG) drop a connection whose peer went silent — a vanished pod
    whose TCP connection was never closed — within ``heartbeat_timeout_s``; ``max_frame_bytes``
    is the ROUTER's ``MAXMSGSIZE``: a peer sending a larger frame is disconnected before libzmq
    assembles it.
    """

    keys: MeshKeys
    heartbeat_timeout_s: float
    max_frame_bytes: int

    def apply(self, sock: zmq.Socket[Any]) -> None:
        timeout_ms = max(100, int(self.heartbeat_timeout_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, timeout_ms // 3))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)


@dataclass
class Link:
    """Our DEALER to one resolved address."""

    address: Address
    sock: zmq.Socket[Any] | None
    first_seen: float
    peer_id: bytes | None = None
    is_self: bool = False
    last_reply: float = 0.0
    send_ok: bool = True
    listening: bool | None = None
    peer_leaving: bool = False
    ignored: bool = False
    sent_bytes: int = 0
    acked_bytes: int = 0
    next_seq: int = 0
    marks: dict[int, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        """Answer bytes sent and not yet confirmed read by the peer."""
        return self.sent_bytes - self.acked_bytes


def bind_router(
    context: zmq.Context[Any], bind_host: str, port: int, limits: SocketLimits
) -> zmq.Socket[Any]:
    """The ROUTER peers send to (a CURVE server); a bind error names ``-peer_port``."""
    router: zmq.Socket[Any] = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes)
    limits.apply(router)
    secure_server(router, limits.keys)
    if ":" in bind_host:
        router.setsockopt(zmq.IPV6, 1)
    bind = endpoint((bind_host, port))
    try:
        router.bind(bind)
    except zmq.ZMQError as exc:
        router.close()
        raise OSError(
            f"cannot bind -peer_port {bind}: {exc.strerror}; choose a free port with -peer_port"
        ) from exc
    return router


def send_welcome(
    router: zmq.Socket[Any], rid: bytes, node_id: bytes, *, resync: bool, leaving: bool, seq: int
) -> None:
    """Answer a ping on the ROUTER (the peer may have gone away meanwhile: then nothing happens)."""
    with contextlib.suppress(zmq.ZMQError):
        message = wire.welcome(node_id, resync=resync, leaving=leaving, seq=seq)
        router.send_multipart([rid, *message], flags=zmq.NOBLOCK)


class Links:
    """Every DEALER link, by address, by socket and (once identified) by peer node id."""

    def __init__(
        self, context: zmq.Context[Any], poller: zmq.Poller, node_id: bytes, limits: SocketLimits
    ) -> None:
        self._context = context
        self._limits = limits
        self._poller = poller
        self.node_id = node_id
        self.by_address: dict[Address, Link] = {}
        self.by_socket: dict[zmq.Socket[Any], Link] = {}
        self.by_node: dict[bytes, Link] = {}

    def open(self, address: Address, now: float) -> Link:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # a send fails at once when the peer is unreachable
        sock.setsockopt(zmq.SNDHWM, DEALER_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, WELCOME_MAX_BYTES)
        self._limits.apply(sock)
        secure_client(sock, self._limits.keys)
        if ":" in address[0]:
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(endpoint(address))
        link = Link(address, sock, first_seen=now)
        self.by_address[address] = link
        self.by_socket[sock] = link
        self._poller.register(sock, zmq.POLLIN)
        return link

    def remove(self, address: Address) -> Link:
        """Forget the link to an address that left the peer list."""
        link = self.by_address.pop(address)
        if link.peer_id is not None and self.by_node.get(link.peer_id) is link:
            del self.by_node[link.peer_id]
        self.close_socket(link)
        return link

    def close_socket(self, link: Link, linger_ms: int = 0) -> None:
        if link.sock is not None:
            self._poller.unregister(link.sock)
            self.by_socket.pop(link.sock, None)
            link.sock.close(linger=linger_ms)
            link.sock = None

    def close_all(self, linger_ms: int) -> None:
        for link in list(self.by_address.values()):
            self.close_socket(link, linger_ms)

    def send(self, link: Link, frames: Sequence[Frame]) -> bool:
        """Queue ``frames`` on the link without blocking; False if it is closed, down or congested."""
        if link.sock is None:
            return False
        try:
            link.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            link.send_ok = False  # not connected (IMMEDIATE) or congested
            return False
        link.send_ok = True
        return True

    def send_answer(self, link: Link, message: Sequence[Frame], size: int) -> bool:
        """Like :meth:`send`, and False while the peer has not confirmed enough earlier answers."""
        if link.in_flight > 0 and link.in_flight + size > PEER_QUEUE_BYTES:
            return False
        if not self.send(link, message):
            return False
        link.sent_bytes += size
        return True

    def ping(self, link: Link, version: int) -> None:
        seq = link.next_seq
        link.next_seq += 1
        link.marks[seq] = link.sent_bytes
        if len(link.marks) > MAX_PING_MARKS:
            del link.marks[min(link.marks)]
        self.send(link, wire.ping(self.node_id, version, seq))

    @staticmethod
    def confirmed(link: Link, seq: int) -> None:
        """A welcome for ping ``seq``: everything sent before it has been read (or lost)."""
        sent = link.marks.get(seq)
        if sent is None:
            return
        link.acked_bytes = max(link.acked_bytes, sent)
        for old in [s for s in link.marks if s <= seq]:
            del link.marks[old]

    def identified(self) -> list[Link]:
        """Links to other replicas whose node id we know."""
        return [link for link in self.by_address.values() if link.peer_id is not None and not link.is_self]

    def up(self, link: Link, now: float) -> bool:
        """Whether ``link`` reaches an identified peer that answered recently."""
        return (
            link.sock is not None
            and link.peer_id is not None
            and not link.is_self
            and link.send_ok
            and now - link.last_reply < LINK_TIMEOUT_S
        )

    def routable(self, node_id: bytes, now: float) -> Link | None:
        """The link to send answers for ``node_id`` on, if it is up and the peer is not leaving."""
        link = self.by_node.get(node_id)
        if link is not None and self.up(link, now) and not link.peer_leaving:
            return link
        return None

    def ping_all(self, version: int) -> None:
        for link in list(self.by_address.values()):
            if not link.is_self and link.sock is not None:
                self.ping(link, version)

    def identify(self, link: Link, peer_id: bytes, now: float) -> str:
        """Record a welcome's node id: ``"self"``, ``"new"`` (first time or a new process), ``"known"``."""
        link.last_reply = now
        link.ignored = False
        if peer_id == self.node_id:
            link.is_self = True
            self.close_socket(link)
            logger.info("peers: %s is this replica", endpoint(link.address))
            return "self"
        if link.peer_id == peer_id:
            return "known"
        if link.peer_id is not None and self.by_node.get(link.peer_id) is link:
            del self.by_node[link.peer_id]  # a new process at the same address
        link.acked_bytes = link.sent_bytes  # what the old process did not read is gone with it
        link.peer_id = peer_id
        self.by_node[peer_id] = link
        logger.info("peers: connected to node %s at %s", peer_id.decode(), endpoint(link.address))
        return "new"
