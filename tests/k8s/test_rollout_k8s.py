"""A rolling update of a multi-replica BertServer keeps serving capacity on the real control plane.

The data path of a rollout (drain, hand-off, no lost request under client load) is proven with
real server processes in tests/scaleout/test_rolling_update.py. This test proves the other half:
the objects the operator renders make Kubernetes roll pods the safe way — never more GPU pods
than replicas (GPUs are scarce: no surge), never fewer than ``replicas - maxUnavailable`` ready
endpoints behind the Service, readiness gated on ``/readyz``, a preStop drain, and a peer
Service that lists not-yet-ready pods (replicas need their peers before they turn ready).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from bertserver_manifests import KWOK_MODEL, bertserver_yaml
from operator_harness import OperatorProcess, apply_yaml, chart_operator, condition, get_json, wait_for

from bertserve_api import manifests, names

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "bsroll"
OPERATOR_NS = "bertserve-rollout"
NS = "rolling"
NAME = "enc"
REPLICAS = 3


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with chart_operator(cluster, tmp_path_factory.mktemp("operator-rollout"), RELEASE, OPERATOR_NS) as op:
        yield op


def _manifest(max_seq_len: int) -> str:
    return bertserver_yaml(
        NAME,
        {
            "model": KWOK_MODEL,
            "serving": {"maxSeqLen": max_seq_len},
            "replicas": REPLICAS,
            "resources": {"gpus": 1},
            "tolerations": [{"key": names.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        },
    )


def _pods(cluster: Any) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in names.selector_labels(NAME).items())
    return list(get_json(cluster, "pods", "-n", NS, "-l", selector)["items"])


def _ready_endpoints(cluster: Any) -> int:
    slices = get_json(
        cluster,
        "endpointslices",
        "-n",
        NS,
        "-l",
        f"kubernetes.io/service-name={manifests.service_name(NAME)}",
    )["items"]
    return sum(
        1
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready") and not (e.get("conditions") or {}).get("terminating")
    )


def test_rolling_update_never_surges_gpus_and_keeps_ready_endpoints(
    cluster: Any, operator: OperatorProcess
) -> None:
    cluster.create_namespace(NS)
    apply_yaml(cluster, _manifest(25), NS)
    wait_for(
        lambda: condition(get_json(cluster, "bertserver", NAME, "-n", NS), "Ready").get("status") == "True",
        120,
        "the BertServer to become Ready",
    )
    wait_for(lambda: _ready_endpoints(cluster) == REPLICAS, 60, f"{REPLICAS} ready endpoints")

    # The rendered objects that make the rollout safe.
    dep = get_json(cluster, "deployment", manifests.deployment_name(NAME), "-n", NS)
    strategy = dep["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    pod = dep["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == manifests.SERVER_CONTAINER]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "preStop" in container["lifecycle"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    peers = get_json(cluster, "service", manifests.peer_service_name(NAME), "-n", NS)
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    hash_before = dep["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    old_pods = {p["metadata"]["name"] for p in _pods(cluster)}

    # Roll: a serving option changes the pod template.
    apply_yaml(cluster, _manifest(64), NS)
    min_ready, max_live = REPLICAS, 0
    deadline = time.monotonic() + 120
    while True:
        pods = _pods(cluster)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        max_live = max(max_live, len(live))
        min_ready = min(min_ready, _ready_endpoints(cluster))
        dep = get_json(cluster, "deployment", manifests.deployment_name(NAME), "-n", NS)
        st = dep.get("status", {})
        done = (
            dep["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] != hash_before
            and st.get("observedGeneration") == dep["metadata"]["generation"]
            and st.get("updatedReplicas") == REPLICAS
            and st.get("readyReplicas") == REPLICAS
            and st.get("replicas") == REPLICAS
            and not ({p["metadata"]["name"] for p in live} & old_pods)
        )
        if done:
            break
        assert time.monotonic() < deadline, f"rollout did not finish: {st}"
        time.sleep(0.1)

    assert max_live <= REPLICAS, f"{max_live} GPU pods at once: the rollout surged"
    assert min_ready >= REPLICAS - 1, f"only {min_ready} ready endpoints during the rollout"
    wait_for(
        lambda: condition(get_json(cluster, "bertserver", NAME, "-n", NS), "Ready").get("status") == "True",
        60,
        "Ready again after the rollout",
    )
    obj = get_json(cluster, "bertserver", NAME, "-n", NS)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    cluster.kubectl("delete", "bertserver", NAME, "-n", NS, "--wait=true", "--timeout=60s")


def test_a_held_rollout_reports_rolling_out_and_then_rollout_complete(
    cluster: Any, operator: OperatorProcess
) -> None:
    """``Progressing`` on real objects: a rollout whose new pods cannot be scheduled (every node
    cordoned) stays ``True/RollingOut`` with the Deployment's own counts; uncordoning lets it
    finish, and the condition turns ``False/RolloutComplete``."""
    ns = "held-rollout"
    cluster.create_namespace(ns)
    apply_yaml(cluster, _manifest(25), ns)

    def progressing() -> tuple[str, str, str]:
        cond = condition(get_json(cluster, "bertserver", NAME, "-n", ns), "Progressing")
        return cond.get("status", ""), cond.get("reason", ""), cond.get("message", "")

    wait_for(lambda: progressing()[:2] == ("False", "RolloutComplete"), 120, "the first rollout to complete")
    nodes = [n["metadata"]["name"] for n in get_json(cluster, "nodes")["items"]]
    try:
        for node in nodes:
            cluster.kubectl("cordon", node)
        apply_yaml(cluster, _manifest(64), ns)
        # maxSurge 0, maxUnavailable 1: one old pod goes, its replacement waits for a node.
        held_state = ("True", "RollingOut", f"1/{REPLICAS} pods updated, {REPLICAS - 1} ready")
        wait_for(lambda: progressing() == held_state, 60, f"Progressing={held_state}")
        pending = [p for p in _pods_in(cluster, ns) if p["status"].get("phase") == "Pending"]
        assert len(pending) == 1 and not pending[0]["spec"].get("nodeName"), pending
        assert progressing() == held_state  # still held: nothing can progress while cordoned
    finally:
        for node in nodes:
            cluster.kubectl("uncordon", node)
    done = wait_for(
        lambda: (p := progressing())[:2] == ("False", "RolloutComplete") and p, 120, "the rollout to complete"
    )
    assert done[2] == f"all {REPLICAS} replicas run the current template"
    cluster.kubectl("delete", "bertserver", NAME, "-n", ns, "--wait=true", "--timeout=60s")


def _pods_in(cluster: Any, ns: str) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in names.selector_labels(NAME).items())
    return list(get_json(cluster, "pods", "-n", ns, "-l", selector)["items"])
