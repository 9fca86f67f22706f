"""The operator when the cluster is not the happy path: foreign objects, quotas, hand edits, idle, restarts.

Same set-up as test_operator.py (chart installed with helm, operator local with only the chart's
ServiceAccount token), under its own release. The control plane runs the
``OwnerReferencesPermissionEnforcement`` admission plugin (hack/cluster/localcluster.py), so
every child the operator creates here also proves the chart's RBAC grants
``bertservers/finalizers`` update.

The operator's retry back-off is scaled down (``RETRY_S`` doubling to ``MAX_RETRY_S`` instead of
the defaults 10 s → 300 s) so that a bounded-retry window of a few seconds shows what five
minutes show with the defaults; see :func:`test_quota_refusal_is_reported_with_backoff_and_one_event`.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bertserver_manifests import bertserver_yaml
from operator_harness import (
    RESYNC_S,
    OperatorProcess,
    apply_yaml,
    bertserver_events,
    chart_operator,
    condition,
    get_bertserver,
    get_json,
    wait_bertserver_ready,
    wait_for,
)
from ports import free_port

from bertserve_api import names

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "bsc"
OPERATOR_NS = "bertserve-core"
RETRY_S = 0.25
MAX_RETRY_S = 4.0


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    env = {
        "BERTSERVE_RETRY_DELAY_SECONDS": str(RETRY_S),
        "BERTSERVE_MAX_RETRY_DELAY_SECONDS": str(MAX_RETRY_S),
        # progressDeadlineSeconds = startupTimeoutSeconds (>= 30) + this: a deadline a test can wait for
        "BERTSERVE_PROGRESS_DEADLINE_MARGIN_SECONDS": "0",
    }
    # The BertServers here name a node directory (kwok never reads it): chart_operator's default values.
    with chart_operator(
        cluster, tmp_path_factory.mktemp("operator-core"), RELEASE, OPERATOR_NS, env, resync_s=RESYNC_S
    ) as op:
        yield op


def bertserver(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "model": {"source": {"hostPath": {"path": "/data/bert"}}, "pretrainedPath": "base"},
        "resources": {"gpus": 0},
    }
    body.update(spec)
    return bertserver_yaml(name, body)


def ready_reason(cluster: Any, ns: str, name: str) -> tuple[str, str, str]:
    cond = condition(get_bertserver(cluster, ns, name), "Ready")
    return cond.get("status", ""), cond.get("reason", ""), cond.get("message", "")


def zero_quota(cluster: Any, ns: str, name: str, resource: str) -> None:
    """A ResourceQuota allowing none of ``resource``, in force once its controller has computed it."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name},
        "spec": {"hard": {resource: "0"}},
    }
    apply_yaml(cluster, yaml.safe_dump(quota), ns)
    wait_for(
        lambda: get_json(cluster, "resourcequota", name, "-n", ns)["status"].get("hard"),
        30,
        f"the quota controller to compute {name}",
    )


def retry_delays(op: OperatorProcess, ns: str, name: str) -> list[float]:
    """The back-off delays the operator logged for ``ns/name`` (``...; retrying in 0.5s``)."""
    pattern = re.compile(rf"{re.escape(ns)}/{re.escape(name)}: .*; retrying in ([0-9.]+)s")
    return [float(m.group(1)) for m in pattern.finditer(op.log())]


# --------------------------------------------------------------------------- foreign objects


def test_foreign_objects_of_a_childs_name_are_never_adopted(cluster: Any, operator: OperatorProcess) -> None:
    """A user's Service/Deployment named like a child: ChildConflict, one event, nothing written."""
    ns = "foreign"
    cluster.create_namespace(ns)
    cluster.kubectl("create", "service", "clusterip", "svc", "--tcp=80:8080", "-n", ns)
    cluster.kubectl("create", "deployment", "dep", "--image=registry.example/app:1", "-n", ns)
    svc_before = get_json(cluster, "service", "svc", "-n", ns)
    dep_before = get_json(cluster, "deployment", "dep", "-n", ns)
    apply_yaml(cluster, bertserver("svc") + "---\n" + bertserver("dep"), ns)

    for name, kind in (("svc", "Service"), ("dep", "Deployment")):
        status, _, message = wait_for(
            lambda n=name: (r := ready_reason(cluster, ns, n))[1] == "ChildConflict" and r,
            30,
            f"{name}: Ready=False reason ChildConflict",
        )
        assert status == "False"
        assert f"{kind} {ns}/{name} already exists and is not controlled by any object" in message, message
    # Retried with back-off (positive marker: several retries logged), still one event each.
    wait_for(lambda: len(retry_delays(operator, ns, "svc")) >= 4, 30, "four retries of svc")
    for name in ("svc", "dep"):
        conflicts = [e for e in bertserver_events(cluster, ns, name) if e["reason"] == "ChildConflict"]
        assert len(conflicts) == 1 and conflicts[0].get("count", 1) == 1, conflicts
        assert conflicts[0]["type"] == "Warning"

    # Neither object was touched, and nothing else was made (no half-made set).
    svc_after = get_json(cluster, "service", "svc", "-n", ns)
    assert svc_after["metadata"]["resourceVersion"] == svc_before["metadata"]["resourceVersion"]
    assert not svc_after["metadata"].get("ownerReferences")
    assert svc_after["spec"]["selector"] == svc_before["spec"]["selector"]
    dep_after = get_json(cluster, "deployment", "dep", "-n", ns)
    assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"]
    assert not dep_after["metadata"].get("ownerReferences")
    for kind, name in (
        ("deployment", "svc"),
        ("service", "svc-peers"),
        ("service", "dep"),
        ("service", "dep-peers"),
        ("secret", "svc-peer-key"),
        ("networkpolicy", "svc"),
    ):
        assert get_json(cluster, kind, name, "-n", ns, check=False) is None, f"{kind}/{name} was created"

    # Once the user removes their object, the BertServer converges (the back-off keeps retrying).
    cluster.kubectl("delete", "service", "svc", "-n", ns)
    wait_bertserver_ready(cluster, operator, ns, "svc")
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- refusals


def test_quota_refusal_is_reported_with_backoff_and_one_event(
    cluster: Any, operator: OperatorProcess
) -> None:
    """403 from a ResourceQuota: ``ApplyFailed`` with the API message, exponential back-off, one event.

    With the defaults (10 s doubling to 300 s) a refusal lasting 5 minutes costs 5 attempts
    (10+20+40+80+160 s) and a single Event (events are posted per condition *change*). The
    operator here runs the same policy scaled by 1/40 (0.25 s doubling to 4 s; the 300-s cap
    scales to 7.5 s and is lowered to 4 s to reach it sooner); the window below must show the
    logged delays doubling up to the cap and still exactly one ApplyFailed event. Resync passes
    (every 5 s) also fail and also count as failures, which keeps the doubling going.
    """
    ns = "quota"
    cluster.create_namespace(ns)
    zero_quota(cluster, ns, "no-deployments", "count/deployments.apps")
    zero_quota(cluster, ns, "no-services", "services")
    apply_yaml(cluster, bertserver("q"), ns)

    # The Deployment is refused first, so no Service is left behind.
    _, _, message = wait_for(
        lambda: (r := ready_reason(cluster, ns, "q"))[1] == "ApplyFailed" and r,
        30,
        "Ready reason ApplyFailed",
    )
    assert "HTTP 403" in message and "exceeded quota: no-deployments" in message, message
    assert get_json(cluster, "service", "q", "-n", ns, check=False) is None

    # Back-off: wait until the cap was reached and held twice, then check the whole sequence.
    wait_for(
        lambda: retry_delays(operator, ns, "q").count(MAX_RETRY_S) >= 2, 60, "the back-off to reach its cap"
    )
    delays = retry_delays(operator, ns, "q")
    assert delays[0] == RETRY_S, delays
    assert all(b in (a, 2 * a, MAX_RETRY_S) and b >= a for a, b in itertools.pairwise(delays)), delays
    failed = [e for e in bertserver_events(cluster, ns, "q") if e["reason"] == "ApplyFailed"]
    assert len(failed) == 1 and failed[0].get("count", 1) == 1, failed

    # The Deployment allowed, the Services not: ApplyFailed names the Service refusal now.
    cluster.kubectl("delete", "resourcequota", "no-deployments", "-n", ns)
    wait_for(
        lambda: "exceeded quota: no-services" in ready_reason(cluster, ns, "q")[2],
        30,
        "ApplyFailed for the Service",
    )
    cluster.kubectl("delete", "resourcequota", "no-services", "-n", ns)
    wait_bertserver_ready(cluster, operator, ns, "q")
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_owner_reference_permission_enforcement_is_on(cluster: Any, operator: OperatorProcess) -> None:
    """The admission plugin refuses blockOwnerDeletion to a client without finalizers rights.

    Every other test in this module has the operator create children with blockOwnerDeletion
    under this plugin, with the chart's RBAC only.
    """
    ns = "ownerrefs"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("o"), ns)
    wait_bertserver_ready(cluster, operator, ns, "o")
    uid = get_bertserver(cluster, ns, "o")["metadata"]["uid"]
    cluster.kubectl("create", "serviceaccount", "writer", "-n", ns)
    cluster.kubectl("create", "role", "cm-writer", "--verb=create", "--resource=configmaps", "-n", ns)
    cluster.kubectl(
        "create", "rolebinding", "cm-writer", "--role=cm-writer", f"--serviceaccount={ns}:writer", "-n", ns
    )
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": "o", "uid": uid,
                 "controller": True, "blockOwnerDeletion": True}
            ],
        },
    }  # fmt: skip
    proc = cluster.kubectl(
        "create",
        "-f",
        "-",
        "-n",
        ns,
        f"--as=system:serviceaccount:{ns}:writer",
        input=json.dumps(owned),
        check=False,
    )
    assert proc.returncode != 0 and "cannot set blockOwnerDeletion" in proc.stderr, proc.stderr
    sa = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}-bertserve-operator"
    can = cluster.kubectl(
        "auth",
        "can-i",
        "update",
        "bertservers",
        "--subresource=finalizers",
        "--as",
        sa,
        "-n",
        ns,
        check=False,
    )
    assert can.stdout.strip() == "yes"
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- drift and convergence

CONVERGING_SPEC = {"resources": {"gpus": 0, "cpu": "0.5", "memory": "2048Mi"}}


def test_hand_added_fields_are_removed(cluster: Any, operator: OperatorProcess) -> None:
    """An extra Service selector key, nodeSelector entry and limit are gone within one resync."""
    ns = "handedits"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("h", **CONVERGING_SPEC), ns)
    wait_bertserver_ready(cluster, operator, ns, "h")
    cluster.kubectl(
        "patch", "service", "h", "-n", ns, "--type=merge", "-p", '{"spec":{"selector":{"extra":"x"}}}'
    )
    pod_patch = {
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"zone": "a"},
                    "containers": [{"name": "bert", "resources": {"limits": {"cpu": "2"}}}],
                }
            }
        }
    }
    cluster.kubectl("patch", "deployment", "h", "-n", ns, "--type=strategic", "-p", json.dumps(pod_patch))

    def clean() -> bool:
        svc = get_json(cluster, "service", "h", "-n", ns)
        pod = get_json(cluster, "deployment", "h", "-n", ns)["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"].get("limits", {})
        return "extra" not in svc["spec"]["selector"] and "nodeSelector" not in pod and "cpu" not in limits

    wait_for(clean, RESYNC_S + 5, "the hand-added selector key, nodeSelector entry and limit to be removed")
    pod = get_json(cluster, "deployment", "h", "-n", ns)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "2Gi"}
    wait_bertserver_ready(cluster, operator, ns, "h")
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_converged_spec_makes_no_writes_while_idle(cluster: Any, operator: OperatorProcess) -> None:
    """``cpu: "0.5"``, ``memory: 2048Mi`` and an env entry added with ``kubectl set env``: no PATCH.

    The API server stores the quantities as ``500m`` and ``2Gi``; a comparison of strings would
    re-apply the Deployment at every pass. The window is counted in full resync passes over
    this BertServer (the positive marker: the operator's own pass counter), not in seconds:
    each pass is exactly the work a 60-s idle period with any resync period would cause.
    """
    ns = "idle"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("i", **CONVERGING_SPEC), ns)
    wait_bertserver_ready(cluster, operator, ns, "i")
    cluster.kubectl("set", "env", "deployment/i", "-n", ns, "ADDED_BY_HAND=1")
    cluster.kubectl("rollout", "status", "deployment/i", "-n", ns, "--timeout=60s")
    wait_bertserver_ready(cluster, operator, ns, "i")
    dep = get_json(cluster, "deployment", "i", "-n", ns, "--show-managed-fields")
    res = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "500m", "memory": "2Gi"}, res  # the API server canonicalized them

    def writes() -> int:  # every apply and removal patch is logged, with the object's name
        return len(re.findall(rf"(applied|from) Deployment {ns}/i\n", operator.log()))

    patches = writes()
    start = operator.health_detail()["passes"]  # kopf caches probe results for up to 10 s: a lower bound
    rounds = 4
    wait_for(
        lambda: operator.health_detail()["passes"] >= start + (rounds + 2) * len(operator_keys(cluster)),
        (rounds + 2) * RESYNC_S + 30,
        f"{rounds} resync rounds",
    )
    assert writes() == patches, operator.tail()
    after = get_json(cluster, "deployment", "i", "-n", ns, "--show-managed-fields")
    assert after["metadata"]["generation"] == dep["metadata"]["generation"]

    def ours(obj: dict[str, Any]) -> list[Any]:  # the operator's field-manager entries, with their times
        return [m for m in obj["metadata"]["managedFields"] if m["manager"] == names.FIELD_MANAGER]

    assert ours(after) == ours(dep)
    env = {e["name"] for e in after["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "ADDED_BY_HAND" in env  # not ours: tolerated, not fought over
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def operator_keys(cluster: Any) -> list[str]:
    return [i["metadata"]["name"] for i in get_json(cluster, "bertservers", "-A")["items"]]


# --------------------------------------------------------------------------- restart


def test_a_restart_changes_no_child_and_posts_no_event(cluster: Any, operator: OperatorProcess) -> None:
    """After a restart the first passes see the same pods as the last ones: no write, no event.

    ``stuck`` is Degraded (Unschedulable, read from its pods): a pass that ran before the pod
    watch listed would find no pods, flip it to Degraded=False and post an event.
    """
    ns = "restart"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("fine") + "---\n" + bertserver("stuck", resources={"gpus": 9}), ns)
    wait_bertserver_ready(cluster, operator, ns, "fine")
    wait_degraded(cluster, ns, "stuck", "Unschedulable", 60)

    def snapshot() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in ("deployments", "services"):
            for item in get_json(cluster, kind, "-n", ns)["items"]:
                meta = item["metadata"]
                out[f"{kind}/{meta['name']}"] = (
                    meta.get("generation"),
                    meta["annotations"].get(f"{names.GROUP}/applied-hash"),
                )
        for name in ("fine", "stuck"):
            out[name] = get_bertserver(cluster, ns, name)["status"]["conditions"]
            out[f"events/{name}"] = len(bertserver_events(cluster, ns, name))
        return out

    before = snapshot()
    operator.stop()
    operator.start()
    passes = len(operator_keys(cluster))
    wait_for(lambda: operator.health_detail()["passes"] >= 2 * passes, 60, "two passes over every BertServer")
    assert snapshot() == before, operator.tail()
    assert "cache primed" in operator.log()
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- autoscaling


def test_autoscaling_renders_what_its_metric_needs_and_reports_the_hpas_conditions(
    cluster: Any, operator: OperatorProcess
) -> None:
    """CPU scaling without a CPU request is refused; CPU and queue HPAs; their conditions in status.

    The local control plane serves neither the resource nor the custom metrics API, so the
    real HPA controller reports ``ScalingActive=False`` — which the BertServer must show, instead
    of a Ready BertServer that silently never scales.
    """
    ns = "autoscale"
    cluster.create_namespace(ns)
    refused = apply_yaml(cluster, bertserver("nocpu", autoscaling={"enabled": True}), ns, check=False)
    assert refused.returncode != 0
    assert "autoscaling.metric cpu needs resources.cpu" in refused.stderr, refused.stderr

    cpu = {"resources": {"gpus": 0, "cpu": "0.5"}, "autoscaling": {"enabled": True, "maxReplicas": 3}}
    queue = {"autoscaling": {"enabled": True, "metric": "queue", "targetQueuedSentencesPerPod": 64}}
    apply_yaml(cluster, bertserver("cpu", **cpu) + "---\n" + bertserver("queue", **queue), ns)

    def scaling_active(name: str) -> dict[str, Any]:
        cond = condition(get_bertserver(cluster, ns, name), "ScalingActive")
        return cond if cond.get("status") == "False" else {}

    cond = wait_for(lambda: scaling_active("cpu"), 60, "cpu: ScalingActive=False mirrored from the HPA")
    assert cond["reason"] == "FailedGetResourceMetric", cond
    hpa = get_json(cluster, "hpa", "cpu", "-n", ns)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    dep = get_json(cluster, "deployment", "cpu", "-n", ns)
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    assert condition(get_bertserver(cluster, ns, "cpu"), "AbleToScale").get("status") == "True"

    cond = wait_for(lambda: scaling_active("queue"), 60, "queue: ScalingActive=False mirrored from the HPA")
    assert cond["reason"] == "FailedGetPodsMetric", cond
    (metric,) = get_json(cluster, "hpa", "queue", "-n", ns)["spec"]["metrics"]
    assert metric == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "bertserve_queue_depth_sentences"},
            "target": {"type": "AverageValue", "averageValue": "64"},
        },
    }
    warnings = [e for e in bertserver_events(cluster, ns, "queue") if e["type"] == "Warning"]
    assert any("ScalingActive=False" in e["message"] for e in warnings), warnings
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- status truth


def only_pod(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    (pod,) = get_json(cluster, "pods", "-n", ns, "-l", f"{names.LABEL_INSTANCE}={name}")["items"]
    return dict(pod)


def set_pod_status(cluster: Any, ns: str, pod: str, status: dict[str, Any]) -> None:
    """Write a pod's status as a kubelet would (kwok leaves a Running pod's status alone)."""
    cluster.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def wait_degraded(cluster: Any, ns: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until BertServer ``name``'s Degraded condition has ``reason``; that condition."""
    found: dict[str, Any] = wait_for(
        lambda: (c := condition(get_bertserver(cluster, ns, name), "Degraded")).get("reason") == reason and c,
        timeout,
        f"{name}: Degraded reason {reason}",
    )
    return found


#: The container's previous run, as the kubelet reports it after a crash (``container_status``'s default).
CRASHED: dict[str, Any] = {
    "terminated": {
        "exitCode": 1,
        "reason": "Error",
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:00:01Z",
    }
}


def container_status(
    state: dict[str, Any], restarts: int, last_state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pod status whose one container is in ``state``; ``last_state`` is its previous run
    (``CRASHED`` unless given; ``{}`` for a first run)."""
    return {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "ContainersReady", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
        "containerStatuses": [
            {
                "name": "bert",
                "image": "img",
                "imageID": "",
                "ready": False,
                "started": "running" in state,
                "restartCount": restarts,
                "state": state,
                "lastState": CRASHED if last_state is None else last_state,
            }
        ],
    }


def test_a_crash_loop_stays_degraded_through_its_restarts(cluster: Any, operator: OperatorProcess) -> None:
    """Waiting (back-off) → running (not ready) → waiting: Degraded stays True, one event.

    The pod status is written as the kubelet writes it during a crash loop (kwok runs nothing).
    Before the fix the running phase read as healthy: Degraded flipped False and True again,
    with a pair of events per restart.
    """
    ns = "crashloop"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("c"), ns)
    wait_bertserver_ready(cluster, operator, ns, "c")
    assert (
        get_bertserver(cluster, ns, "c")["status"]["model"] == "base/bert_model.ckpt"
    )  # what the ready pod serves
    pod = only_pod(cluster, ns, "c")["metadata"]["name"]
    back_off = {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}
    }
    running = {"running": {"startedAt": "2026-01-01T00:00:02Z"}}
    for restarts, state in enumerate([back_off, running, back_off, running, back_off], start=1):
        set_pod_status(cluster, ns, pod, container_status(state, restarts))
        cond = wait_for(
            lambda r=restarts: (
                (c := condition(get_bertserver(cluster, ns, "c"), "Degraded"))
                and f"after {r} restarts" in c["message"]
                and c
            ),
            30,
            f"Degraded after restart {restarts}",
        )
        assert (cond["status"], cond["reason"]) == ("True", "CrashLoopBackOff"), cond
    assert get_bertserver(cluster, ns, "c")["status"]["model"] == ""  # no ready pod serves anything
    events = [e for e in bertserver_events(cluster, ns, "c") if e["type"] == "Warning"]
    assert [e["reason"] for e in events] == ["CrashLoopBackOff"], events
    assert not any("Degraded=False" in e["message"] for e in bertserver_events(cluster, ns, "c"))
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            "FailedMount",
            'MountVolume.SetUp failed for volume "model" : hostPath type check failed: /data/bert',
        ),
        (
            "FailedAttachVolume",
            'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) other-0',
        ),
    ],
)
def test_a_pod_stuck_creating_reports_its_volume_warning(
    cluster: Any, operator: OperatorProcess, reason: str, message: str
) -> None:
    """A pod in ContainerCreating plus the kubelet's (or attach controller's) Warning event.

    The event is created as the kubelet/attach-detach controller would post it; it changes
    nothing in the pod, so the operator must look it up (and look again) by itself.
    """
    ns = f"stuck-{reason.lower()}"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("v"), ns)
    wait_bertserver_ready(cluster, operator, ns, "v")
    pod = only_pod(cluster, ns, "v")
    name = pod["metadata"]["name"]
    creating = container_status({"waiting": {"reason": "ContainerCreating"}}, 0, last_state={})
    set_pod_status(cluster, ns, name, creating)
    wait_for(lambda: ready_reason(cluster, ns, "v")[1] == "Starting", 30, "Ready=False Starting")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}."},
        "involvedObject": {"kind": "Pod", "name": name, "namespace": ns, "uid": pod["metadata"]["uid"]},
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet"},
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "count": 1,
    }
    cluster.kubectl("create", "-f", "-", "-n", ns, input=json.dumps(event))
    cond = wait_degraded(cluster, ns, "v", reason)
    assert cond["status"] == "True" and cond["message"] == f"pod {name}: {message}"
    assert ready_reason(cluster, ns, "v")[1] == reason
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "registry.example/bertserve-server:9.9"'),
        (
            "ErrImagePull",
            'failed to pull and unpack image "registry.example/bertserve-server:9.9": not found',
        ),
        ("InvalidImageName", 'Failed to apply default image tag "Registry/x": invalid reference format'),
        ("CreateContainerConfigError", 'secret "mrpc-api-key" not found'),
        ("CreateContainerError", "context deadline exceeded"),
        ("RunContainerError", "failed to create containerd task: OCI runtime create failed"),
    ],
)
def test_a_container_the_kubelet_cannot_pull_create_or_run_is_reported_at_once(
    cluster: Any, operator: OperatorProcess, reason: str, message: str
) -> None:
    """The kubelet's waiting reason while it cannot pull, create or start the container, as it writes it.

    Before the fix such a pod read as ``Starting`` until the progress deadline (up to 20
    minutes); now Degraded names the reason and the kubelet's message as soon as the pod says so.
    """
    ns = f"waiting-{reason.lower()}"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("i"), ns)
    wait_bertserver_ready(cluster, operator, ns, "i")
    name = only_pod(cluster, ns, "i")["metadata"]["name"]
    pulling = container_status({"waiting": {"reason": reason, "message": message}}, 0, last_state={})
    set_pod_status(cluster, ns, name, pulling)
    cond = wait_degraded(cluster, ns, "i", reason)
    assert cond["status"] == "True" and message in cond["message"], cond
    # Ready follows the Deployment's readyReplicas, which its controller updates a moment after the
    # pod changes (the operator may see the pod first).
    wait_for(lambda: ready_reason(cluster, ns, "i")[:2] == ("False", reason), 30, f"Ready=False {reason}")
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_an_evicted_pod_is_reported_while_its_replacement_is_not_ready(
    cluster: Any, operator: OperatorProcess
) -> None:
    """The kubelet's node-pressure eviction, as it writes it: the pod stays, Failed, reason Evicted.

    While the Deployment's replacement pod is not ready yet, Degraded (and Ready) say Evicted with
    the kubelet's message; once the replacement is ready the lingering evicted pod no longer
    counts. Before the fix the operator's pod cache dropped ``status.reason``, so an eviction read
    as ``Starting``: unit tests of the summary passed, the operator never said Evicted.
    """
    ns = "evicted"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertserver("e"), ns)
    wait_bertserver_ready(cluster, operator, ns, "e")
    evicted = only_pod(cluster, ns, "e")["metadata"]["name"]
    message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 60Mi."
    set_pod_status(
        cluster,
        ns,
        evicted,
        {
            "phase": "Failed",
            "reason": "Evicted",
            "message": message,
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"},
            ],
        },
    )

    def replacement() -> str:
        pods = get_json(cluster, "pods", "-n", ns, "-l", f"{names.LABEL_INSTANCE}=e")["items"]
        names_ = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] != evicted]
        (name,) = names_
        return str(name)

    # The ReplicaSet replaces the Failed pod; kwok starts it. Then the kubelet is still pulling
    # the image and loading the model: not ready, as the stuck-creating test writes it.
    fresh = wait_for(replacement, 30, "a replacement pod")
    wait_for(
        lambda: get_json(cluster, "pod", fresh, "-n", ns)["status"].get("phase") == "Running", 30, "Running"
    )
    creating = container_status({"waiting": {"reason": "ContainerCreating"}}, 0, last_state={})
    set_pod_status(cluster, ns, fresh, creating)
    cond = wait_degraded(cluster, ns, "e", "Evicted")
    assert cond["status"] == "True" and cond["message"] == f"pod {evicted} was evicted: {message}", cond
    assert ready_reason(cluster, ns, "e")[:2] == ("False", "Evicted")
    warnings = wait_for(
        lambda: [e for e in bertserver_events(cluster, ns, "e") if e["reason"] == "Evicted"],
        30,
        "an Evicted event",
    )
    assert warnings[0]["type"] == "Warning", warnings

    # The replacement turns ready: the evicted pod lingers (Failed pods stay until collected) but
    # no replica is missing, so nothing is degraded.
    ready = container_status({"running": {"startedAt": "2026-01-01T00:00:02Z"}}, 0, last_state={})
    ready["containerStatuses"][0]["ready"] = True
    for c in ready["conditions"]:
        c["status"] = "True"
    set_pod_status(cluster, ns, fresh, ready)
    wait_for(lambda: ready_reason(cluster, ns, "e")[0] == "True", 30, "Ready=True again")
    assert condition(get_bertserver(cluster, ns, "e"), "Degraded")["status"] == "False"
    assert get_json(cluster, "pod", evicted, "-n", ns)["status"]["reason"] == "Evicted"
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_replica_set_that_cannot_create_pods_reports_replica_failure(
    cluster: Any, operator: OperatorProcess
) -> None:
    """The real ReplicaSet controller meets a ResourceQuota of ``pods: 0``.

    The Deployment is admitted (the operator's apply succeeds), but no pod can be created: the
    Deployment controller sets ``ReplicaFailure`` and the BertServer says so with its message,
    instead of ``Starting`` until the progress deadline. Lifting the quota lets it recover.
    """
    ns = "replicafailure"
    cluster.create_namespace(ns)
    zero_quota(cluster, ns, "no-pods", "pods")
    apply_yaml(cluster, bertserver("r"), ns)
    cond = wait_degraded(cluster, ns, "r", "ReplicaFailure", 60)
    assert cond["status"] == "True" and "exceeded quota: no-pods" in cond["message"], cond
    assert ready_reason(cluster, ns, "r")[:2] == ("False", "ReplicaFailure")
    assert get_json(cluster, "deployment", "r", "-n", ns)["metadata"]["name"] == "r"  # applied
    cluster.kubectl("delete", "resourcequota", "no-pods", "-n", ns)
    wait_bertserver_ready(cluster, operator, ns, "r")
    degraded = condition(get_bertserver(cluster, ns, "r"), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "AsExpected"), degraded
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- progress deadline


def test_pods_that_never_become_ready_report_progress_deadline_exceeded(
    cluster: Any, operator: OperatorProcess
) -> None:
    """Real Deployment controller, real deadline: the pods run but never pass readiness.

    The kwok stage ``pod-never-ready`` (hack/cluster/kwok-stages.yaml) keeps annotated pods
    Running with Ready=False, as a readiness probe that keeps failing would.
    """
    ns = "deadline"
    cluster.create_namespace(ns)
    spec = {"startupTimeoutSeconds": 30, "podAnnotations": {"kwok.bertserve.io/never-ready": "true"}}
    apply_yaml(cluster, bertserver("pd", **spec), ns)
    dep = wait_for(lambda: get_json(cluster, "deployment", "pd", "-n", ns, check=False), 30, "the Deployment")
    assert dep["spec"]["progressDeadlineSeconds"] == 30

    def progressing() -> dict[str, Any]:
        cond = condition(get_bertserver(cluster, ns, "pd"), "Progressing")
        return cond if cond.get("reason") == "ProgressDeadlineExceeded" else {}

    cond = wait_for(progressing, 90, "Progressing=False reason ProgressDeadlineExceeded")
    assert cond["status"] == "False"
    obj = get_bertserver(cluster, ns, "pd")
    assert condition(obj, "Ready")["status"] == "False", obj["status"]
    degraded = condition(obj, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ProgressDeadlineExceeded"), obj["status"]
    (pod,) = get_json(cluster, "pods", "-n", ns)["items"]
    assert pod["status"]["phase"] == "Running", pod["status"]
    reasons = wait_for(
        lambda: {e["reason"] for e in bertserver_events(cluster, ns, "pd")} & {"ProgressDeadlineExceeded"},
        30,
        "an event for the transition",
    )
    assert reasons
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- metrics


def test_the_operator_serves_its_metrics_on_its_health_port(
    cluster: Any, operator: OperatorProcess, tmp_path: Any
) -> None:
    """``python -m bertserve_operator``: /healthz and /metrics on the liveness endpoint."""
    port = free_port()
    own = OperatorProcess(
        [sys.executable, "-m", "bertserve_operator", f"--liveness-endpoint=http://127.0.0.1:{port}/healthz"],
        {**operator.env},
        tmp_path / "operator.log",
        f"http://127.0.0.1:{port}/healthz",
    )
    operator.stop()
    try:
        own.start()
        ns = "metrics"
        cluster.create_namespace(ns)
        apply_yaml(cluster, bertserver("m"), ns)
        wait_bertserver_ready(cluster, own, ns, "m")
        assert "bertserve" in json.loads(urllib.request.urlopen(own.health_url, timeout=5).read())

        def scrape() -> dict[str, float]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            out = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
            return out

        got = wait_for(
            lambda: (m := scrape()).get("bertserve_operator_reconciles_total", 0) > 0 and m, 30, "passes"
        )
        assert got['bertserve_operator_apply_seconds_count{kind="Deployment"}'] >= 1
        assert "bertserve_operator_queue_depth" in got
        assert got['bertserve_operator_reconcile_errors_total{reason="ChildConflict"}'] == 0
        assert got['bertserve_operator_api_requests_total{request="PATCH deployments"}'] >= 1
        assert own.stop() == 0
    finally:
        own.kill()
        operator.start()
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------- server image bumps


def test_a_new_default_image_rolls_one_bertserver_at_a_time(cluster: Any, operator: OperatorProcess) -> None:
    """A chart ``serverCpuImage`` bump moves BertServers one at a time (``max_image_rollouts`` = 1).

    The BertServers here have ``resources.gpus: 0``, so they run the CPU default image and its
    moves are paced exactly like ``serverImage``'s (one mechanism: a Deployment rolling onto
    either default takes a slot).

    The BertServers' pods may only run on a labelled node; removing the label before the bump
    makes every rollout that starts unable to finish (its new pod stays Pending). Exactly one
    BertServer must move and the others keep their image over several passes; once the label
    is back, the rest follow.
    """
    ns, node, label = "imageroll", "cpu-node-0", "bertserve-test/image-roll"
    servers = ("r1", "r2", "r3")
    env_before = dict(operator.env)
    new = "registry.example/bertserve-server:next"
    cluster.create_namespace(ns)
    cluster.kubectl("label", "node", node, f"{label}=yes", "--overwrite")
    try:
        docs = [bertserver(n, nodeSelector={label: "yes"}) for n in servers]
        apply_yaml(cluster, "---\n".join(docs), ns)
        for name in servers:
            wait_bertserver_ready(cluster, operator, ns, name)

        def images() -> dict[str, str]:
            return {
                n: get_json(cluster, "deployment", n, "-n", ns)["spec"]["template"]["spec"]["containers"][0][
                    "image"
                ]
                for n in servers
            }

        old = images()["r1"]
        assert old != new and set(images().values()) == {old}
        cluster.kubectl("label", "node", node, f"{label}-")
        operator.stop()
        assert old == operator.env["BERTSERVE_DEFAULT_CPU_IMAGE"], (old, operator.env)
        operator.env["BERTSERVE_DEFAULT_CPU_IMAGE"] = new
        operator.start()
        wait_for(lambda: list(images().values()).count(new) == 1, 60, "one BertServer on the new image")
        start = operator.health_detail()["passes"]
        wait_for(
            lambda: operator.health_detail()["passes"] >= start + 3 * len(operator_keys(cluster)),
            60,
            "three more rounds",
        )
        assert list(images().values()).count(new) == 1, images()
        cluster.kubectl("label", "node", node, f"{label}=yes", "--overwrite")
        wait_for(lambda: set(images().values()) == {new}, 120, "every BertServer on the new image")
    finally:
        cluster.kubectl("label", "node", node, f"{label}-", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=60s", check=False)
        operator.stop()
        operator.env.clear()
        operator.env.update(env_before)
        operator.start()


def test_cpu_bertservers_run_the_cpu_image_gpu_ones_the_gpu_image_and_spec_image_wins(
    cluster: Any, operator: OperatorProcess
) -> None:
    """The chart's two server images reach the right Deployments; a gpus switch switches images.

    ``resources.gpus: 0`` gets ``serverCpuImage`` (no CUDA wheels), ``gpus: 1`` ``serverImage``,
    ``spec.image`` beats both; moving a BertServer from 0 GPUs to 1 and back moves its image
    with it, without waiting for the pacing of default-image rollouts.
    """
    ns = "cpuimage"
    cpu_image, gpu_image = (
        operator.env["BERTSERVE_DEFAULT_CPU_IMAGE"],
        operator.env["BERTSERVE_DEFAULT_IMAGE"],
    )
    assert cpu_image == names.DEFAULT_SERVER_CPU_IMAGE and gpu_image == names.DEFAULT_SERVER_IMAGE
    assert cpu_image != gpu_image
    cluster.create_namespace(ns)
    try:
        apply_yaml(
            cluster,
            "---\n".join(
                [
                    bertserver("c0"),
                    bertserver("g1", resources={"gpus": 1}),
                    bertserver("own", image="registry.example/mine:1"),
                    bertserver("own-gpu", image="registry.example/mine:1", resources={"gpus": 1}),
                ]
            ),
            ns,
        )

        def image(name: str) -> str | None:
            dep = get_json(cluster, "deployment", name, "-n", ns, check=False)
            return dep["spec"]["template"]["spec"]["containers"][0]["image"] if dep else None

        want = {
            "c0": cpu_image,
            "g1": gpu_image,
            "own": "registry.example/mine:1",
            "own-gpu": "registry.example/mine:1",
        }
        wait_for(lambda: all(image(n) for n in want), 60, "the four Deployments")
        assert {n: image(n) for n in want} == want
        cluster.kubectl(
            "patch", "bertserver", "c0", "-n", ns, "--type=merge", "-p", '{"spec":{"resources":{"gpus":1}}}'
        )
        wait_for(lambda: image("c0") == gpu_image, 60, "c0 on the GPU image after gpus: 1")
        cluster.kubectl(
            "patch", "bertserver", "c0", "-n", ns, "--type=merge", "-p", '{"spec":{"resources":{"gpus":0}}}'
        )
        wait_for(lambda: image("c0") == cpu_image, 60, "c0 back on the CPU image after gpus: 0")
        assert image("g1") == gpu_image
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
