"""Operator settings: declared once, documented here, read once at start-up.

Why it exists: builders and the reconcile must never look at the environment (a setting that
changes under a running operator, or differs between two code paths, is a bug nobody can
reproduce). :func:`load` reads the environment and the command line exactly once; everything
else receives the resulting frozen :class:`Settings`.

Each field can be set as ``--flag`` or as the environment variable ``BERTSERVE_<FIELD>`` (upper
case); the command line wins.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bertserve_api.manifests import RenderOptions
from bertserve_api.names import DEFAULT_SERVER_CPU_IMAGE, DEFAULT_SERVER_IMAGE
from bertserve_api.policy import Policy

ENV_PREFIX = "BERTSERVE_"
LOG_FORMATS = ("plain", "full", "json")


def _opt(default: Any, doc: str) -> Any:
    """A settings field whose ``doc`` is both its documentation and its ``--help`` text."""
    return field(default=default, metadata={"help": doc})


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one operator process (units in the names)."""

    default_image: str = _opt(DEFAULT_SERVER_IMAGE, "server image for BertServers without spec.image")
    default_cpu_image: str = _opt(
        DEFAULT_SERVER_CPU_IMAGE,
        "server image for BertServers with resources.gpus 0 and without spec.image (no CUDA); "
        "empty = default_image",
    )
    namespaces: tuple[str, ...] = _opt((), "namespaces to watch; empty = all (comma-separated in env)")
    cluster_domain: str = _opt("cluster.local", "DNS suffix of Services; completes the peer Service name")
    server_log_format: str = _opt("text", "-log_format of the encoder servers: text or json")
    log_format: str = _opt("plain", "the operator's own log format: plain, full or json")
    verbose: bool = _opt(False, "debug logging")
    liveness_endpoint: str = _opt("http://0.0.0.0:8080/healthz", "kopf liveness endpoint; empty = off")
    resync_seconds: float = _opt(300.0, "period of the full pass over every BertServer (repairs misses)")
    workers: int = _opt(4, "concurrent reconciles triggered by child events and resyncs")
    coalesce_seconds: float = _opt(0.5, "child events within this window share one reconcile")
    handler_threads: int = _opt(16, "threads for create/update/resume handlers (kopf's executor)")
    request_timeout_seconds: float = _opt(30.0, "timeout of one API request made by the reconcile")
    watch_timeout_seconds: int = _opt(300, "server-side timeout of one watch request (kopf reconnects)")
    retry_delay_seconds: float = _opt(10.0, "first retry delay after a temporary API error (doubles)")
    max_retry_delay_seconds: float = _opt(300.0, "upper bound of the retry delay")
    allow_host_path: bool = _opt(False, "let BertServers mount node directories (model.source.hostPath)")
    allowed_service_accounts: tuple[str, ...] = _opt(
        (), "ServiceAccounts pods may run as besides the namespace default (comma-separated; * = any)"
    )
    allowed_runtime_classes: tuple[str, ...] = _opt(
        (), "runtimeClassNames pods may use (comma-separated; * = any); empty = only the cluster default"
    )
    network_policies: bool = _opt(True, "render a NetworkPolicy per BertServer (spec.network can opt out)")
    max_image_rollouts: int = _opt(
        1,
        "BertServers rolling onto a new default_image or default_cpu_image at once "
        "(the others keep their image meanwhile)",
    )

    progress_deadline_margin_seconds: int = _opt(
        300, "seconds added to spec.startupTimeoutSeconds for the Deployment's progressDeadlineSeconds"
    )

    def render_options(self) -> RenderOptions:
        """The subset of settings the pure manifest builders take."""
        return RenderOptions(
            default_image=self.default_image,
            default_cpu_image=self.default_cpu_image,
            cluster_domain=self.cluster_domain,
            server_log_format=self.server_log_format,
            network_policies=self.network_policies,
            progress_deadline_margin_seconds=self.progress_deadline_margin_seconds,
        )

    def policy(self) -> Policy:
        """What BertServer authors may ask for (checked before anything is applied)."""
        return Policy(self.allow_host_path, self.allowed_service_accounts, self.allowed_runtime_classes)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


_HELP = {f.name: (f.metadata.get("help") or "") for f in fields(Settings)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind == "tuple[str, ...]":
        items = [value] if isinstance(value, str) else list(value)
        return tuple(sorted({v.strip() for item in items for v in item.split(",") if v.strip()}))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        return lowered in ("1", "true", "yes", "on")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def _validate(settings: Settings) -> Settings:
    if settings.log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {settings.log_format!r}")
    if settings.server_log_format not in ("text", "json"):
        raise ValueError(f"server_log_format: expected text or json, got {settings.server_log_format!r}")
    for name in (
        "resync_seconds",
        "request_timeout_seconds",
        "retry_delay_seconds",
        "max_retry_delay_seconds",
    ):
        if getattr(settings, name) <= 0:
            raise ValueError(f"{name}: must be positive")
    if settings.progress_deadline_margin_seconds < 0:
        raise ValueError("progress_deadline_margin_seconds: must be at least 0")
    if settings.max_image_rollouts < 1:
        raise ValueError("max_image_rollouts: must be at least 1")
    if settings.workers < 1 or settings.handler_threads < 1:
        raise ValueError("workers and handler_threads must be at least 1")
    if not settings.default_image:
        raise ValueError("default_image: must not be empty")
    return settings


def from_env(env: Mapping[str, str]) -> Settings:
    """Settings from ``BERTSERVE_*`` variables; unset ones keep their defaults."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env:
            values[f.name] = _convert(f.name, env[key])
    return _validate(Settings(**values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bertserve_operator",
        description="Run the BertServer operator (kopf). Every option can also be given as "
        "BERTSERVE_<OPTION> in the environment; the command line wins.",
    )
    for f in fields(Settings):
        doc = _HELP[f.name]
        if f.name == "namespaces":
            parser.add_argument(
                "-n",
                "--namespace",
                dest="namespaces",
                action="append",
                help="namespace to watch (repeatable); default: all namespaces",
            )
            parser.add_argument(
                "-A",
                "--all-namespaces",
                action="store_true",
                help="watch every namespace (the default when no --namespace is given)",
            )
        elif f.type == "bool":
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=doc)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, help=doc)
    return parser


def load(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Settings from the environment, overridden by ``argv`` (without the program name)."""
    base = from_env(env)
    ns = build_parser().parse_args(list(argv))
    changes: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(ns, f.name, None)
        if value is not None:
            changes[f.name] = _convert(f.name, value)
    if getattr(ns, "all_namespaces", False):
        if changes.get("namespaces"):
            raise ValueError("--all-namespaces and --namespace are mutually exclusive")
        changes["namespaces"] = ()
    return _validate(dataclasses.replace(base, **changes))
