"""A BertServer's status, derived from what the cluster reports.

Why it exists: users of serving operators most often complain that status lies (``Ready`` while
pods crash-loop, ``Unknown`` forever, no reason in ``kubectl get``). Here status is a pure
function of observations — the Deployment, its pods, a spec error, an apply error — and of the
previous status (to keep ``lastTransitionTime`` stable), with the clock passed in. So every
case is testable without a cluster:

* ``Ready`` mirrors the Deployment's ``Available`` (and needs at least one ready pod);
* ``model`` is what the ready pods serve (read from their arguments), not the spec; so is
  ``classifierLabels``, the labels ``/predict`` answers with (only with ``serving.classifier``);
* while autoscaling is on, the HPA's ``AbleToScale`` and ``ScalingActive`` conditions are
  mirrored (an HPA that cannot read its metric says so here, not only on the HPA);
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
CHILD_CONFLICT = "ChildConflict"
UNSCHEDULABLE = "Unschedulable"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
REPLICA_FAILURE = "ReplicaFailure"

# Container waiting reasons that mean "this will not get better by itself".
BAD_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

CRASH_LOOP = "CrashLoopBackOff"
EVICTED = "Evicted"
# Warning events of a pod stuck creating its containers that explain why (kubelet, attach/detach).
STUCK_EVENT_REASONS = ("FailedMount", "FailedAttachVolume")
CREATING_WAITING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})

# The HPA's own conditions, mirrored into the BertServer's status while autoscaling is on.
ABLE_TO_SCALE = "AbleToScale"
SCALING_ACTIVE = "ScalingActive"
HPA_CONDITION_TYPES = (ABLE_TO_SCALE, SCALING_ACTIVE)

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


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in _get(pod, "status", "conditions", default=[])
    )


def _last_exit(cs: Mapping[str, Any]) -> str:
    terminated = _get(cs, "lastState", "terminated") or _get(cs, "state", "terminated")
    if not terminated:
        return ""
    code = _get(terminated, "exitCode")
    return f"last exit {_get(terminated, 'reason', default='Error')}" + (
        f" (code {code})" if code is not None else ""
    )


def _container_problem(pod_name: str, what: str, cs: Mapping[str, Any]) -> Problem | None:
    """A container that will not get better by itself.

    A crash loop cycles through waiting (CrashLoopBackOff), running (not ready) and terminated;
    reading ``state.waiting`` alone would flip Degraded at every cycle. A container that has
    restarted, last exited with an error and is not ready is crash-looping in every phase.
    """
    name = cs.get("name", "?")
    restarts = int(cs.get("restartCount") or 0)
    after = f" after {restarts} restarts" if restarts else ""
    waiting = _get(cs, "state", "waiting")
    reason = _get(waiting, "reason")
    if reason in BAD_WAITING_REASONS:
        detail = _get(waiting, "message", default="")
        last = _last_exit(cs)
        if last:
            detail = last + (f": {detail}" if detail else "")
        message = f"pod {pod_name} {what} {name}: {reason}{after}" + (f": {detail}" if detail else "")
        return Problem(str(reason), _short(message))
    terminated = _get(cs, "lastState", "terminated") or _get(cs, "state", "terminated")
    failed = terminated and int(_get(terminated, "exitCode", default=1)) != 0
    if failed and not cs.get("ready") and (restarts > 0 or _get(cs, "state", "terminated")):
        message = f"pod {pod_name} {what} {name}: {CRASH_LOOP}{after}: {_last_exit(cs)}"
        return Problem(CRASH_LOOP, _short(message))
    return None


def _stuck_creating(pod: Mapping[str, Any]) -> bool:
    for field in ("initContainerStatuses", "containerStatuses"):
        for cs in _get(pod, "status", field, default=[]):
            if _get(cs, "state", "waiting", "reason") in CREATING_WAITING_REASONS:
                return True
    return False


def pods_stuck_creating(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of live pods whose containers wait to be created (a volume that does not mount or
    attach leaves a pod there, and only the pod's Events say why)."""
    return [
        str(_get(p, "metadata", "name"))
        for p in pods
        if not _get(p, "metadata", "deletionTimestamp") and _stuck_creating(p)
    ]


def pod_problem(
    pods: Sequence[Mapping[str, Any]],
    *,
    short: bool = True,
    pod_warnings: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> Problem | None:
    """The first blocking problem among live pods.

    In order: unschedulable; failing containers (including crash loops between restarts);
    evicted pods (only while replicas are missing: evicted pods linger after their
    replacement runs); pods stuck creating containers with a FailedMount/FailedAttachVolume
    warning (``pod_warnings``: pod name -> (reason, message) of its Warning events).
    """
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
                problem = _container_problem(pod_name, what, cs)
                if problem is not None:
                    return problem
    if short:
        for pod in live:
            if _get(pod, "status", "phase") == "Failed" and _get(pod, "status", "reason") == EVICTED:
                pod_name = _get(pod, "metadata", "name", default="?")
                detail = _get(pod, "status", "message", default="evicted")
                return Problem(EVICTED, _short(f"pod {pod_name} was evicted: {detail}"))
    for pod in live:
        pod_name = str(_get(pod, "metadata", "name", default="?"))
        if not _stuck_creating(pod):
            continue
        for reason, message in (pod_warnings or {}).get(pod_name, ()):
            if reason in STUCK_EVENT_REASONS:
                return Problem(reason, _short(f"pod {pod_name}: {message}"))
    return None


def _ready_pod_values(pods: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """The distinct non-empty ``key`` values of ready pods that are not being deleted, sorted."""
    return sorted(
        {
            str(p[key])
            for p in pods
            if p.get(key) and _pod_ready(p) and not _get(p, "metadata", "deletionTimestamp")
        }
    )


def served_models(pods: Sequence[Mapping[str, Any]]) -> str:
    """What ready pods serve (their ``served`` model, see the operator's pod cache), joined."""
    return ", ".join(_ready_pod_values(pods, "served"))


def served_classifiers(pods: Sequence[Mapping[str, Any]]) -> str:
    """The classifier labels ready pods serve at ``/predict`` (their ``classifier``), joined; "" if none."""
    return "; ".join(_ready_pod_values(pods, "classifier"))


def hpa_conditions(hpa: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The HPA's AbleToScale/ScalingActive conditions as BertServer conditions."""
    out = []
    for cond in _get(hpa, "status", "conditions", default=[]):
        if cond.get("type") in HPA_CONDITION_TYPES:
            out.append(
                _cond(
                    str(cond["type"]),
                    str(cond.get("status") or "Unknown"),
                    str(cond.get("reason") or "Unknown"),
                    str(cond.get("message") or ""),
                )
            )
    return out


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
    apply_reason: str,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    pod_warnings: Mapping[str, Sequence[tuple[str, str]]] | None,
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
            _cond(READY, "False", apply_reason, apply_error),
            _cond(PROGRESSING, "False", apply_reason, apply_error),
            _cond(DEGRADED, "True", apply_reason, apply_error),
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
    problem = pod_problem(pods, short=ready < desired, pod_warnings=pod_warnings)
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
    apply_reason: str = APPLY_FAILED,
    hpa: Mapping[str, Any] | None = None,
    pod_warnings: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """The full ``status`` of a BertServer (everything but kopf's own bookkeeping).

    ``apply_error`` is the API server's refusal of a child (reason ``apply_reason``:
    ``ApplyFailed``, or ``ChildConflict`` for an object of a child's name we do not control).
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
        apply_reason=apply_reason,
        deployment=deployment,
        pods=pods,
        pod_warnings=pod_warnings,
    )
    if spec is not None and spec.autoscaling.enabled and spec_error is None and apply_error is None:
        conditions += hpa_conditions(hpa)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": int(st.get("replicas") or 0),
        "readyReplicas": ready,
        "updatedReplicas": int(st.get("updatedReplicas") or 0),
        "replicasSummary": f"{ready}/{desired}",
        "selector": names.selector_string(names.selector_labels(owner.name)),
    }
    if spec is not None:
        # What ready pods serve, not what the spec asks for (a rollout to a new checkpoint
        # that never becomes ready must not be reported as served). Read once the Deployment
        # counts a ready pod too: a pod turns ready before its Deployment says so, and taking
        # both together costs one status write instead of two.
        status["model"] = served_models(pods) if ready > 0 else ""
        classifier = served_classifiers(pods)
        if classifier:
            status["classifierLabels"] = classifier
        status["endpoints"] = manifests.endpoints(owner, spec)
    else:
        for key in ("model", "classifierLabels", "endpoints"):
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

    A condition seen for the first time is announced only when it is news (Ready=True,
    Degraded=True, an HPA that cannot scale); the initial "creating" states are not. Changes observed together share an
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
            news = (ctype in (READY, DEGRADED) and status == "True") or (
                ctype in HPA_CONDITION_TYPES and status == "False"
            )
            if not news:
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
