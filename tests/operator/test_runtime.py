"""The runtime's start-up: the watch cache is listed before any pass can run."""

from __future__ import annotations

import asyncio
from typing import Any

from bertserve_api import names
from bertserve_operator.runtime import OWNED_SELECTOR, Runtime, primed_kinds
from bertserve_operator.settings import Settings


class ListingKube:
    """Answers LIST requests with one labelled object per kind (pods: one crash-looping pod)."""

    def __init__(self) -> None:
        self.lists: list[tuple[str, dict[str, str]]] = []

    def request_counts(self) -> dict[str, int]:
        return {}

    def request(self, method: str, path: str, *, query: dict[str, str] | None = None, **_: Any) -> Any:
        assert method == "GET"
        self.lists.append((path, dict(query or {})))
        labels = {names.LABEL_INSTANCE: "mrpc", names.LABEL_MANAGED_BY: names.MANAGED_BY}
        item = {"metadata": {"name": "mrpc", "namespace": "ml", "labels": labels, "resourceVersion": "1"}}
        if path.endswith("/pods"):
            item["metadata"]["name"] = "mrpc-1"
        if "continue" not in (query or {}) and path.endswith("/services"):
            return {"items": [item], "metadata": {"continue": "page2"}}  # paging is followed
        return {"items": [item], "metadata": {}}

    def close(self) -> None:
        pass


def test_start_lists_every_child_kind_and_the_pods_before_returning() -> None:
    kube = ListingKube()
    runtime = Runtime(Settings(resync_seconds=3600), kube)  # type: ignore[arg-type]

    async def run() -> None:
        await runtime.start()
        try:
            # kopf runs resume handlers only after the startup handler (this start()) returned:
            # the first pass already finds the children and the pods.
            assert runtime.cache.child("Deployment", "ml", "mrpc") is not None
            assert runtime.cache.child("Service", "ml", "mrpc") is not None
            assert [p["metadata"]["name"] for p in runtime.cache.pods_of(("ml", "mrpc"))] == ["mrpc-1"]
        finally:
            await runtime.stop()

    asyncio.run(run())
    listed = [path for path, _ in kube.lists]
    assert len(listed) == len(primed_kinds()) + 1  # + the second page of Services
    assert all(q["labelSelector"] == OWNED_SELECTOR for _, q in kube.lists)
    assert (
        "/api/v1/services",
        {"labelSelector": OWNED_SELECTOR, "limit": "500", "continue": "page2"},
    ) in kube.lists
    assert "/api/v1/pods" in listed and "/apis/apps/v1/deployments" in listed
