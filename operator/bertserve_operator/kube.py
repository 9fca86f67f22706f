"""The operator's only door to the API server.

Why it exists: every write goes through here, so the rules hold everywhere —

* children are written with **server-side apply** under the one field manager
  :data:`bertserve_api.names.FIELD_MANAGER`, with ``force=True`` (the operator is the
  authority over the fields it renders; a hand edit of one of them is drift to repair);
* status is written **only** through the ``/status`` subresource;
* API failures become kopf's retry semantics: :class:`TemporaryApiError` ("not yet": network,
  5xx, 429, conflicts, RBAC not yet granted) or :class:`PermanentApiError` ("never": the
  object itself is rejected), both carrying the HTTP status.

Requests go through the official client's low-level ``ApiClient`` with JSON in and plain
dicts out: no model classes, so an object of any kind costs one ``json.loads``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import kopf
import urllib3
from kubernetes import client as _client
from kubernetes import config as _config

from bertserve_api import names

log = logging.getLogger(__name__)

# The official client's functions are only partly annotated; treat them as untyped.
k8s: Any = _client
k8s_config: Any = _config

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

HANDOVER_MANAGER = f"{names.FIELD_MANAGER}-handover"
"""Co-owner of ``Deployment.spec.replicas`` during the hand-over to an HPA (see reconcile)."""

# apiVersion, kind -> plural. Only kinds the operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("v1", "Secret"): "secrets",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    (names.API_VERSION, names.KIND): names.PLURAL,
}


class TemporaryApiError(kopf.TemporaryError):
    """Retry later: the API server or the network is not ready, or we raced someone."""

    def __init__(self, message: str, status: int, delay: float) -> None:
        super().__init__(message, delay=delay)
        self.status = status


class RefusedApiError(TemporaryApiError):
    """The API server refused the request (401/403: RBAC, ResourceQuota, an admission plugin).

    Not permanent — a quota is raised, a role fixed — but not "not yet" either: the user must
    act, so the reconcile records it in status (``ApplyFailed``) and retries with back-off.
    """


class PermanentApiError(kopf.PermanentError):
    """Retrying the same request cannot succeed (the object is invalid or refused)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None, subresource: str = ""
) -> str:
    """REST path of a (namespaced) object or collection."""
    plural = PLURALS[api_version, kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def classify(method: str, path: str, status: int, body: Any, retry_after: float | None = None) -> Exception:
    """The kopf error for a failed request (one place for the whole policy)."""
    detail = body.get("message") if isinstance(body, Mapping) else None
    message = f"{method} {path}: HTTP {status}: {detail or body or 'no detail'}"
    if status in (400, 413, 415, 422):
        return PermanentApiError(message, status)
    if status == 409:
        return TemporaryApiError(message, status, delay=1.0)
    if status in (401, 403):
        # Credentials rotate, RBAC gets fixed, quotas raised: the work queue's back-off decides.
        return RefusedApiError(message, status, delay=0.0)
    if status == 429:
        return TemporaryApiError(message, status, delay=retry_after or 5.0)
    return TemporaryApiError(message, status, delay=retry_after or 5.0)


class Kube:
    """Thin, thread-safe JSON client (one connection pool shared by all threads)."""

    def __init__(self, api_client: Any, *, request_timeout: float = 30.0) -> None:
        self.api = api_client
        self.request_timeout = request_timeout
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    def request_counts(self) -> dict[str, int]:
        """Requests made so far, by ``METHOD resource[/subresource]`` (liveness detail, benchmarks)."""
        with self._counts_lock:
            return dict(sorted(self._counts.items()))

    def _count(self, method: str, path: str) -> None:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            rest = parts[parts.index("namespaces") + 2 :]
        else:
            rest = parts[-1:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        with self._counts_lock:
            self._counts[f"{method} {resource}"] += 1

    @classmethod
    def from_environment(cls, *, request_timeout: float = 30.0, pool_size: int = 16) -> Kube:
        """Credentials from ``$KUBECONFIG``/``~/.kube/config``, else the pod's ServiceAccount."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_incluster_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        return cls(k8s.ApiClient(configuration), request_timeout=request_timeout)

    def close(self) -> None:
        self.api.close()

    # ------------------------------------------------------------------ raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        not_found_ok: bool = False,
    ) -> Any:
        """One request; returns the decoded JSON (``None`` for a tolerated 404)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        full = path + (f"?{urlencode(query)}" if query else "")
        self._count(method, path)
        try:
            method_, url, headers, body_, post = self.api.param_serialize(
                method, full, header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            response = self.api.call_api(
                method_, url, header_params=headers, body=body_, post_params=post,
                _request_timeout=self.request_timeout,
            )  # fmt: skip
            raw = response.read()
        except (TimeoutError, urllib3.exceptions.HTTPError, OSError, k8s.ApiException) as exc:
            raise TemporaryApiError(f"{method} {path}: {type(exc).__name__}: {exc}", 0, delay=5.0) from exc
        status = int(response.status)
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if 200 <= status < 300:
            return decoded
        if status == 404 and not_found_ok:
            return None
        retry_after = response.getheader("Retry-After")
        delay = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise classify(method, path, status, decoded, delay)

    # ------------------------------------------------------------------ typed helpers

    def apply(self, obj: Mapping[str, Any], *, field_manager: str = names.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply ``obj`` (create or update), forcing ownership of its fields."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result = self.request(
            "PATCH",
            path,
            query={"fieldManager": field_manager, "force": "true"},
            body=dict(obj),
            content_type=APPLY_PATCH,
        )
        assert isinstance(result, dict)
        return result

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``api_version`` (discovery, allowed to all)."""
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        found = self.request("GET", base, not_found_ok=True)
        resources = found.get("resources", []) if isinstance(found, Mapping) else []
        return any(r.get("name") == plural for r in resources)

    def create_once(self, obj: Mapping[str, Any]) -> bool:
        """Create ``obj`` unless an object of its name exists: True when created, False when
        the API server answered 409 AlreadyExists.

        For objects that must never change once made (the mesh key): no read or update rights
        are needed, and an existing object is never overwritten.
        """
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        try:
            self.request("POST", path, query={"fieldManager": names.FIELD_MANAGER}, body=dict(obj))
        except TemporaryApiError as err:
            if err.status == 409:
                return False
            raise
        return True

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """An RFC 6902 patch (used to remove entries other managers added to maps we own)."""
        result = self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name),
            query={"fieldManager": names.FIELD_MANAGER},
            body=ops,
            content_type=JSON_PATCH,
        )
        assert isinstance(result, dict)
        return result

    def pod_warnings(self, namespace: str, pod: str) -> list[tuple[str, str]]:
        """``(reason, message)`` of the Warning events about pod ``pod``, oldest first."""
        selector = f"involvedObject.kind=Pod,involvedObject.name={pod},type=Warning"
        result = self.request(
            "GET", resource_path("v1", "Event", namespace), query={"fieldSelector": selector, "limit": "50"}
        )
        items = sorted(
            (result or {}).get("items") or [],
            key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
        )
        return [(str(e.get("reason") or ""), str(e.get("message") or "")) for e in items]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        result = self.request("GET", resource_path(api_version, kind, namespace, name), not_found_ok=True)
        return result if isinstance(result, dict) else None

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete if present (background propagation: dependents go to the garbage collector)."""
        self.request(
            "DELETE",
            resource_path(api_version, kind, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            not_found_ok=True,
        )

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
        """Merge-patch a BertServer's status subresource; ``None`` when the object is gone."""
        result = self.request(
            "PATCH",
            resource_path(names.API_VERSION, names.KIND, namespace, name, "status"),
            body={"status": dict(status)},
            content_type=MERGE_PATCH,
            not_found_ok=True,
        )
        return result if isinstance(result, dict) else None

    def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        now: str,
        instance: str,
    ) -> None:
        """Record a core/v1 Event about ``involved`` (a BertServer body)."""
        meta = involved["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", names.API_VERSION),
                "kind": involved.get("kind", names.KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": names.FIELD_MANAGER},
            "reportingComponent": names.FIELD_MANAGER,
            "reportingInstance": instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.request("POST", resource_path("v1", "Event", meta["namespace"]), body=event)
