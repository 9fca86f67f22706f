"""Where an answer goes, and where it waits until it can go somewhere.

Why it exists: the replica that encoded a request must get the answer to whichever replica holds
the client's SUB connection, and lose nothing on the way without counting it:

* a subscriber on this replica → publish here;
* else → send the frames to *one* replica that announced the identity (the most recent
  announcement first: a client that just reconnected is there), which publishes them;
* else → hold the answer (at most ``answer_wait_s``, like the single-server slow-joiner fix)
  until some replica announces the identity; then drop, count and log.

A replica receiving a forwarded answer whose subscriber has just gone re-routes it once
(:data:`MAX_HOPS`), never back to the sender while the gossip that made the sender forward it is
unchanged; once the identity's holders change (the client re-subscribed somewhere, the sender
included), the answer is routed afresh. So an answer crosses the network at most twice per move
of its client, and is never stranded by a stale exclusion.

The hold list is bounded by count and bytes (:data:`MAX_HELD_ANSWERS`, :data:`MAX_HELD_BYTES`):
beyond either, the oldest answers are dropped, counted and logged (at most once per interval).
Every dropped answer is counted with its reason. Owned by the mesh's I/O thread; nothing here locks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from bertserve_server.answer_drops import AnswerDrops
from bertserve_server.frontends.zmq import Frame
from bertserve_server.mesh import wire
from bertserve_server.mesh.gossip import PeerTable
from bertserve_server.mesh.links import Links
from bertserve_server.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_HOPS = 2
"""Replica-to-replica sends per answer while the gossip stays the same: the first, plus one
re-route if the subscriber just moved."""
MAX_HELD_ANSWERS = 10000
"""Answers waiting for a subscriber at most (oldest dropped beyond)."""
MAX_HELD_BYTES = 256 * 1024 * 1024
"""Bytes of answers waiting for a subscriber at most (oldest dropped beyond; one larger answer
may wait alone)."""


@dataclass
class Held:
    """An answer on its way: where it may still go and until when.

    ``exclude`` and ``hops`` apply only while the identity's holders are still ``seen`` (the
    gossip that got the answer here); a change in who holds the identity lifts them.
    """

    identity: bytes
    frames: Sequence[Frame]
    deadline: float
    size: int
    hops: int = 0
    exclude: bytes | None = None
    seen: frozenset[bytes] | None = None
    counted: bool = False


DROP_REASONS = {
    "no_subscriber": "no replica announced the client's subscription within the wait",
    "hold_full": "the hold list was full (count or bytes); the oldest answers went first",
    "shutdown": "still waiting for a subscriber when this replica stopped",
}


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
        self.held: deque[Held] = deque()
        self.held_bytes = 0
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
            "ZeroMQ answers dropped by answer routing, by reason: "
            + "; ".join(f"{k}: {v}" for k, v in DROP_REASONS.items()),
            ["reason"],
            registry=r,
        )
        self._drops = AnswerDrops(metrics, logger, also=self.dropped)
        self.pending = Gauge(
            "bertserve_peer_answers_pending", "ZeroMQ answers waiting for a subscriber now", registry=r
        )

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """An answer encoded here."""
        item = Held(identity, frames, time.monotonic() + self.answer_wait_s, wire.size(frames))
        if not self.route(item):
            self.hold(item)

    def route(self, item: Held) -> bool:
        """Send ``item`` where its subscriber is; False if no replica can take it now."""
        if self._local_match(item.identity):
            self._publish_local(item.identity, item.frames)
            return True
        holders = self.peers.holders(item.identity)
        if item.seen is not None and frozenset(holders) != item.seen:
            item.hops, item.exclude, item.seen = 0, None, None  # the client moved since: route afresh
        if item.hops >= MAX_HOPS:
            return False
        now = time.monotonic()
        message: list[Frame] | None = None
        for node_id in holders:
            if node_id == item.exclude:
                continue
            link = self.links.routable(node_id, now)
            if link is None:
                continue
            message = message or wire.answer(self.node_id, item.hops + 1, item.frames)
            if self.links.send_answer(link, message, item.size):
                self.forwarded.inc()
                return True
        return False

    def on_answer(self, sender: bytes, *, hops: int, frames: list[bytes]) -> None:
        """An answer another replica forwarded to us: ours to deliver, re-route or hold."""
        self.received.inc()
        identity = frames[0]
        if self._local_match(identity):
            self._publish_local(identity, frames)
            return
        item = Held(
            identity,
            frames,
            time.monotonic() + self.answer_wait_s,
            wire.size(frames),
            hops=hops,
            exclude=sender,
            seen=frozenset(self.peers.holders(identity)),
        )
        if not self.route(item):
            self.hold(item)

    def hold(self, item: Held) -> None:
        if not item.counted:
            item.counted = True
            self.held_total.inc()
        self.held.append(item)
        self.held_bytes += item.size
        while len(self.held) > 1 and (len(self.held) > MAX_HELD_ANSWERS or self.held_bytes > MAX_HELD_BYTES):
            oldest = self.held.popleft()
            self.held_bytes -= oldest.size
            self.drop(oldest, "hold_full")
        self.pending.set(len(self.held))

    def retry(self) -> None:
        """Try every held answer again (a subscription or a peer appeared)."""
        if not self.held:
            return
        waiting, self.held = self.held, deque()
        self.held_bytes = 0
        for item in waiting:
            if not self.route(item):
                self.held.append(item)
                self.held_bytes += item.size
        self.pending.set(len(self.held))

    def expire(self, now: float) -> None:
        if not any(item.deadline <= now for item in self.held):
            return
        kept: deque[Held] = deque()
        self.held_bytes = 0
        for item in self.held:
            if item.deadline > now:
                kept.append(item)
                self.held_bytes += item.size
            else:
                self.drop(item, "no_subscriber")
        self.held = kept
        self.pending.set(len(self.held))

    def drop(self, item: Held, reason: str) -> None:
        """Count and log (throttled) one answer that will never reach its client."""
        client = item.identity.decode("ascii", errors="backslashreplace")[:64]
        if reason == "no_subscriber":
            why = "for client %s: no replica announced its subscription within %.1fs"
            self._drops.drop(reason, 1, why, client, self.answer_wait_s)
        else:
            self._drops.drop(reason, 1, "for client %s: %s", client, DROP_REASONS.get(reason, reason))

    def drop_all(self, reason: str) -> None:
        """Whatever still waits is dropped, counted and logged (shutdown)."""
        for item in self.held:
            self.drop(item, reason)
        self.held.clear()
        self.held_bytes = 0
        self.pending.set(0)
