"""Links between replicas and the handshake that identifies them.

Why it exists: each replica binds one ROUTER on ``-bind_host:-peer_port`` (what peers send to)
and connects one DEALER to every address discovery resolved (what it sends with). An address
says nothing about *who* is there — a pod IP is reused, the list includes the replica itself —
so every link pings, and the ``welcome`` reply carries the peer's random node id:

* the id is our own → the address is this replica; its link is closed;
* a new id at a known address → a new process there (a restart); gossip starts afresh;
* no reply for :data:`LINK_TIMEOUT_S` → the link is not used for routing until one comes.

Owned by the mesh's I/O thread; nothing here locks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from bertserve_server.frontends.zmq import Frame
from bertserve_server.mesh import wire
from bertserve_server.mesh.discovery import Address, endpoint

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 0.25
"""How often each link pings its peer (liveness, identity, and gossip consistency check)."""
LINK_TIMEOUT_S = 1.5
"""A link whose peer has not answered for this long is not used for routing."""
DEALER_HWM = 10000
"""Answers queued per link before it counts as congested (the answer then waits in the hold)."""


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


def bind_router(context: zmq.Context[Any], bind_host: str, port: int) -> zmq.Socket[Any]:
    """The ROUTER peers send to; a bind error names ``-peer_port``."""
    router: zmq.Socket[Any] = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.TCP_KEEPALIVE, 1)
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


def send_welcome(router: zmq.Socket[Any], rid: bytes, node_id: bytes, *, resync: bool, leaving: bool) -> None:
    """Answer a ping on the ROUTER (the peer may have gone away meanwhile: then nothing happens)."""
    with contextlib.suppress(zmq.ZMQError):
        router.send_multipart(
            [rid, *wire.welcome(node_id, resync=resync, leaving=leaving)], flags=zmq.NOBLOCK
        )


class Links:
    """Every DEALER link, by address, by socket and (once identified) by peer node id."""

    def __init__(self, context: zmq.Context[Any], poller: zmq.Poller, node_id: bytes) -> None:
        self._context = context
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
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
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
                self.send(link, wire.ping(self.node_id, version))

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
        link.peer_id = peer_id
        self.by_node[peer_id] = link
        logger.info("peers: connected to node %s at %s", peer_id.decode(), endpoint(link.address))
        return "new"
