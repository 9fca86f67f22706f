"""Subscription gossip: which replica holds which client's SUB connection.

Why it exists: an answer must be published by the replica holding its client's subscription on
``-port_out``. Each replica tells every peer about its own subscriptions as numbered deltas
(``+``/``-``); a ping carries the sender's current number, and a receiver that missed a delta
(its number is not the one before) asks for the full list (a snapshot) in its welcome. So every
replica knows, within a ping interval, ``identity -> {replicas}`` — without any central store.

Owned by the mesh's I/O thread; nothing here locks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

NODE_TIMEOUT_S = 3.0
"""A peer not heard from for this long is forgotten, with its subscriptions."""


@dataclass
class PeerNode:
    """What one peer told us: the client identities subscribed there, at gossip version ``version``."""

    last_heard: float
    version: int = -1
    leaving: bool = False
    identities: set[bytes] = field(default_factory=set)


class PeerTable:
    """Every peer we have heard from, by node id, and who holds which identity.

    Matching is by *exact* identity, never by prefix: a SUB on ``-port_out`` receives only the
    answers for the identity it subscribed to (the frontend refuses short subscriptions), so the
    mesh must not route an answer to a replica whose subscriber merely shares a prefix with it.
    ``holders`` is the one place the mesh matches identities; an index keeps it O(1). Holders come
    most recent announcement first: when a client's SUB connection moves, the new replica
    announces it while the old one may not have withdrawn it yet.
    """

    def __init__(self) -> None:
        self.nodes: dict[bytes, PeerNode] = {}
        self._holders: dict[bytes, dict[bytes, int]] = {}
        self._seq = 0

    def heard(self, node_id: bytes, now: float) -> PeerNode:
        """The node for ``node_id`` (created on first contact), marked as heard now."""
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = PeerNode(last_heard=now)
        node.last_heard = now
        return node

    @staticmethod
    def needs_snapshot(node: PeerNode, version: int) -> bool:
        """Whether a ping saying ``version`` shows we missed something (a leaver sends nothing)."""
        return not node.leaving and node.version != version

    def apply_delta(
        self, node_id: bytes, node: PeerNode, version: int, identity: bytes, *, subscribed: bool
    ) -> bool:
        """Apply one ``+``/``-``; False (ignored) on a gap, which the next ping's check repairs."""
        if node.leaving or version != node.version + 1:
            return False
        node.version = version
        if subscribed:
            self._add(node_id, node, identity)
        else:
            self._remove(node_id, node, identity)
        return True

    def apply_snapshot(
        self, node_id: bytes, node: PeerNode, version: int, identities: Sequence[bytes]
    ) -> bool:
        if node.leaving:
            return False
        node.version = version
        self._replace(node_id, node, identities)
        return True

    def mark_leaving(self, node_id: bytes, node: PeerNode) -> None:
        """A leaving peer gets no more answers: forget its subscribers (they reconnect elsewhere)."""
        node.leaving = True
        self._replace(node_id, node, ())

    def forget_silent(self, now: float) -> None:
        for node_id, node in list(self.nodes.items()):
            if now - node.last_heard > NODE_TIMEOUT_S:
                self._replace(node_id, node, ())
                del self.nodes[node_id]
                logger.info("peers: node %s silent for %.1fs, forgotten", node_id.decode(), NODE_TIMEOUT_S)

    def holders(self, identity: bytes, *, exclude: bytes | None = None) -> list[bytes]:
        """Node ids of the peers (not leaving, not ``exclude``) that announced exactly ``identity``,
        most recent first."""
        holders = self._holders.get(identity)
        if not holders:
            return []
        ordered = sorted(holders, key=holders.__getitem__, reverse=True)
        return [node_id for node_id in ordered if node_id != exclude]

    def announced(self, identity: bytes) -> bool:
        return bool(self._holders.get(identity))

    def _add(self, node_id: bytes, node: PeerNode, identity: bytes) -> None:
        if identity not in node.identities:
            node.identities.add(identity)
            self._seq += 1
            self._holders.setdefault(identity, {})[node_id] = self._seq

    def _remove(self, node_id: bytes, node: PeerNode, identity: bytes) -> None:
        if identity in node.identities:
            node.identities.discard(identity)
            holders = self._holders.get(identity)
            if holders is not None:
                holders.pop(node_id, None)
                if not holders:
                    del self._holders[identity]

    def _replace(self, node_id: bytes, node: PeerNode, identities: Sequence[bytes]) -> None:
        wanted = set(identities)
        for identity in node.identities - wanted:
            self._remove(node_id, node, identity)
        for identity in wanted - node.identities:
            self._add(node_id, node, identity)


class LocalTopics:
    """This replica's own subscriptions and their gossip version (one increment per change)."""

    def __init__(self) -> None:
        self.topics: set[bytes] = set()
        self.version = 0

    def change(self, topic: bytes, subscribed: bool) -> int:
        """Record one change; the version to announce it with."""
        if subscribed:
            self.topics.add(topic)
        else:
            self.topics.discard(topic)
        self.version += 1
        return self.version
