"""The operator end to end: chart installed with helm, operator running as the chart's ServiceAccount.

Each test works in its own namespace and deletes its BertServers at the end (the fake GPU
nodes have 8 GPUs between them). Nothing runs inside the pods (kwok), so readiness here means
"scheduled and reported Running/Ready"; tests/k8s/test_operator_render_run.py runs the real
server with a rendered command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bertserver_manifests import KWOK_MODEL, bertserver_yaml
from operator_harness import (
    REPO_ROOT,
    RESYNC_S,
    OperatorProcess,
    apply_yaml,
    bertserver_events,
    chart_fullname,
    chart_operator,
    condition,
    get_bertserver,
    get_json,
    wait_bertserver_ready,
    wait_for,
)

from bertserve_api import names

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(900)]

RELEASE = "bso"
OPERATOR_NS = "bertserve-system"
FULLNAME = chart_fullname(RELEASE)
EXAMPLES = sorted((REPO_ROOT / "crds" / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with chart_operator(
        cluster, tmp_path_factory.mktemp("operator"), RELEASE, OPERATOR_NS, resync_s=RESYNC_S
    ) as op:
        yield op


def bertserver(name: str, **spec: Any) -> str:
    return bertserver_yaml(name, {"model": KWOK_MODEL, "resources": {"gpus": 0}, **spec})


def handled_spec(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    """The spec kopf recorded as handled (written after the handler pass returned)."""
    annotations = get_bertserver(cluster, ns, name)["metadata"].get("annotations", {})
    raw = annotations.get("kopf.bertserve.io/last-handled-configuration")
    return dict(json.loads(raw).get("spec", {})) if raw else {}


def deployment(cluster: Any, ns: str, name: str) -> dict[str, Any] | None:
    result = get_json(cluster, "deployment", name, "-n", ns, check=False)
    return dict(result) if result else None


def container_of(dep: dict[str, Any]) -> dict[str, Any]:
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


def delete_all(cluster: Any, ns: str) -> None:
    cluster.kubectl("delete", "bertservers", "--all", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not get_json(cluster, "pods", "-n", ns)["items"], 90, f"pods of {ns} to be garbage-collected"
    )


def model_volume_for(ns: str) -> str:
    """A hostPath PV pre-bound to a ``bert-models`` claim in ``ns`` (kwok never reads it)."""
    return f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: bert-models-{ns}}}
spec:
  capacity: {{storage: 10Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: /data/bert-models}}
  claimRef: {{namespace: {ns}, name: bert-models}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: bert-models, namespace: {ns}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: bert-models-{ns}
  resources: {{requests: {{storage: 10Gi}}}}
"""


# --------------------------------------------------------------------------- examples and GPUs


def test_every_example_becomes_ready_with_truthful_columns(cluster: Any, operator: OperatorProcess) -> None:
    ns = "examples"
    cluster.create_namespace(ns)
    apply_yaml(cluster, model_volume_for(ns))
    cluster.kubectl(
        "create", "secret", "generic", "model-download-token", "--from-literal=token=t0k3n", "-n", ns
    )
    wanted = {}
    for path in EXAMPLES:
        cluster.kubectl("apply", "-f", str(path), "-n", ns)
        wanted[yaml.safe_load(path.read_text())["metadata"]["name"]] = path
    for name in wanted:
        wait_bertserver_ready(cluster, operator, ns, name)
    # Ready needs one ready pod (Available); the columns below need every replica.
    wait_for(
        lambda: get_bertserver(cluster, ns, "uri-model")["status"].get("replicasSummary") == "2/2",
        60,
        "uri-model 2/2",
    )

    rows = {}
    for line in cluster.kubectl("get", "bertservers", "-n", ns).stdout.splitlines()[1:]:
        cols = line.split()
        rows[cols[0]] = cols
    assert rows["mrpc"][1:6] == ["True", "Available", "1/1", "1", "uncased_L-12_H-768_A-12"]
    assert rows["mrpc"][6:8] == ["+", "mrpc_output/model.ckpt-343"]
    assert rows["minimal-cpu"][1:5] == ["True", "Available", "1/1", "0"]
    assert rows["uri-model"][1:5] == ["True", "Available", "2/2", "1"]

    status = get_bertserver(cluster, ns, "mrpc")["status"]
    assert status["endpoints"] == {
        "zmq": f"mrpc.{ns}.svc:5555",
        "zmqOut": f"mrpc.{ns}.svc:5556",
        "http": f"http://mrpc.{ns}.svc:8125",
    }
    assert status["observedGeneration"] == get_bertserver(cluster, ns, "mrpc")["metadata"]["generation"]

    # The seed's MRPC example: pods request a GPU and land on a GPU node.
    pods = get_json(cluster, "pods", "-n", ns, "-l", f"{names.LABEL_INSTANCE}=mrpc")["items"]
    assert pods, "no mrpc pods"
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("gpu-node-"), pod["spec"]["nodeName"]
        res = pod["spec"]["containers"][0]["resources"]
        assert res["limits"][names.GPU_RESOURCE] == "1" and res["requests"][names.GPU_RESOURCE] == "1"
    cpu_pod = get_json(cluster, "pods", "-n", ns, "-l", f"{names.LABEL_INSTANCE}=minimal-cpu")["items"][0]
    assert cpu_pod["spec"]["nodeName"] == "cpu-node-0"
    assert "-cpu" in cpu_pod["spec"]["containers"][0]["args"]
    # URI source: the init container alone sees the download Secret.
    uri_pod = get_json(cluster, "pods", "-n", ns, "-l", f"{names.LABEL_INSTANCE}=uri-model")["items"][0]
    (init,) = uri_pod["spec"]["initContainers"]
    assert init["command"][0] == "bertserve-fetch"
    assert any(m["name"] == "model-auth" for m in init["volumeMounts"])
    assert all(m["name"] != "model-auth" for m in uri_pod["spec"]["containers"][0]["volumeMounts"])
    ready_events = [e for e in bertserver_events(cluster, ns, "mrpc") if e["reason"] == "Available"]
    assert ready_events and ready_events[0]["type"] == "Normal"
    delete_all(cluster, ns)


def test_gpu_pods_schedule_on_gpu_nodes_and_over_requests_report_unschedulable(
    cluster: Any, operator: OperatorProcess
) -> None:
    ns = "gpus"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("two-gpus", replicas=2, resources={"gpus": 2}), ns)
    apply_yaml(cluster, bertserver("too-many", resources={"gpus": 5}), ns)
    wait_bertserver_ready(cluster, operator, ns, "two-gpus")
    for pod in get_json(cluster, "pods", "-n", ns, "-l", f"{names.LABEL_INSTANCE}=two-gpus")["items"]:
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        assert pod["spec"]["containers"][0]["resources"]["limits"][names.GPU_RESOURCE] == "2"
        assert "-device_map" in pod["spec"]["containers"][0]["args"]

    def degraded() -> dict[str, Any]:
        cond = condition(get_bertserver(cluster, ns, "too-many"), "Degraded")
        return cond if cond.get("status") == "True" else {}

    cond = wait_for(degraded, 90, "too-many to be Degraded")
    assert cond["reason"] == "Unschedulable"
    assert cond["message"].startswith("0/3 nodes are available"), cond["message"]
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond["message"]
    ready = condition(get_bertserver(cluster, ns, "too-many"), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    row = cluster.kubectl("get", "bertserver", "too-many", "-n", ns, "--no-headers").stdout.split()
    assert row[1:4] == ["False", "Unschedulable", "0/1"]
    warnings = [e for e in bertserver_events(cluster, ns, "too-many") if e["type"] == "Warning"]
    assert any(
        e["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in e["message"] for e in warnings
    )
    delete_all(cluster, ns)


# --------------------------------------------------------------------------- changes


def test_spec_changes_roll_pods_and_metadata_changes_do_not(cluster: Any, operator: OperatorProcess) -> None:
    ns = "rollout"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("r"), ns)
    wait_bertserver_ready(cluster, operator, ns, "r")
    before = deployment(cluster, ns, "r")
    assert before is not None
    hash_before = before["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]

    cluster.kubectl("label", "bertserver", "r", "team=search", "-n", ns)
    cluster.kubectl("annotate", "bertserver", "r", "owner=alice", "-n", ns)
    wait_for(
        lambda: (
            "team"
            in get_bertserver(cluster, ns, "r")["metadata"]["annotations"].get(
                "kopf.bertserve.io/last-handled-configuration", ""
            )
        ),
        30,
        "the operator to handle the metadata change",
    )
    # kopf records the handled configuration after the pass returned: that pass saw the change
    # and applied whatever it was going to apply.
    after = deployment(cluster, ns, "r")
    assert after is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"], (
        "metadata edit rolled the pods"
    )
    assert after["spec"]["template"] == before["spec"]["template"]

    cluster.kubectl(
        "patch", "bertserver", "r", "-n", ns, "--type=merge", "-p", '{"spec":{"serving":{"maxSeqLen":64}}}'
    )
    rolled = wait_for(
        lambda: (d := deployment(cluster, ns, "r")) and "-max_seq_len=64" in container_of(d)["args"] and d,
        30,
        "the new max_seq_len in the pod template",
    )
    hash_seq = rolled["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    assert hash_seq != hash_before
    wait_bertserver_ready(cluster, operator, ns, "r")
    obj = get_bertserver(cluster, ns, "r")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2

    # Same paths, new files: a revision bump rolls the pods although the arguments are unchanged.
    cluster.kubectl(
        "patch", "bertserver", "r", "-n", ns, "--type=merge", "-p", '{"spec":{"model":{"revision":"2"}}}'
    )
    bumped = wait_for(
        lambda: (
            (d := deployment(cluster, ns, "r"))
            and d["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] != hash_seq
            and d
        ),
        30,
        "a new config hash after the revision bump",
    )
    assert container_of(bumped)["args"] == container_of(rolled)["args"]
    assert bumped["metadata"]["generation"] > rolled["metadata"]["generation"]
    delete_all(cluster, ns)


def test_scale_subresource_scales_the_deployment(cluster: Any, operator: OperatorProcess) -> None:
    ns = "scaling"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("s"), ns)
    wait_bertserver_ready(cluster, operator, ns, "s")
    for replicas in (3, 1):
        cluster.kubectl("scale", "bertserver/s", f"--replicas={replicas}", "-n", ns)
        wait_for(
            lambda r=replicas: (
                get_bertserver(cluster, ns, "s")["status"].get("replicasSummary") == f"{r}/{r}"
            ),
            60,
            f"{replicas}/{replicas} ready replicas",
        )
        assert deployment(cluster, ns, "s")["spec"]["replicas"] == replicas  # type: ignore[index]
        scale = get_json(cluster, "bertserver", "s", "-n", ns, "--subresource=scale")
        assert scale["status"]["replicas"] == replicas
        assert scale["status"]["selector"] == get_bertserver(cluster, ns, "s")["status"]["selector"]
    wait_bertserver_ready(cluster, operator, ns, "s")
    delete_all(cluster, ns)


def test_autoscaling_leaves_replicas_to_the_hpa(cluster: Any, operator: OperatorProcess) -> None:
    ns = "autoscaling"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("a", replicas=3), ns)
    wait_bertserver_ready(cluster, operator, ns, "a")
    patch = {
        "spec": {
            "resources": {"gpus": 0, "cpu": "1"},
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5},
        }
    }
    cluster.kubectl("patch", "bertserver", "a", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    hpa = wait_for(lambda: get_json(cluster, "hpa", "a", "-n", ns, check=False), 30, "the HPA")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"}
    # The hand-over never resets replicas to the default of 1: once the pass that created the HPA
    # has been recorded as handled, the Deployment still has the replicas it had.
    wait_for(
        lambda: handled_spec(cluster, ns, "a").get("autoscaling", {}).get("enabled") is True,
        30,
        "the operator to handle the autoscaling change",
    )
    assert deployment(cluster, ns, "a")["spec"]["replicas"] == 3  # type: ignore[index]
    managed = get_json(cluster, "deployment", "a", "-n", ns, "--show-managed-fields")["metadata"][
        "managedFields"
    ]
    ours = [m for m in managed if m["manager"] == names.FIELD_MANAGER]
    assert ours and all("f:replicas" not in m["fieldsV1"].get("f:spec", {}) for m in ours)

    # What the HPA would do: scale the Deployment. The operator leaves it alone.
    cluster.kubectl("scale", "deployment/a", "--replicas=4", "-n", ns)
    # Status 4/4 is written by a pass that observed the scaled Deployment: it did not undo it.
    wait_for(
        lambda: get_bertserver(cluster, ns, "a")["status"].get("replicasSummary") == "4/4",
        60,
        "status to follow the HPA",
    )
    assert deployment(cluster, ns, "a")["spec"]["replicas"] == 4  # type: ignore[index]

    patch = {"spec": {"autoscaling": {"enabled": False}}}
    cluster.kubectl("patch", "bertserver", "a", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    wait_for(
        lambda: get_json(cluster, "hpa", "a", "-n", ns, check=False) is None, 30, "the HPA to be removed"
    )
    wait_for(
        lambda: deployment(cluster, ns, "a")["spec"]["replicas"] == 3, 30, "spec.replicas back in charge"
    )  # type: ignore[index]
    delete_all(cluster, ns)


def test_drift_is_repaired(cluster: Any, operator: OperatorProcess) -> None:
    ns = "drift"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("d"), ns)
    wait_bertserver_ready(cluster, operator, ns, "d")
    svc_uid = get_json(cluster, "service", "d", "-n", ns)["metadata"]["uid"]
    cluster.kubectl("delete", "service", "d", "-n", ns)
    wait_for(
        lambda: (
            (s := get_json(cluster, "service", "d", "-n", ns, check=False))
            and s["metadata"]["uid"] != svc_uid
        ),
        30,
        "the deleted Service to be recreated",
    )
    good_args = container_of(deployment(cluster, ns, "d"))["args"]  # type: ignore[arg-type]
    edit = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/0", "value": "-model_dir=/elsewhere"}
    ]
    cluster.kubectl("patch", "deployment", "d", "-n", ns, "--type=json", "-p", json.dumps(edit))
    wait_for(
        lambda: container_of(deployment(cluster, ns, "d"))["args"] == good_args,  # type: ignore[arg-type]
        30,
        "the hand-edited args to be restored",
    )
    dep_uid = deployment(cluster, ns, "d")["metadata"]["uid"]  # type: ignore[index]
    cluster.kubectl("delete", "deployment", "d", "-n", ns)
    wait_for(
        lambda: (d := deployment(cluster, ns, "d")) and d["metadata"]["uid"] != dep_uid,
        30,
        "the deleted Deployment to be recreated",
    )
    wait_bertserver_ready(cluster, operator, ns, "d")
    delete_all(cluster, ns)


def test_deleting_a_bertserver_garbage_collects_its_children(cluster: Any, operator: OperatorProcess) -> None:
    ns = "deletion"
    cluster.create_namespace(ns)
    apply_yaml(
        cluster,
        bertserver("g", autoscaling={"enabled": True, "metric": "queue"}, disruptionBudget={"enabled": True}),
        ns,
    )
    wait_bertserver_ready(cluster, operator, ns, "g")
    obj = get_bertserver(cluster, ns, "g")
    assert not obj["metadata"].get("finalizers"), "BertServers must not carry finalizers"
    children = [("deployment", "g"), ("service", "g"), ("service", "g-peers"), ("hpa", "g"), ("pdb", "g")]
    for kind, name in children:
        child = get_json(cluster, kind, name, "-n", ns)
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            names.KIND,
            "g",
            obj["metadata"]["uid"],
            True,
        )
    # A crash-looping (never ready) replica must not block node drains.
    assert get_json(cluster, "pdb", "g", "-n", ns)["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    cluster.kubectl("delete", "bertserver", "g", "-n", ns, "--timeout=30s")
    for kind, name in children:
        wait_for(
            lambda k=kind, n=name: get_json(cluster, k, n, "-n", ns, check=False) is None,
            60,
            f"{kind}/{name} GC",
        )
    wait_for(lambda: not get_json(cluster, "pods", "-n", ns)["items"], 60, "pods GC")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {
                "model": {
                    "source": {"pvc": {"claimName": "m"}, "hostPath": {"path": "/m"}},
                    "pretrainedPath": "b",
                }
            },
            "exactly one of model.source.pvc, model.source.hostPath or model.source.uri must be set",
        ),
        (
            {
                "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
                "serving": {"fp16": True},
                "resources": {"gpus": 0},
            },
            "serving.fp16 needs resources.gpus > 0",
        ),
        (
            {
                "model": {
                    "source": {"pvc": {"claimName": "m"}},
                    "pretrainedPath": "b",
                    "ckptName": "model.ckpt-1.index",
                }
            },
            "model.ckptName must be a checkpoint prefix",
        ),
        (
            {"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "/abs"}},
            "model.pretrainedPath must be relative to the source",
        ),
        (
            {
                "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
                "serving": {"classifier": {"enabled": True, "labels": ["yes", "no", "yes"]}},
            },
            'spec.serving.classifier.labels[2]: Duplicate value: "yes"',
        ),
        (
            {
                "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
                "serving": {"classifier": {"enabled": True, "labels": ["a,b"]}},
            },
            "spec.serving.classifier.labels[0]: Invalid value",
        ),
        (
            {
                "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
                "serving": {"classifier": {"enabled": True, "labels": [str(i) for i in range(65)]}},
            },
            "spec.serving.classifier.labels: Too many: 65: must have at most 64 items",
        ),
    ],
)
def test_invalid_manifests_are_rejected_with_the_cel_message(
    cluster: Any, operator: OperatorProcess, spec: dict[str, Any], message: str
) -> None:
    proc = apply_yaml(cluster, bertserver_yaml("bad", spec), "default", check=False)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
    assert get_json(cluster, "bertserver", "bad", "-n", "default", check=False) is None


def test_spec_errors_the_schema_lets_through_are_reported_without_retrying(
    cluster: Any, operator: OperatorProcess
) -> None:
    ns = "invalid"
    cluster.create_namespace(ns)
    # The schema takes any string here; the parser wants an object name.
    apply_yaml(cluster, bertserver("inv", priorityClassName="High_Priority"), ns)

    def invalid() -> dict[str, Any]:
        cond = condition(get_bertserver(cluster, ns, "inv"), "Ready")
        return cond if cond.get("reason") == "InvalidSpec" else {}

    cond = wait_for(invalid, 30, "Ready=False reason InvalidSpec")
    assert cond["status"] == "False"
    assert cond["message"].startswith("spec.priorityClassName: 'High_Priority' is not a valid"), cond[
        "message"
    ]
    assert deployment(cluster, ns, "inv") is None, "nothing may be applied from an invalid spec"
    # Positive marker instead of a fixed sleep: two resyncs have queued "inv" again and their
    # passes ran; then the spec is fixed and Ready for the fixed generation proves every pass
    # over the invalid generation is over. Only then: still one event, no retry loop.
    operator.wait_resyncs(2, RESYNC_S)
    assert deployment(cluster, ns, "inv") is None, "a resync applied something from an invalid spec"
    cluster.kubectl(
        "patch", "bertserver", "inv", "-n", ns, "--type=merge", "-p", '{"spec":{"priorityClassName":null}}'
    )
    wait_bertserver_ready(cluster, operator, ns, "inv")
    fixed = get_bertserver(cluster, ns, "inv")
    assert fixed["status"]["observedGeneration"] == fixed["metadata"]["generation"] == 2, fixed["status"]
    warnings = [e for e in bertserver_events(cluster, ns, "inv") if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning" and warnings[0].get("count", 1) == 1, (
        warnings
    )
    assert "spec.priorityClassName" in warnings[0]["message"]
    log = operator.log()
    assert "failed temporarily" not in log and "retrying in" not in log, operator.tail()
    assert log.count(f"{ns}/inv: invalid spec") == 1, operator.tail()
    assert deployment(cluster, ns, "inv") is not None, "fixing the spec is enough: the update converges"
    delete_all(cluster, ns)


# --------------------------------------------------------------------------- RBAC


def test_the_operator_runs_with_exactly_the_charts_permissions(
    cluster: Any, operator: OperatorProcess
) -> None:
    kubeconfig = operator.env["KUBECONFIG"]
    out = subprocess.run(
        [sys.executable, "-m", "bertserve_operator.selfcheck", "--all-namespaces"],
        env={**operator.env, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    sa = f"system:serviceaccount:{OPERATOR_NS}:{FULLNAME}"
    for verb, resource in (
        ("delete", "deployments"),
        ("delete", "services"),
        ("update", "deployments"),
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("patch", "nodes"),
        ("create", "customresourcedefinitions"),
        ("delete", "bertservers"),
        ("create", "bertservers"),
    ):
        answer = cluster.kubectl(
            "auth", "can-i", verb, resource, "--as", sa, "-A", check=False
        ).stdout.strip()
        assert answer == "no", f"{sa} may {verb} {resource}"
