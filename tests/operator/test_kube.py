"""API error policy and request plumbing of the client wrapper (no network)."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from bertserve_operator.kube import (
    APPLY_PATCH,
    Kube,
    PermanentApiError,
    RefusedApiError,
    TemporaryApiError,
    classify,
    resource_path,
)


def test_paths() -> None:
    assert (
        resource_path("apps/v1", "Deployment", "ml", "mrpc") == "/apis/apps/v1/namespaces/ml/deployments/mrpc"
    )
    assert resource_path("v1", "Service", "ml") == "/api/v1/namespaces/ml/services"
    assert resource_path("bertserve.io/v1alpha1", "BertServer", "ml", "m", "status") == (
        "/apis/bertserve.io/v1alpha1/namespaces/ml/bertservers/m/status"
    )


@pytest.mark.parametrize(
    ("status", "kind", "delay"),
    [
        (422, PermanentApiError, None),
        (400, PermanentApiError, None),
        (409, TemporaryApiError, 1.0),
        (403, RefusedApiError, 0.0),  # the work queue's back-off paces it
        (401, RefusedApiError, 0.0),
        (429, TemporaryApiError, 5.0),
        (500, TemporaryApiError, 5.0),
        (503, TemporaryApiError, 5.0),
    ],
)
def test_errors_map_to_kopf_retry_semantics(status: int, kind: type, delay: float | None) -> None:
    error = classify("PATCH", "/x", status, {"message": "nope"})
    assert isinstance(error, kind) and error.status == status  # type: ignore[attr-defined]
    assert isinstance(error, kopf.TemporaryError | kopf.PermanentError)
    assert f"HTTP {status}: nope" in str(error)
    if delay is not None:
        assert error.delay == delay  # type: ignore[attr-defined]


class StubResponse:
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self._body, self._headers = status, body, headers or {}

    def read(self) -> bytes:
        return json.dumps(self._body).encode()

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name, default)


class StubApi:
    def __init__(self, response: StubResponse | Exception) -> None:
        self.response = response
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []

    def param_serialize(self, method: str, path: str, **kw: Any) -> tuple[Any, ...]:
        return method, "https://k" + path, kw["header_params"], kw["body"], None

    def call_api(self, method: str, url: str, **kw: Any) -> StubResponse:
        self.calls.append((method, url, kw["header_params"], kw["body"]))
        if isinstance(self.response, Exception):
            raise self.response
        return self.response

    def close(self) -> None:
        pass


def test_apply_is_a_forced_server_side_apply_under_our_manager() -> None:
    api = StubApi(StubResponse(200, {"kind": "Service"}))
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ml"}}
    assert Kube(api).apply(obj) == {"kind": "Service"}
    ((method, url, headers, body),) = api.calls
    assert method == "PATCH"
    assert url == "https://k/api/v1/namespaces/ml/services/s?fieldManager=bertserve-operator&force=true"
    assert headers["Content-Type"] == APPLY_PATCH and body == obj
    assert Kube(api).request_counts() == {}


def test_requests_are_counted_by_method_and_resource() -> None:
    kube = Kube(StubApi(StubResponse(200, {})))
    kube.patch_status("ml", "m", {})
    kube.get("apps/v1", "Deployment", "ml", "d")
    kube.get("apps/v1", "Deployment", "ml", "e")
    assert kube.request_counts() == {"GET deployments": 2, "PATCH bertservers/status": 1}


def test_status_goes_to_the_status_subresource_and_tolerates_a_deleted_object() -> None:
    api = StubApi(StubResponse(404, {"message": "not found"}))
    assert Kube(api).patch_status("ml", "m", {"observedGeneration": 1}) is None
    ((_method, url, headers, body),) = api.calls
    assert url.endswith("/bertservers/m/status") and headers["Content-Type"] == "application/merge-patch+json"
    assert body == {"status": {"observedGeneration": 1}}


def test_connection_errors_are_temporary() -> None:
    with pytest.raises(TemporaryApiError, match="ConnectionRefusedError"):
        Kube(StubApi(ConnectionRefusedError("refused"))).get("v1", "Service", "ml", "s")


def test_retry_after_is_honoured() -> None:
    api = StubApi(StubResponse(429, {"message": "slow down"}, {"Retry-After": "7"}))
    with pytest.raises(TemporaryApiError) as info:
        Kube(api).get("v1", "Service", "ml", "s")
    assert info.value.delay == 7.0
