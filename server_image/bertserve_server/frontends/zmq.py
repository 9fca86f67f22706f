"""The classic two-port ZeroMQ protocol, byte-compatible with ``bert-serving-client==1.10.0``.

Why it exists: the seed's users run the unmodified PyPI client. It PUSHes 4-frame requests
``[identity, payload, req_id, msg_len]`` to ``-port`` and SUBscribes to its identity on
``-port_out`` (reference §3). This module speaks exactly that, with three changes the client
cannot see:

* **No lost first reply.** 1.10.0 published on a PUB socket and slept 0.1 s hoping the client's
  subscription had arrived (the "slow joiner" race). Here ``-port_out`` is an **XPUB** socket, so
  the server *sees* subscriptions: an answer for an identity nobody has subscribed to yet is held
  until the subscription arrives (at most :data:`SUBSCRIPTION_WAIT_S`, then dropped and counted
  in ``bertserve_answers_dropped_total{reason="no_subscriber"}``). Nothing sleeps. The hold is
  bounded by :data:`MAX_HELD_ANSWERS` answers and ``-max_response_bytes`` bytes (oldest dropped,
  ``reason="hold_full"``).
* **Exact identities, never prefixes.** ZeroMQ's SUB filter is a prefix match, so a SUB
  subscribed to ``b""`` would receive every client's answers. ``-port_out`` runs in manual mode
  (``XPUB_MANUAL``): a subscription takes effect only when this module applies it, and one shorter
  than ``-min_identity_len`` bytes (the 1.10.0 client subscribes to a 36-byte UUID) is refused,
  counted (``bertserve_subscriptions_refused_total``) and logged (at most once per interval).
  Answers are held and published only for an identity subscribed *exactly*
  (:class:`SubscriptionRegistry`), so a tap on a prefix gets nothing it did not already know.
* **Bounded and alive.** ``MAXMSGSIZE`` bounds every frame read from the network (so libzmq never
  assembles a multi-GiB message), and ZeroMQ heartbeats (``-heartbeat_timeout``) close
  connections of clients that vanished without a FIN, which ends their subscriptions.
* **The I/O thread never parses big bodies.** Payloads above :data:`OFFLOAD_BYTES` are decoded
  and validated on a helper thread; answers are zero-copy views of the result array.
* **Bad input is answered, never fatal.** Every request goes through ``validation`` and the
  bounded queue; failures become the error reply described in ``errors`` (a well-formed answer
  whose ``dtype`` makes the 1.10.0 client raise ``TypeError`` with the server's message, plus an
  ``error`` object in the header). Requests that cannot be addressed (wrong frame count,
  non-digit ``req_id``) are logged, counted and dropped; any other exception while handling a
  request becomes an error reply (reason ``internal``). Identities may hold any bytes,
  ``#`` and ``@`` included — nothing here splits on them.
* **TERMINATION is refused** (logged and counted) unless ``-enable_termination``.

The seam for scale-out: answers leave through a :class:`ResultRouter` (``deliver(identity,
frames)``). The default :class:`LocalResultRouter` publishes on this replica's XPUB socket via
:meth:`ZmqFrontend.publish`. Behind a Kubernetes Service a client's PUSH and SUB connections may
land on different replicas; a peering router (``router_factory``) can then look the identity up
in every replica's :class:`SubscriptionRegistry` (``ZmqFrontend.subscriptions``, with change
listeners) and hand the frames to the replica that holds the SUB connection, which calls its own
``publish``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import zmq

from bertserve_api.contract import ServerConfig
from bertserve_server.answer_drops import AnswerDrops
from bertserve_server.errors import (
    InvalidInput,
    ServeError,
    Unanswerable,
    as_request_error,
    as_serve_error,
    zmq_error_frames,
)
from bertserve_server.metrics import Metrics
from bertserve_server.service import EncodeAnswer, EncodeService
from bertserve_server.status import StatusBook
from bertserve_server.throttled_log import ThrottledLog
from bertserve_server.validation import parse_count, parse_json_payload

logger = logging.getLogger(__name__)

Frame = bytes | memoryview
"""One ZeroMQ message part as handed to ``send_multipart`` (``memoryview`` avoids copying arrays)."""

SUBSCRIPTION_WAIT_S = 10.0
"""How long an answer waits for its client's SUB subscription before it is dropped."""
SNDHWM = 10000
"""Answers queued per subscriber before ZeroMQ drops (a client that never reads its answers)."""
RECV_BURST = 256
"""Requests read per loop turn before subscriptions and answers get their turn again."""
MAX_HELD_ANSWERS = 10000
"""Answers held for not-yet-subscribed identities at most (oldest dropped beyond)."""
MAX_SUBSCRIPTION_BYTES = 1024
"""Largest subscription message read on ``-port_out`` (its ``MAXMSGSIZE``); identities are short."""
MAX_REQ_ID_DIGITS = 64
"""A ``req_id`` longer than this cannot come from a client's counter: the request is dropped."""
OFFLOAD_BYTES = 256 * 1024
"""Payloads larger than this are parsed and validated off the I/O thread."""

SHOW_CONFIG = b"SHOW_CONFIG"
SHOW_STATUS = b"SHOW_STATUS"
TERMINATION = b"TERMINATION"


class ResultRouter(Protocol):
    """Where answers go. ``deliver`` is thread-safe and must not block."""

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None: ...


class SubscriptionRegistry:
    """The identities subscribed on this replica's ``-port_out``, matched *exactly*.

    Counted per subscribing connection (two SUB sockets may hold the same identity; it stays
    subscribed until both are gone). Thread-safe. Listeners are called ``(identity, subscribed)``
    when an identity gains its first or loses its last subscriber, from the I/O thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[bytes, int] = {}
        self._listeners: list[Callable[[bytes, bool], None]] = []

    def add_listener(self, listener: Callable[[bytes, bool], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, topic: bytes, subscribed: bool) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(topic, subscribed)
            except Exception:
                logger.exception("subscription listener failed")

    def add(self, topic: bytes) -> None:
        with self._lock:
            count = self._counts.get(topic, 0)
            self._counts[topic] = count + 1
        if count == 0:
            self._notify(topic, True)

    def remove(self, topic: bytes) -> None:
        with self._lock:
            count = self._counts.get(topic, 0)
            if count == 0:
                return
            if count == 1:
                del self._counts[topic]
            else:
                self._counts[topic] = count - 1
        if count == 1:
            self._notify(topic, False)

    def matches(self, identity: bytes) -> bool:
        """Whether ``identity`` itself is subscribed here (no prefix semantics)."""
        with self._lock:
            return identity in self._counts

    def topics(self) -> list[bytes]:
        with self._lock:
            return sorted(self._counts)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)


@dataclass(eq=False)
class _HeldAnswer:
    identity: bytes
    frames: Sequence[Frame]
    size: int
    deadline: float
    done: bool = False


def frames_size(frames: Sequence[Frame]) -> int:
    """Bytes an answer occupies while held or queued."""
    return sum(memoryview(f).nbytes for f in frames)


class LocalResultRouter:
    """Delivers through this replica's own XPUB socket (the single-server case)."""

    def __init__(self, frontend: ZmqFrontend) -> None:
        self._frontend = frontend

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None:
        self._frontend.publish(identity, frames)


def _endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _client_name(identity: bytes) -> str:
    return identity.decode("ascii", errors="backslashreplace")


class ZmqFrontend:
    """PULL on ``-port``, XPUB on ``-port_out``, one I/O thread owning both sockets."""

    def __init__(
        self,
        config: ServerConfig,
        service: EncodeService,
        status: StatusBook,
        metrics: Metrics,
        *,
        on_terminate: Callable[[], None] | None = None,
        router_factory: Callable[[ZmqFrontend], ResultRouter] | None = None,
        subscription_wait_s: float = SUBSCRIPTION_WAIT_S,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.status = status
        self.metrics = metrics
        self.on_terminate = on_terminate
        self.subscription_wait_s = subscription_wait_s
        self.max_payload_bytes = config.max_request_bytes
        self.max_held_answers = MAX_HELD_ANSWERS
        self.max_held_bytes = config.max_response_bytes
        self.subscriptions = SubscriptionRegistry()
        self.router: ResultRouter = (router_factory or LocalResultRouter)(self)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._pull: zmq.Socket[Any] | None = None
        self._xpub: zmq.Socket[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outbox: list[tuple[bytes, Sequence[Frame]]] = []
        self._held: dict[bytes, list[_HeldAnswer]] = {}
        self._held_order: deque[_HeldAnswer] = deque()
        self._held_count = 0
        self._held_bytes = 0
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._parse_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmq-parse")
        self._refused_log = ThrottledLog(logger)
        self._drops = AnswerDrops(metrics, logger)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- lifecycle -------------------------------------------------------------------------------

    def _configure(self, sock: zmq.Socket[Any], max_message_bytes: int) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        # ZMTP heartbeats: a client that vanished without closing its TCP connection (node gone,
        # network cut) is detected within -heartbeat_timeout, and its subscription ends with it.
        timeout_ms = max(100, int(self.config.heartbeat_timeout * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(50, timeout_ms // 3))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)
        if ":" in self.config.bind_host:
            sock.setsockopt(zmq.IPV6, 1)

    def start(self) -> None:
        """Bind both ports (errors surface here, in the caller) and start the I/O thread."""
        pull = self._context.socket(zmq.PULL)
        xpub = self._context.socket(zmq.XPUB)
        # A frame may exceed the payload limit a little and still get its too_large answer; beyond
        # twice the limit libzmq drops the connection before assembling the frame.
        self._configure(pull, 2 * self.config.max_request_bytes)
        self._configure(xpub, MAX_SUBSCRIPTION_BYTES)
        xpub.setsockopt(zmq.SNDHWM, SNDHWM)
        xpub.setsockopt(zmq.XPUB_NODROP, 1)  # a full subscriber queue is reported, so it can be counted
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        for sock, port, flag in (
            (pull, self.config.port, "-port"),
            (xpub, self.config.port_out, "-port_out"),
        ):
            endpoint = _endpoint(self.config.bind_host, port)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                pull.close()
                xpub.close()
                raise OSError(
                    f"cannot bind {flag} {endpoint}: {exc.strerror}; choose a free port with {flag}"
                ) from exc
        self._pull, self._xpub = pull, xpub
        self._thread = threading.Thread(target=self._run, name="zmq-frontend", daemon=True)
        self._thread.start()
        logger.info(
            "ZeroMQ: requests on %s (PULL), answers on %s (XPUB)",
            _endpoint(self.config.bind_host, self.config.port),
            _endpoint(self.config.bind_host, self.config.port_out),
        )

    def flush(self, timeout: float) -> bool:
        """Wait until every accepted encode request has been answered and handed to ZeroMQ."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight > 0 or self._outbox:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
            return True

    def stop(self, linger_s: float = 1.0) -> None:
        """Stop the I/O thread; answers already handed to ZeroMQ get ``linger_s`` to leave."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._parse_pool.shutdown(wait=False, cancel_futures=True)
        for sock in (self._pull, self._xpub):
            if sock is not None:
                sock.close(linger=int(linger_s * 1000))
        if self._own_context:
            self._context.term()
        with self._lock:  # a late publish() must not write into a reused descriptor number
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
            late = len(self._outbox) + self._held_count
            self._outbox.clear()
            self._held.clear()
            self._held_order.clear()
            self._held_count = self._held_bytes = 0
        self._drops.drop("shutdown", late, "the server stopped before their clients subscribed")
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- delivery --------------------------------------------------------------------------------

    def publish(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """Send ``frames`` on this replica's XPUB socket once ``identity`` is subscribed (thread-safe).

        After :meth:`stop` nothing can be sent any more: the answer is counted as dropped
        (``reason="shutdown"``) instead of going into an outbox nobody reads.
        """
        with self._lock:
            stopped = self._wake_w < 0
            if not stopped:
                self._outbox.append((identity, frames))
        if stopped:
            self._drops.drop("shutdown", 1, "the server's -port_out is closed")
            return
        self._wake()

    def _wake(self) -> None:
        # A full pipe means a wake-up is already pending; a closed one, that we are shutting down.
        with self._lock, contextlib.suppress(BlockingIOError, OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def _drain_outbox(self, xpub: zmq.Socket[Any]) -> None:
        with self._lock:
            outbox, self._outbox = self._outbox, []
        now = time.monotonic()
        for identity, frames in outbox:
            if self.subscriptions.matches(identity):
                self._send(xpub, frames)
            else:
                self._hold(identity, frames, now + self.subscription_wait_s)
        if outbox:
            with self._idle:
                self._idle.notify_all()

    def _hold(self, identity: bytes, frames: Sequence[Frame], deadline: float) -> None:
        item = _HeldAnswer(identity, frames, frames_size(frames), deadline)
        self._held.setdefault(identity, []).append(item)
        self._held_order.append(item)
        self._held_count += 1
        self._held_bytes += item.size
        full = 0
        while self._held_count > 1 and (
            self._held_count > self.max_held_answers or self._held_bytes > self.max_held_bytes
        ):
            self._forget(self._oldest_held())
            full += 1
        self._drops.drop(
            "hold_full",
            full,
            "more than %d answers or %d bytes waited for subscriptions on -port_out (oldest dropped)",
            self.max_held_answers,
            self.max_held_bytes,
        )

    def _oldest_held(self) -> _HeldAnswer:
        while self._held_order[0].done:
            self._held_order.popleft()
        return self._held_order[0]

    def _forget(self, item: _HeldAnswer) -> None:
        """Take ``item`` out of the hold (it was sent or dropped)."""
        item.done = True
        self._held_count -= 1
        self._held_bytes -= item.size
        waiting = self._held.get(item.identity)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(item)
            if not waiting:
                del self._held[item.identity]
        while self._held_order and self._held_order[0].done:
            self._held_order.popleft()

    def _flush_held(self, xpub: zmq.Socket[Any], identity: bytes) -> None:
        for item in list(self._held.get(identity, ())):
            self._forget(item)
            self._send(xpub, item.frames)

    def _send(self, xpub: zmq.Socket[Any], frames: Sequence[Frame]) -> None:
        """Publish, or count the answer as dropped when a subscriber has SNDHWM answers unread."""
        try:
            xpub.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._drops.drop(
                "subscriber_full",
                1,
                "a subscriber of the client identity has %d answers unread on -port_out",
                SNDHWM,
            )

    def _expire_held(self) -> None:
        now = time.monotonic()
        expired = 0
        # Every answer waits the same time, so arrival order is deadline order.
        while self._held_order and (self._held_order[0].done or self._held_order[0].deadline <= now):
            item = self._held_order.popleft()
            if not item.done:
                self._forget(item)
                expired += 1
        self._drops.drop(
            "no_subscriber",
            expired,
            "no subscription for their client identity on -port_out within %.1fs",
            self.subscription_wait_s,
        )

    def held_count(self) -> int:
        return self._held_count

    # -- I/O loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        pull, xpub = self._pull, self._xpub
        assert pull is not None and xpub is not None
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            timeout_ms = 100.0
            if self._held_order:
                next_expiry = self._held_order[0].deadline
                timeout_ms = max(1.0, min(timeout_ms, (next_expiry - time.monotonic()) * 1000))
            try:
                events = dict(poller.poll(int(timeout_ms)))
                if xpub in events:
                    self._read_subscriptions(xpub)
                if self._wake_r in events:
                    self._clear_wake()
                if pull in events:
                    for _ in range(RECV_BURST):
                        try:
                            frames = pull.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                self._drain_outbox(xpub)
                self._expire_held()
            except zmq.ContextTerminated:
                break
            except Exception:  # the loop must outlive any single bad message
                logger.exception("ZeroMQ frontend loop error; continuing")
        with contextlib.suppress(zmq.ZMQError):
            self._drain_outbox(xpub)

    def _clear_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read_subscriptions(self, xpub: zmq.Socket[Any]) -> None:
        """Apply (or refuse) each (un)subscription; manual mode applies nothing by itself.

        ``setsockopt(SUBSCRIBE)`` right after ``recv`` applies to the connection that sent the
        message just read, which is how libzmq's manual mode is meant to be driven.
        """
        minimum = self.config.min_identity_len
        while True:
            try:
                message = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not message or message[0] not in (0, 1):
                continue
            topic = message[1:]
            subscribe = message[0] == 1
            if len(topic) < minimum:
                if subscribe:
                    self.metrics.subscriptions_refused.inc()
                    self._refused_log.warning(
                        "refused a subscription of %d bytes (%r) on -port_out: identities must have at "
                        "least -min_identity_len=%d bytes",
                        len(topic),
                        topic[:16],
                        minimum,
                    )
                continue
            if subscribe:
                xpub.setsockopt(zmq.SUBSCRIBE, topic)
                self.subscriptions.add(topic)
                self._flush_held(xpub, topic)
            else:
                with contextlib.suppress(zmq.ZMQError):
                    xpub.setsockopt(zmq.UNSUBSCRIBE, topic)
                self.subscriptions.remove(topic)
            self.metrics.subscribed.set(len(self.subscriptions))

    # -- requests --------------------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 4:
            self._drop(
                frames[0] if frames else b"",
                Unanswerable(f"expected 4 frames [identity, payload, req_id, msg_len], got {len(frames)}"),
            )
            return
        identity, payload, req_id, msg_len = frames
        if not req_id.isdigit() or len(req_id) > MAX_REQ_ID_DIGITS:
            self._drop(
                identity,
                Unanswerable(f"req_id must be 1-{MAX_REQ_ID_DIGITS} ASCII digits, got {req_id[:20]!r}"),
            )
            return
        try:
            if payload in (SHOW_CONFIG, SHOW_STATUS):
                self._answer_status(identity, req_id, with_statistic=payload == SHOW_STATUS)
            elif payload == TERMINATION:
                self._terminate(identity)
            else:
                self._encode(identity, payload, req_id, msg_len)
        except Exception as exc:  # an addressable request always gets an answer
            logger.exception("failed to handle request %s of %s", req_id[:20], _client_name(identity[:64]))
            self._reply_error(identity, req_id, as_request_error(exc))

    def _drop(self, identity: bytes, error: ServeError) -> None:
        self.metrics.count("zmq", "malformed", error.reason)
        logger.warning("dropped a request from %s: %s", _client_name(identity[:64]), error.message)

    def _answer_status(self, identity: bytes, req_id: bytes, *, with_statistic: bool) -> None:
        client = _client_name(identity)
        self.status.statistic.record(client, 0, system=True)
        document = self.status.document(client, with_statistic=with_statistic)
        self.metrics.count("zmq", "status" if with_statistic else "config", "ok")
        self.router.deliver(identity, [identity, json.dumps(document).encode("utf-8"), req_id])

    def _terminate(self, identity: bytes) -> None:
        if not self.config.enable_termination or self.on_terminate is None:
            self.metrics.count("zmq", "termination", "refused")
            logger.warning(
                "refused TERMINATION from %s (start the server with -enable_termination to allow it)",
                _client_name(identity[:64]),
            )
            return
        self.metrics.count("zmq", "termination", "ok")
        logger.warning("TERMINATION received from %s: shutting down", _client_name(identity[:64]))
        self.on_terminate()

    def _encode(self, identity: bytes, payload: bytes, req_id: bytes, msg_len: bytes) -> None:
        started = time.perf_counter()
        with self._lock:
            self._inflight += 1
        if len(payload) > OFFLOAD_BYTES:
            try:
                self._parse_pool.submit(self._admit, identity, payload, req_id, msg_len, started)
            except RuntimeError:  # the pool is shut down: we are stopping
                self._reply_error(identity, req_id, as_request_error(RuntimeError("server stopping")))
                self._answered()
        else:
            self._admit(identity, payload, req_id, msg_len, started)

    def _admit(self, identity: bytes, payload: bytes, req_id: bytes, msg_len: bytes, started: float) -> None:
        """Parse, validate and admit one encode request; answers it with an error if it cannot."""
        try:
            count = parse_count(msg_len, "msg_len")
            texts = parse_json_payload(payload, self.max_payload_bytes)
            if isinstance(texts, list) and len(texts) != count:
                raise InvalidInput(f"msg_len says {count} sentences but the payload holds {len(texts)}")
            future = self.service.submit(texts)
            self.status.statistic.record(_client_name(identity), len(texts), system=False)
        except Exception as exc:
            self._reply_error(identity, req_id, as_request_error(exc))
            self._answered()
            return
        future.add_done_callback(lambda done: self._finish(identity, req_id, started, done))

    def _answered(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def _finish(self, identity: bytes, req_id: bytes, started: float, done: Future[EncodeAnswer]) -> None:
        try:
            error = done.exception()
            if error is not None:
                self._reply_error(identity, req_id, as_serve_error(error))
                return
            answer = done.result()
            array = np.ascontiguousarray(answer.embeddings)
            header = {
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "tokens": answer.tokens if self.config.show_tokens_to_client else "",
            }
            self.router.deliver(identity, [identity, json.dumps(header).encode("ascii"), array.data, req_id])
            self.metrics.count("zmq", "encode", "ok")
            self.metrics.sentences.labels(frontend="zmq").inc(array.shape[0])
            self.metrics.request_seconds.labels(frontend="zmq").observe(time.perf_counter() - started)
        except Exception as exc:
            logger.exception("failed to answer request %s of %s", req_id[:20], _client_name(identity[:64]))
            with contextlib.suppress(Exception):
                self._reply_error(identity, req_id, as_request_error(exc))
        finally:
            self._answered()

    def _reply_error(self, identity: bytes, req_id: bytes, error: ServeError) -> None:
        self.metrics.count("zmq", "encode", error.reason)
        logger.warning(
            "request %s of %s answered with %s: %s",
            req_id[:20].decode("ascii"),
            _client_name(identity[:64]),
            type(error).__name__,
            error.message,
        )
        if error.zmq_reply:
            self.router.deliver(identity, zmq_error_frames(identity, req_id, error))
