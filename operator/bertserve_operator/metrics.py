"""The operator's own Prometheus metrics, served with its health check on one port.

Why it exists: "is the operator keeping up?" needs numbers a dashboard can alert on — passes
and their failures, how many BertServers wait for a pass, how long the API server takes to
accept an apply — not log lines. One registry per process (no global default registry, so
tests can build several); the work queue and the request counters are read when scraped.

Names (all prefixed ``bertserve_operator_``):

* ``reconciles_total`` — finished passes; ``reconcile_errors_total{reason}`` — failed ones
  (``ChildConflict``, ``ApplyFailed``, ``Retry`` for temporary API errors, ``Unexpected``);
* ``reconcile_seconds`` — duration of a pass; ``apply_seconds{kind}`` — one server-side apply;
* ``queue_depth`` — BertServers waiting for a pass;
* ``api_requests_total{request}`` — API requests by ``METHOD resource`` (the Kube client's counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RequestCounts(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "bertserve_operator_api_requests", "API requests by method and resource", labels=["request"]
        )
        for request, count in sorted(self._counts().items()):
            family.add_metric([request], count)
        yield family


class OperatorMetrics:
    """The metrics of one operator process."""

    def __init__(
        self, *, queue_depth: Callable[[], int], request_counts: Callable[[], Mapping[str, int]]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter("bertserve_operator_reconciles", "Finished reconcile passes", registry=r)
        self.errors = Counter(
            "bertserve_operator_reconcile_errors", "Failed reconcile passes by reason", ["reason"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "bertserve_operator_reconcile_seconds",
            "Duration of one reconcile pass",
            buckets=BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "bertserve_operator_apply_seconds",
            "Duration of one server-side apply of a child, by kind",
            ["kind"],
            buckets=BUCKETS,
            registry=r,
        )
        depth = Gauge(
            "bertserve_operator_queue_depth", "BertServers waiting for a reconcile pass", registry=r
        )
        depth.set_function(lambda: float(queue_depth()))
        r.register(_RequestCounts(request_counts))
        for reason in ("ChildConflict", "ApplyFailed", "Retry", "Unexpected"):
            self.errors.labels(reason)  # exported at 0 from the start, so rate() works at once

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
