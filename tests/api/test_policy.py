"""The operator's limits on BertServer authors: each refusal names the setting that refuses it."""

from __future__ import annotations

from typing import Any

import pytest

from bertserve_api.policy import Policy, check
from bertserve_api.spec import SpecError, parse_spec

PVC: dict[str, Any] = {"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "bert"}}
HOST: dict[str, Any] = {"model": {"source": {"hostPath": {"path": "/data"}}, "pretrainedPath": "bert"}}


def test_defaults_allow_a_plain_spec_and_the_namespace_default_account() -> None:
    check(parse_spec(PVC), Policy())
    check(parse_spec({**PVC, "serviceAccountName": "default"}), Policy())


@pytest.mark.parametrize(
    ("raw", "field", "setting"),
    [
        (HOST, "spec.model.source.hostPath", "allowHostPath=false"),
        (
            {**PVC, "serviceAccountName": "ci-admin"},
            "spec.serviceAccountName",
            "allowedServiceAccounts (none)",
        ),
        (
            {**PVC, "runtimeClassName": "runc-privileged"},
            "spec.runtimeClassName",
            "allowedRuntimeClasses (none)",
        ),
    ],
)
def test_default_policy_refuses_naming_field_and_setting(
    raw: dict[str, Any], field: str, setting: str
) -> None:
    with pytest.raises(SpecError) as err:
        check(parse_spec(raw), Policy())
    assert err.value.path == field and setting in err.value.message


def test_the_administrator_can_allow_each() -> None:
    policy = Policy(
        allow_host_path=True, allowed_service_accounts=("encoder",), allowed_runtime_classes=("nvidia",)
    )
    check(parse_spec({**HOST, "serviceAccountName": "encoder", "runtimeClassName": "nvidia"}), policy)
    with pytest.raises(
        SpecError, match="'other' is not in the operator setting allowedServiceAccounts \\(encoder\\)"
    ):
        check(parse_spec({**PVC, "serviceAccountName": "other"}), policy)
    check(
        parse_spec({**PVC, "serviceAccountName": "x", "runtimeClassName": "y"}), Policy(False, ("*",), ("*",))
    )
