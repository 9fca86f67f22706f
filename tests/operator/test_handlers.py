"""What the operator registers with kopf, and how kopf is configured."""

from __future__ import annotations

import kopf

from bertserve_operator import handlers  # noqa: F401  (registers the handlers)
from bertserve_operator.runtime import OWNED_SELECTOR, configure_kopf
from bertserve_operator.settings import Settings


def _registry() -> kopf.OperatorRegistry:
    return kopf.get_default_registry()


def test_create_update_and_resume_run_the_same_pass() -> None:
    changing = _registry()._changing.get_all_handlers()
    assert {h.id for h in changing} == {"reconcile"}
    assert {h.reason for h in changing} == {"create", "update", None}  # None: resume


def test_no_finalizer_is_ever_added() -> None:
    # Delete handlers, timers and daemons make kopf add a finalizer; deletion must never wait
    # for the operator (children are garbage-collected through ownerReferences).
    assert _registry()._spawning.get_all_handlers() == []
    assert not any(h.requires_finalizer for h in _registry()._changing.get_all_handlers())


def test_children_and_pods_are_watched_for_level_based_reconcile() -> None:
    watched = {(h.selector.group, h.selector.any_name) for h in _registry()._watching.get_all_handlers()}
    assert watched == {
        ("bertserve.io", "bertservers"),
        ("apps", "deployments"),
        ("", "services"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
        ("networking.k8s.io", "networkpolicies"),
        ("", "pods"),
    }


def test_kopf_keeps_its_bookkeeping_in_annotations_and_watches_only_owned_children() -> None:
    ks = kopf.OperatorSettings()
    configure_kopf(ks, Settings(handler_threads=3, watch_timeout_seconds=120))
    assert isinstance(ks.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(ks.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert ks.peering.standalone and ks.scanning.disabled
    assert ks.execution.max_workers == 3 and ks.watching.server_timeout == 120
    assert set(ks.watching.label_selectors.values()) == {OWNED_SELECTOR}
    assert len(ks.watching.label_selectors) == 6
