"""Answer routing between replicas: the classic two-port protocol behind one Kubernetes Service.

Why it exists: ``bert-serving-client`` opens two TCP connections, PUSH to ``-port`` and SUB on
``-port_out``. Behind a Service, kube-proxy balances each connection on its own, so the replica
that encodes a request is often not the one holding the client's SUB connection; 1.10.0 then
published into the void and the client hung. Here every replica joins a small mesh and an
answer goes to whichever replica holds the subscriber:

* **Discovery** (``peer_discovery``): the addresses behind ``-peer_service`` (the headless
  Service's A records, re-resolved every few seconds; or a ``host:port`` list).
* **Links**: every replica binds a ROUTER on ``-bind_host:-peer_port`` and connects one DEALER to
  every resolved address. A ping answered with the peer's random node id identifies the peer — and
  the replica's own address, whose link is then closed.
* **Subscription gossip**: the replica's XPUB subscriptions (``SubscriptionRegistry`` listeners)
  go to every peer as numbered deltas; a ping carries the current number, and a peer that missed
  one asks for the full list. Each replica so knows ``topic -> {replicas}``.
* **Delivery** (:meth:`PeerMesh.deliver`, the ``ResultRouter``): a local subscriber → publish
  here; else → send the frames to the replica(s) that announced the identity, which publish on
  their XPUB; else → hold (at most ``SUBSCRIPTION_WAIT_S``, like the single-server slow-joiner
  fix) until some replica announces it; then drop, count and log. A forwarded answer that finds
  its subscriber gone is re-routed once (``MAX_HOPS``), never bounced around.
* **Leaving** (drain): a replica tells its peers it is leaving, they stop routing to it and
  confirm; only then does it close ``-port_out``, whose clients reconnect elsewhere and
  re-subscribe, and answers held for them meanwhile are delivered there.

Costs: one extra hop (pod network) only for answers whose PUSH and SUB landed on different
replicas; an answer crosses the network at most once more; no gateway, so no single point of
failure. ``docs/scale-out.md`` has the full trade-offs and failure cases.

All sockets belong to one I/O thread; other threads talk to it through a command queue and a
wake-up pipe, as the ZeroMQ frontend does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
from prometheus_client import Counter, Gauge

from bertserve_api.contract import ServerConfig
from bertserve_server.frontends.zmq import SUBSCRIPTION_WAIT_S, Frame, ResultRouter, ZmqFrontend
from bertserve_server.metrics import Metrics
from bertserve_server.peer_discovery import (
    RESOLVE_INTERVAL_S,
    Address,
    PeerDiscovery,
    endpoint,
    parse_peer_service,
)
from bertserve_server.peer_handoff import hand_off_connections

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 0.25
"""How often each link pings its peer (liveness, identity, and gossip consistency check)."""
LINK_TIMEOUT_S = 1.5
"""A link whose peer has not answered for this long is not used for routing."""
NODE_TIMEOUT_S = 3.0
"""A peer not heard from for this long is forgotten, with its subscriptions."""
PEER_GRACE_S = 10.0
"""How long an address that accepts TCP but has not completed the handshake keeps us not Ready."""
HANDOFF_S = 2.0
"""Upper bound for moving clients' request connections away at shutdown (normally milliseconds)."""
LEAVE_S = 1.0
"""Upper bound for peers to confirm they stopped routing answers to a leaving replica."""
MAX_HOPS = 2
"""Replica-to-replica sends per answer: the first, plus one re-route if the subscriber just moved."""
DEALER_HWM = 10000
"""Answers queued per link before it counts as congested (the answer then waits in the hold)."""

K_PING = b"P"
K_SNAPSHOT = b"S"
K_SUB = b"+"
K_UNSUB = b"-"
K_ANSWER = b"A"
K_LEAVING = b"L"
K_FLUSHED = b"F"
K_WELCOME = b"W"


@dataclass
class _Link:
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


@dataclass
class _Node:
    """What a peer told us: its subscriptions (prefix topics) at gossip version ``version``."""

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


@dataclass
class _Held:
    """An answer on its way: where it may still go and until when."""

    identity: bytes
    frames: Sequence[Frame]
    deadline: float
    hops: int = 0
    exclude: bytes | None = None
    counted: bool = False


class PeerMesh:
    """One replica's membership in the mesh; also its :class:`ResultRouter` (``deliver``).

    Lifecycle, driven by ``app``: :meth:`start` (bind ``-peer_port``, before the model loads, so
    peers can identify this replica early) → :meth:`attach` (the ``router_factory`` of the ZeroMQ
    frontend) → serving → :meth:`hand_off` → (drain) → :meth:`leave` → (``-port_out`` closes) →
    :meth:`close`.
    """

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        *,
        answer_wait_s: float | None = None,
        resolve_interval_s: float | None = None,
        grace_s: float | None = None,
    ) -> None:
        if not config.peer_service:
            raise ValueError("PeerMesh needs -peer_service")
        self.config = config
        self.spec = config.peer_service
        self.entries = parse_peer_service(config.peer_service, config.peer_port)
        self.metrics = metrics
        # Defaults are read now, not at import, so tests and embedders can tune the module values.
        self.answer_wait_s = SUBSCRIPTION_WAIT_S if answer_wait_s is None else answer_wait_s
        self.grace_s = PEER_GRACE_S if grace_s is None else grace_s
        self.node_id = secrets.token_hex(8).encode("ascii")
        self._context: zmq.Context[Any] = zmq.Context()
        self._router: zmq.Socket[Any] | None = None
        self._frontend: ZmqFrontend | None = None
        self._local_open = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._commands: deque[tuple[Any, ...]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._discovery = PeerDiscovery(
            self.entries,
            lambda addresses: self._post("resolved", addresses),
            probe_targets=self._probe_targets,
            on_probed=lambda results: self._post("probed", results),
            interval_s=RESOLVE_INTERVAL_S if resolve_interval_s is None else resolve_interval_s,
        )
        # Owned by the I/O thread.
        self._poller = zmq.Poller()
        self._links: dict[Address, _Link] = {}
        self._by_socket: dict[zmq.Socket[Any], _Link] = {}
        self._node_links: dict[bytes, _Link] = {}
        self._nodes: dict[bytes, _Node] = {}
        self._held: list[_Held] = []
        self._version = 0
        self._local_topics: set[bytes] = set()
        self._leaving = False
        self._awaiting_flush: set[bytes] = set()
        self._leave_deadline = 0.0
        self._left: threading.Event | None = None
        self._next_ping = 0.0
        # Shared summaries (any thread reads them under the lock).
        self._lock = threading.Lock()
        self._resolved_once = False
        self._draining = False
        self._unready: str | None = f"peers: resolving -peer_service={self.spec}"
        self._unidentified: set[Address] = set()
        self._held_count = 0
        self._summary: dict[str, Any] = {"node_id": self.node_id.decode(), "addresses": 0, "connected": 0}
        r = metrics.registry
        self.forwarded = Counter(
            "bertserve_peer_answers_forwarded",
            "ZeroMQ answers sent to the replica holding the client's SUB connection",
            registry=r,
        )
        self.received = Counter(
            "bertserve_peer_answers_received", "ZeroMQ answers received from other replicas", registry=r
        )
        self.held = Counter(
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
        self.peers = Gauge(
            "bertserve_peers_connected", "Other replicas this one can route to now", registry=r
        )
        self.addresses = Gauge(
            "bertserve_peer_addresses",
            "Addresses -peer_service resolves to (this replica included)",
            registry=r,
        )

    # -- lifecycle (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        """Bind ``-peer_port`` (errors surface here, in the caller), start discovery and the I/O thread."""
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.TCP_KEEPALIVE, 1)
        if ":" in self.config.bind_host:
            router.setsockopt(zmq.IPV6, 1)
        bind = endpoint((self.config.bind_host, self.config.peer_port))
        try:
            router.bind(bind)
        except zmq.ZMQError as exc:
            router.close()
            raise OSError(
                f"cannot bind -peer_port {bind}: {exc.strerror}; choose a free port with -peer_port"
            ) from exc
        self._router = router
        self._poller.register(router, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._thread = threading.Thread(target=self._run, name="peer-mesh", daemon=True)
        self._thread.start()
        self._discovery.start()
        logger.info(
            "peers: node %s on %s, peers from -peer_service=%s", self.node_id.decode(), bind, self.spec
        )

    def attach(self, frontend: ZmqFrontend) -> ResultRouter:
        """``router_factory`` for :class:`ZmqFrontend`: follow its subscriptions, route its answers."""
        self._frontend = frontend
        self._local_open = True
        frontend.subscriptions.add_listener(lambda topic, on: self._post("local", topic, on))
        for topic in frontend.subscriptions.topics():
            self._post("local", topic, True)
        return self

    def unready_reason(self) -> str | None:
        """Why this replica cannot currently deliver every answer (``None``: it can). A readiness gate."""
        with self._lock:
            return "draining" if self._draining else self._unready

    def describe(self) -> dict[str, Any]:
        """A small summary for the status document (node id, addresses, connected peers, held answers)."""
        with self._lock:
            return dict(self._summary, held=self._held_count)

    def hand_off(self, deadline: float) -> None:
        """Shutdown, step 1: not Ready; move clients' request connections to other replicas."""
        with self._lock:
            self._draining = True
        if self._frontend is None:
            return
        budget = min(HANDOFF_S, max(0.0, deadline - time.monotonic()) / 3)
        hand_off_connections(self.config.port, budget)

    def leave(self, deadline: float) -> bool:
        """Shutdown, step 2 (local work answered): peers stop routing here and confirm. True if all did."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        timeout = min(LEAVE_S, max(0.0, deadline - time.monotonic()))
        self._post("leave", done, time.monotonic() + timeout)
        return done.wait(timeout + 0.5)

    def close(self, deadline: float) -> None:
        """Shutdown, step 3 (``-port_out`` closed): forward what still waits, within the deadline; stop."""
        self._local_open = False
        self._post("detach")
        self._discovery.stop()
        end = time.monotonic() + min(2.0, max(0.2, deadline - time.monotonic()))
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < end:
            with self._lock:
                if self._held_count == 0:
                    break
            time.sleep(0.02)
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                logger.warning("peers: the mesh thread did not stop in time; leaving it to process exit")
                return
        if self._router is not None and not self._router.closed:  # the thread never ran
            self._router.close(linger=0)
        self._context.term()
        with self._wake_lock:  # a late _post() (a slow DNS answer) must not write into a reused fd
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- delivery (any thread) -------------------------------------------------------------------

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """Publish here if the client subscribed here; otherwise let the I/O thread route it."""
        frontend = self._frontend
        if frontend is not None and self._local_open and frontend.subscriptions.matches(identity):
            frontend.publish(identity, frames)
            return
        self._post("deliver", identity, frames)

    def _post(self, *command: Any) -> None:
        self._commands.append(command)
        self._wake()

    def _wake(self) -> None:
        # A full pipe means a wake-up is already pending.
        with self._wake_lock, contextlib.suppress(BlockingIOError, OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def _probe_targets(self) -> set[Address]:
        with self._lock:
            return set(self._unidentified)

    # -- I/O thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        router = self._router
        assert router is not None
        try:
            while not self._stop.is_set():
                try:
                    self._turn(router)
                except zmq.ContextTerminated:
                    break
                except Exception:  # the mesh must outlive any single bad message
                    logger.exception("peer mesh loop error; continuing")
        finally:
            self._shutdown_sockets(router)

    def _turn(self, router: zmq.Socket[Any]) -> None:
        now = time.monotonic()
        timeout_ms = max(1, int((self._next_ping - now) * 1000)) if self._next_ping > now else 0
        events = dict(self._poller.poll(min(100, timeout_ms)))
        if self._wake_r in events:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if router in events:
            for _ in range(1000):
                try:
                    message = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_router(router, message)
        for sock, link in list(self._by_socket.items()):
            if sock in events:
                self._on_dealer(link)
        while self._commands:
            self._on_command(self._commands.popleft())
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + PING_INTERVAL_S
            self._tick(now)

    def _shutdown_sockets(self, router: zmq.Socket[Any]) -> None:
        dropped = len(self._held)
        if dropped:
            self.dropped.labels(reason="shutdown").inc(dropped)
            self.metrics.undeliverable.inc(dropped)
            logger.warning("peers: %d answer(s) still waiting for a subscriber at shutdown, dropped", dropped)
        self._held.clear()
        for link in self._links.values():
            if link.sock is not None:
                link.sock.close(linger=500)  # answers already handed to a link get a moment to leave
        router.close(linger=0)

    # -- commands --------------------------------------------------------------------------------

    def _on_command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "deliver":
            item = _Held(command[1], command[2], time.monotonic() + self.answer_wait_s)
            if not self._route(item):
                self._hold(item)
        elif kind == "local":
            self._on_local_subscription(command[1], command[2])
        elif kind == "resolved":
            self._on_resolved(command[1])
        elif kind == "probed":
            for address, listening in command[1].items():
                link = self._links.get(address)
                if link is not None:
                    link.listening = listening
            self._update_summary(time.monotonic())
        elif kind == "leave":
            self._start_leaving(command[1], command[2])
        elif kind == "detach":
            self._local_open = False

    def _on_local_subscription(self, topic: bytes, subscribed: bool) -> None:
        if subscribed:
            self._local_topics.add(topic)
        else:
            self._local_topics.discard(topic)
        self._version += 1
        if not self._leaving:
            message = [K_SUB if subscribed else K_UNSUB, self.node_id, b"%d" % self._version, topic]
            for link in self._identified_links():
                self._send(link, message)
        if subscribed:
            self._retry_held()

    def _on_resolved(self, addresses: set[Address]) -> None:
        now = time.monotonic()
        with self._lock:
            self._resolved_once = True
        for address in addresses - self._links.keys():
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # a send fails at once when the peer is unreachable
            sock.setsockopt(zmq.SNDHWM, DEALER_HWM)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            if ":" in address[0]:
                sock.setsockopt(zmq.IPV6, 1)
            sock.connect(endpoint(address))
            link = _Link(address, sock, first_seen=now)
            self._links[address] = link
            self._by_socket[sock] = link
            self._poller.register(sock, zmq.POLLIN)
            self._ping(link)
        for address in self._links.keys() - addresses:
            link = self._links.pop(address)
            if link.peer_id is not None and self._node_links.get(link.peer_id) is link:
                del self._node_links[link.peer_id]
            self._close_link(link)
            if not link.is_self:
                logger.info("peers: %s left the peer list", endpoint(address))
        self._update_summary(now)

    def _close_link(self, link: _Link) -> None:
        if link.sock is not None:
            self._poller.unregister(link.sock)
            self._by_socket.pop(link.sock, None)
            link.sock.close(linger=0)
            link.sock = None

    def _start_leaving(self, done: threading.Event, deadline: float) -> None:
        self._leaving = True
        self._left = done
        self._leave_deadline = deadline
        self._awaiting_flush = set()
        for link in self._identified_links():
            if self._link_up(link, time.monotonic()) and self._send(link, [K_LEAVING, self.node_id]):
                assert link.peer_id is not None
                self._awaiting_flush.add(link.peer_id)
        logger.info("peers: leaving; waiting for %d peer(s) to confirm", len(self._awaiting_flush))
        self._check_left(time.monotonic())

    def _check_left(self, now: float) -> None:
        if self._left is None:
            return
        if self._awaiting_flush and now < self._leave_deadline:
            return
        if self._awaiting_flush:
            logger.warning("peers: %d peer(s) did not confirm the leave in time", len(self._awaiting_flush))
        self._left.set()
        self._left = None

    # -- periodic --------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for link in list(self._links.values()):
            if not link.is_self and link.sock is not None:
                self._ping(link)
        for node_id, node in list(self._nodes.items()):
            if now - node.last_heard > NODE_TIMEOUT_S:
                del self._nodes[node_id]
                logger.info("peers: node %s silent for %.1fs, forgotten", node_id.decode(), NODE_TIMEOUT_S)
        if self._held:
            self._retry_held()
            self._expire_held(now)
        self._check_left(now)
        self._update_summary(now)

    def _ping(self, link: _Link) -> None:
        self._send(link, [K_PING, self.node_id, b"%d" % self._version])

    def _update_summary(self, now: float) -> None:
        links = list(self._links.values())
        connected = sum(1 for link in links if self._link_up(link, now))
        unidentified = {
            link.address for link in links if not link.is_self and link.peer_id is None and not link.ignored
        }
        waiting = []
        for link in links:
            if link.address not in unidentified:
                continue
            if now - link.first_seen > self.grace_s:
                link.ignored = True
                if link.listening is not False:
                    logger.warning(
                        "peers: %s accepts connections but completed no handshake within %.0fs; "
                        "treated as gone until it answers",
                        endpoint(link.address),
                        self.grace_s,
                    )
            elif link.listening is not False:
                waiting.append(link)
        reason: str | None = None
        if not self._resolved_once:
            reason = f"peers: -peer_service={self.spec} has not resolved to any address yet"
        elif not any(link.is_self for link in links):
            reason = (
                f"peers: this replica is not (yet) among the {len(links)} address(es) of "
                f"-peer_service={self.spec}, so other replicas cannot route answers to it"
            )
        elif waiting:
            names = ", ".join(endpoint(link.address) for link in waiting[:3])
            reason = f"peers: connecting to {len(waiting)} peer(s) ({names})"
        self.peers.set(connected)
        self.addresses.set(len(links))
        self.pending.set(len(self._held))
        with self._lock:
            self._unready = reason
            self._unidentified = unidentified
            self._held_count = len(self._held)
            self._summary = {
                "node_id": self.node_id.decode(),
                "addresses": len(links),
                "connected": connected,
            }

    # -- wire ------------------------------------------------------------------------------------

    def _send(self, link: _Link, frames: Sequence[Frame]) -> bool:
        if link.sock is None:
            return False
        try:
            link.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            link.send_ok = False  # not connected (IMMEDIATE) or congested
            return False
        link.send_ok = True
        return True

    def _identified_links(self) -> list[_Link]:
        return [link for link in self._links.values() if link.peer_id is not None and not link.is_self]

    def _link_up(self, link: _Link, now: float) -> bool:
        return (
            link.sock is not None
            and link.peer_id is not None
            and not link.is_self
            and link.send_ok
            and now - link.last_reply < LINK_TIMEOUT_S
        )

    def _on_dealer(self, link: _Link) -> None:
        for _ in range(1000):
            if link.sock is None:
                return
            try:
                message = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(message) >= 4 and message[0] == K_WELCOME:
                self._on_welcome(link, message[1], resync=message[2] == b"1", leaving=message[3] == b"1")

    def _on_welcome(self, link: _Link, peer_id: bytes, *, resync: bool, leaving: bool) -> None:
        now = time.monotonic()
        link.last_reply = now
        link.ignored = False
        if peer_id == self.node_id:
            link.is_self = True
            self._close_link(link)
            logger.info("peers: %s is this replica", endpoint(link.address))
            self._update_summary(now)
            return
        if link.peer_id != peer_id:
            if link.peer_id is not None and self._node_links.get(link.peer_id) is link:
                del self._node_links[link.peer_id]  # a new process at the same address
            link.peer_id = peer_id
            self._node_links[peer_id] = link
            resync = True
            logger.info("peers: connected to node %s at %s", peer_id.decode(), endpoint(link.address))
            self._update_summary(now)
        link.peer_leaving = leaving
        if leaving:
            node = self._nodes.get(peer_id)
            if node is not None and not node.leaving:
                node.leaving = True
                node.replace(())
        if resync and not self._leaving:
            self._send(link, [K_SNAPSHOT, self.node_id, b"%d" % self._version, *sorted(self._local_topics)])
        if self._held:
            self._retry_held()

    def _on_router(self, router: zmq.Socket[Any], message: list[bytes]) -> None:
        if len(message) < 3:
            return
        rid, kind, node_id = message[0], message[1], message[2]
        if node_id == self.node_id:  # our own link, during self-detection
            if kind == K_PING:
                self._welcome(router, rid, resync=False)
            return
        now = time.monotonic()
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(last_heard=now)
        node.last_heard = now
        if kind == K_PING and len(message) >= 4:
            self._welcome(router, rid, resync=not node.leaving and node.version != int(message[3]))
        elif kind == K_ANSWER and len(message) >= 6:
            self._on_answer(node_id, hops=int(message[3]), sole=message[4] == b"1", frames=message[5:])
        elif kind in (K_SUB, K_UNSUB) and len(message) >= 5:
            version = int(message[3])
            if node.leaving or version != node.version + 1:
                return  # a gap: the next ping's version check asks for a snapshot
            node.version = version
            if kind == K_SUB:
                node.add(message[4])
                self._retry_held()
            else:
                node.remove(message[4])
        elif kind == K_SNAPSHOT and len(message) >= 4:
            if not node.leaving:
                node.version = int(message[3])
                node.replace(message[4:])
                self._retry_held()
        elif kind == K_LEAVING:
            node.leaving = True
            node.replace(())
            link = self._node_links.get(node_id)
            if link is not None:
                self._send(link, [K_FLUSHED, self.node_id])  # after every answer we sent it
            logger.info("peers: node %s is leaving", node_id.decode())
        elif kind == K_FLUSHED:
            self._awaiting_flush.discard(node_id)
            self._check_left(now)

    def _welcome(self, router: zmq.Socket[Any], rid: bytes, *, resync: bool) -> None:
        reply = [rid, K_WELCOME, self.node_id, b"1" if resync else b"0", b"1" if self._leaving else b"0"]
        with contextlib.suppress(zmq.ZMQError):  # the peer went away meanwhile
            router.send_multipart(reply, flags=zmq.NOBLOCK)

    # -- routing ---------------------------------------------------------------------------------

    def _local_match(self, identity: bytes) -> bool:
        frontend = self._frontend
        return frontend is not None and self._local_open and frontend.subscriptions.matches(identity)

    def _route(self, item: _Held) -> bool:
        """Send ``item`` where its subscriber is; False if no replica can take it now."""
        if self._local_match(item.identity):
            assert self._frontend is not None
            self._frontend.publish(item.identity, item.frames)
            return True
        if item.hops >= MAX_HOPS:
            return False
        now = time.monotonic()
        targets = []
        for node_id, node in self._nodes.items():
            if node_id == item.exclude or node.leaving or not node.matches(item.identity):
                continue
            link = self._node_links.get(node_id)
            if link is not None and self._link_up(link, now) and not link.peer_leaving:
                targets.append(link)
        sole = b"1" if len(targets) == 1 else b"0"
        sent = 0
        for link in targets:
            head: list[Frame] = [K_ANSWER, self.node_id, b"%d" % (item.hops + 1), sole]
            if self._send(link, head + list(item.frames)):
                sent += 1
        if sent:
            self.forwarded.inc(sent)
        return sent > 0

    def _on_answer(self, sender: bytes, *, hops: int, sole: bool, frames: list[bytes]) -> None:
        self.received.inc()
        identity = frames[0]
        if self._local_match(identity):
            assert self._frontend is not None
            self._frontend.publish(identity, frames)
            return
        if not sole:
            return  # sent to every holder; another one has the subscriber
        item = _Held(identity, frames, time.monotonic() + self.answer_wait_s, hops=hops, exclude=sender)
        if not self._route(item):
            self._hold(item)

    def _hold(self, item: _Held) -> None:
        if not item.counted:
            item.counted = True
            self.held.inc()
        self._held.append(item)
        self.pending.set(len(self._held))
        with self._lock:
            self._held_count = len(self._held)

    def _retry_held(self) -> None:
        if not self._held:
            return
        waiting, self._held = self._held, []
        for item in waiting:
            if not self._route(item):
                self._held.append(item)
        self.pending.set(len(self._held))
        with self._lock:
            self._held_count = len(self._held)

    def _expire_held(self, now: float) -> None:
        kept = []
        for item in self._held:
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
        self._held = kept
