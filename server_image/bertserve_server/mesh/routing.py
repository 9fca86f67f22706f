"""Where an answer goes, and where it waits until it can go somewhere.

Why it exists: the replica that encoded a request must get the answer to whichever replica holds
the client's SUB connection, and lose nothing on the way:

* a subscriber on this replica → publish here;
* else → send the frames to the replica(s) that announced the identity (gossip), which publish
  them on their XPUB;
* else → hold the answer (at most ``answer_wait_s``, like the single-server slow-joiner fix)
  until some replica announces the identity; then drop, count and log.

A forwarded answer that finds its subscriber gone is re-routed once (:data:`MAX_HOPS`), never
bounced around. Owned by the mesh's I/O thread; nothing here locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from bertserve_server.frontends.zmq import Frame
from bertserve_server.mesh import wire
from bertserve_server.mesh.gossip import PeerTable
from bertserve_server.mesh.links import Links
from bertserve_server.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_HOPS = 2
"""Replica-to-replica sends per answer: the first, plus one re-route if the subscriber just moved."""


@dataclass
class Held:
    """An answer on its way: where it may still go and until when."""

    identity: bytes
    frames: Sequence[Frame]
    deadline: float
    hops: int = 0
    exclude: bytes | None = None
    counted: bool = False


class Routes:
    """Routing decisions and the hold list of one replica."""

    def __init__(
        self,
        node_id: bytes,
        peers: PeerTable,
        links: Links,
        metrics: Metrics,
        *,
        answer_wait_s: float,
        local_match: Callable[[bytes], bool],
        publish_local: Callable[[bytes, Sequence[Frame]], None],
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.links = links
        self.metrics = metrics
        self.answer_wait_s = answer_wait_s
        self._local_match = local_match
        self._publish_local = publish_local
        self.held: list[Held] = []
        r = metrics.registry
        self.forwarded = Counter(
            "bertserve_peer_answers_forwarded",
            "ZeroMQ answers sent to the replica holding the client's SUB connection",
            registry=r,
        )
        self.received = Counter(
            "bertserve_peer_answers_received", "ZeroMQ answers received from other replicas", registry=r
        )
        self.held_total = Counter(
            "bertserve_peer_answers_held",
            "ZeroMQ answers that had to wait for their client's subscription to appear on some replica",
            registry=r,
        )
        self.dropped = Counter(
            "bertserve_peer_answers_dropped",
            "ZeroMQ answers dropped by answer routing, by reason (no_subscriber: no replica announced "
            "the client within the wait; shutdown: still waiting when this replica stopped)",
            ["reason"],
            registry=r,
        )
        self.pending = Gauge(
            "bertserve_peer_answers_pending", "ZeroMQ answers waiting for a subscriber now", registry=r
        )

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """An answer encoded here."""
        item = Held(identity, frames, time.monotonic() + self.answer_wait_s)
        if not self.route(item):
            self.hold(item)

    def route(self, item: Held) -> bool:
        """Send ``item`` where its subscriber is; False if no replica can take it now."""
        if self._local_match(item.identity):
            self._publish_local(item.identity, item.frames)
            return True
        if item.hops >= MAX_HOPS:
            return False
        now = time.monotonic()
        targets = []
        for node_id in self.peers.holders(item.identity, exclude=item.exclude):
            link = self.links.routable(node_id, now)
            if link is not None:
                targets.append(link)
        message = wire.answer(self.node_id, item.hops + 1, sole=len(targets) == 1, frames=item.frames)
        sent = sum(1 for link in targets if self.links.send(link, message))
        if sent:
            self.forwarded.inc(sent)
        return sent > 0

    def on_answer(self, sender: bytes, *, hops: int, sole: bool, frames: list[bytes]) -> None:
        """An answer another replica forwarded to us."""
        self.received.inc()
        identity = frames[0]
        if self._local_match(identity):
            self._publish_local(identity, frames)
            return
        if not sole:
            return  # sent to every holder; another one has the subscriber
        item = Held(identity, frames, time.monotonic() + self.answer_wait_s, hops=hops, exclude=sender)
        if not self.route(item):
            self.hold(item)

    def hold(self, item: Held) -> None:
        if not item.counted:
            item.counted = True
            self.held_total.inc()
        self.held.append(item)
        self.pending.set(len(self.held))

    def retry(self) -> None:
        """Try every held answer again (a subscription or a peer appeared)."""
        if not self.held:
            return
        waiting, self.held = self.held, []
        for item in waiting:
            if not self.route(item):
                self.held.append(item)
        self.pending.set(len(self.held))

    def expire(self, now: float) -> None:
        kept = []
        for item in self.held:
            if item.deadline > now:
                kept.append(item)
                continue
            self.dropped.labels(reason="no_subscriber").inc()
            self.metrics.undeliverable.inc()
            logger.warning(
                "dropped an answer for client %s: no replica announced its subscription within %.1fs",
                item.identity.decode("ascii", errors="backslashreplace")[:64],
                self.answer_wait_s,
            )
        self.held = kept
        self.pending.set(len(self.held))

    def drop_all(self) -> None:
        """Shutdown: whatever still waits is dropped, counted and logged."""
        dropped = len(self.held)
        if dropped:
            self.dropped.labels(reason="shutdown").inc(dropped)
            self.metrics.undeliverable.inc(dropped)
            logger.warning("peers: %d answer(s) still waiting for a subscriber at shutdown, dropped", dropped)
        self.held.clear()
        self.pending.set(0)
