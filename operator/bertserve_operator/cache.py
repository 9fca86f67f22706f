"""Last-seen copies of watched objects: the operator's informer cache.

Why it exists: a level-based reconcile compares *desired* with *observed* state. Reading the
observed state from the API server on every pass would cost several requests per BertServer
per event; instead the watch streams (run by kopf) feed this cache, and the reconcile reads it.
It also answers "which BertServer does this Deployment/pod belong to?" so a child's event can
schedule its owner.

Stored copies are trimmed to what the reconcile reads (pods especially), which keeps memory flat
with thousands of objects. Thread-safe: kopf's watchers write from the event loop, reconciles
read from worker threads.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Any

from bertserve_api import manifests, names

Key = tuple[str, str]
"""``(namespace, name)`` of a BertServer."""

CHILD_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy")


def _older(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """True when ``candidate`` is an older version of the same object than ``current``.

    resourceVersions are opaque to clients, but for one object they come from etcd's revision
    counter; compare them as integers when both are, and treat anything else as "not older"
    (the last write wins, as before). A different uid (deleted and re-created) is never older.
    """
    cmeta, kmeta = candidate.get("metadata") or {}, current.get("metadata") or {}
    if cmeta.get("uid") != kmeta.get("uid"):
        return False
    new_rv, old_rv = str(cmeta.get("resourceVersion") or ""), str(kmeta.get("resourceVersion") or "")
    return new_rv.isdigit() and old_rv.isdigit() and int(new_rv) < int(old_rv)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def controller_owner(obj: Mapping[str, Any]) -> Key | None:
    """The BertServer that controls ``obj`` (by its controller ownerReference), if any."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if (
            ref.get("controller")
            and ref.get("kind") == names.KIND
            and ref.get("apiVersion", "").startswith(names.GROUP + "/")
        ):
            return str(meta.get("namespace") or ""), str(ref.get("name"))
    return None


def trim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod the status summary reads, and the model its server loads (``served``)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    containers = (pod.get("spec") or {}).get("containers") or []
    args = next((c.get("args") or [] for c in containers if c.get("name") == manifests.SERVER_CONTAINER), [])
    return {
        "served": manifests.served_model(args),
        "classifier": manifests.served_classifier(args),
        "metadata": {
            k: copy.deepcopy(meta[k])
            for k in ("name", "namespace", "labels", "deletionTimestamp")
            if k in meta
        },
        "status": {
            k: copy.deepcopy(status[k])
            # reason/message: the kubelet's verdict on the whole pod (Evicted and why).
            for k in (
                "phase",
                "reason",
                "message",
                "conditions",
                "containerStatuses",
                "initContainerStatuses",
            )
            if k in status
        },
    }


def trim_object(obj: Mapping[str, Any], *, keep_managed_fields: bool = False) -> dict[str, Any]:
    """A deep copy without the bulky ``managedFields`` (kept for Deployments: replica hand-over)."""
    out = copy.deepcopy(dict(obj))
    meta = out.get("metadata")
    if isinstance(meta, dict) and not keep_managed_fields:
        meta.pop("managedFields", None)
    return out


class Cache:
    """BertServers, their children and their pods, as last seen on the watch streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[Key, dict[str, Any]] = {}
        self._children: dict[str, dict[Key, dict[str, Any]]] = {kind: {} for kind in CHILD_KINDS}
        self._pods: dict[Key, dict[str, dict[str, Any]]] = {}  # (ns, instance label) -> name -> pod
        self._by_instance: dict[Key, str] = {}  # (ns, instance label value) -> BertServer name

    # ------------------------------------------------------------------ owners

    def put_owner(self, body: Mapping[str, Any]) -> Key:
        key = key_of(body)
        stored = trim_object(body)
        with self._lock:
            self._owners[key] = stored
            self._by_instance[key[0], names.label_value(key[1])] = key[1]
        return key

    def drop_owner(self, key: Key) -> None:
        with self._lock:
            self._owners.pop(key, None)
            self._by_instance.pop((key[0], names.label_value(key[1])), None)

    def owner(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            body = self._owners.get(key)
            return copy.deepcopy(body) if body is not None else None

    def owner_keys(self) -> list[Key]:
        with self._lock:
            return sorted(self._owners)

    # ------------------------------------------------------------------ children

    def put_child(self, obj: Mapping[str, Any]) -> Key | None:
        """Store a child; returns its owner's key (``None`` if not ours)."""
        kind = str(obj.get("kind") or "")
        if kind not in self._children:
            return None
        stored = trim_object(obj, keep_managed_fields=kind == "Deployment")
        key = key_of(obj)
        with self._lock:
            current = self._children[kind].get(key)
            # An apply response stored by a worker thread can arrive after the watch already
            # delivered a newer version (e.g. with the controller's status): keep the newer one,
            # or the cache would stay stale until the object changes again.
            if current is None or not _older(stored, current):
                self._children[kind][key] = stored
        return controller_owner(obj)

    def drop_child(self, obj: Mapping[str, Any]) -> Key | None:
        kind = str(obj.get("kind") or "")
        if kind not in self._children:
            return None
        with self._lock:
            self._children[kind].pop(key_of(obj), None)
        return controller_owner(obj)

    def count_children(self, kind: str, predicate: Callable[[Mapping[str, Any]], bool]) -> int:
        """How many cached children of ``kind`` satisfy ``predicate`` (no copies are made)."""
        with self._lock:
            return sum(1 for obj in self._children[kind].values() if predicate(obj))

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._children[kind].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    # ------------------------------------------------------------------ pods

    def _pod_slot(self, pod: Mapping[str, Any]) -> Key | None:
        meta = pod.get("metadata") or {}
        instance = (meta.get("labels") or {}).get(names.LABEL_INSTANCE)
        if not instance:
            return None
        return str(meta.get("namespace") or ""), str(instance)

    def put_pod(self, pod: Mapping[str, Any]) -> Key | None:
        """Store a pod; returns its BertServer's key when known."""
        slot = self._pod_slot(pod)
        if slot is None:
            return None
        trimmed = trim_pod(pod)
        with self._lock:
            self._pods.setdefault(slot, {})[key_of(pod)[1]] = trimmed
            owner = self._by_instance.get(slot)
        return (slot[0], owner) if owner else None

    def drop_pod(self, pod: Mapping[str, Any]) -> Key | None:
        slot = self._pod_slot(pod)
        if slot is None:
            return None
        with self._lock:
            pods = self._pods.get(slot, {})
            pods.pop(key_of(pod)[1], None)
            if not pods:
                self._pods.pop(slot, None)
            owner = self._by_instance.get(slot)
        return (slot[0], owner) if owner else None

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        slot = (key[0], names.label_value(key[1]))
        with self._lock:
            return [copy.deepcopy(p) for _, p in sorted(self._pods.get(slot, {}).items())]

    def sizes(self) -> dict[str, int]:
        """Object counts per kind (for the liveness probe and logs)."""
        with self._lock:
            out = {"BertServer": len(self._owners), "Pod": sum(len(p) for p in self._pods.values())}
            out.update({kind: len(objs) for kind, objs in self._children.items()})
            return out
