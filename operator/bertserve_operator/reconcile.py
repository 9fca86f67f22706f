"""One level-based, idempotent pass over a BertServer.

Why it exists: create, update, resume, child events and the periodic resync all run this same
function, so there is one definition of "converged". A pass:

1. parses the spec — a :class:`~bertserve_api.spec.SpecError` the schema let through becomes
   ``Ready=False, reason=InvalidSpec`` (with the field path) and a Warning event, and the pass
   *returns*: retrying an invalid spec cannot help, and the running pods are left alone;
2. renders the children (pure builders) and applies each one that is missing or has drifted
   from its rendering (a desired-⊆-observed check against the watch cache, so a quiet pass costs
   no API calls);
3. removes an HPA/PDB the spec no longer asks for;
4. derives status from what the API server returned and the cached pods, writes it through the
   ``/status`` subresource when it changed, and posts an Event per condition transition.

Replicas and the HPA: when autoscaling is switched on, the Deployment's ``spec.replicas`` is
dropped from the applied configuration. Dropping a field that only our manager owns would make
the API server *reset* it to 1 (capacity loss before the HPA reacts, KServe#3768), so the
pass first hands the field over as the Kubernetes server-side-apply documentation prescribes
(an apply of just the current value under :data:`kube.HANDOVER_MANAGER`), after which the HPA
is its only writer.

API errors propagate as kopf Temporary/Permanent errors (see :mod:`kube`); a permanent one is
also written to status (``ApplyFailed``) so ``kubectl get`` shows it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from bertserve_api import manifests, names
from bertserve_api.manifests import Owner, RenderOptions
from bertserve_api.policy import Policy
from bertserve_api.policy import check as check_policy
from bertserve_api.spec import BertServerSpec, SpecError, check_name, parse_spec
from bertserve_api.status import (
    APPLY_FAILED,
    CHILD_CONFLICT,
    Transition,
    compute_status,
    pods_stuck_creating,
    transitions,
)
from bertserve_operator.cache import Cache, Key, controller_owner, key_of
from bertserve_operator.drift import foreign_entries, is_subset, needs_apply, with_applied_hash
from bertserve_operator.kube import (
    HANDOVER_MANAGER,
    Kube,
    PermanentApiError,
    RefusedApiError,
    TemporaryApiError,
)

__all__ = ["ChildConflict", "Outcome", "Reconciler", "is_subset", "manager_owns", "needs_apply"]

log = logging.getLogger(__name__)

MONITORING_RECHECK_S = 10.0
"""How long the answer "is the ServiceMonitor API served?" is trusted (a CRD can appear later)."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manager_owns(obj: Mapping[str, Any], manager: str, *path: str) -> bool:
    """Whether ``manager`` (with an Apply operation) owns the field at ``path`` of ``obj``."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, Mapping) else None
            if node is None:
                break
        else:
            return True
    return False


def server_image(deployment: Mapping[str, Any] | None) -> str | None:
    """The image of the server container of a Deployment (``None`` without one)."""
    pod = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in pod.get("containers") or []:
        if container.get("name") == manifests.SERVER_CONTAINER:
            return str(container.get("image") or "")
    return None


def requests_gpus(deployment: Mapping[str, Any]) -> bool:
    """Whether the server container of a Deployment asks for any extended (GPU) resource.

    The builders limit only ``memory`` besides the GPU resource (whatever its name:
    ``resources.gpuResourceName``), so any other positive limit is the GPU request.
    """
    pod = (((deployment.get("spec") or {}).get("template") or {}).get("spec")) or {}
    for container in pod.get("containers") or []:
        if container.get("name") == manifests.SERVER_CONTAINER:
            limits = (container.get("resources") or {}).get("limits") or {}
            return any(
                k not in ("cpu", "memory", "ephemeral-storage") and str(v) != "0" for k, v in limits.items()
            )
    return False


def rolling_out(deployment: Mapping[str, Any]) -> bool:
    """Whether a Deployment's rollout is unfinished (not observed, not updated or not available)."""
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    replicas = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    return (
        int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0)
        or int(status.get("updatedReplicas") or 0) < replicas
        or int(status.get("availableReplicas") or 0) < replicas
    )


class _Held(contextlib.AbstractContextManager[None]):
    """Releases an already acquired lock on exit."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class ChildConflict(kopf.TemporaryError):
    """An object of a child's name exists and is not controlled by this BertServer.

    It is never adopted nor modified (adopting a user's Service would merge our selector into
    it and let the garbage collector delete it with the BertServer). Retried with back-off: the
    owner of the object may delete or rename it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=0.0)


def controls(obj: Mapping[str, Any], owner: Owner) -> bool:
    """Whether ``owner`` is ``obj``'s controller (by uid; by name when the uid is unknown)."""
    refs = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or () if r.get("controller")]
    if owner.uid:
        return any(r.get("uid") == owner.uid for r in refs)
    return controller_owner(obj) == (owner.namespace, owner.name)


def conflict_message(obj: Mapping[str, Any], kind: str) -> str:
    meta = obj.get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or () if r.get("controller")]
    holder = (
        f"controlled by {refs[0].get('kind')} {refs[0].get('name')}"
        if refs
        else "not controlled by any object"
    )
    return (
        f"{kind} {meta.get('namespace')}/{meta.get('name')} already exists and is {holder}; "
        "the operator does not adopt it: delete or rename it, or rename the BertServer"
    )


@dataclass
class Outcome:
    """What one pass did (for logs and tests)."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    events: list[Transition] = field(default_factory=list)
    spec_error: SpecError | None = None
    skipped: str = ""
    recheck_after: float = 0.0
    """Seconds after which to look again although nothing may change (0: no need)."""


class Reconciler:
    """Runs passes; one at a time per BertServer (threads may call it concurrently)."""

    def __init__(
        self,
        kube: Kube,
        cache: Cache,
        options: RenderOptions,
        *,
        clock: Callable[[], str] = utc_now,
        instance: str | None = None,
        apply_threads: int = 0,
        random_bytes: Callable[[int], bytes] = os.urandom,
        policy: Policy | None = None,
        stuck_recheck_seconds: float = 10.0,
        max_event_lookups: int = 3,
        observe_apply: Callable[[str, float], None] | None = None,
        max_image_rollouts: int = 1,
    ) -> None:
        self.kube = kube
        self.max_image_rollouts = max_image_rollouts
        self._image_lock = threading.Lock()
        self.observe_apply = observe_apply  # (kind, seconds) of each apply, for the metrics
        self.stuck_recheck_seconds = stuck_recheck_seconds
        self.max_event_lookups = max_event_lookups
        self.policy = policy or Policy()
        self.random_bytes = random_bytes
        self._keyed: set[str] = set()  # uids whose peer-key Secret is known to exist
        self._created: set[tuple[str, str]] = set()  # (uid, name) of other create-once Secrets
        self._monitors: dict[str, str] = {}  # uid -> hash of the ServiceMonitor applied ("" = none)
        self._monitoring_served: tuple[float, bool] = (-1e9, False)
        # Children of one pass are applied concurrently (0: one after the other, as in unit tests).
        self._pool = ThreadPoolExecutor(apply_threads, thread_name_prefix="apply") if apply_threads else None
        self.cache = cache
        self.options = options
        self.clock = clock
        self.instance = instance or socket.gethostname()
        self._locks: dict[Key, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._written: dict[str, dict[str, Any]] = {}  # uid -> last status we wrote

    def _lock(self, key: Key) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def forget(self, key: Key, uid: str | None) -> None:
        """Drop per-object memory once a BertServer is gone."""
        with self._locks_guard:
            self._locks.pop(key, None)
            if uid:
                self._written.pop(uid, None)
                self._keyed.discard(uid)
                self._created = {c for c in self._created if c[0] != uid}
                self._monitors.pop(uid, None)

    def reconcile_key(self, key: Key) -> Outcome | None:
        """A pass over the cached BertServer ``key``; ``None`` when it no longer exists."""
        body = self.cache.owner(key)
        if body is None:
            return None
        return self.reconcile(body)

    def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """A pass over ``body`` (a BertServer as read from the API server)."""
        key = key_of(body)
        with self._lock(key):
            return self._pass(body, key)

    # ------------------------------------------------------------------ the pass

    def _pass(self, body: Mapping[str, Any], key: Key) -> Outcome:
        meta = body["metadata"]
        outcome = Outcome()
        if meta.get("deletionTimestamp"):
            outcome.skipped = "being deleted (children go with the garbage collector)"
            return outcome
        owner = Owner(meta["name"], meta["namespace"], meta.get("uid", ""))
        generation = int(meta.get("generation") or 1)
        previous = self._previous_status(body)
        dep_name = manifests.deployment_name(owner.name)
        try:
            check_name(owner.name)  # objects admitted before the CRD refused such names
            spec = parse_spec(body.get("spec"))
            check_policy(spec, self.policy)
        except SpecError as err:
            outcome.spec_error = err
            status = compute_status(
                owner=owner,
                generation=generation,
                spec=None,
                spec_error=err,
                now=self.clock(),
                deployment=self.cache.child("Deployment", owner.namespace, dep_name),
                pods=self.cache.pods_of(key),
                previous=previous,
            )
            self._publish(body, previous, status, outcome)
            if outcome.status_written:  # said once per change, not at every resync
                log.warning("%s/%s: invalid spec, nothing applied: %s", key[0], key[1], err)
            return outcome

        options, image_lock = self._render_options(owner, spec, outcome)
        try:
            with image_lock:
                children = manifests.render(owner, spec, options)
                deployment = self._ensure_children(owner, children, spec, outcome)
            self._ensure_service_monitor(owner, children.service_monitor, outcome)
        except (ChildConflict, RefusedApiError, PermanentApiError) as err:
            status = compute_status(
                owner=owner,
                generation=generation,
                spec=spec,
                now=self.clock(),
                deployment=self.cache.child("Deployment", owner.namespace, dep_name),
                pods=self.cache.pods_of(key),
                previous=previous,
                apply_error=str(err),
                apply_reason=CHILD_CONFLICT if isinstance(err, ChildConflict) else APPLY_FAILED,
            )
            self._publish(body, previous, status, outcome)
            raise
        pods = self.cache.pods_of(key)
        status = compute_status(
            owner=owner,
            generation=generation,
            spec=spec,
            now=self.clock(),
            deployment=deployment,
            pods=pods,
            previous=previous,
            hpa=self.cache.child("HorizontalPodAutoscaler", owner.namespace, dep_name),
            pod_warnings=self._pod_warnings(owner.namespace, pods, outcome),
        )
        self._publish(body, previous, status, outcome)
        return outcome

    def _pod_warnings(
        self, namespace: str, pods: list[dict[str, Any]], outcome: Outcome
    ) -> dict[str, list[tuple[str, str]]]:
        """Warning events of pods stuck creating their containers (at most a few per pass).

        A volume that cannot be mounted or attached (FailedMount, a ReadWriteOnce claim on two
        nodes: FailedAttachVolume "Multi-Attach error") changes nothing in the pod's status but
        its ``ContainerCreating``; only its Events say why. No watch on Events (all of them, in
        every namespace, would cost more than the pods); instead a pass that sees such pods reads
        their Warnings and asks to be repeated soon, since the Events themselves trigger nothing.
        """
        stuck = pods_stuck_creating(pods)[: self.max_event_lookups]
        if not stuck:
            return {}
        outcome.recheck_after = self.stuck_recheck_seconds
        warnings: dict[str, list[tuple[str, str]]] = {}
        for name in stuck:
            try:
                warnings[name] = self.kube.pod_warnings(namespace, name)
            except TemporaryApiError as exc:  # advice only: the status is still true without it
                log.warning("%s/%s: could not read the pod's events: %s", namespace, name, exc)
        return warnings

    def _render_options(
        self, owner: Owner, spec: BertServerSpec, outcome: Outcome
    ) -> tuple[RenderOptions, contextlib.AbstractContextManager[Any]]:
        """Options for this BertServer, pacing moves onto a new default server image.

        A new chart ``serverImage`` or ``serverCpuImage`` (the operator's ``default_image`` and
        ``default_cpu_image``) would otherwise roll every BertServer without ``spec.image`` at
        once: all their pods restart and reload their models together. Instead an existing
        Deployment keeps the image it runs until fewer than ``max_image_rollouts`` Deployments are
        still rolling onto a default image (either one: the cap is on restarts, whichever image
        causes them); a new image that never becomes ready so stops after the first few
        BertServers. The decision and the apply happen under one lock, so concurrent passes cannot
        both take the last slot. New BertServers, ``spec.image`` changes and a switch between
        ``resources.gpus: 0`` and more (its pods restart for the new resources anyway, and must
        get the image that matches them) are never held back.
        """
        if spec.image is not None:
            return self.options, contextlib.nullcontext()
        new = manifests.server_image_for(spec, self.options)
        observed = self.cache.child("Deployment", owner.namespace, manifests.deployment_name(owner.name))
        current = server_image(observed)
        if observed is None or current is None or current == new:
            return self.options, contextlib.nullcontext()
        if requests_gpus(observed) != (spec.resources.gpus > 0):
            return self.options, contextlib.nullcontext()
        defaults = {self.options.default_image, self.options.default_cpu_image} - {""}
        self._image_lock.acquire()
        try:
            rolling = self.cache.count_children(
                "Deployment", lambda d: server_image(d) in defaults and rolling_out(d)
            )
        except BaseException:
            self._image_lock.release()
            raise
        if rolling < self.max_image_rollouts:
            log.info(
                "%s/%s: moving from %s to the new default image %s", owner.namespace, owner.name, current, new
            )
            return self.options, _Held(self._image_lock)
        self._image_lock.release()
        outcome.recheck_after = self.stuck_recheck_seconds
        log.debug(
            "%s/%s: stays on %s while %d BertServers roll onto %s",
            owner.namespace,
            owner.name,
            current,
            rolling,
            new,
        )
        held = dataclasses.replace(self.options, default_image=current, default_cpu_image=current)
        return held, contextlib.nullcontext()

    # ------------------------------------------------------------------ children

    def _observe(self, desired: Mapping[str, Any]) -> dict[str, Any] | None:
        """A child as cached, else as the API server has it (a foreign object is not cached:
        the child watches only stream objects carrying our managed-by label)."""
        meta = desired["metadata"]
        observed = self.cache.child(desired["kind"], meta["namespace"], meta["name"])
        if observed is None:
            observed = self.kube.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
        return observed

    def _run(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        """Run ``jobs`` (concurrently when there is a pool); re-raise the first error."""
        if self._pool is None:
            return [job() for job in jobs]
        futures = [self._pool.submit(job) for job in jobs]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _ensure_children(
        self, owner: Owner, children: manifests.Children, spec: BertServerSpec, outcome: Outcome
    ) -> dict[str, Any]:
        """Ensure every child, all or nothing as far as the API allows; returns the Deployment.

        1. Every child is observed first; one that exists without us as its controller stops
           the pass (:class:`ChildConflict`) before anything is written.
        2. The Secrets the pods mount are created (once; see :meth:`_ensure_peer_key`).
        3. The Deployment is applied next, alone: when it is refused (quota, RBAC, admission)
           no Service or HPA is left behind pointing at nothing.
        4. The other children are applied concurrently.
        """
        desired = children.all()
        observed = self._run([functools.partial(self._observe, d) for d in desired])
        for want, have in zip(desired, observed, strict=True):
            if have is not None and not controls(have, owner):
                raise ChildConflict(conflict_message(have, str(want["kind"])))
        # The Secrets the pods mount exist before the Deployment that mounts them.
        self._ensure_peer_key(owner, outcome)
        if children.model_uri_secret is not None:
            self._create_once(owner, children.model_uri_secret, outcome)
        seen = {(d["kind"], d["metadata"]["name"]): o for d, o in zip(desired, observed, strict=True)}
        dep_name = manifests.deployment_name(owner.name)
        deployment = self._ensure_deployment(children.deployment, seen["Deployment", dep_name], spec, outcome)
        svc, peers = children.service, children.peer_service
        self._run(
            [
                lambda: self._ensure(svc, seen["Service", svc["metadata"]["name"]], outcome),
                lambda: self._ensure(peers, seen["Service", peers["metadata"]["name"]], outcome),
                lambda: self._ensure_optional(
                    owner, children.hpa, seen, outcome, kind="HorizontalPodAutoscaler"
                ),
                lambda: self._ensure_optional(owner, children.pdb, seen, outcome, kind="PodDisruptionBudget"),
                lambda: self._ensure_optional(
                    owner, children.network_policy, seen, outcome, kind="NetworkPolicy"
                ),
            ]
        )
        return deployment

    def _ensure_peer_key(self, owner: Owner, outcome: Outcome) -> None:
        """Create the mesh key Secret once per BertServer (before its pods need to mount it).

        Create-only: an AlreadyExists answer means the key is there, and it is never read,
        compared or rewritten, so a running mesh never gets a new key by accident. Known keys
        are remembered, so a quiet pass costs no request; a restarted operator asks once each.
        """
        if not owner.uid or owner.uid in self._keyed:
            return
        # Text (base64 of 48 random bytes, 64 characters), as the docs' `base64 > peer.key`:
        # nothing a key file reader would strip, whatever the random bytes are.
        key = base64.b64encode(self.random_bytes(48))
        secret = manifests.peer_key_secret(owner, key)
        if self.kube.create_once(secret):
            outcome.applied.append("Secret")
            log.info("created Secret %s/%s (mesh key)", owner.namespace, secret["metadata"]["name"])
        self._keyed.add(owner.uid)

    def _monitoring_api(self) -> bool:
        """Whether ServiceMonitors are served (asked at most every MONITORING_RECHECK_S)."""
        checked, served = self._monitoring_served
        now = time.monotonic()
        if now - checked >= MONITORING_RECHECK_S:
            served = self.kube.serves(manifests.SERVICE_MONITOR_API_VERSION, "servicemonitors")
            self._monitoring_served = (now, served)
        return served

    def _ensure_service_monitor(
        self, owner: Owner, desired: Mapping[str, Any] | None, outcome: Outcome
    ) -> None:
        """Apply the ServiceMonitor when asked for and its API is served; remove ours otherwise.

        It is not watched (its CRD may not exist), so what was applied is remembered by
        hash: a quiet pass asks nothing, and a restarted operator re-applies once.
        """
        uid = owner.uid
        if not uid or (desired is None and self._monitors.get(uid) == ""):
            return
        if not self._monitoring_api():
            if desired is not None and uid not in self._monitors:
                log.warning(
                    "%s/%s: spec.monitoring.serviceMonitor.enabled, but the ServiceMonitor API "
                    "(monitoring.coreos.com/v1) is not served; none is made",
                    owner.namespace,
                    owner.name,
                )
            self._monitors[uid] = ""
            return
        name = manifests.service_name(owner.name)
        if desired is None:
            observed = self.kube.get(
                manifests.SERVICE_MONITOR_API_VERSION, "ServiceMonitor", owner.namespace, name
            )
            if observed is not None and controls(observed, owner):
                self.kube.delete(
                    manifests.SERVICE_MONITOR_API_VERSION, "ServiceMonitor", owner.namespace, name
                )
                outcome.deleted.append("ServiceMonitor")
            self._monitors[uid] = ""
            return
        digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()
        if self._monitors.get(uid) == digest:
            return
        self.kube.apply(desired)
        outcome.applied.append("ServiceMonitor")
        log.info("applied ServiceMonitor %s/%s", owner.namespace, name)
        self._monitors[uid] = digest

    def _create_once(self, owner: Owner, secret: Mapping[str, Any], outcome: Outcome) -> None:
        """Create an immutable Secret unless it exists (an inline model URL, one Secret per URL)."""
        name = str(secret["metadata"]["name"])
        if not owner.uid or (owner.uid, name) in self._created:
            return
        if self.kube.create_once(secret):
            outcome.applied.append("Secret")
            log.info("created Secret %s/%s", owner.namespace, name)
        self._created.add((owner.uid, name))

    def _apply(self, obj: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
        started = time.monotonic()
        applied = self.kube.apply(with_applied_hash(obj))
        if self.observe_apply is not None:
            self.observe_apply(str(obj["kind"]), time.monotonic() - started)
        self.cache.put_child(applied)
        outcome.applied.append(str(obj["kind"]))
        log.info("applied %s %s/%s", obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        return applied

    def _remove_foreign(
        self, desired: Mapping[str, Any], observed: dict[str, Any], outcome: Outcome
    ) -> dict[str, Any]:
        """Remove keys others added to maps we own whole (see :mod:`drift`)."""
        pointers = foreign_entries(desired, observed)
        if not pointers:
            return observed
        meta = desired["metadata"]
        ops = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": observed["metadata"]["resourceVersion"],
            }
        ]
        ops += [{"op": "remove", "path": p} for p in pointers]
        try:
            patched = self.kube.json_patch(
                desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"], ops
            )
        except PermanentApiError as err:  # changed meanwhile: the next pass sees the new version
            raise TemporaryApiError(str(err), err.status, delay=1.0) from err
        self.cache.put_child(patched)
        outcome.applied.append(f"{desired['kind']}(removed {', '.join(pointers)})")
        log.info(
            "removed foreign entries %s from %s %s/%s",
            pointers,
            desired["kind"],
            meta["namespace"],
            meta["name"],
        )
        return patched

    def _ensure(
        self, desired: Mapping[str, Any], observed: dict[str, Any] | None, outcome: Outcome
    ) -> dict[str, Any]:
        if observed is not None:
            observed = self._remove_foreign(desired, observed, outcome)
            if not needs_apply(desired, observed):
                return observed
        return self._apply(desired, outcome)

    def _ensure_deployment(
        self,
        desired: Mapping[str, Any],
        observed: dict[str, Any] | None,
        spec: BertServerSpec,
        outcome: Outcome,
    ) -> dict[str, Any]:
        if (
            observed is not None
            and spec.autoscaling.enabled
            and manager_owns(observed, names.FIELD_MANAGER, "spec", "replicas")
        ):
            # Ownership of replicas must be known before dropping it (the cached copy keeps
            # managedFields, a GET returns them).
            meta = desired["metadata"]
            replicas = int((observed.get("spec") or {}).get("replicas") or 1)
            self.kube.apply(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "spec": {"replicas": replicas},
                },
                field_manager=HANDOVER_MANAGER,
            )
            log.info(
                "handed spec.replicas=%d of %s/%s over to the HPA", replicas, meta["namespace"], meta["name"]
            )
            return self._apply(desired, outcome)
        return self._ensure(desired, observed, outcome)

    def _ensure_optional(
        self,
        owner: Owner,
        desired: Mapping[str, Any] | None,
        seen: Mapping[tuple[str, str], dict[str, Any] | None],
        outcome: Outcome,
        *,
        kind: str,
    ) -> None:
        """Ensure an HPA/PDB/NetworkPolicy the spec asks for, or delete ours when it no longer does."""
        name = manifests.deployment_name(owner.name)
        if desired is not None:
            self._ensure(desired, seen[kind, name], outcome)
            return
        key = (owner.namespace, owner.name)
        observed = self.cache.child(kind, key[0], name)
        if observed is None or not controls(observed, owner):
            return
        api_version = str(observed.get("apiVersion"))
        self.kube.delete(api_version, kind, key[0], name)
        self.cache.drop_child(observed)
        outcome.deleted.append(kind)
        log.info("deleted %s %s/%s (no longer in the spec)", kind, key[0], name)

    # ------------------------------------------------------------------ status

    def _previous_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        uid = str(body["metadata"].get("uid", ""))
        written = self._written.get(uid)
        if written is not None:
            return written
        current = dict(body.get("status") or {})
        current.pop("kopf", None)
        return current

    def _publish(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], status: dict[str, Any], outcome: Outcome
    ) -> None:
        meta = body["metadata"]
        uid = str(meta.get("uid", ""))
        current = dict(body.get("status") or {})
        current.pop("kopf", None)
        if status in (previous, current):
            self._written[uid] = status
            return
        if self.kube.patch_status(meta["namespace"], meta["name"], status) is None:
            return  # deleted meanwhile
        self._written[uid] = status
        outcome.status_written = True
        for transition in transitions(previous.get("conditions") or [], status["conditions"]):
            outcome.events.append(transition)
            try:
                self.kube.post_event(
                    body,
                    type_=transition.type,
                    reason=transition.reason,
                    message=transition.message,
                    now=self.clock(),
                    instance=self.instance,
                )
            except Exception as exc:  # an Event is advice; the status above is the record
                log.warning(
                    "%s/%s: could not post event %s: %s", meta["namespace"], meta["name"], transition, exc
                )
