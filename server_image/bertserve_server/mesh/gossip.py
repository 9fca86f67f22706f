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
    """What one peer told us: its subscriptions (prefix topics) at gossip version ``version``."""

    last_heard: float
    version: int = -1
    leaving: bool = False
    topics: set[bytes] = field(default_factory=set)
    lengths: dict[int, int] = field(default_factory=dict)

    def add(self, topic: bytes) -> None:
        if topic not in self.topics:
            self.topics.add(topic)
            self.lengths[len(topic)] = self.lengths.get(len(topic), 0) + 1

    def remove(self, topic: bytes) -> None:
        if topic in self.topics:
            self.topics.discard(topic)
            left = self.lengths[len(topic)] - 1
            if left:
                self.lengths[len(topic)] = left
            else:
                del self.lengths[len(topic)]

    def replace(self, topics: Sequence[bytes]) -> None:
        self.topics.clear()
        self.lengths.clear()
        for topic in topics:
            self.add(topic)

    def matches(self, identity: bytes) -> bool:
        if identity in self.topics:
            return True
        return any(identity[:n] in self.topics for n in self.lengths if n <= len(identity))


class PeerTable:
    """Every peer we have heard from, by node id."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, PeerNode] = {}

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

    @staticmethod
    def apply_delta(node: PeerNode, version: int, topic: bytes, *, subscribed: bool) -> bool:
        """Apply one ``+``/``-``; False (ignored) on a gap, which the next ping's check repairs."""
        if node.leaving or version != node.version + 1:
            return False
        node.version = version
        if subscribed:
            node.add(topic)
        else:
            node.remove(topic)
        return True

    @staticmethod
    def apply_snapshot(node: PeerNode, version: int, topics: Sequence[bytes]) -> bool:
        if node.leaving:
            return False
        node.version = version
        node.replace(topics)
        return True

    @staticmethod
    def mark_leaving(node: PeerNode) -> None:
        """A leaving peer gets no more answers: forget its subscribers (they reconnect elsewhere)."""
        node.leaving = True
        node.replace(())

    def forget_silent(self, now: float) -> None:
        for node_id, node in list(self.nodes.items()):
            if now - node.last_heard > NODE_TIMEOUT_S:
                del self.nodes[node_id]
                logger.info("peers: node %s silent for %.1fs, forgotten", node_id.decode(), NODE_TIMEOUT_S)

    def holders(self, identity: bytes, *, exclude: bytes | None = None) -> list[bytes]:
        """Node ids of the peers (not leaving, not ``exclude``) that announced ``identity``."""
        return [
            node_id
            for node_id, node in self.nodes.items()
            if node_id != exclude and not node.leaving and node.matches(identity)
        ]

    def announced(self, identity: bytes) -> bool:
        return any(node.matches(identity) for node in list(self.nodes.values()))


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
