"""The classic two-port ZeroMQ protocol, byte-compatible with ``bert-serving-client==1.10.0``.

Why it exists: the seed's users run the unmodified PyPI client. It PUSHes 4-frame requests
``[identity, payload, req_id, msg_len]`` to ``-port`` and SUBscribes to its identity on
``-port_out`` (reference §3). This module speaks exactly that, with three changes the client
cannot see:

* **No lost first reply.** 1.10.0 published on a PUB socket and slept 0.1 s hoping the client's
  subscription had arrived (the "slow joiner" race). Here ``-port_out`` is an **XPUB** socket, so
  the server *sees* subscriptions: an answer for an identity nobody has subscribed to yet is held
  until the subscription arrives (at most :data:`SUBSCRIPTION_WAIT_S`, then dropped and counted
  in ``bertserve_zmq_undeliverable_replies``). Nothing sleeps.
* **Bad input is answered, never fatal.** Every request goes through ``validation`` and the
  bounded queue; failures become the error reply described in ``errors`` (a well-formed answer
  whose ``dtype`` makes the 1.10.0 client raise ``TypeError`` with the server's message, plus an
  ``error`` object in the header). Requests that cannot be addressed (wrong frame count,
  non-digit ``req_id``) are logged, counted and dropped. Identities may hold any bytes,
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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
import zmq

from bertserve_api.contract import ServerConfig
from bertserve_server.errors import InvalidInput, ServeError, Unanswerable, as_serve_error, zmq_error_frames
from bertserve_server.metrics import Metrics
from bertserve_server.service import EncodeAnswer, EncodeService
from bertserve_server.status import StatusBook
from bertserve_server.validation import MAX_PAYLOAD_BYTES, parse_json_payload

logger = logging.getLogger(__name__)

Frame = bytes | memoryview
"""One ZeroMQ message part as handed to ``send_multipart`` (``memoryview`` avoids copying arrays)."""

SUBSCRIPTION_WAIT_S = 10.0
"""How long an answer waits for its client's SUB subscription before it is dropped."""
SNDHWM = 10000
"""Answers queued per subscriber before ZeroMQ drops (a client that never reads its answers)."""
RECV_BURST = 256
"""Requests read per loop turn before subscriptions and answers get their turn again."""

SHOW_CONFIG = b"SHOW_CONFIG"
SHOW_STATUS = b"SHOW_STATUS"
TERMINATION = b"TERMINATION"


class ResultRouter(Protocol):
    """Where answers go. ``deliver`` is thread-safe and must not block."""

    def deliver(self, identity: bytes, frames: Sequence[Frame]) -> None: ...


class SubscriptionRegistry:
    """The topics subscribed on this replica's ``-port_out``, with ZeroMQ's prefix semantics.

    Thread-safe. Listeners are called ``(topic, subscribed)`` on every change, from the I/O thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: set[bytes] = set()
        self._lengths: dict[int, int] = {}
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
            if topic in self._topics:
                return
            self._topics.add(topic)
            self._lengths[len(topic)] = self._lengths.get(len(topic), 0) + 1
        self._notify(topic, True)

    def remove(self, topic: bytes) -> None:
        with self._lock:
            if topic not in self._topics:
                return
            self._topics.discard(topic)
            left = self._lengths[len(topic)] - 1
            if left:
                self._lengths[len(topic)] = left
            else:
                del self._lengths[len(topic)]
        self._notify(topic, False)

    def matches(self, identity: bytes) -> bool:
        """Whether a message with frame 0 ``identity`` reaches some subscriber (prefix match)."""
        with self._lock:
            if identity in self._topics:
                return True
            return any(identity[:n] in self._topics for n in self._lengths if n <= len(identity))

    def topics(self) -> list[bytes]:
        with self._lock:
            return sorted(self._topics)


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
        self.max_payload_bytes = MAX_PAYLOAD_BYTES
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
        self._held: dict[bytes, list[tuple[float, Sequence[Frame]]]] = {}
        self._next_expiry = float("inf")
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind both ports (errors surface here, in the caller) and start the I/O thread."""
        pull = self._context.socket(zmq.PULL)
        xpub = self._context.socket(zmq.XPUB)
        for sock in (pull, xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            if ":" in self.config.bind_host:
                sock.setsockopt(zmq.IPV6, 1)
        xpub.setsockopt(zmq.SNDHWM, SNDHWM)
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
        for sock in (self._pull, self._xpub):
            if sock is not None:
                sock.close(linger=int(linger_s * 1000))
        if self._own_context:
            self._context.term()
        with self._lock:  # a late publish() must not write into a reused descriptor number
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- delivery --------------------------------------------------------------------------------

    def publish(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """Send ``frames`` on this replica's XPUB socket once ``identity`` is subscribed (thread-safe)."""
        with self._lock:
            self._outbox.append((identity, frames))
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
                xpub.send_multipart(frames, copy=False)
            else:
                deadline = now + self.subscription_wait_s
                self._held.setdefault(identity, []).append((deadline, frames))
                self._next_expiry = min(self._next_expiry, deadline)
        if outbox:
            with self._idle:
                self._idle.notify_all()

    def _flush_held(self, xpub: zmq.Socket[Any], topic: bytes) -> None:
        for identity in [i for i in self._held if i.startswith(topic)]:
            for _, frames in self._held.pop(identity):
                xpub.send_multipart(frames, copy=False)

    def _expire_held(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = float("inf")
        for identity in list(self._held):
            kept = []
            for deadline, frames in self._held[identity]:
                if deadline <= now:
                    self.metrics.undeliverable.inc()
                    logger.warning(
                        "dropped an answer for client %s: no subscription on -port_out within %.1fs",
                        _client_name(identity),
                        self.subscription_wait_s,
                    )
                else:
                    kept.append((deadline, frames))
                    self._next_expiry = min(self._next_expiry, deadline)
            if kept:
                self._held[identity] = kept
            else:
                del self._held[identity]

    def held_count(self) -> int:
        return sum(len(v) for v in self._held.values())

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
            if self._held:
                timeout_ms = max(1.0, min(timeout_ms, (self._next_expiry - time.monotonic()) * 1000))
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
        while True:
            try:
                message = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not message:
                continue
            topic = message[1:]
            if message[0] == 1:
                self.subscriptions.add(topic)
                self._flush_held(xpub, topic)
            elif message[0] == 0:
                self.subscriptions.remove(topic)

    # -- requests --------------------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 4:
            self._drop(
                frames[0] if frames else b"",
                Unanswerable(f"expected 4 frames [identity, payload, req_id, msg_len], got {len(frames)}"),
            )
            return
        identity, payload, req_id, msg_len = frames
        if not req_id.isdigit():
            self._drop(identity, Unanswerable(f"req_id must be ASCII digits, got {req_id[:20]!r}"))
            return
        if payload in (SHOW_CONFIG, SHOW_STATUS):
            self._answer_status(identity, req_id, with_statistic=payload == SHOW_STATUS)
        elif payload == TERMINATION:
            self._terminate(identity)
        else:
            self._encode(identity, payload, req_id, msg_len)

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
        try:
            if not msg_len.isdigit():
                raise InvalidInput(f"msg_len must be ASCII digits, got {msg_len[:20]!r}")
            texts = parse_json_payload(payload, self.max_payload_bytes)
            if isinstance(texts, list) and len(texts) != int(msg_len):
                raise InvalidInput(
                    f"msg_len says {int(msg_len)} sentences but the payload holds {len(texts)}"
                )
            future = self.service.submit(texts)
        except ServeError as exc:
            self._reply_error(identity, req_id, exc)
            return
        self.status.statistic.record(_client_name(identity), len(texts), system=False)
        with self._lock:
            self._inflight += 1
        future.add_done_callback(lambda done: self._finish(identity, req_id, started, done))

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
        except Exception:
            logger.exception("failed to answer request %s of %s", req_id, _client_name(identity[:64]))
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _reply_error(self, identity: bytes, req_id: bytes, error: ServeError) -> None:
        self.metrics.count("zmq", "encode", error.reason)
        logger.warning(
            "request %s of %s answered with %s: %s",
            req_id.decode("ascii"),
            _client_name(identity[:64]),
            type(error).__name__,
            error.message,
        )
        if error.zmq_reply:
            self.router.deliver(identity, zmq_error_frames(identity, req_id, error))
