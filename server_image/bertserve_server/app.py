"""Wiring and lifecycle of one server: load → warm up → ready → (SIGTERM) → drain → exit.

Why it exists: the order of start-up and shutdown is where servers lose requests. This module
owns it, and nothing else:

1. HTTP (when ``-http_port``) binds first, so ``/healthz`` answers and ``/readyz`` says 503 while
   the model loads; encode calls get ``NotReady``.
2. Workers build their models and run a warm-up batch.
3. Only then do the ZeroMQ ports bind — exactly like 1.10.0, a client constructed earlier simply
   waits in ZeroMQ's reconnect loop instead of failing — and the server reports ready
   (``/readyz`` 200 and the 1.10.0 log line ``all set, ready to serve request!``).
4. On SIGTERM/SIGINT (or an enabled TERMINATION): readiness drops, new requests are answered
   ``ShuttingDown``, everything already accepted runs to completion and is delivered, within
   ``-drain_timeout`` seconds; then sockets close and the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from bertserve_api.contract import ServerConfig
from bertserve_server.batcher import Batcher
from bertserve_server.classifier import resolve_labels
from bertserve_server.encoder import Encoder
from bertserve_server.frontends.http import HttpFrontend
from bertserve_server.frontends.zmq import ResultRouter, ZmqFrontend
from bertserve_server.mesh import PeerMesh
from bertserve_server.metrics import Metrics
from bertserve_server.model.config import BertConfig
from bertserve_server.service import EncodeService, Tokenizer
from bertserve_server.startup import StartupTimes
from bertserve_server.status import StatusBook
from bertserve_server.worker import (
    EncoderFactory,
    Worker,
    build_encoders,
    distinct_encoders,
    plan_devices,
    prepare_large_calls,
    tf_encoder_factory,
    visible_gpu_ids,
    warm_up,
)

logger = logging.getLogger(__name__)

READY_LOG_LINE = "all set, ready to serve request!"


class StartupAbortedError(Exception):
    """A shutdown was requested while the model was still loading."""


def default_tokenizer(config: ServerConfig, max_position_embeddings: int) -> Tokenizer:
    """The WordPiece tokenizer for ``<model_dir>/vocab.txt`` with the server's flags."""
    from bertserve_server.tokenization import BertTokenizer

    return BertTokenizer(
        Path(config.model_dir) / "vocab.txt",
        do_lower_case=config.do_lower_case,
        max_seq_len=config.max_seq_len,
        max_position_embeddings=max_position_embeddings,
        mask_cls_sep=config.mask_cls_sep,
        no_special_token=config.no_special_token,
    )


class BertServer:
    """One server. ``start`` returns once it is ready; ``shutdown`` drains and stops it."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        encoder_factory: EncoderFactory | None = None,
        tokenizer: Tokenizer | None = None,
        gpu_ids: Sequence[int] | None = None,
        router_factory: Callable[[ZmqFrontend], ResultRouter] | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.startup = StartupTimes()
        self.model_config = BertConfig.from_json_file(Path(config.model_dir) / config.config_name)
        self._encoder_factory = encoder_factory
        self._tokenizer = tokenizer
        self._gpu_ids = gpu_ids
        self._router_factory = router_factory
        self._shutdown = threading.Event()
        self.batcher = Batcher(
            max_batch_size=config.max_batch_size,
            priority_batch_size=config.priority_batch_size,
            max_queue_size=config.max_queue_size,
            max_queued_tokens=config.max_queued_tokens,
            max_wait_ms=config.max_wait_ms,
            metrics=self.metrics,
        )
        self.service: EncodeService | None = None
        self.status: StatusBook | None = None
        self.devices: list[str] = []
        self.encoders: list[Encoder] = []
        self.workers: list[Worker] = []
        self._large_calls: threading.Thread | None = None
        self._stop_building = threading.Event()  # cancels the large-call build (see shutdown)
        self._interruptible = True
        self.zmq: ZmqFrontend | None = None
        self.http: HttpFrontend | None = None
        self.peering: PeerMesh | None = None

    # -- start-up --------------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Ask the server to drain and stop (thread- and signal-safe)."""
        self._shutdown.set()

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    @property
    def interruptible(self) -> bool:
        """Whether start-up may still be abandoned by raising from a signal handler.

        True while the model loads and warms up (long steps a pod deletion must not wait for).
        False from the first step that makes the server live: a raise landing between those
        steps would leave threads started and not recorded (the large-call build among them),
        so from then on a signal only asks for the drain that follows ready.
        """
        return self._interruptible

    def _check_abort(self) -> None:
        if self._shutdown.is_set():
            raise StartupAbortedError("shutdown requested during start-up")

    def start(self) -> None:
        config = self.config
        tokenizer = self._tokenizer or default_tokenizer(config, self.model_config.max_position_embeddings)
        self.service = EncodeService(
            config,
            self.batcher,
            tokenizer,
            max_position_embeddings=self.model_config.max_position_embeddings,
            metrics=self.metrics,
        )
        self.status = StatusBook(config, extra=self._status_extra)
        if config.peer_service and self._router_factory is None:  # scale-out: answers cross replicas
            self.peering = PeerMesh(config, self.metrics)
            self._router_factory = self.peering.attach
            self.service.add_readiness_gate(self.peering.unready_reason)
            self.peering.start()
        if config.http_port is not None:
            self.http = HttpFrontend(config, self.service, self.status, self.metrics)
            self.http.start()
        started = time.perf_counter()
        gpu_ids = (
            list(self._gpu_ids) if self._gpu_ids is not None else ([] if config.cpu else visible_gpu_ids())
        )
        self.devices = plan_devices(config, gpu_ids)
        self.status.devices = list(self.devices)
        factory = self._encoder_factory or tf_encoder_factory(config, self.devices)
        self.startup.imported()
        building = time.perf_counter()
        self.encoders = build_encoders(factory, self.devices)
        # An encoder that reports its trace time (TFEncoder) splits its build into load + trace.
        traced = sum(getattr(e, "trace_seconds", 0.0) for e in distinct_encoders(self.encoders))
        self.startup.add("load", time.perf_counter() - building - traced)
        self.startup.add("trace", traced)
        self._check_abort()
        first = self.encoders[0]
        if config.classifier:
            # -classifier_labels must name as many labels as the checkpoint's head has.
            self.service.labels = resolve_labels(config.classifier_labels, first.num_labels)
            logger.info("classifier labels: %s", ", ".join(self.service.labels))
        self.batcher.set_output(first.hidden_size, first.dtype, num_labels=len(self.service.labels))
        warming = time.perf_counter()
        warm_up(self.encoders)
        self.startup.add("warmup", time.perf_counter() - warming)
        self._check_abort()
        self._interruptible = False
        logger.info(
            "model loaded and warmed up in %.1fs on %s",
            time.perf_counter() - started,
            ", ".join(self.devices),
        )
        self.workers = [
            Worker(i, device, encoder, self.batcher, self.metrics)
            for i, (device, encoder) in enumerate(zip(self.devices, self.encoders, strict=True))
        ]
        for worker in self.workers:
            worker.start()
        self.zmq = ZmqFrontend(
            config,
            self.service,
            self.status,
            self.metrics,
            on_terminate=self.request_shutdown,
            router_factory=self._router_factory,
        )
        self.zmq.start()
        self.startup.ready()
        for phase, seconds in self.startup.seconds.items():
            self.metrics.startup_seconds.labels(phase=phase).set(seconds)
        self.service.set_ready()
        logger.info("startup phases: %s (process start to ready)", self.startup.summary())
        logger.info(READY_LOG_LINE)
        self._large_calls = prepare_large_calls(self.encoders, self._stop_building)

    def _status_extra(self) -> dict[str, Any]:
        return {
            "ready": bool(self.service and self.service.ready),
            "queue_depth": self.batcher.depth,
            "output_dim": self.batcher.width,
            "output_dtype": str(self.batcher.dtype),
            # False until every encoder's large-call function is built (after ready; see
            # worker.prepare_large_calls): benchmarks wait for it before measuring.
            "large_calls_ready": all(
                getattr(e, "large_calls_ready", True) or not getattr(e, "size_classes", False)
                for e in self.encoders
            ),
            **(
                {"classifier_labels": list(self.service.labels)}
                if self.service and self.service.labels
                else {}
            ),
            **({"peers": self.peering.describe()} if self.peering is not None else {}),
        }

    # -- running and stopping --------------------------------------------------------------------

    @property
    def model_calls_running(self) -> bool:
        """Whether a worker is still inside a model call (after ``shutdown``: one that outlived it)."""
        return any(worker.is_alive() for worker in self.workers)

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until a shutdown is requested (signals are handled between polls)."""
        while not self._shutdown.wait(poll_s):
            pass

    def shutdown(self, drain_timeout: float | None = None) -> bool:
        """Drain and stop. True if every accepted request was answered in time."""
        budget = self.config.drain_timeout if drain_timeout is None else drain_timeout
        deadline = time.monotonic() + budget
        self._interruptible = False  # a second signal must not cut the drain short
        self._stop_building.set()  # the build stops at its next step; joined below
        if self.peering is not None and self.zmq is not None:
            self.peering.hand_off(deadline)  # not Ready; clients' PUSH connections move to peers
        if self.service is not None:
            self.service.set_not_ready()
        self.batcher.close()
        pending = self.batcher.depth
        if pending:
            logger.info("draining: %d sentences in flight, up to %.1fs", pending, budget)
        drained = self.batcher.wait_idle(max(0.0, deadline - time.monotonic()))
        if self.zmq is not None:
            drained = self.zmq.flush(max(0.0, deadline - time.monotonic())) and drained
        if self.http is not None:
            drained = self.http.flush(max(0.0, deadline - time.monotonic())) and drained
        if self.peering is not None:
            self.peering.leave(deadline)  # peers stop routing answers here before -port_out closes
        if not drained:
            logger.warning(
                "drain timeout (-drain_timeout=%.1fs): %d sentences not answered", budget, self.batcher.depth
            )
        for worker in self.workers:
            worker.stop()
        self.batcher.stop()
        for worker in self.workers:
            worker.join(timeout=5.0)
        if self.model_calls_running:
            logger.warning(
                "%s still in a model call after the drain; its batch is abandoned",
                ", ".join(w.name for w in self.workers if w.is_alive()),
            )
        if self._large_calls is not None and self._large_calls.is_alive():
            # Never past a running build: TensorFlow torn down under it aborts the process
            # (SIGABRT instead of exit 0). Cancelled, it ends within one step (one trace).
            logger.info("waiting for the large-call function's build to stop")
            self._large_calls.join()
        if self.peering is not None:
            self.peering.detach()  # answers still arriving from peers wait in the mesh, not in a closed outbox
        if self.zmq is not None:
            self.zmq.stop(linger_s=max(0.2, min(2.0, deadline - time.monotonic())))
        if self.peering is not None:
            self.peering.close(deadline)
        if self.http is not None:
            self.http.stop()
        if self.service is not None:
            self.service.close()
        logger.info("server stopped%s", "" if drained else " (drain incomplete)")
        return drained


def serve(
    config: ServerConfig,
    *,
    encoder_factory: EncoderFactory | None = None,
    tokenizer: Tokenizer | None = None,
    router_factory: Callable[[ZmqFrontend], ResultRouter] | None = None,
) -> int:
    """Run a server in the foreground until SIGTERM/SIGINT; the process exit code.

    ``router_factory`` replaces how ZeroMQ answers are delivered (scale-out peering); the default
    publishes on this replica's own ``-port_out``.
    """
    server = BertServer(
        config, encoder_factory=encoder_factory, tokenizer=tokenizer, router_factory=router_factory
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: draining", signal.Signals(signum).name)
        server.request_shutdown()
        if server.interruptible:
            raise StartupAbortedError(f"{signal.Signals(signum).name} during start-up")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        aborted = False
        code = 0
        try:
            server.start()
            server.wait()
        except StartupAbortedError as exc:
            aborted = True
            logger.info("start-up aborted: %s", exc)
        except Exception as exc:
            logger.error("start-up failed: %s: %s", type(exc).__name__, exc)
            logger.debug("start-up failure details", exc_info=True)
            code = 1
        server.shutdown(drain_timeout=0.0 if aborted or code else None)
        if server.model_calls_running:
            exit_now(code)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_now(code: int) -> NoReturn:
    """End the process at once, without the interpreter's shutdown, after flushing the logs.

    Why: a worker thread still inside TensorFlow when the interpreter shuts down is killed as
    soon as its call returns, and that kill unwinding through TensorFlow's C++ frames aborts the
    whole process (SIGABRT, "terminate called ..."). The drain is over and every frontend is
    closed, so nothing is left to clean up that the kernel does not.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
