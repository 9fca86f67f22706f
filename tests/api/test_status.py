"""Status summary: each condition tells the truth about an observed Deployment and its pods."""

from __future__ import annotations

from typing import Any

import pytest

from bertserve_api import status as st
from bertserve_api.manifests import Owner, RenderOptions, pod_spec, served_classifier, served_model
from bertserve_api.spec import SpecError, parse_spec

OWNER = Owner("mrpc", "ml", "uid")
NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"
SPEC = parse_spec(
    {
        "model": {
            "source": {"pvc": {"claimName": "m"}},
            "pretrainedPath": "uncased_L-12_H-768_A-12",
            "tunedModelDir": "mrpc_output",
            "ckptName": "model.ckpt-343",
        },
        "replicas": 2,
    }
)
UNSCHEDULABLE_MSG = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)


def deployment(
    *,
    replicas: int = 2,
    ready: int = 2,
    updated: int | None = None,
    total: int | None = None,
    available: str = "True",
    progressing: tuple[str, str, str] = (
        "True",
        "NewReplicaSetAvailable",
        "ReplicaSet has successfully progressed.",
    ),
    generation: int = 1,
    observed: int = 1,
    extra_conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    conds = [
        {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable"},
        {
            "type": "Progressing",
            "status": progressing[0],
            "reason": progressing[1],
            "message": progressing[2],
        },
        *(extra_conditions or []),
    ]
    return {
        "metadata": {"name": "mrpc", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas if total is None else total,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": conds,
        },
    }


def pending_pod(name: str = "mrpc-abc") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": UNSCHEDULABLE_MSG,
                }
            ],
        },
    }


def crashing_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "mrpc-xyz"},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "bert",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        },
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def compute(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("spec", SPEC)
    return st.compute_status(owner=OWNER, generation=3, now=NOW, **kwargs)


def served_pod(name: str, *, ready: bool, spec: Any = SPEC) -> dict[str, Any]:
    """A pod as the operator caches it: ``served`` read from the rendered arguments."""
    _, args = pod_spec(OWNER, spec, RenderOptions(default_image="img"))
    return {
        "served": served_model(args),
        "classifier": served_classifier(args),
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_available_deployment_is_ready_and_done() -> None:
    other = parse_spec({"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "base"}})
    pods = [served_pod("a", ready=True), served_pod("b", ready=False, spec=other)]
    status = compute(deployment=deployment(), pods=pods)
    assert conditions(status) == {
        "Ready": ("True", "Available", "2/2 replicas ready"),
        "Progressing": ("False", "RolloutComplete", "all 2 replicas run the current template"),
        "Degraded": ("False", "AsExpected", "no problems observed"),
    }
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == NOW for c in status["conditions"])
    assert status["replicasSummary"] == "2/2"
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (2, 2, 2)
    assert status["model"] == "uncased_L-12_H-768_A-12 + mrpc_output/model.ckpt-343"
    assert status["endpoints"]["zmq"] == "mrpc.ml.svc:5555"
    assert status["selector"] == (
        "app.kubernetes.io/component=encoder,app.kubernetes.io/instance=mrpc,app.kubernetes.io/name=bertserve"
    )


def test_no_deployment_yet_is_creating() -> None:
    c = conditions(compute(deployment=None))
    assert c["Ready"][:2] == ("False", "Creating")
    assert c["Progressing"][:2] == ("True", "Creating")
    assert c["Degraded"][0] == "False"


def test_available_with_zero_ready_pods_is_not_ready() -> None:
    # replicas=1, maxUnavailable=1: the Deployment says Available with nothing running.
    c = conditions(compute(deployment=deployment(replicas=1, ready=0)))
    assert c["Ready"][:2] == ("False", "Starting")
    assert c["Progressing"][:2] == ("True", "RollingOut")


def test_unschedulable_pods_surface_the_scheduler_message() -> None:
    status = compute(deployment=deployment(ready=0, available="False"), pods=[pending_pod()])
    c = conditions(status)
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu"
    assert c["Degraded"] == ("True", "Unschedulable", message)
    assert c["Ready"] == ("False", "Unschedulable", f"0/2 replicas ready: {message}")
    assert status["replicasSummary"] == "0/2"


def test_crash_loop_names_pod_container_and_last_exit() -> None:
    c = conditions(compute(deployment=deployment(ready=0, available="False"), pods=[crashing_pod()]))
    assert c["Degraded"][:2] == ("True", "CrashLoopBackOff")
    assert "pod mrpc-xyz container bert" in c["Degraded"][2]
    assert "OOMKilled (code 137)" in c["Degraded"][2]


def test_failing_init_container_is_not_ready() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "initContainerStatuses": [
                {"name": "fetch-model", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]
        },
    }
    c = conditions(compute(deployment=deployment(replicas=1, ready=0), pods=[pod]))
    assert c["Ready"][:2] == ("False", "CrashLoopBackOff")
    assert "init container fetch-model" in c["Degraded"][2]


def test_terminating_pods_are_ignored() -> None:
    pod = pending_pod()
    pod["metadata"]["deletionTimestamp"] = NOW
    assert conditions(compute(deployment=deployment(), pods=[pod]))["Degraded"][0] == "False"


def test_progress_deadline_exceeded() -> None:
    dep = deployment(
        ready=1,
        available="False",
        progressing=("False", "ProgressDeadlineExceeded", 'ReplicaSet "mrpc-1" has timed out progressing.'),
    )
    c = conditions(compute(deployment=dep))
    assert c["Progressing"] == (
        "False",
        "ProgressDeadlineExceeded",
        'ReplicaSet "mrpc-1" has timed out progressing.',
    )
    assert c["Degraded"][:2] == ("True", "ProgressDeadlineExceeded")
    assert c["Ready"][:2] == ("False", "ProgressDeadlineExceeded")


def test_replica_failure_such_as_quota() -> None:
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": "exceeded quota",
    }
    c = conditions(compute(deployment=deployment(ready=0, available="False", extra_conditions=[failure])))
    assert c["Degraded"] == ("True", "ReplicaFailure", "exceeded quota")


def test_rolling_out_while_the_deployment_catches_up() -> None:
    assert (
        conditions(compute(deployment=deployment(generation=2, observed=1)))["Progressing"][1] == "RollingOut"
    )
    c = conditions(compute(deployment=deployment(updated=1, total=3)))
    assert c["Progressing"] == ("True", "RollingOut", "1/2 pods updated, 2 ready")
    assert c["Ready"][0] == "True"


def test_invalid_spec_names_the_field_and_keeps_what_is_known() -> None:
    previous = compute(deployment=deployment())
    error = SpecError("spec.serving.numWorker", "4 workers need one GPU each but resources.gpus is 1")
    status = st.compute_status(
        owner=OWNER,
        generation=4,
        spec=None,
        spec_error=error,
        now=LATER,
        deployment=deployment(),
        previous=previous,
    )
    c = conditions(status)
    assert c["Ready"] == ("False", "InvalidSpec", str(error))
    assert c["Degraded"] == ("True", "InvalidSpec", str(error))
    assert "spec.serving.numWorker" in c["Ready"][2]
    assert status["observedGeneration"] == 4
    assert status["endpoints"] == previous["endpoints"] and status["model"] == previous["model"]


def test_apply_failure_is_reported() -> None:
    c = conditions(compute(deployment=None, apply_error="admission webhook denied the Deployment"))
    assert c["Ready"] == ("False", "ApplyFailed", "admission webhook denied the Deployment")


def test_scaled_to_zero_is_not_ready() -> None:
    spec = parse_spec(
        {"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"}, "replicas": 0}
    )
    c = conditions(compute(spec=spec, deployment=deployment(replicas=0, ready=0)))
    assert c["Ready"][:2] == ("False", "ScaledToZero")


def test_autoscaled_summary_uses_the_deployments_replicas() -> None:
    spec = parse_spec(
        {
            "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
            "replicas": 1,
            "autoscaling": {"enabled": True, "maxReplicas": 8, "metric": "queue"},
        }
    )
    status = compute(spec=spec, deployment=deployment(replicas=5, ready=5))
    assert status["replicasSummary"] == "5/5"


def test_last_transition_time_is_kept_while_status_is_unchanged() -> None:
    first = compute(deployment=deployment(ready=0, available="False"), pods=[pending_pod()])
    second = st.compute_status(
        owner=OWNER,
        generation=3,
        spec=SPEC,
        now=LATER,
        deployment=deployment(ready=0, available="False"),
        pods=[crashing_pod()],
        previous=first,
    )
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times == {"Ready": NOW, "Progressing": NOW, "Degraded": NOW}  # reasons changed, statuses did not
    third = st.compute_status(
        owner=OWNER, generation=3, spec=SPEC, now=LATER, deployment=deployment(), previous=second
    )
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"Ready": LATER, "Progressing": LATER, "Degraded": LATER}


def test_same_observations_give_the_same_status() -> None:
    first = compute(deployment=deployment())
    again = st.compute_status(
        owner=OWNER, generation=3, spec=SPEC, now=LATER, deployment=deployment(), previous=first
    )
    assert again == first


def test_exactly_one_of_spec_and_error() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        st.compute_status(owner=OWNER, generation=1, spec=None, now=NOW)


def test_scheduler_message_drops_the_preemption_postscript() -> None:
    assert st.scheduler_message(UNSCHEDULABLE_MSG) == "0/3 nodes are available: 3 Insufficient nvidia.com/gpu"
    assert st.scheduler_message("0/1 nodes are available: 1 node(s) had untolerated taint.") == (
        "0/1 nodes are available: 1 node(s) had untolerated taint"
    )


def test_transitions_announce_news_not_the_initial_creating_state() -> None:
    creating = compute(deployment=None)["conditions"]
    assert st.transitions([], creating) == []
    ready = compute(deployment=deployment())["conditions"]
    events = st.transitions(creating, ready)
    assert events == [
        st.Transition(
            "Normal",
            "Available",
            "Ready=True (Available): 2/2 replicas ready; "
            "Progressing=False (RolloutComplete): all 2 replicas run the current template",
        )
    ]
    assert st.transitions(ready, ready) == []


def test_transitions_group_one_cause_into_one_warning() -> None:
    ready = compute(deployment=deployment())["conditions"]
    stuck = compute(deployment=deployment(ready=0, available="False"), pods=[pending_pod()])["conditions"]
    events = st.transitions(ready, stuck)
    warnings = [e for e in events if e.type == "Warning"]
    assert warnings == [
        st.Transition(
            "Warning",
            "Unschedulable",
            "Ready=False, Degraded=True: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu",
        )
    ]


def test_invalid_spec_on_first_sight_is_a_warning_event() -> None:
    error = SpecError("spec.serving.numWorker", "too many")
    bad = st.compute_status(owner=OWNER, generation=1, spec=None, spec_error=error, now=NOW)
    events = st.transitions([], bad["conditions"])
    assert events == [
        st.Transition("Warning", "InvalidSpec", "Degraded=True: spec.serving.numWorker: too many")
    ]


def test_model_is_what_ready_pods_serve() -> None:
    other = parse_spec({"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "base"}})
    assert compute(deployment=deployment(), pods=[])["model"] == ""
    assert compute(deployment=deployment(), pods=[served_pod("b", ready=False, spec=other)])["model"] == ""
    pods = [served_pod("a", ready=True), served_pod("b", ready=True, spec=other)]
    assert compute(deployment=deployment(), pods=pods)["model"] == (
        "base/bert_model.ckpt, uncased_L-12_H-768_A-12 + mrpc_output/model.ckpt-343"
    )


def _pod_with(container_status: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"name": "bert", **container_status}], **status},
    }


CRASHED = {"terminated": {"reason": "Error", "exitCode": 1}}


@pytest.mark.parametrize(
    "state",
    [
        {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        {"running": {"startedAt": NOW}},  # restarted, loading again, not ready yet
        {"terminated": {"reason": "Error", "exitCode": 1}},  # just exited again
    ],
)
def test_a_crash_loop_stays_degraded_through_every_phase_of_its_cycle(state: dict[str, Any]) -> None:
    pod = _pod_with({"state": state, "lastState": CRASHED, "restartCount": 3, "ready": False})
    c = conditions(compute(deployment=deployment(ready=0, available="False"), pods=[pod]))
    assert c["Degraded"][:2] == ("True", "CrashLoopBackOff"), c
    assert "last exit Error (code 1)" in c["Degraded"][2]


def test_a_restarted_container_that_is_ready_again_is_fine() -> None:
    pod = _pod_with({"state": {"running": {}}, "lastState": CRASHED, "restartCount": 1, "ready": True})
    assert conditions(compute(deployment=deployment(), pods=[pod]))["Degraded"][0] == "False"


def test_image_never_pull_is_degraded() -> None:
    pod = _pod_with({"state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}}})
    c = conditions(compute(deployment=deployment(ready=0, available="False"), pods=[pod]))
    assert c["Degraded"][:2] == ("True", "ErrImageNeverPull")


def test_evicted_pods_are_degraded_only_while_replicas_are_missing() -> None:
    evicted = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "Pod ephemeral local storage usage exceeds",
        },
    }
    c = conditions(compute(deployment=deployment(ready=1, available="False"), pods=[evicted]))
    assert c["Degraded"] == (
        "True",
        "Evicted",
        "pod p was evicted: Pod ephemeral local storage usage exceeds",
    )
    assert conditions(compute(deployment=deployment(), pods=[evicted]))["Degraded"][0] == "False"


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("FailedMount", 'MountVolume.SetUp failed for volume "model" : hostPath type check failed'),
        ("FailedAttachVolume", 'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) x'),
    ],
)
def test_pods_stuck_creating_report_their_volume_warning(reason: str, message: str) -> None:
    pod = _pod_with({"state": {"waiting": {"reason": "ContainerCreating"}}})
    assert st.pods_stuck_creating([pod]) == ["p"]
    plain = conditions(compute(deployment=deployment(ready=0, available="False"), pods=[pod]))
    assert plain["Degraded"][0] == "False"
    warnings = {"p": [("Scheduled", "ok"), (reason, message)]}
    c = conditions(
        compute(deployment=deployment(ready=0, available="False"), pods=[pod], pod_warnings=warnings)
    )
    assert c["Degraded"] == ("True", reason, f"pod p: {message}")


def test_hpa_conditions_are_mirrored_while_autoscaling() -> None:
    hpa = {
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
                {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
                 "message": "missing request for cpu"},
                {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange", "message": ""},
            ]
        }
    }  # fmt: skip
    auto = parse_spec(
        {
            "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
            "resources": {"cpu": "1"},
            "autoscaling": {"enabled": True},
        }
    )
    c = conditions(compute(spec=auto, deployment=deployment(), hpa=hpa))
    assert c["ScalingActive"] == ("False", "FailedGetResourceMetric", "missing request for cpu")
    assert c["AbleToScale"][:2] == ("True", "SucceededGetScale")
    assert "ScalingLimited" not in c
    assert "ScalingActive" not in conditions(compute(deployment=deployment(), hpa=hpa))


def test_classifier_labels_are_what_ready_pods_serve() -> None:
    raw = {"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "base"}}
    named = parse_spec({**raw, "serving": {"classifier": {"enabled": True, "labels": ["no", "yes"]}}})
    default = parse_spec({**raw, "serving": {"classifier": {"enabled": True}}})
    assert "classifierLabels" not in compute(deployment=deployment(), pods=[served_pod("a", ready=True)])
    status = compute(deployment=deployment(), pods=[served_pod("a", ready=True, spec=named)])
    assert status["classifierLabels"] == "no, yes"
    status = compute(deployment=deployment(), pods=[served_pod("a", ready=True, spec=default)])
    assert status["classifierLabels"] == "0..n-1"
    # A pod that is not ready yet does not serve its labels.
    status = compute(deployment=deployment(), pods=[served_pod("a", ready=False, spec=named)])
    assert "classifierLabels" not in status


def test_every_reason_the_operator_sets_is_in_the_troubleshooting_table() -> None:
    """docs/user-guide.md section 9 is keyed by the reason ``kubectl get`` shows."""
    import pathlib
    import re

    guide = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text()
    section = guide.split("## 9. Troubleshooting", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([A-Z][A-Za-z]+)`", section))
    reasons = {
        st.AVAILABLE, st.CREATING, st.STARTING, st.SCALED_TO_ZERO, st.ROLLING_OUT, st.ROLLOUT_COMPLETE,
        st.AS_EXPECTED, st.INVALID_SPEC, st.APPLY_FAILED, st.CHILD_CONFLICT, st.UNSCHEDULABLE,
        st.PROGRESS_DEADLINE_EXCEEDED, st.REPLICA_FAILURE, st.CRASH_LOOP, st.EVICTED,
        *st.BAD_WAITING_REASONS, *st.STUCK_EVENT_REASONS, *st.HPA_CONDITION_TYPES,
    }  # fmt: skip
    assert reasons - listed == set()
