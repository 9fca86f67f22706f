"""kopf handler declarations — and nothing else.

Why it exists: ``python -m bertserve_operator`` (the image's ``bertserve-operator``) imports
this module to register what the operator reacts to. Every handler forwards to the
:class:`~bertserve_operator.runtime.Runtime` created at start-up:

* BertServer create / update / resume → one reconcile pass, errors mapped to kopf retries;
* BertServer, Deployment, Service, HPA, PDB and pod watch events → the cache, and the owning
  BertServer onto the work queue (level-based: any child change re-examines its owner);
* start-up / clean-up → build / stop the runtime; a probe → liveness detail.

No delete handler: children carry ownerReferences and the garbage collector removes them, so
BertServers get no finalizer and deleting one never waits for the operator.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import kopf

from bertserve_api import names
from bertserve_operator import settings as settings_mod
from bertserve_operator.kube import Kube
from bertserve_operator.runtime import Runtime, configure_kopf

OWNED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise kopf.TemporaryError("operator runtime not started yet", delay=1)
    return runtime


@kopf.on.startup()
async def start(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Read our settings (given by ``__main__`` or, under plain ``kopf run``, the environment)."""
    ours = memo.get("settings")
    if not isinstance(ours, settings_mod.Settings):
        ours = settings_mod.from_env(os.environ)
        memo["settings"] = ours
    configure_kopf(settings, ours)
    kube = Kube.from_environment(
        request_timeout=ours.request_timeout_seconds, pool_size=2 * (ours.workers + ours.handler_threads) + 2
    )
    # Under `python -m bertserve_operator` the runtime serves /healthz and /metrics on the
    # liveness endpoint (kopf is told not to); under plain `kopf run --liveness` kopf serves it.
    serve = ours.liveness_endpoint if memo.get("serve_health") else ""
    runtime = Runtime(ours, kube, serve_endpoint=serve)
    await runtime.start()
    memo["runtime"] = runtime
    logger.info("bertserve operator started: %s", ours)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if isinstance(runtime, Runtime):
        await runtime.stop()


@kopf.on.probe(id="bertserve")
def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return _runtime(memo).health()


@kopf.on.resume(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.create(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.update(names.GROUP, names.VERSION, names.PLURAL)
def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The same idempotent pass for every change; returns nothing (no result in status)."""
    _runtime(memo).reconcile_now(copy.deepcopy(dict(body)))


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def bertserver_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _runtime(memo).on_owner_event(event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("v1", "services", labels=OWNED)
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=OWNED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OWNED)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=OWNED)
async def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _runtime(memo).on_child_event(event.get("type"), event["object"])


@kopf.on.event("v1", "pods", labels=OWNED)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _runtime(memo).on_pod_event(event.get("type"), event["object"])
