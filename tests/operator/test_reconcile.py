"""The reconcile pass against a recording fake API (the real API is exercised in tests/k8s)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from bertserve_api import manifests, names
from bertserve_api.manifests import RenderOptions
from bertserve_api.policy import Policy
from bertserve_operator.cache import Cache
from bertserve_operator.drift import APPLIED_HASH, applied_hash, foreign_entries, quantity_value
from bertserve_operator.kube import HANDOVER_MANAGER, PermanentApiError, RefusedApiError
from bertserve_operator.reconcile import (
    ChildConflict,
    Reconciler,
    is_subset,
    manager_owns,
    needs_apply,
    requests_gpus,
    server_image,
)

NOW = "2026-01-01T00:00:00Z"


class FakeKube:
    """Records writes; apply returns the object as the API server would (plus managedFields)."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, str]] = []
        self.gets: list[str] = []
        self.creates: list[tuple[str, str, str]] = []
        self.monitoring = False  # is the ServiceMonitor API served?
        self.discovery = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.reject: str | None = None
        self.refuse: str | None = None
        self.patches: list[list[dict[str, Any]]] = []
        self.warnings: dict[str, list[tuple[str, str]]] = {}

    def apply(self, obj: dict[str, Any], *, field_manager: str = names.FIELD_MANAGER) -> dict[str, Any]:
        if self.reject == obj["kind"]:
            raise PermanentApiError(f"PATCH {obj['kind']}: HTTP 422: denied by policy", 422)
        if self.refuse == obj["kind"]:
            raise RefusedApiError(f"PATCH {obj['kind']}: HTTP 403: exceeded quota", 403, 0.0)
        self.applied.append((field_manager, copy.deepcopy(obj)))
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        current = copy.deepcopy(self.objects.get(key, {}))
        merged = _merge(current, copy.deepcopy(obj))
        fields = {"f:spec": {f"f:{k}": {} for k in obj.get("spec", {})}}
        merged["metadata"]["managedFields"] = [
            {"manager": field_manager, "operation": "Apply", "fieldsV1": fields},
        ]
        merged["metadata"]["resourceVersion"] = str(
            int(current.get("metadata", {}).get("resourceVersion", 0)) + 1
        )
        before = self.objects.get(key, {})
        generation = int(before.get("metadata", {}).get("generation", 0))
        merged["metadata"]["generation"] = generation + (merged.get("spec") != before.get("spec"))
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def serves(self, api_version: str, plural: str) -> bool:
        self.discovery += 1
        return self.monitoring

    def create_once(self, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        self.creates.append(key)
        if key in self.objects:
            return False  # 409 AlreadyExists: left as it is
        self.objects[key] = copy.deepcopy(obj)
        return True

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(ops))
        obj = self.objects[kind, namespace, name]
        for op in ops:
            if op["op"] != "remove":
                continue
            *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
            node: Any = obj
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            del node[last]
        return copy.deepcopy(obj)

    def pod_warnings(self, namespace: str, pod: str) -> list[tuple[str, str]]:
        self.gets.append(f"events of {pod}")
        return list(self.warnings.get(pod, []))

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append(kind)
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, namespace, name))
        self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(copy.deepcopy(status))
        return {"status": status}

    def post_event(
        self, involved: Any, *, type_: str, reason: str, message: str, now: str, instance: str
    ) -> None:
        self.events.append({"type": type_, "reason": reason, "message": message})


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for k, v in new.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def bertserver(**spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {
            "source": {"pvc": {"claimName": "bert-models"}},
            "pretrainedPath": "uncased_L-12_H-768_A-12",
            "tunedModelDir": "mrpc_output",
            "ckptName": "model.ckpt-343",
        },
        "resources": {"gpus": 1, "cpu": "1"},
    }
    spec.update(spec_changes)
    return {
        "apiVersion": "bertserve.io/v1alpha1",
        "kind": "BertServer",
        "metadata": {"name": "mrpc", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": spec,
    }


@pytest.fixture
def world() -> tuple[FakeKube, Cache, Reconciler]:
    kube, cache = FakeKube(), Cache()
    reconciler = Reconciler(
        kube, cache, RenderOptions(default_image="img:1"), clock=lambda: NOW, instance="t"
    )  # type: ignore[arg-type]
    return kube, cache, reconciler


def kinds(kube: FakeKube) -> list[str]:
    return [obj["kind"] for _, obj in kube.applied]


def test_first_pass_applies_children_and_writes_status(world: Any) -> None:
    kube, cache, rec = world
    outcome = rec.reconcile(bertserver())
    assert kinds(kube) == ["Deployment", "Service", "Service", "NetworkPolicy"]
    assert all(manager == names.FIELD_MANAGER for manager, _ in kube.applied)
    assert kube.creates == [("Secret", "ml", "mrpc-peer-key")]
    assert outcome.status_written
    (status,) = kube.statuses
    assert status["observedGeneration"] == 1
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "Starting"
    assert kube.events == []  # nothing newsworthy yet
    assert cache.child("Deployment", "ml", "mrpc") is not None


def test_second_pass_is_quiet(world: Any) -> None:
    kube, _, rec = world
    rec.reconcile(bertserver())
    applied, statuses = len(kube.applied), len(kube.statuses)
    outcome = rec.reconcile(bertserver())
    assert outcome.applied == [] and not outcome.status_written
    assert (len(kube.applied), len(kube.statuses)) == (applied, statuses)


def test_drift_in_a_child_is_repaired(world: Any) -> None:
    _kube, cache, rec = world
    rec.reconcile(bertserver())
    edited = cache.child("Deployment", "ml", "mrpc")
    edited["spec"]["template"]["spec"]["containers"][0]["args"][0] = "-model_dir=/elsewhere"
    cache.put_child(edited)
    assert rec.reconcile(bertserver()).applied == ["Deployment"]


def test_deleted_child_is_recreated(world: Any) -> None:
    kube, cache, rec = world
    rec.reconcile(bertserver())
    cache.drop_child(cache.child("Service", "ml", "mrpc-peers"))
    kube.objects.pop(("Service", "ml", "mrpc-peers"))
    assert rec.reconcile(bertserver()).applied == ["Service"]


def test_invalid_spec_reports_and_returns_without_touching_children(world: Any) -> None:
    kube, _, rec = world
    rec.reconcile(bertserver())
    applied = len(kube.applied)
    bad = bertserver(serving={"numWorker": 4})
    bad["metadata"]["generation"] = 2
    outcome = rec.reconcile(bad)  # must not raise: retrying cannot fix a spec
    assert outcome.spec_error is not None and outcome.spec_error.path == "spec.serving.numWorker"
    assert len(kube.applied) == applied
    ready = {c["type"]: c for c in kube.statuses[-1]["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.serving.numWorker" in ready["message"]
    assert kube.statuses[-1]["observedGeneration"] == 2
    assert [e["type"] for e in kube.events] == ["Warning"]
    assert kube.events[0]["reason"] == "InvalidSpec"
    # The same invalid spec again: no new status, no new event.
    rec.reconcile(bad)
    assert len(kube.events) == 1


def test_rejected_apply_is_written_to_status_and_raised(world: Any) -> None:
    kube, _, rec = world
    kube.reject = "Deployment"
    with pytest.raises(PermanentApiError):
        rec.reconcile(bertserver())
    ready = {c["type"]: c for c in kube.statuses[-1]["conditions"]}["Ready"]
    assert ready["reason"] == "ApplyFailed" and "denied by policy" in ready["message"]


def test_autoscaling_hands_replicas_over_before_dropping_them(world: Any) -> None:
    kube, _, rec = world
    rec.reconcile(bertserver(replicas=3))
    deployment = kube.objects["Deployment", "ml", "mrpc"]
    assert manager_owns(deployment, names.FIELD_MANAGER, "spec", "replicas")
    kube.applied.clear()
    auto = bertserver(replicas=3, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5})
    rec.reconcile(auto)
    (handover_manager, handover), (manager, dep), *rest = kube.applied
    assert handover_manager == HANDOVER_MANAGER
    assert handover["spec"] == {"replicas": 3}
    assert manager == names.FIELD_MANAGER and "replicas" not in dep["spec"]
    assert [obj["kind"] for _, obj in rest] == ["HorizontalPodAutoscaler"]
    # Later passes neither hand over again nor write replicas.
    kube.applied.clear()
    rec.reconcile(auto)
    assert all("replicas" not in obj.get("spec", {}) for _, obj in kube.applied)


def test_autoscaling_without_a_cached_deployment_asks_the_api(world: Any) -> None:
    kube, _, rec = world
    rec.reconcile(bertserver(autoscaling={"enabled": True}))
    assert "Deployment" in kube.gets


def test_disabling_optional_children_deletes_them(world: Any) -> None:
    kube, _, rec = world
    rec.reconcile(bertserver(autoscaling={"enabled": True}, disruptionBudget={"enabled": True}))
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds(kube))
    outcome = rec.reconcile(bertserver())
    assert sorted(outcome.deleted) == ["HorizontalPodAutoscaler", "PodDisruptionBudget"]


def test_foreign_optional_child_is_left_alone(world: Any) -> None:
    _kube, cache, rec = world
    cache.put_child(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "mrpc", "namespace": "ml"},
        }
    )
    assert rec.reconcile(bertserver()).deleted == []


def test_ready_transition_posts_one_normal_event(world: Any) -> None:
    kube, cache, rec = world
    rec.reconcile(bertserver())
    dep = cache.child("Deployment", "ml", "mrpc")
    dep["metadata"]["generation"] = 1
    dep["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "conditions": [{"type": "Available", "status": "True"}],
    }
    cache.put_child(dep)
    rec.reconcile(bertserver())
    (event,) = kube.events  # Ready and Progressing changed together: one event
    assert (event["type"], event["reason"]) == ("Normal", "Available")
    assert event["message"].startswith("Ready=True (Available): 1/1 replicas ready; Progressing=False")


def test_objects_being_deleted_are_skipped(world: Any) -> None:
    kube, _, rec = world
    body = bertserver()
    body["metadata"]["deletionTimestamp"] = NOW
    assert rec.reconcile(body).skipped
    assert kube.applied == [] and kube.statuses == []


def test_subset_rules() -> None:
    assert is_subset({"a": 1}, {"a": 1, "b": 2})
    assert not is_subset({"a": 1}, {"a": 2})
    assert not is_subset({"l": [{"x": 1}]}, {"l": [{"x": 1}, {"x": 2}]})
    assert is_subset({"l": [{"x": 1}]}, {"l": [{"x": 1, "defaulted": True}]})
    desired = {"metadata": {"labels": {"a": "b"}, "ownerReferences": [{"uid": "u"}]}, "spec": {}}
    observed = {
        "metadata": {
            "labels": {"a": "b"},
            "ownerReferences": [{"uid": "u", "controller": True}],
            "annotations": {APPLIED_HASH: applied_hash(desired)},
        }
    }
    assert not needs_apply(desired, observed)
    assert needs_apply(desired, {**observed, "metadata": {**observed["metadata"], "annotations": {}}})
    assert needs_apply(desired, {"metadata": {"labels": {"a": "b"}}})
    assert needs_apply(desired, None)


def test_concurrent_applies_give_the_same_result_and_surface_errors() -> None:
    kube, cache = FakeKube(), Cache()
    rec = Reconciler(kube, cache, RenderOptions(default_image="img:1"), clock=lambda: NOW, apply_threads=4)  # type: ignore[arg-type]
    try:
        outcome = rec.reconcile(bertserver(autoscaling={"enabled": True}, disruptionBudget={"enabled": True}))
        assert sorted(outcome.applied) == [
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "Service",
        ]
        assert len(kube.statuses) == 1
        kube.reject = "PodDisruptionBudget"
        cache.drop_child(cache.child("PodDisruptionBudget", "ml", "mrpc"))
        kube.objects.pop(("PodDisruptionBudget", "ml", "mrpc"))
        with pytest.raises(PermanentApiError, match="denied by policy"):
            rec.reconcile(bertserver(autoscaling={"enabled": True}, disruptionBudget={"enabled": True}))
    finally:
        rec.close()


def test_the_peer_key_is_created_once_and_never_replaced(world: Any) -> None:
    """Create-only: a second pass asks nothing, a restarted operator meets AlreadyExists and
    leaves the running mesh's key as it is."""
    kube, _cache, rec = world
    rec.reconcile(bertserver())
    secret = kube.objects["Secret", "ml", "mrpc-peer-key"]
    key = secret["data"]["peer.key"]
    text = base64.b64decode(key)
    # Printable text with nothing to strip: a raw random key can begin or end with a whitespace
    # byte, which a key file reader trims.
    assert len(text) >= 32 and text.isascii() and text.decode().isprintable() and text == text.strip()
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1" and secret["immutable"] is True
    rec.reconcile(bertserver())
    assert len(kube.creates) == 1
    restarted = Reconciler(kube, Cache(), RenderOptions(default_image="img:1"), clock=lambda: NOW)  # type: ignore[arg-type]
    outcome = restarted.reconcile(bertserver())
    assert len(kube.creates) == 2 and "Secret" not in outcome.applied
    assert kube.objects["Secret", "ml", "mrpc-peer-key"]["data"]["peer.key"] == key


def test_network_policy_follows_the_spec_and_the_operator_setting(world: Any) -> None:
    kube, cache, rec = world
    rec.reconcile(bertserver())
    assert cache.child("NetworkPolicy", "ml", "mrpc") is not None
    rec.reconcile(bertserver(network={"networkPolicy": False}))
    assert ("NetworkPolicy", "ml", "mrpc") in kube.deleted
    off = Reconciler(
        kube, Cache(), RenderOptions(default_image="i", network_policies=False), clock=lambda: NOW
    )  # type: ignore[arg-type]
    off.reconcile(bertserver())
    assert ("NetworkPolicy", "ml", "mrpc") not in kube.objects


def test_a_spec_the_policy_refuses_is_invalid_and_applies_nothing() -> None:
    kube, cache = FakeKube(), Cache()
    rec = Reconciler(kube, cache, RenderOptions(default_image="i"), clock=lambda: NOW)  # type: ignore[arg-type]
    host = {"source": {"hostPath": {"path": "/data"}}, "pretrainedPath": "bert"}
    outcome = rec.reconcile(bertserver(model=host))
    assert outcome.spec_error is not None and "allowHostPath=false" in str(outcome.spec_error)
    assert kube.applied == [] and kube.creates == []
    ready = {c["type"]: c for c in kube.statuses[-1]["conditions"]}["Ready"]
    assert ready["reason"] == "InvalidSpec" and ready["message"].startswith("spec.model.source.hostPath")
    allowed = Reconciler(
        kube,
        Cache(),
        RenderOptions(default_image="i"),
        clock=lambda: NOW,
        policy=Policy(allow_host_path=True),
    )  # type: ignore[arg-type]
    assert allowed.reconcile(bertserver(model=host)).spec_error is None


def test_names_a_service_cannot_carry_are_invalid_spec(world: Any) -> None:
    kube, _cache, rec = world
    body = bertserver()
    body["metadata"]["name"] = "x-peers"
    outcome = rec.reconcile(body)
    assert outcome.spec_error is not None and outcome.spec_error.path == "metadata.name"
    assert kube.applied == []


def test_a_foreign_object_of_a_childs_name_is_never_adopted(world: Any) -> None:
    kube, _, rec = world
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mrpc", "namespace": "ml"},
               "spec": {"selector": {"app": "theirs"}}}  # fmt: skip
    kube.objects["Service", "ml", "mrpc"] = copy.deepcopy(foreign)
    with pytest.raises(ChildConflict, match="Service ml/mrpc already exists"):
        rec.reconcile(bertserver())
    assert kube.applied == [] and kube.objects["Service", "ml", "mrpc"] == foreign
    conds = {c["type"]: c for c in kube.statuses[-1]["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "ChildConflict")
    assert "not controlled by any object" in conds["Ready"]["message"]
    with pytest.raises(ChildConflict):
        rec.reconcile(bertserver())  # the retry says nothing new
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", "ChildConflict")]


def test_a_refused_deployment_leaves_no_other_child(world: Any) -> None:
    kube, _, rec = world
    kube.refuse = "Deployment"
    with pytest.raises(RefusedApiError):
        rec.reconcile(bertserver())
    assert kube.applied == []
    ready = {c["type"]: c for c in kube.statuses[-1]["conditions"]}["Ready"]
    assert (ready["reason"], ready["message"]) == (
        "ApplyFailed",
        "PATCH Deployment: HTTP 403: exceeded quota",
    )


def test_hand_added_entries_of_owned_maps_are_removed(world: Any) -> None:
    kube, cache, rec = world
    rec.reconcile(bertserver(nodeSelector={"pool": "gpu"}, resources={"gpus": 1, "memory": "2Gi"}))
    svc = kube.objects["Service", "ml", "mrpc"]
    svc["spec"]["selector"]["extra"] = "x"
    cache.put_child(copy.deepcopy(svc))
    dep = kube.objects["Deployment", "ml", "mrpc"]
    pod = dep["spec"]["template"]["spec"]
    pod["nodeSelector"]["zone"] = "a"
    pod["containers"][0]["resources"]["limits"]["cpu"] = "2"
    pod["containers"][0]["env"].append({"name": "ADDED_BY_KUBECTL_SET_ENV", "value": "1"})
    cache.put_child(copy.deepcopy(dep))
    kube.applied.clear()
    outcome = rec.reconcile(bertserver(nodeSelector={"pool": "gpu"}, resources={"gpus": 1, "memory": "2Gi"}))
    removed = sorted(op["path"] for ops in kube.patches for op in ops if op["op"] == "remove")
    assert removed == [
        "/spec/selector/extra",
        "/spec/template/spec/containers/0/resources/limits/cpu",
        "/spec/template/spec/nodeSelector/zone",
    ]
    assert kube.applied == [], outcome  # nothing else differs: the added env entry is not ours
    assert all(op["op"] in ("test", "remove") for ops in kube.patches for op in ops)


def test_quantities_compare_by_value_and_keyed_lists_by_key() -> None:
    assert quantity_value("0.5") == quantity_value("500m")
    assert quantity_value("2048Mi") == quantity_value("2Gi")
    assert quantity_value("1e3") == quantity_value("1k")
    assert quantity_value("1Gi") != quantity_value("1G")
    assert quantity_value("fast") is None
    limits = ("spec", "resources", "limits")
    assert is_subset({"cpu": "0.5", "memory": "2048Mi"}, {"cpu": "500m", "memory": "2Gi"}, limits)
    assert not is_subset({"cpu": "0.5"}, {"cpu": "600m"}, limits)
    assert not is_subset({"value": "0.5"}, {"value": "500m"}, ("env", "0"))  # not a quantity field
    env = [{"name": "A", "value": "1"}]
    assert is_subset({"env": env}, {"env": [{"name": "INJECTED", "value": "x"}, *env]})
    assert not is_subset({"env": env}, {"env": [{"name": "A", "value": "2"}]})
    assert not is_subset({"args": ["-a"]}, {"args": ["-a", "-b"]})  # atomic list: exact


def test_a_field_the_spec_no_longer_sets_is_applied_away(world: Any) -> None:
    kube, _, rec = world
    rec.reconcile(bertserver(imagePullSecrets=[{"name": "regcred"}]))
    kube.applied.clear()
    assert rec.reconcile(bertserver()).applied == ["Deployment"]  # the applied hash changed
    ((_, dep),) = kube.applied
    assert "imagePullSecrets" not in dep["spec"]["template"]["spec"]


def test_foreign_entries_of_maps_we_do_not_render_are_all_foreign() -> None:
    desired = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "bert"}]}}}}
    observed = {
        "spec": {"template": {"spec": {"nodeSelector": {"a": "b"}, "containers": [{"name": "bert"}]}}}
    }
    assert foreign_entries(desired, observed) == ["/spec/template/spec/nodeSelector/a"]


def test_a_service_monitor_is_made_only_where_its_api_is_served(world: Any) -> None:
    kube, _cache, rec = world
    wanted = bertserver(monitoring={"serviceMonitor": {"enabled": True}})
    rec.reconcile(wanted)
    assert not any(k[0] == "ServiceMonitor" for k in kube.objects)
    rec._monitoring_served = (-1e9, False)  # the answer is trusted for a while; expire it
    kube.monitoring = True
    outcome = rec.reconcile(wanted)
    assert "ServiceMonitor" in outcome.applied
    monitor = kube.objects["ServiceMonitor", "ml", "mrpc"]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert "ServiceMonitor" not in rec.reconcile(wanted).applied  # quiet: remembered by hash
    rec.reconcile(bertserver())
    assert ("ServiceMonitor", "ml", "mrpc") in kube.deleted


def test_pods_stuck_creating_are_explained_by_their_warning_events(world: Any) -> None:
    kube, cache, rec = world
    assert rec.reconcile(bertserver()).recheck_after == 0
    pod = {
        "metadata": {"name": "mrpc-1", "namespace": "ml", "labels": {names.LABEL_INSTANCE: "mrpc"}},
        "spec": {"containers": [{"name": "bert", "args": ["-model_dir=/models/base"]}]},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "bert", "state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }  # fmt: skip
    cache.put_owner(bertserver())
    cache.put_pod(pod)
    kube.warnings["mrpc-1"] = [("FailedMount", 'MountVolume.SetUp failed for volume "model"')]
    outcome = rec.reconcile(bertserver())
    assert "events of mrpc-1" in kube.gets
    assert outcome.recheck_after > 0  # the events trigger nothing: look again
    degraded = {c["type"]: c for c in kube.statuses[-1]["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "FailedMount")
    assert degraded["message"] == 'pod mrpc-1: MountVolume.SetUp failed for volume "model"'


def _rolled(kube: FakeKube, name: str, *, done: bool) -> dict[str, Any]:
    dep = kube.objects["Deployment", "ml", name]
    generation = 2 if not done else 1
    dep["metadata"]["generation"] = generation
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    return copy.deepcopy(dep)


def test_a_new_default_image_moves_one_bertserver_at_a_time() -> None:
    kube, cache = FakeKube(), Cache()
    old = Reconciler(kube, cache, RenderOptions(default_image="img:1"), clock=lambda: NOW)  # type: ignore[arg-type]
    bodies = []
    for name in ("a", "b", "c"):
        body = bertserver()
        body["metadata"].update(name=name, uid=f"u-{name}")
        bodies.append(body)
        old.reconcile(body)
        cache.put_child(_rolled(kube, name, done=True))
    new = Reconciler(
        kube, cache, RenderOptions(default_image="img:2"), clock=lambda: NOW, max_image_rollouts=1
    )  # type: ignore[arg-type]
    images = {}
    for body in bodies:
        outcome = new.reconcile(body)
        images[body["metadata"]["name"]] = server_image(
            kube.objects["Deployment", "ml", body["metadata"]["name"]]
        )
        if images[body["metadata"]["name"]] == "img:1":
            assert outcome.recheck_after > 0
    assert sorted(images.values()) == ["img:1", "img:1", "img:2"], images  # the applied copy is still rolling
    moved = next(n for n, image in images.items() if image == "img:2")
    cache.put_child(_rolled(kube, moved, done=True))  # its rollout finished
    for body in bodies:
        new.reconcile(body)
    imgs = [server_image(kube.objects["Deployment", "ml", n]) for n in ("a", "b", "c")]
    assert imgs.count("img:2") == 2
    explicit = bertserver(image="mine:9")
    explicit["metadata"].update(name="a", uid="u-a")
    new.reconcile(explicit)  # spec.image is never held back
    assert server_image(kube.objects["Deployment", "ml", "a"]) == "mine:9"


def _cpu_world(names_: tuple[str, ...]) -> tuple[FakeKube, Cache, list[dict[str, Any]]]:
    """BertServers with ``gpus: 0`` applied by an operator whose CPU default is ``cpu:1``, rolled out."""
    kube, cache = FakeKube(), Cache()
    old = Reconciler(
        kube, cache, RenderOptions(default_image="img:1", default_cpu_image="cpu:1"), clock=lambda: NOW
    )  # type: ignore[arg-type]
    bodies = []
    for name in names_:
        body = bertserver(resources={"gpus": 0, "cpu": "1"})
        body["metadata"].update(name=name, uid=f"u-{name}")
        bodies.append(body)
        old.reconcile(body)
        cache.put_child(_rolled(kube, name, done=True))
    return kube, cache, bodies


def test_cpu_bertservers_run_the_cpu_default_and_a_new_one_moves_them_one_at_a_time() -> None:
    kube, cache, bodies = _cpu_world(("a", "b", "c"))
    assert {server_image(kube.objects["Deployment", "ml", n]) for n in "abc"} == {"cpu:1"}
    # A new GPU default alone moves no CPU BertServer: they do not run it.
    gpu_bump = Reconciler(
        kube, cache, RenderOptions(default_image="img:2", default_cpu_image="cpu:1"), clock=lambda: NOW
    )  # type: ignore[arg-type]
    for body in bodies:
        gpu_bump.reconcile(body)
    assert {server_image(kube.objects["Deployment", "ml", n]) for n in "abc"} == {"cpu:1"}
    new = Reconciler(
        kube,
        cache,
        RenderOptions(default_image="img:2", default_cpu_image="cpu:2"),
        clock=lambda: NOW,
        max_image_rollouts=1,
    )  # type: ignore[arg-type]
    for body in bodies:
        outcome = new.reconcile(body)
        if server_image(kube.objects["Deployment", "ml", body["metadata"]["name"]]) == "cpu:1":
            assert outcome.recheck_after > 0
    images = {n: server_image(kube.objects["Deployment", "ml", n]) for n in "abc"}
    assert sorted(images.values()) == ["cpu:1", "cpu:1", "cpu:2"], images
    moved = next(n for n, image in images.items() if image == "cpu:2")
    cache.put_child(_rolled(kube, moved, done=True))
    for body in bodies:
        new.reconcile(body)
    assert [server_image(kube.objects["Deployment", "ml", n]) for n in "abc"].count("cpu:2") == 2


def test_switching_between_cpu_and_gpu_switches_the_image_without_waiting_for_a_slot() -> None:
    kube, cache, (a, b) = _cpu_world(("a", "b"))
    new = Reconciler(
        kube,
        cache,
        RenderOptions(default_image="img:2", default_cpu_image="cpu:2"),
        clock=lambda: NOW,
        max_image_rollouts=1,
    )  # type: ignore[arg-type]
    new.reconcile(a)  # takes the one slot: its rollout onto cpu:2 has not finished
    cache.put_child(copy.deepcopy(kube.objects["Deployment", "ml", "a"]))
    assert server_image(kube.objects["Deployment", "ml", "a"]) == "cpu:2"
    new.reconcile(b)
    assert server_image(kube.objects["Deployment", "ml", "b"]) == "cpu:1"  # held back
    to_gpu = copy.deepcopy(b)
    to_gpu["spec"]["resources"] = {"gpus": 1, "cpu": "1"}
    new.reconcile(to_gpu)  # its pods restart for the GPU anyway: the GPU image comes with them
    dep = kube.objects["Deployment", "ml", "b"]
    assert server_image(dep) == "img:2" and requests_gpus(dep)
    cache.put_child(_rolled(kube, "b", done=True))
    new.reconcile(b)  # and back to gpus: 0
    dep = kube.objects["Deployment", "ml", "b"]
    assert server_image(dep) == "cpu:2" and not requests_gpus(dep)


def test_requests_gpus_reads_the_server_containers_extended_resources() -> None:
    def dep(limits: dict[str, str]) -> dict[str, Any]:
        container = {"name": manifests.SERVER_CONTAINER, "resources": {"limits": limits}}
        return {"spec": {"template": {"spec": {"containers": [container]}}}}

    assert requests_gpus(dep({"nvidia.com/gpu": "1", "memory": "8Gi"}))
    assert requests_gpus(dep({"amd.com/gpu": "2"}))
    assert not requests_gpus(dep({"memory": "8Gi"}))
    assert not requests_gpus(dep({}))
