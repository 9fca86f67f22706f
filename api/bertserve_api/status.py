"""A BertServer's status, derived from what the cluster reports.

Why it exists: users of serving operators most often complain that status lies (``Ready`` while
pods crash-loop, ``Unknown`` forever, no reason in ``kubectl get``). Here status is a pure
function of observations — the Deployment, its pods, a spec error, an apply error — and of the
previous status (to keep ``lastTransitionTime`` stable), with the clock passed in. So every
case is testable without a cluster:

* ``Ready`` mirrors the Deployment's ``Available`` (and needs at least one ready pod);
* ``Progressing`` is ``True`` while a rollout or scale-up is under way, ``False`` when done or
  when the Deployment's progress deadline passed;
* ``Degraded`` carries the *reason* a human needs: the scheduler's message for unschedulable
  pods (``0/3 nodes are available: 3 Insufficient nvidia.com/gpu``), crash loops and image
  pull failures with the container's own message, ``ProgressDeadlineExceeded``, quota
  failures, and ``InvalidSpec`` with the offending field path.

:func:`transitions` tells the operator which changes deserve a Kubernetes Event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bertserve_api import manifests, names
from bertserve_api.spec import BertServerSpec, SpecError

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)

# Reasons (CamelCase, one word, as metav1.Condition wants them).
AVAILABLE = "Available"
CREATING = "Creating"
STARTING = "Starting"
SCALED_TO_ZERO = "ScaledToZero"
ROLLING_OUT = "RollingOut"
ROLLOUT_COMPLETE = "RolloutComplete"
AS_EXPECTED = "AsExpected"
INVALID_SPEC = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"
UNSCHEDULABLE = "Unschedulable"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
REPLICA_FAILURE = "ReplicaFailure"

# Container waiting reasons that mean "this will not get better by itself".
BAD_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",  # imagePullPolicy Never and the image is not on the node
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Problem:
    """Why pods do not become ready (reason is a condition reason, message is for humans)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A condition change worth a Kubernetes Event."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str


def _get(obj: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return default
        cur = cur[key]
    return default if cur is None else cur


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def scheduler_message(message: str) -> str:
    """The scheduler's verdict without the preemption postscript or a trailing period.

    ``0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are
    available: 3 No preemption victims found for incoming pod.`` →
    ``0/3 nodes are available: 3 Insufficient nvidia.com/gpu``.
    """
    head = message.split(" preemption:", 1)[0].strip()
    return head.rstrip(".").strip()


def pod_problem(pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """The first blocking problem among live pods: unschedulable, then failing containers."""
    live = [p for p in pods if not _get(p, "metadata", "deletionTimestamp")]
    for pod in live:
        for cond in _get(pod, "status", "conditions", default=[]):
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == UNSCHEDULABLE
            ):
                verdict = scheduler_message(cond.get("message") or "unschedulable")
                return Problem(UNSCHEDULABLE, _short(verdict))
    for pod in live:
        pod_name = _get(pod, "metadata", "name", default="?")
        for field, what in (("initContainerStatuses", "init container"), ("containerStatuses", "container")):
            for cs in _get(pod, "status", field, default=[]):
                waiting = _get(cs, "state", "waiting")
                reason = _get(waiting, "reason")
                if reason not in BAD_WAITING_REASONS:
                    continue
                detail = _get(waiting, "message", default="")
                terminated = _get(cs, "lastState", "terminated")
                if terminated:
                    last = _get(terminated, "reason", default="Error")
                    code = _get(terminated, "exitCode")
                    detail = (
                        f"last exit {last}"
                        + (f" (code {code})" if code is not None else "")
                        + (f": {detail}" if detail else "")
                    )
                msg = f"pod {pod_name} {what} {cs.get('name', '?')}: {reason}"
                if detail:
                    msg += f": {detail}"
                return Problem(str(reason), _short(msg))
    return None


def _deployment_condition(deployment: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in _get(deployment, "status", "conditions", default=[]):
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def _cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": _short(message)}


def _conditions(
    *,
    spec: BertServerSpec | None,
    spec_error: SpecError | None,
    apply_error: str | None,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    if spec_error is not None:
        msg = str(spec_error)
        return [
            _cond(READY, "False", INVALID_SPEC, msg),
            _cond(PROGRESSING, "False", INVALID_SPEC, f"not applied: {msg}"),
            _cond(DEGRADED, "True", INVALID_SPEC, msg),
        ]
    if apply_error is not None:
        return [
            _cond(READY, "False", APPLY_FAILED, apply_error),
            _cond(PROGRESSING, "False", APPLY_FAILED, apply_error),
            _cond(DEGRADED, "True", APPLY_FAILED, apply_error),
        ]
    if deployment is None:
        return [
            _cond(READY, "False", CREATING, "waiting for the Deployment to be created"),
            _cond(PROGRESSING, "True", CREATING, "creating the Deployment"),
            _cond(DEGRADED, "False", AS_EXPECTED, "no problems observed"),
        ]

    desired = int(_get(deployment, "spec", "replicas", default=spec.replicas if spec else 1))
    st = _get(deployment, "status", default={})
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    generation_seen = int(st.get("observedGeneration") or 0)
    current = generation_seen >= int(_get(deployment, "metadata", "generation", default=0))
    available = _deployment_condition(deployment, "Available")
    progressing = _deployment_condition(deployment, "Progressing")
    replica_failure = _deployment_condition(deployment, "ReplicaFailure")
    deadline = (
        progressing is not None
        and progressing.get("status") == "False"
        and progressing.get("reason") == PROGRESS_DEADLINE_EXCEEDED
    )
    problem = pod_problem(pods)
    summary = f"{ready}/{desired} replicas ready"

    # Degraded: the most specific explanation first.
    if problem is not None:
        degraded = _cond(DEGRADED, "True", problem.reason, problem.message)
    elif deadline:
        assert progressing is not None
        degraded = _cond(DEGRADED, "True", PROGRESS_DEADLINE_EXCEEDED, progressing.get("message") or summary)
    elif replica_failure is not None and replica_failure.get("status") == "True":
        why = replica_failure.get("message") or "cannot create pods"
        degraded = _cond(DEGRADED, "True", REPLICA_FAILURE, why)
    else:
        degraded = _cond(DEGRADED, "False", AS_EXPECTED, "no problems observed")

    # Ready: mirrors Deployment Available, but a Deployment with zero ready pods is "Available"
    # whenever maxUnavailable >= replicas, which is not a server anyone can call.
    if desired == 0:
        ready_c = _cond(READY, "False", SCALED_TO_ZERO, "0 replicas requested")
    elif available is not None and available.get("status") == "True" and ready >= 1:
        ready_c = _cond(READY, "True", AVAILABLE, summary)
    elif degraded["status"] == "True":
        ready_c = _cond(READY, "False", degraded["reason"], f"{summary}: {degraded['message']}")
    else:
        ready_c = _cond(READY, "False", STARTING, f"{summary} (pods starting or loading the model)")

    if deadline:
        assert progressing is not None
        prog = _cond(PROGRESSING, "False", PROGRESS_DEADLINE_EXCEEDED, progressing.get("message") or summary)
    elif not current or updated < desired or total > updated or ready < desired:
        prog = _cond(PROGRESSING, "True", ROLLING_OUT, f"{updated}/{desired} pods updated, {ready} ready")
    else:
        done = f"all {desired} replicas run the current template"
        prog = _cond(PROGRESSING, "False", ROLLOUT_COMPLETE, done)
    return [ready_c, prog, degraded]


def _stamp(
    conditions: list[dict[str, Any]], previous: Sequence[Mapping[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in conditions:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        stamped = dict(cond)
        stamped["observedGeneration"] = generation
        stamped["lastTransitionTime"] = old["lastTransitionTime"] if same and old is not None else now
        out.append(stamped)
    return out


def compute_status(
    *,
    owner: manifests.Owner,
    generation: int,
    spec: BertServerSpec | None,
    now: str,
    deployment: Mapping[str, Any] | None = None,
    pods: Sequence[Mapping[str, Any]] = (),
    previous: Mapping[str, Any] | None = None,
    spec_error: SpecError | None = None,
    apply_error: str | None = None,
) -> dict[str, Any]:
    """The full ``status`` of a BertServer (everything but kopf's own bookkeeping).

    ``spec`` is ``None`` exactly when ``spec_error`` is set; ``now`` is an RFC 3339 timestamp
    used only for conditions whose status changed since ``previous``.
    """
    if (spec is None) == (spec_error is None):
        raise ValueError("pass exactly one of spec and spec_error")
    previous = previous or {}
    st = _get(deployment, "status", default={})
    if spec is not None and not spec.autoscaling.enabled:
        desired = spec.replicas
    else:
        desired = int(_get(deployment, "spec", "replicas", default=spec.replicas if spec else 0))
    ready = int(st.get("readyReplicas") or 0)
    conditions = _conditions(
        spec=spec,
        spec_error=spec_error,
        apply_error=apply_error,
        deployment=deployment,
        pods=pods,
    )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": int(st.get("replicas") or 0),
        "readyReplicas": ready,
        "updatedReplicas": int(st.get("updatedReplicas") or 0),
        "replicasSummary": f"{ready}/{desired}",
        "selector": names.selector_string(names.selector_labels(owner.name)),
    }
    if spec is not None:
        status["model"] = manifests.model_summary(spec.model)
        status["endpoints"] = manifests.endpoints(owner, spec)
    else:
        for key in ("model", "endpoints"):
            if key in previous:
                status[key] = previous[key]
    status["conditions"] = _stamp(conditions, previous.get("conditions") or [], generation, now)
    return status


def _is_bad(cond: Mapping[str, Any]) -> bool:
    if cond.get("type") == READY:
        return cond.get("status") != "True" and cond.get("reason") not in (CREATING, STARTING)
    if cond.get("type") == DEGRADED:
        return cond.get("status") == "True"
    return cond.get("status") == "False" and cond.get("reason") != ROLLOUT_COMPLETE


def transitions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[Transition]:
    """Events for conditions whose status or reason changed: at most one Normal, one Warning.

    A condition seen for the first time is announced only when it is news (Ready=True or
    Degraded=True); the initial "creating" states are not. Changes observed together share an
    event of their kind (an object that becomes ready changes Ready and Progressing at once:
    one event, not two — events are API writes, and a busy cluster has thousands of them).
    Changes to the same reason (``Ready=False`` and ``Degraded=True`` for an invalid spec) are
    worded once, with the Degraded message, which carries the detail without the replica count.
    The event's reason is that of the most telling condition: Degraded for warnings, Ready else.
    """
    before = {c.get("type"): c for c in previous}
    # kind -> reason -> (flags, message), in condition order
    groups: dict[str, dict[str, tuple[list[str], str]]] = {}
    for cond in current:
        ctype, status, reason = cond.get("type"), cond.get("status"), str(cond.get("reason"))
        old = before.get(ctype)
        if old is None:
            if not ((ctype == READY and status == "True") or (ctype == DEGRADED and status == "True")):
                continue
        elif (old.get("status"), old.get("reason")) == (status, reason):
            continue
        kind = "Warning" if _is_bad(cond) else "Normal"
        flags, message = groups.setdefault(kind, {}).get(reason, ([], str(cond.get("message", ""))))
        flags.append(f"{ctype}={status}")
        if ctype == DEGRADED:
            message = str(cond.get("message", ""))
        groups[kind][reason] = (flags, message)
    out = []
    for kind, by_reason in groups.items():
        first = DEGRADED if kind == "Warning" else READY
        lead = next(
            (r for r, (flags, _) in by_reason.items() if any(f.startswith(first + "=") for f in flags)),
            next(iter(by_reason)),
        )
        if len(by_reason) == 1:
            ((flags, message),) = by_reason.values()
            text = f"{', '.join(flags)}: {message}"
        else:
            ordered = [lead, *(r for r in by_reason if r != lead)]
            text = "; ".join(f"{', '.join(by_reason[r][0])} ({r}): {by_reason[r][1]}" for r in ordered)
        out.append(Transition(kind, lead, _short(text)))
    return out
