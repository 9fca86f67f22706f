"""When does a child need writing, and which hand-added entries must go?

Why it exists: a level-based operator re-examines every child on every event and resync. If
"different" is too strict it re-applies forever (the API server rewrites ``cpu: "0.5"`` as
``500m``; a webhook or ``kubectl set env`` adds list entries we did not render), if too loose
it never repairs hand edits. The rules, all pure functions over plain dicts:

* **Last applied**: each child carries :data:`APPLIED_HASH`, the hash of the configuration we
  last applied. A different rendering (spec change, new operator version, a field the spec no
  longer sets) re-applies; server-side apply then also *removes* fields only we owned.
* **Hand edits of our fields**: every field we render must be present with the same value
  (:func:`is_subset`). Quantities compare by value (``0.5`` = ``500m``, ``2048Mi`` = ``2Gi``).
  Lists that Kubernetes merges by key (containers, env, ports, volumes, ...) compare by key, so
  entries added by others are tolerated; atomic lists (args, tolerations) must match exactly.
* **Foreign entries in maps we own whole** (:data:`OWNED_MAPS`: a Service selector, the pod's
  ``nodeSelector``, a container's requests and limits): server-side apply cannot remove a key
  another field manager added, so :func:`foreign_entries` lists them and the reconcile removes
  them with a JSON patch (``test`` of the resourceVersion, then one ``remove`` per key). A
  removal gives our manager no ownership, so later applies still prune what we stop rendering;
  the alternative, a full get-compare-update, would take every field of the object from its
  other managers (HPA replicas, defaults) and fight them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from bertserve_api import names

APPLIED_HASH = f"{names.GROUP}/applied-hash"
"""Child annotation: hash of the configuration the operator last applied to it."""

# Lists Kubernetes merges by key (x-kubernetes-list-type: map); the value names the key fields.
LIST_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
}

_QUANTITY = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


def quantity_value(text: Any) -> Fraction | None:
    """The exact value of a Kubernetes quantity string (``None`` if it is not one)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        return None
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        return None
    sign, number, suffix = match.group(1), match.group(2), match.group(3) or ""
    value = Fraction(number)
    if suffix in _BINARY:
        value *= 2 ** _BINARY[suffix]
    elif suffix[:1] in ("e", "E"):
        value *= Fraction(10) ** int(suffix[1:])
    else:
        value *= Fraction(10) ** _DECIMAL[suffix]
    return -value if sign == "-" else value


def _is_quantity_path(path: Sequence[str]) -> bool:
    return (len(path) >= 2 and path[-2] in ("requests", "limits")) or (
        bool(path) and path[-1] in ("sizeLimit", "storage")
    )


def _list_key(field: str, item: Any) -> tuple[Any, ...] | None:
    if not isinstance(item, Mapping):
        return None
    if field == "ports":  # container ports by containerPort, Service ports by port
        port = "containerPort" if "containerPort" in item else "port"
        return (item.get(port), item.get("protocol", "TCP"))
    keys = LIST_KEYS.get(field)
    return tuple(item.get(k) for k in keys) if keys else None


def is_subset(desired: Any, observed: Any, path: tuple[str, ...] = ()) -> bool:
    """True when every field of ``desired`` is present with the same value in ``observed``.

    Fields the API server or others add (defaults, status, entries of keyed lists) are ignored.
    """
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(k in observed and is_subset(v, observed[k], (*path, str(k))) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return False
        field = path[-1] if path else ""
        keys = [_list_key(field, d) for d in desired]
        if keys and all(k is not None for k in keys) and (field in LIST_KEYS or field == "ports"):
            by_key = {_list_key(field, o): o for o in observed}
            return all(
                k in by_key and is_subset(d, by_key[k], path) for k, d in zip(keys, desired, strict=True)
            )
        if len(desired) != len(observed):
            return False
        return all(is_subset(d, o, path) for d, o in zip(desired, observed, strict=True))
    if desired == observed:
        return True
    if _is_quantity_path(path):
        want, have = quantity_value(desired), quantity_value(observed)
        return want is not None and want == have
    return False


def applied_hash(desired: Mapping[str, Any]) -> str:
    """Hash of a rendered child (what :data:`APPLIED_HASH` records)."""
    payload = json.dumps(desired, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def with_applied_hash(desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` plus the annotation recording its hash (a copy)."""
    out: dict[str, Any] = json.loads(json.dumps(desired))
    meta = out.setdefault("metadata", {})
    meta.setdefault("annotations", {})[APPLIED_HASH] = applied_hash(desired)
    return out


def needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether ``observed`` differs from ``desired`` in anything we render (see the module doc)."""
    if observed is None:
        return True
    seen = observed.get("metadata") or {}
    if (seen.get("annotations") or {}).get(APPLIED_HASH) != applied_hash(desired):
        return True
    if not is_subset(desired.get("spec", {}), observed.get("spec", {}), ("spec",)):
        return True
    meta = desired["metadata"]
    if not is_subset(meta.get("labels", {}), seen.get("labels") or {}):
        return True
    wanted = {r["uid"] for r in meta.get("ownerReferences", [])}
    present = {r.get("uid") for r in seen.get("ownerReferences") or [] if r.get("controller")}
    return not wanted <= present


def _pointer(*parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _owned_maps(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], Any]]:
    """``(path in observed, desired map or None)`` for every map we own whole."""
    kind = desired.get("kind")
    if kind == "Service":
        return [(("spec", "selector"), (desired.get("spec") or {}).get("selector"))]
    if kind == "PodDisruptionBudget":
        want = ((desired.get("spec") or {}).get("selector") or {}).get("matchLabels")
        return [(("spec", "selector", "matchLabels"), want)]
    if kind != "Deployment":
        return []
    want_pod = ((desired.get("spec") or {}).get("template") or {}).get("spec") or {}
    have_pod = ((observed.get("spec") or {}).get("template") or {}).get("spec") or {}
    out: list[tuple[tuple[Any, ...], Any]] = [
        (("spec", "template", "spec", "nodeSelector"), want_pod.get("nodeSelector"))
    ]
    for field in ("containers", "initContainers"):
        wanted = {c.get("name"): c for c in want_pod.get(field) or []}
        for index, container in enumerate(have_pod.get(field) or []):
            mine = wanted.get(container.get("name"))
            if mine is None:
                continue  # a container someone else added is theirs entirely
            for part in ("requests", "limits"):
                want = (mine.get("resources") or {}).get(part)
                out.append((("spec", "template", "spec", field, index, "resources", part), want))
    return out


def _lookup(obj: Any, path: Sequence[Any]) -> Any:
    for part in path:
        if isinstance(obj, Mapping):
            obj = obj.get(part)
        elif isinstance(obj, list) and isinstance(part, int) and part < len(obj):
            obj = obj[part]
        else:
            return None
    return obj


def foreign_entries(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> list[str]:
    """JSON pointers of keys someone added to a map we own whole (to be removed)."""
    if observed is None:
        return []
    out: list[str] = []
    for path, want in _owned_maps(desired, observed):
        have = _lookup(observed, path)
        if not isinstance(have, Mapping):
            continue
        out.extend(_pointer(*path, key) for key in sorted(have) if key not in (want or {}))
    return out
