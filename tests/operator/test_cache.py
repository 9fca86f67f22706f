"""The watch cache finds a child's or a pod's BertServer and keeps only what is read."""

from __future__ import annotations

from bertserve_api import names
from bertserve_operator.cache import Cache, controller_owner

OWNER_REF = {
    "apiVersion": "bertserve.io/v1alpha1",
    "kind": "BertServer",
    "name": "mrpc",
    "uid": "u",
    "controller": True,
}


def deployment(**meta: object) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mrpc", "namespace": "ml", "ownerReferences": [OWNER_REF], **meta},
        "spec": {"replicas": 1},
    }


def test_child_events_name_their_owner() -> None:
    cache = Cache()
    assert cache.put_child(deployment()) == ("ml", "mrpc")
    assert cache.child("Deployment", "ml", "mrpc")["spec"] == {"replicas": 1}
    assert cache.drop_child(deployment()) == ("ml", "mrpc")
    assert cache.child("Deployment", "ml", "mrpc") is None


def test_objects_owned_by_others_have_no_owner() -> None:
    other = deployment(ownerReferences=[{**OWNER_REF, "kind": "Other", "apiVersion": "x/v1"}])
    assert controller_owner(other) is None
    assert controller_owner(deployment(ownerReferences=[{**OWNER_REF, "controller": False}])) is None


def test_pods_map_to_their_bertserver_by_instance_label() -> None:
    cache = Cache()
    long_name = "x" * 100
    cache.put_owner({"metadata": {"name": long_name, "namespace": "ml", "uid": "u"}})
    pod = {
        "metadata": {
            "name": "p-1",
            "namespace": "ml",
            "labels": {names.LABEL_INSTANCE: names.label_value(long_name)},
            "annotations": {"big": "x" * 1000},
        },
        "spec": {"containers": [{"name": "bert"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]},
    }
    assert cache.put_pod(pod) == ("ml", long_name)
    (stored,) = cache.pods_of(("ml", long_name))
    assert "spec" not in stored and "annotations" not in stored["metadata"]
    assert stored["status"]["conditions"][0]["type"] == "PodScheduled"
    assert cache.drop_pod(pod) == ("ml", long_name)
    assert cache.pods_of(("ml", long_name)) == []


def test_managed_fields_are_kept_only_for_deployments() -> None:
    cache = Cache()
    fields = [{"manager": "m", "operation": "Apply", "fieldsV1": {}}]
    cache.put_child(deployment(managedFields=fields))
    service = {**deployment(managedFields=fields), "kind": "Service", "apiVersion": "v1"}
    cache.put_child(service)
    assert cache.child("Deployment", "ml", "mrpc")["metadata"]["managedFields"] == fields
    assert "managedFields" not in cache.child("Service", "ml", "mrpc")["metadata"]


def test_copies_are_returned_not_the_cache_itself() -> None:
    cache = Cache()
    cache.put_child(deployment())
    cache.child("Deployment", "ml", "mrpc")["spec"]["replicas"] = 9
    assert cache.child("Deployment", "ml", "mrpc")["spec"]["replicas"] == 1


def test_a_late_apply_response_does_not_overwrite_a_newer_watch_event():
    """The apply thread can store its response after the watch delivered the controller's status."""
    from bertserve_operator.cache import Cache

    cache = Cache()
    base = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns", "uid": "u1", "resourceVersion": "10"},
    }
    newer = {
        **base,
        "metadata": {**base["metadata"], "resourceVersion": "12"},
        "status": {"readyReplicas": 1},
    }
    cache.put_child(newer)
    cache.put_child(base)  # the older apply response, arriving late
    stored = cache.child("Deployment", "ns", "d")
    assert stored is not None and stored["status"] == {"readyReplicas": 1}
    # A re-created object (new uid) always replaces the old one.
    recreated = {**base, "metadata": {**base["metadata"], "uid": "u2", "resourceVersion": "3"}}
    cache.put_child(recreated)
    stored = cache.child("Deployment", "ns", "d")
    assert stored is not None and stored["metadata"]["uid"] == "u2"


def test_a_trimmed_pod_keeps_everything_the_status_summary_reads() -> None:
    """Kubelet-shaped pods read the same through the cache's trimmed copy as in full.

    The pod-level ``reason``/``message`` (an eviction) were once trimmed away, so the operator
    never reported Evicted although the summary's own tests passed on full pods.
    """
    from bertserve_api.status import pod_problem
    from bertserve_operator.cache import trim_pod

    kubelet_pods = [
        {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
        {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ],
        },
        {
            "phase": "Running",
            "containerStatuses": [
                {"name": "bert", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ],
        },
        {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "fetch",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "no such image"}},
                }
            ],
        },
    ]
    for status in kubelet_pods:
        pod = {"metadata": {"name": "p", "namespace": "ml", "uid": "x"}, "spec": {}, "status": status}
        full = pod_problem([pod])
        assert full is not None, status
        assert pod_problem([trim_pod(pod)]) == full, status
