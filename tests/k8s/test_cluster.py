"""Proof that the local control plane is real: every check goes through kubectl and is decided
by the actual API server, scheduler, controller-manager or kwok — nothing here is mocked.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bertserver_manifests import bertserver as bertserver_manifest
from crd_schema import CRD_PATH
from polling import wait_for

from bertserve_api import names

pytestmark = pytest.mark.k8s

GPU = "nvidia.com/gpu"
GPU_NODES = {"gpu-node-0", "gpu-node-1"}


def get_json(kubectl: Callable[..., Any], *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def apply(kubectl: Callable[..., Any], obj: dict[str, Any], *, check: bool = True) -> Any:
    return kubectl("apply", "-f", "-", input=json.dumps(obj), check=check)


@pytest.fixture
def namespace(cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists (pods are rejected before)."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def crd(cluster: Any) -> dict[str, Any]:
    """The project's CRD, applied and Established; returns the parsed manifest."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{names.CRD_NAME}", "--timeout=60s")
    manifest: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return manifest


def bertserver(name: str, source: dict[str, Any]) -> dict[str, Any]:
    spec = {
        "model": {"source": source, "pretrainedPath": "uncased_L-12_H-768_A-12"},
        "resources": {"gpus": 0},
    }
    return bertserver_manifest(name, spec)


def source_cel_message(crd: dict[str, Any]) -> str:
    """The message of the "exactly one source" rule, read from the CRD so the test follows it."""
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    source = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]["properties"][
        "source"
    ]
    rules = source["x-kubernetes-validations"]
    return str(next(r["message"] for r in rules if "pvc" in r["rule"] and "uri" in r["rule"]))


def deployment(name: str, replicas: int, limits: dict[str, str]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/never-pulled:1",  # kwok runs nothing
                            "resources": {"limits": limits},
                        }
                    ],
                },
            },
        },
    }


def test_server_version_is_stamped_and_nodes_advertise_gpus(kubectl: Callable[..., Any]) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.35."), version
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
    nodes = {n["metadata"]["name"]: n for n in get_json(kubectl, "nodes")["items"]}
    assert set(nodes) == {*GPU_NODES, "cpu-node-0"}
    for name in GPU_NODES:
        assert nodes[name]["status"]["allocatable"][GPU] == "4"
        assert nodes[name]["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
        assert {"key": GPU, "value": "present", "effect": "NoSchedule"} in nodes[name]["spec"]["taints"]
    assert GPU not in nodes["cpu-node-0"]["status"]["allocatable"]


def test_invalid_bertserver_is_rejected_by_cel(
    crd: dict[str, Any], kubectl: Callable[..., Any], namespace: str
) -> None:
    bad = bertserver("two-sources", {"pvc": {"claimName": "models"}, "hostPath": {"path": "/models"}})
    bad["metadata"]["namespace"] = namespace
    proc = apply(kubectl, bad, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "is invalid" in proc.stderr
    assert source_cel_message(crd) in proc.stderr
    # Nothing was stored.
    assert kubectl("get", "bertserver", "two-sources", "-n", namespace, check=False).returncode != 0


def test_get_bertservers_shows_printer_columns(
    crd: dict[str, Any], kubectl: Callable[..., Any], namespace: str
) -> None:
    good = bertserver("ok", {"pvc": {"claimName": "models"}})
    good["metadata"]["namespace"] = namespace
    apply(kubectl, good)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    columns = version["additionalPrinterColumns"]
    expected = [c["name"].upper() for c in columns if not c.get("priority")]
    assert expected == ["READY", "REASON", "REPLICAS", "GPUS", "MODEL", "AGE"]
    for resource in ("bertservers", "bertsrv"):  # plural and short name
        out = kubectl("get", resource, "-n", namespace).stdout.splitlines()
        assert out[0].split() == ["NAME", *expected], out
        assert out[1].split()[0] == "ok"


def test_one_gpu_deployment_lands_on_a_gpu_node_and_becomes_ready(
    kubectl: Callable[..., Any], namespace: str
) -> None:
    apply(
        kubectl,
        {**deployment("gpu-one", 2, {GPU: "1"}), "metadata": {"name": "gpu-one", "namespace": namespace}},
    )
    kubectl("rollout", "status", "deployment/gpu-one", "-n", namespace, "--timeout=90s")
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app=gpu-one")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in GPU_NODES
        assert pod["status"]["phase"] == "Running"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
        # Added by the ExtendedResourceToleration admission plugin, not by us.
        assert any(t.get("key") == GPU for t in pod["spec"]["tolerations"])


def test_too_many_gpus_stays_pending_with_scheduler_reason(
    kubectl: Callable[..., Any], namespace: str
) -> None:
    apply(
        kubectl,
        {**deployment("gpu-five", 1, {GPU: "5"}), "metadata": {"name": "gpu-five", "namespace": namespace}},
    )

    def failed_scheduling() -> list[str]:
        events = get_json(kubectl, "events", "-n", namespace, "--field-selector", "reason=FailedScheduling")[
            "items"
        ]
        return [e["message"] for e in events if f"Insufficient {GPU}" in e.get("message", "")]

    messages = wait_for(failed_scheduling, 90, "a FailedScheduling event", interval=0.5)
    assert "0/3 nodes are available" in messages[0], messages
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app=gpu-five")["items"]
    assert len(pods) == 1
    assert pods[0]["status"]["phase"] == "Pending"
    assert not pods[0]["spec"].get("nodeName")


def test_garbage_collector_deletes_owned_configmap(kubectl: Callable[..., Any], namespace: str) -> None:
    apply(
        kubectl,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}},
    )
    uid = get_json(kubectl, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    apply(
        kubectl,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "namespace": namespace,
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
            },
        },
    )
    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
        60,
        "GC to delete configmap/child",
        interval=0.5,
    )


def test_deleting_a_deployment_removes_its_replicasets_and_pods(
    kubectl: Callable[..., Any], namespace: str
) -> None:
    apply(
        kubectl,
        {**deployment("web", 2, {"cpu": "100m"}), "metadata": {"name": "web", "namespace": namespace}},
    )
    kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
    assert get_json(kubectl, "replicasets", "-n", namespace, "-l", "app=web")["items"]
    kubectl("delete", "deployment", "web", "-n", namespace)

    def gone() -> bool:
        rs = get_json(kubectl, "replicasets", "-n", namespace, "-l", "app=web")["items"]
        pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app=web")["items"]
        return not rs and not pods

    wait_for(gone, 90, "ReplicaSets and pods of deployment/web to be garbage-collected", interval=0.5)


def test_service_account_with_narrow_role_cannot_read_secrets(
    cluster: Any, kubectl: Callable[..., Any], namespace: str, tmp_path: Path
) -> None:
    sa = "narrow"
    kubectl("create", "serviceaccount", sa, "-n", namespace)
    kubectl("create", "role", "cm-reader", "-n", namespace, "--verb=get,list,watch", "--resource=configmaps")
    kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        namespace,
        "--role=cm-reader",
        f"--serviceaccount={namespace}:{sa}",
    )
    who = f"--as=system:serviceaccount:{namespace}:{sa}"

    denied = kubectl("auth", "can-i", "get", "secrets", "-n", namespace, who, check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    allowed = kubectl("auth", "can-i", "list", "configmaps", "-n", namespace, who, check=False)
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "yes")

    # Beyond impersonation: a real token signed with the cluster's SA key, checked by the
    # API server's authenticator and then RBAC.
    token = kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
    as_sa = cluster.write_token_kubeconfig(tmp_path / "sa.kubeconfig", token, namespace)
    ok = kubectl("--kubeconfig", str(as_sa), "get", "configmaps", "-n", namespace, check=False)
    assert ok.returncode == 0, ok.stderr
    forbidden = kubectl("--kubeconfig", str(as_sa), "get", "secrets", "-n", namespace, check=False)
    assert forbidden.returncode != 0
    assert "Forbidden" in forbidden.stderr
    assert f"system:serviceaccount:{namespace}:{sa}" in forbidden.stderr


def test_apiserver_restart_keeps_data_and_serves_again(
    cluster: Any, kubectl: Callable[..., Any], namespace: str
) -> None:
    apply(
        kubectl,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "survivor", "namespace": namespace}},
    )
    old_pid = cluster.processes["kube-apiserver"].pid
    cluster.restart_apiserver()
    assert cluster.processes["kube-apiserver"].pid != old_pid
    assert kubectl("get", "configmap", "survivor", "-n", namespace).returncode == 0
    # Controllers reconnect too: a new Deployment still gets Ready pods.
    apply(
        kubectl,
        {
            **deployment("after-restart", 1, {"cpu": "100m"}),
            "metadata": {"name": "after-restart", "namespace": namespace},
        },
    )
    kubectl("rollout", "status", "deployment/after-restart", "-n", namespace, "--timeout=120s")


@pytest.mark.helm
def test_helm_is_built_and_reaches_the_cluster(cluster: Any) -> None:
    assert cluster.helm("version", "--short").stdout.startswith("v3.")
    # `helm list` reads release Secrets through the API server: proves helm uses the kubeconfig.
    assert cluster.helm("list", "--all-namespaces").returncode == 0
