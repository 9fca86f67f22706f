"""Real failures and the other model source on the real node: what the operator reports for a real
crash loop, a real missing volume and an image that is not there; a ``uri`` model fetched by the
rendered init container from an HTTP server in the namespace; ``helm test`` run for real."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from realnode_helpers import (
    NS,
    ON_REAL_NODE,
    TEXTS,
    apply,
    bertserver,
    encode_in_node,
    get_json,
    wait_for,
)

from bertserve_api import names

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(600)]

GROUP = names.CRD_NAME  # the kubectl resource name
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
        "logs", "-n", NS, "-l", "app.kubernetes.io/instance=crashy", "--previous", "--tail=-1", check=False
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


def _model_archive(model_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(model_dir / "tiny", arcname="tiny")
    return buf.getvalue()


def test_a_uri_model_is_fetched_by_the_init_container_from_an_http_server_in_the_namespace(
    real_cluster: Any, namespace: str, operator: dict[str, Any], model_dir: Path, reference: np.ndarray
) -> None:
    archive = _model_archive(model_dir)
    import base64

    labels = {"app": "model-http"}
    apply(
        real_cluster,
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "model-files", "namespace": NS},
                "binaryData": {"tiny.tar.gz": base64.b64encode(archive).decode()},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "model-http", "namespace": NS},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            **ON_REAL_NODE,
                            "containers": [
                                {
                                    "name": "http",
                                    # The server image's Python serves the files: no other image here.
                                    "image": real_cluster.images["server"],
                                    "imagePullPolicy": "Never",
                                    "command": [
                                        "python3",
                                        "-m",
                                        "http.server",
                                        "8000",
                                        "--directory",
                                        "/srv",
                                    ],
                                    "ports": [{"containerPort": 8000, "name": "http"}],
                                    "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                                    "volumeMounts": [{"name": "files", "mountPath": "/srv"}],
                                }
                            ],
                            "volumes": [{"name": "files", "configMap": {"name": "model-files"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "model-http", "namespace": NS},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
            },
        ],
    )
    real_cluster.kubectl(
        "rollout", "status", "-n", NS, "deployment/model-http", "--timeout=120s", timeout=150
    )
    url = f"http://model-http.{NS}.svc.cluster.local/tiny.tar.gz"
    source = {"uri": {"url": url, "sha256": hashlib.sha256(archive).hexdigest(), "sizeLimit": "64Mi"}}
    apply(real_cluster, [bertserver("fetched", source)])
    wait_for(
        lambda: _conditions(real_cluster, "fetched").get("Ready", {}).get("status") == "True",
        420,
        "the uri-sourced BertServer to be Ready",
        interval=1,
    )
    (pod,) = get_json(real_cluster, "pods", "-n", NS, "-l", "app.kubernetes.io/instance=fetched")["items"]
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "fetch-model" and init["state"]["terminated"]["exitCode"] == 0, init
    fetch_log = real_cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"], "-c", "fetch-model").stdout
    assert url in fetch_log, fetch_log
    cluster_ip = get_json(real_cluster, "service", "-n", NS, "fetched")["spec"]["clusterIP"]
    np.testing.assert_allclose(encode_in_node(cluster_ip, TEXTS), reference, atol=1e-4, rtol=1e-4)
