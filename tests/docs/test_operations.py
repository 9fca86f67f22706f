"""docs/operations.md names only metrics, labels and label values the server really exports.

Why it exists: an alert on a metric that was renamed never fires, silently. The server's metric
definitions are read from its source (name, type, label names), and the label values from the
places that set them, so a rename on either side fails here.
"""

from __future__ import annotations

import pathlib
import re

import yaml

from bertserve_api import manifests

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "operations.md").read_text()
SERVER = ROOT / "server_image" / "bertserve_server"
SUFFIXES = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count"), "gauge": ("",)}


def _server_metrics() -> dict[str, tuple[str, set[str]]]:
    """Exported series name → (type, label names), from the server's metric definitions."""
    found: dict[str, tuple[str, set[str]]] = {}
    for source in SERVER.rglob("*.py"):
        text = source.read_text()
        for match in re.finditer(
            r"\b(Counter|Gauge|Histogram)\(\s*\"(bertserve_[a-z_]+)\"(.*?)registry=", text, re.S
        ):
            kind, name, rest = match.group(1).lower(), match.group(2), match.group(3)
            labels = re.search(r"\[([^\]]*)\]", rest)
            label_names = set(re.findall(r'"([a-z_]+)"', labels.group(1))) if labels else set()
            if kind == "histogram":
                label_names.add("le")
            for suffix in SUFFIXES[kind]:
                found[name + suffix] = (kind, label_names)
    return found


def _outcomes() -> set[str]:
    """Every ``outcome`` label value: ``ok``, ``refused``, and each error's ``reason``."""
    text = "\n".join(p.read_text() for p in SERVER.rglob("*.py"))
    return {"ok", "refused", *re.findall(r'^\s+reason = "([a-z_]+)"', text, flags=re.M)}


def test_every_metric_named_is_exported() -> None:
    exported = _server_metrics()
    named = set(re.findall(r"\bbertserve_[a-z_]+\b", PAGE))
    assert named, "the page names no metric"
    unknown = sorted(n for n in named if n not in exported)
    assert not unknown, f"operations.md names metrics the server does not export: {unknown}"


def test_alert_rules_are_yaml_and_use_real_labels_and_values() -> None:
    exported = _server_metrics()
    (rules_block,) = re.findall(r"```yaml\n(groups:.*?)```", PAGE, flags=re.S)
    rules = yaml.safe_load(rules_block)["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "BertserveQueueSaturated",
        "BertserveErrorRateHigh",
        "BertserveLatencyP99High",
        "BertserveAnswersDropped",
        "BertserveReadinessFlapping",
    }
    outcomes = _outcomes()
    for rule in rules:
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")"), rule["alert"]
        for name, selector in re.findall(r"\b(bertserve_[a-z_]+)(?:\{([^}]*)\})?", expr):
            assert name in exported, f"{rule['alert']}: {name}"
            for label, _, value in re.findall(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
                assert label in exported[name][1], f"{rule['alert']}: {name} has no label {label}"
                if label == "outcome":
                    assert set(value.split("|")) <= outcomes, f"{rule['alert']}: outcome {value}"


def test_scrape_annotations_documented_are_the_rendered_ones() -> None:
    for key in manifests.PROMETHEUS_ANNOTATIONS:
        assert key in PAGE
    assert (
        manifests.METRICS_PATH in PAGE and "spec:\n    monitoring:\n      prometheusAnnotations: true" in PAGE
    )
