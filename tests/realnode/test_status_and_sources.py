"""Real failures and the other model source on the real node: what the operator reports for a real
crash loop, a real missing volume and an image that is not there; a ``uri`` model fetched by the
rendered init container from an HTTP server in the namespace; ``helm test`` run for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from realnode_helpers import (
    NS,
    apply,
    bertserver,
    get_json,
    wait_for,
)

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(600)]

GROUP = "bertservers.bertserve.io"
MISSING = "/nonexistent/bertserve-models"
MODELS = {"pvc": {"claimName": "status-models"}}


def _conditions(cluster: Any, name: str) -> dict[str, dict[str, Any]]:
    obj = get_json(cluster, GROUP, "-n", NS, name)
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def _degraded_reason(cluster: Any, name: str, reason: str, timeout: float = 240) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        degraded = _conditions(cluster, name).get("Degraded", {})
        return degraded if degraded.get("status") == "True" and degraded.get("reason") == reason else None

    try:
        return wait_for(check, timeout, f"{name}: Degraded=True reason {reason}", interval=1)
    except AssertionError as exc:
        pods = get_json(cluster, "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={name}")["items"]
        states = [p["status"].get("containerStatuses") or p["status"].get("conditions") for p in pods]
        raise AssertionError(f"{exc}\nconditions: {_conditions(cluster, name)}\npods: {states}") from None


def _claim(name: str, path: str) -> list[dict[str, Any]]:
    """A PVC bound to a hostPath-backed PV (the chart's operator refuses hostPath sources)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NS}-{name}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": path, "type": "Directory"},
                "persistentVolumeReclaimPolicy": "Retain",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": f"{NS}-{name}",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


@pytest.fixture(scope="module")
def namespace(real_cluster: Any, operator: dict[str, Any], model_dir: Path) -> str:
    real_cluster.create_namespace(NS)
    apply(real_cluster, [*_claim("status-models", str(model_dir)), *_claim("missing-models", MISSING)])
    return NS


def test_a_real_crash_loop_is_reported_as_crash_loop_back_off(
    real_cluster: Any, namespace: str, model_dir: Path
) -> None:
    """maxSeqLen above the model's max_position_embeddings: the server exits at start, again and again."""
    apply(
        real_cluster,
        [bertserver("crashy", MODELS, serving={"maxSeqLen": 200})],
    )
    degraded = _degraded_reason(real_cluster, "crashy", "CrashLoopBackOff")
    assert "crashy" in degraded["message"] and "last exit" in degraded["message"], degraded
    ready = _conditions(real_cluster, "crashy")["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "CrashLoopBackOff", ready
    logs = real_cluster.kubectl(
        "logs", "-n", NS, "-l", "app.kubernetes.io/instance=crashy", "--previous", check=False
    )
    assert "max_position_embeddings" in logs.stdout + logs.stderr, logs


def test_a_real_missing_volume_is_reported_as_failed_mount(real_cluster: Any, namespace: str) -> None:
    """The claim's PersistentVolume points at a node directory that does not exist."""
    apply(real_cluster, [bertserver("nomount", {"pvc": {"claimName": "missing-models"}})])
    degraded = _degraded_reason(real_cluster, "nomount", "FailedMount")
    assert MISSING in degraded["message"], degraded


def test_an_image_that_is_not_there_is_reported_as_err_image_never_pull(
    real_cluster: Any, namespace: str, model_dir: Path
) -> None:
    apply(
        real_cluster,
        [
            bertserver(
                "noimage",
                MODELS,
                image="localhost/bertserve-server:not-there",
            )
        ],
    )
    degraded = _degraded_reason(real_cluster, "noimage", "ErrImageNeverPull")
    assert "not-there" in degraded["message"], degraded
