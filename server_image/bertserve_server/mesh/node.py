"""One replica's membership in the mesh: lifecycle, the I/O thread, and the glue between parts.

Why it exists: links, gossip and routing each own one idea; something must own the sockets and
the order of events. That is :class:`PeerMesh`: every mesh socket belongs to its one I/O thread;
other threads (the ZeroMQ frontend, discovery, shutdown) talk to it through a command queue and
a wake-up pipe, as the ZeroMQ frontend does. It is also the frontend's :class:`ResultRouter`.

Leaving (drain): a replica tells its peers it is leaving, they stop routing to it and confirm;
only then does it close ``-port_out``, whose clients reconnect elsewhere and re-subscribe, and
answers held for them meanwhile are delivered there.
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
from typing import Any

import zmq
from prometheus_client import Counter, Gauge
from zmq.utils.monitor import parse_monitor_message

from bertserve_api.contract import ServerConfig
from bertserve_server.frontends.zmq import SUBSCRIPTION_WAIT_S, Frame, ResultRouter, ZmqFrontend
from bertserve_server.mesh import wire
from bertserve_server.mesh.discovery import (
    RESOLVE_INTERVAL_S,
    Address,
    PeerDiscovery,
    endpoint,
    parse_peer_service,
)
from bertserve_server.mesh.gossip import LocalTopics, PeerTable
from bertserve_server.mesh.handoff import hand_off_connections
from bertserve_server.mesh.links import PING_INTERVAL_S, Link, Links, SocketLimits, bind_router, send_welcome
from bertserve_server.mesh.routing import Routes
from bertserve_server.mesh.security import MeshKeys, load_secret, start_authenticator
from bertserve_server.metrics import Metrics
from bertserve_server.throttled_log import ThrottledLog

logger = logging.getLogger(__name__)

PEER_GRACE_S = 10.0
"""How long an address that accepts TCP but has not completed the handshake keeps us not Ready."""
HANDOFF_S = 2.0
"""Upper bound for moving clients' request connections away at shutdown (normally milliseconds)."""
LEAVE_S = 1.0
"""Upper bound for peers to confirm they stopped routing answers to a leaving replica."""
RECV_BURST = 1000
"""Messages read from one socket per loop turn before the others get their turn."""
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
"""Monitor events on the peer port: someone spoke ZMTP without the mesh key. (A connection closed
before any handshake, such as discovery's TCP probe or a port scan, is not counted.)"""


def max_peer_frame(config: ServerConfig) -> int:
    """The largest frame a peer may send: an answer's array (at most ``-max_response_bytes``) or
    its header, whose tokens come from the request text (at most ``-max_request_bytes``)."""
    return config.max_response_bytes + 2 * config.max_request_bytes


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
        self.keys = MeshKeys.from_secret(load_secret(config.peer_key_file))
        self.limits = SocketLimits(self.keys, config.heartbeat_timeout, max_peer_frame(config))
        self.node_id = secrets.token_hex(8).encode("ascii")
        self._context: zmq.Context[Any] = zmq.Context()
        self._auth: Any = None
        self._monitor: zmq.Socket[Any] | None = None
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
        self.links = Links(self._context, self._poller, self.node_id, self.limits)
        self.peers = PeerTable()
        self.local = LocalTopics()
        self.routes = Routes(
            self.node_id,
            self.peers,
            self.links,
            metrics,
            answer_wait_s=self.answer_wait_s,
            local_match=self._local_match,
            publish_local=self._publish_local,
        )
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
        self.rejected = Counter(
            "bertserve_peer_frames_rejected",
            "Messages and connections on the mesh refused, by reason: version (another mesh protocol "
            "version), malformed (not a valid mesh message), handshake (a connection without the mesh "
            "key, or not a replica), unknown_key (a CURVE client key other than the mesh's)",
            ["reason"],
            registry=r,
        )
        self._reject_logs = {
            reason: ThrottledLog(logger) for reason in ("version", "malformed", "handshake", "unknown_key")
        }
        self.peers_gauge = Gauge(
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
        self._auth = start_authenticator(self._context, self.keys, lambda: self._reject("unknown_key", None))
        try:
            self._router = bind_router(
                self._context, self.config.bind_host, self.config.peer_port, self.limits
            )
        except Exception:
            self._auth.stop()
            raise
        self._monitor = self._router.get_monitor_socket(HANDSHAKE_FAILURES)
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._thread = threading.Thread(target=self._run, name="peer-mesh", daemon=True)
        self._thread.start()
        self._discovery.start()
        logger.info(
            "peers: node %s on %s, peers from -peer_service=%s",
            self.node_id.decode(),
            endpoint((self.config.bind_host, self.config.peer_port)),
            self.spec,
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

    def detach(self, timeout: float = 1.0) -> None:
        """Shutdown, before ``-port_out`` closes: from now on nothing is published here.

        Answers that arrive for local subscribers after this (forwarded by peers before they saw
        the leave) are held and follow their clients to the replica they reconnect to, instead of
        going into the outbox of a closed socket. Waits until the I/O thread has seen it.
        """
        self._local_open = False
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._post("detach", done)
        done.wait(timeout)

    def close(self, deadline: float) -> None:
        """Shutdown, step 3 (``-port_out`` closed): forward what still waits, within the deadline; stop."""
        self._local_open = False
        self._post("detach", None)
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
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
        with self._wake_lock:  # a late _post() (a slow DNS answer) must not write into a reused fd
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- delivery (any thread) -------------------------------------------------------------------

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """Publish here if the client subscribed here; otherwise let the I/O thread route it."""
        if self._local_match(identity):
            self._publish_local(identity, frames)
            return
        self._post("deliver", identity, frames)

    def _local_match(self, identity: bytes) -> bool:
        frontend = self._frontend
        return frontend is not None and self._local_open and frontend.subscriptions.matches(identity)

    def _publish_local(self, identity: bytes, frames: Sequence[Frame]) -> None:
        assert self._frontend is not None
        self._frontend.publish(identity, frames)

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
            self.routes.drop_all("shutdown")
            self.links.close_all(linger_ms=500)  # answers already handed to a link get a moment to leave
            if self._monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    router.disable_monitor()
                self._monitor.close(linger=0)
            router.close(linger=0)

    def _turn(self, router: zmq.Socket[Any]) -> None:
        now = time.monotonic()
        timeout_ms = max(1, int((self._next_ping - now) * 1000)) if self._next_ping > now else 0
        events = dict(self._poller.poll(min(100, timeout_ms)))
        if self._wake_r in events:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if router in events:
            for _ in range(RECV_BURST):
                try:
                    message = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_router(router, message)
        if self._monitor is not None and self._monitor in events:
            self._on_monitor(self._monitor)
        for sock, link in list(self.links.by_socket.items()):
            if sock in events:
                self._on_dealer(link)
        while self._commands:
            self._on_command(self._commands.popleft())
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + PING_INTERVAL_S
            self._tick(now)

    # -- commands --------------------------------------------------------------------------------

    def _on_command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "deliver":
            self.routes.deliver(command[1], command[2])
            self._update_held()
        elif kind == "local":
            self._on_local_subscription(command[1], command[2])
        elif kind == "resolved":
            self._on_resolved(command[1])
        elif kind == "probed":
            for address, listening in command[1].items():
                link = self.links.by_address.get(address)
                if link is not None:
                    link.listening = listening
            self._update_summary(time.monotonic())
        elif kind == "leave":
            self._start_leaving(command[1], command[2])
        elif kind == "detach":
            self._local_open = False
            if command[1] is not None:
                command[1].set()

    def _on_local_subscription(self, topic: bytes, subscribed: bool) -> None:
        version = self.local.change(topic, subscribed)
        if not self._leaving:
            message = wire.delta(self.node_id, version, topic, subscribed=subscribed)
            for link in self.links.identified():
                self.links.send(link, message)
        if subscribed:
            self._retry_held()

    def _on_resolved(self, addresses: set[Address]) -> None:
        now = time.monotonic()
        with self._lock:
            self._resolved_once = True
        for address in addresses - self.links.by_address.keys():
            link = self.links.open(address, now)
            self.links.ping(link, self.local.version)
        for address in self.links.by_address.keys() - addresses:
            link = self.links.remove(address)
            if not link.is_self:
                logger.info("peers: %s left the peer list", endpoint(address))
        self._update_summary(now)

    def _start_leaving(self, done: threading.Event, deadline: float) -> None:
        self._leaving = True
        self._left = done
        self._leave_deadline = deadline
        self._awaiting_flush = set()
        now = time.monotonic()
        for link in self.links.identified():
            if self.links.up(link, now) and self.links.send(link, wire.leaving(self.node_id)):
                assert link.peer_id is not None
                self._awaiting_flush.add(link.peer_id)
        logger.info("peers: leaving; waiting for %d peer(s) to confirm", len(self._awaiting_flush))
        self._check_left(now)

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
        self.links.ping_all(self.local.version)
        self.peers.forget_silent(now)
        if self.routes.held:
            self.routes.retry()
            self.routes.expire(now)
            self._update_held()
        self._check_left(now)
        self._update_summary(now)

    def _retry_held(self) -> None:
        if self.routes.held:
            self.routes.retry()
            self._update_held()

    def _update_held(self) -> None:
        with self._lock:
            self._held_count = len(self.routes.held)

    def _update_summary(self, now: float) -> None:
        links = list(self.links.by_address.values())
        connected = sum(1 for link in links if self.links.up(link, now))
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
        self.peers_gauge.set(connected)
        self.addresses.set(len(links))
        with self._lock:
            self._unready = reason
            self._unidentified = unidentified
            self._held_count = len(self.routes.held)
            self._summary = {
                "node_id": self.node_id.decode(),
                "addresses": len(links),
                "connected": connected,
            }

    # -- wire ------------------------------------------------------------------------------------

    def _reject(self, reason: str, error: wire.RejectedMessageError | None, origin: str = "") -> None:
        """Count a refused message or connection; log it (at most once per interval and reason)."""
        self.rejected.labels(reason=reason).inc()
        if reason == "version":
            self._reject_logs[reason].warning(
                "peers: refused a replica%s: it %s; mixed-version replicas cannot share a mesh, "
                "roll every replica to one version",
                origin,
                error,
            )
        elif reason == "malformed":
            self._reject_logs[reason].warning("peers: dropped a malformed mesh message%s: %s", origin, error)
        elif reason == "handshake":
            self._reject_logs[reason].warning(
                "peers: a connection to -peer_port failed the mesh handshake (a replica with another "
                "-peer_key_file, or not a replica); nothing was exchanged"
            )
        else:
            self._reject_logs[reason].warning(
                "peers: refused a CURVE client key that is not the mesh key (not a replica)"
            )

    def _on_monitor(self, monitor: zmq.Socket[Any]) -> None:
        for _ in range(RECV_BURST):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] & HANDSHAKE_FAILURES and event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._reject("handshake", None)  # AUTH failures were counted by the ZAP handler

    def _on_dealer(self, link: Link) -> None:
        for _ in range(RECV_BURST):
            if link.sock is None:
                return
            try:
                raw = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = wire.decode(raw)
                if message.kind != wire.K_WELCOME:
                    raise wire.RejectedMessageError("malformed", "a DEALER receives only welcomes")
            except wire.RejectedMessageError as exc:
                self._reject(exc.reason, exc, f" at {endpoint(link.address)}")
                continue
            self.links.confirmed(link, message.seq)
            self._on_welcome(link, message.node_id, resync=message.resync, leaving=message.leaving)

    def _on_welcome(self, link: Link, peer_id: bytes, *, resync: bool, leaving: bool) -> None:
        now = time.monotonic()
        outcome = self.links.identify(link, peer_id, now)
        if outcome == "self":
            self._update_summary(now)
            return
        if outcome == "new":
            resync = True
            self._update_summary(now)
        link.peer_leaving = leaving
        if leaving:
            node = self.peers.nodes.get(peer_id)
            if node is not None and not node.leaving:
                self.peers.mark_leaving(peer_id, node)
        if resync and not self._leaving:
            self.links.send(link, wire.snapshot(self.node_id, self.local.version, self.local.topics))
        self._retry_held()

    def _on_router(self, router: zmq.Socket[Any], raw: list[bytes]) -> None:
        rid = raw[0]
        try:
            message = wire.decode(raw[1:])
            if message.kind == wire.K_WELCOME:
                raise wire.RejectedMessageError("malformed", "a welcome sent to the ROUTER")
        except wire.RejectedMessageError as exc:
            self._reject(exc.reason, exc)
            return
        kind, node_id = message.kind, message.node_id
        if node_id == self.node_id:  # our own link, during self-detection
            if kind == wire.K_PING:
                send_welcome(router, rid, self.node_id, resync=False, leaving=self._leaving, seq=message.seq)
            return
        now = time.monotonic()
        node = self.peers.heard(node_id, now)
        if kind == wire.K_PING:
            resync = self.peers.needs_snapshot(node, message.version)
            send_welcome(router, rid, self.node_id, resync=resync, leaving=self._leaving, seq=message.seq)
        elif kind == wire.K_ANSWER:
            self.routes.on_answer(node_id, hops=message.hops, frames=message.frames)
            self._update_held()
        elif kind in (wire.K_SUB, wire.K_UNSUB):
            subscribed = kind == wire.K_SUB
            applied = self.peers.apply_delta(
                node_id, node, message.version, message.identities[0], subscribed=subscribed
            )
            if applied and subscribed:
                self._retry_held()
        elif kind == wire.K_SNAPSHOT:
            if self.peers.apply_snapshot(node_id, node, message.version, message.identities):
                self._retry_held()
        elif kind == wire.K_LEAVING:
            self.peers.mark_leaving(node_id, node)
            link = self.links.by_node.get(node_id)
            if link is not None:
                self.links.send(link, wire.flushed(self.node_id))  # after every answer we sent it
            logger.info("peers: node %s is leaving", node_id.decode("ascii", "replace"))
        elif kind == wire.K_FLUSHED:
            self._awaiting_flush.discard(node_id)
            self._check_left(now)
