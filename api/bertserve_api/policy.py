"""What the operator's administrator allows BertServer authors, checked before anything is applied.

Why it exists: creating a BertServer is delegated to namespace users (the chart aggregates it
into the ``edit`` role), and the pods it makes run with whatever the spec names. Without limits
an author could mount any node directory (``hostPath``, even ``DirectoryOrCreate``), run as any
ServiceAccount of the namespace (and use its API token elsewhere) or pick any runtimeClass. The
operator's settings (chart values) decide; a refused spec becomes ``InvalidSpec`` with a message
naming the setting, like any other spec error. Pure: the settings arrive as a :class:`Policy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertserve_api.spec import BertServerSpec, SpecError

DEFAULT_SERVICE_ACCOUNT = "default"


@dataclass(frozen=True)
class Policy:
    """``allow_host_path`` (chart ``operator.allowHostPath``); the ServiceAccounts and
    runtimeClasses pods may use besides the namespace default (``operator.allowedServiceAccounts``,
    ``operator.allowedRuntimeClasses``; ``"*"`` allows any)."""

    allow_host_path: bool = False
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_runtime_classes: tuple[str, ...] = ()


def _allowed(value: str, allowed: tuple[str, ...]) -> bool:
    return "*" in allowed or value in allowed


def check(spec: BertServerSpec, policy: Policy, path: str = "spec") -> None:
    """Raise :class:`SpecError` for the first thing ``spec`` asks that ``policy`` does not allow."""
    if spec.model.source.host_path is not None and not policy.allow_host_path:
        raise SpecError(
            f"{path}.model.source.hostPath",
            "refused by the operator setting allowHostPath=false (node directories are off limits; "
            "use a PVC or a uri source, or ask the operator's administrator)",
        )
    account = spec.service_account_name
    if (
        account
        and account != DEFAULT_SERVICE_ACCOUNT
        and not _allowed(account, policy.allowed_service_accounts)
    ):
        listed = ", ".join(policy.allowed_service_accounts) or "none"
        raise SpecError(
            f"{path}.serviceAccountName",
            f"{account!r} is not in the operator setting allowedServiceAccounts ({listed}); "
            "pods run as the namespace's default ServiceAccount otherwise",
        )
    runtime = spec.runtime_class_name
    if runtime and not _allowed(runtime, policy.allowed_runtime_classes):
        listed = ", ".join(policy.allowed_runtime_classes) or "none"
        raise SpecError(
            f"{path}.runtimeClassName",
            f"{runtime!r} is not in the operator setting allowedRuntimeClasses ({listed})",
        )
