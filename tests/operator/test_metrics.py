"""The operator's own metrics: names, labels, and what the runtime counts."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bertserve_operator.metrics import OperatorMetrics


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_expose_passes_errors_queue_depth_apply_latency_and_requests() -> None:
    depth = [3]
    metrics = OperatorMetrics(queue_depth=lambda: depth[0], request_counts=lambda: {"PATCH deployments": 7})
    metrics.reconciles.inc()
    metrics.errors.labels("ApplyFailed").inc()
    metrics.apply_seconds.labels("Deployment").observe(0.02)
    got = samples(metrics)
    assert got["bertserve_operator_reconciles_total", ()] == 1
    assert got["bertserve_operator_reconcile_errors_total", (("reason", "ApplyFailed"),)] == 1
    assert got["bertserve_operator_reconcile_errors_total", (("reason", "ChildConflict"),)] == 0
    assert got["bertserve_operator_queue_depth", ()] == 3
    assert got["bertserve_operator_apply_seconds_count", (("kind", "Deployment"),)] == 1
    assert got["bertserve_operator_api_requests_total", (("request", "PATCH deployments"),)] == 7
    depth[0] = 0
    assert samples(metrics)["bertserve_operator_queue_depth", ()] == 0  # read when scraped
