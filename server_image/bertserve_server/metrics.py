"""Prometheus metrics of one server: what was asked, what it cost, where the time went.

Why it exists: "the server is slow" has three different causes — tokenization, waiting in the
queue, or the device — and "the server rejects requests" several (busy, bad input, draining).
Every frontend and the batcher record into one :class:`Metrics` object, so ``GET /metrics``
answers both questions. Each server owns its own registry (several servers run in one test
process; the global default registry would refuse duplicate names).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import exposition as _exposition

CONTENT_TYPE = _exposition.CONTENT_TYPE_LATEST

#: Latency buckets in seconds, from sub-millisecond tokenization to multi-second big requests.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Sentences per device batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's instruments. Label ``frontend`` is ``zmq`` or ``http``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bertserve_requests",
            "Requests answered, by frontend, kind (encode/config/status/…) and outcome "
            "(ok or the error reason: invalid_input, too_large, malformed, busy, not_ready, "
            "shutting_down, encode_failed, refused)",
            ["frontend", "kind", "outcome"],
            registry=r,
        )
        self.sentences = Counter(
            "bertserve_sentences", "Sentences encoded successfully", ["frontend"], registry=r
        )
        self.request_seconds = Histogram(
            "bertserve_request_seconds",
            "Encode latency from receipt to answer",
            ["frontend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenize_seconds = Histogram(
            "bertserve_tokenize_seconds", "Tokenization time per request", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "bertserve_queue_seconds",
            "Time a request waited before its first sentences reached a device",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "bertserve_inference_seconds", "Device time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "bertserve_batch_size", "Sentences per device batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_padding = Histogram(
            "bertserve_batch_padding_ratio",
            "Fraction of a device batch's token positions that are padding",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.queue_depth = Gauge(
            "bertserve_queue_depth_sentences",
            "Sentences accepted and not yet answered (bounded by -max_queue_size)",
            registry=r,
        )
        self.queue_tokens = Gauge(
            "bertserve_queue_depth_tokens",
            "WordPiece tokens of accepted requests not yet answered (bounded by -max_queued_tokens)",
            registry=r,
        )
        self.ready = Gauge("bertserve_ready", "1 once the model is loaded and warmed up", registry=r)
        self.startup_seconds = Gauge(
            "bertserve_startup_seconds",
            "Seconds the start-up took, by phase: import (process start until Python and TensorFlow "
            "are imported), load (checkpoint), trace (tf.function), warmup, and total (process start "
            "until ready; at least the sum of the others)",
            ["phase"],
            registry=r,
        )
        self.answers_dropped = Counter(
            "bertserve_answers_dropped",
            "Answers (encode results, error replies, status documents) that never reached their "
            "client, by reason: no_subscriber (no subscription for the identity appeared in time), "
            "hold_full (the bounded hold was full; oldest dropped), subscriber_full (a subscriber left "
            "SNDHWM answers unread), no_route, shutdown, "
            "and the mesh's own reasons",
            ["reason"],
            registry=r,
        )
        # Every frontend and mesh path that drops an answer counts it here; ``undeliverable`` is the
        # most common reason, kept as a name for callers.
        self.undeliverable = self.answers_dropped.labels(reason="no_subscriber")
        self.subscriptions_refused = Counter(
            "bertserve_subscriptions_refused",
            "Subscriptions on -port_out refused because they are shorter than -min_identity_len "
            "(the empty topic or a short prefix would receive other clients' answers)",
            registry=r,
        )

        self.subscribed = Gauge(
            "bertserve_zmq_subscribed_identities",
            "Client identities subscribed on this replica's -port_out now",
            registry=r,
        )

    def answer_dropped(self, reason: str, count: int = 1) -> None:
        """Count ``count`` answers lost for ``reason`` (one metric for every loss path)."""
        if count:
            self.answers_dropped.labels(reason=reason).inc(count)

    def count(self, frontend: str, kind: str, outcome: str) -> None:
        self.requests.labels(frontend=frontend, kind=kind, outcome=outcome).inc()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (tests and /status use this); 0 when never recorded."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else float(got)

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
