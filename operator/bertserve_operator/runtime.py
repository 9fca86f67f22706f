"""The running operator's moving parts: cache, work queue, workers, periodic resync.

Why it exists: kopf delivers events and runs the create/update/resume handlers; everything
that must live for the whole process (the watch cache, the queue of BertServers to
re-examine after a child changed, the worker tasks, the resync timer) is owned here, started
by the ``startup`` handler and stopped by ``cleanup``, so :mod:`handlers` stays declarations.

The periodic resync is an operator-level task on purpose: kopf timers are per object and add
a finalizer to every BertServer, and a finalizer turns "operator down" into "deletions hang".
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from aiohttp import web

from bertserve_api import names
from bertserve_operator.cache import Cache, Key, key_of
from bertserve_operator.kube import PLURALS, Kube, RefusedApiError, resource_path
from bertserve_operator.metrics import CONTENT_TYPE, OperatorMetrics
from bertserve_operator.reconcile import ChildConflict, Outcome, Reconciler
from bertserve_operator.settings import Settings
from bertserve_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

OWNED_SELECTOR = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"
"""Server-side filter of every child watch: only objects this operator manages are streamed."""

CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("", "v1", "pods"),
)


def primed_kinds() -> list[tuple[str, str]]:
    """``(apiVersion, kind)`` of every watched child resource and pods (listed at start-up)."""
    kinds = {(av, plural): kind for (av, kind), plural in PLURALS.items()}
    out = []
    for group, version, plural in CHILD_RESOURCES:
        api_version = f"{group}/{version}" if group else version
        out.append((api_version, kinds[api_version, plural]))
    return out


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """Apply our settings to kopf's (called once, in the startup handler)."""
    # Progress and the last-handled spec live in annotations: nothing of kopf's in status.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.bertserve.io")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.bertserve.io", key="last-handled-configuration"
    )
    # kopf would post an Event per handler success; ours (one per condition change) say more.
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.peering.standalone = True
    kopf_settings.peering.mandatory = False
    # No CRD/namespace scanning: needs cluster-scoped RBAC we do not otherwise need.
    kopf_settings.scanning.disabled = True
    kopf_settings.execution.max_workers = settings.handler_threads
    kopf_settings.networking.request_timeout = settings.request_timeout_seconds
    kopf_settings.watching.server_timeout = settings.watch_timeout_seconds
    kopf_settings.watching.client_timeout = settings.watch_timeout_seconds + 30
    kopf_settings.watching.connect_timeout = settings.request_timeout_seconds
    for group, version, plural in CHILD_RESOURCES:
        kopf_settings.watching.label_selectors[group or version, plural] = OWNED_SELECTOR
    if not settings.verbose:
        # kopf logs every watch event it hands to a handler ("Handler 'pod_event' succeeded");
        # at hundreds of objects that drowns what matters. Warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per liveness probe


class Runtime:
    """Process-wide state of one operator (one instance, stored in kopf's memo)."""

    def __init__(self, settings: Settings, kube: Kube, *, serve_endpoint: str = "") -> None:
        self.settings = settings
        self.kube = kube
        self.cache = Cache()
        self.queue: WorkQueue[Key] = WorkQueue(
            base_delay=settings.retry_delay_seconds, max_delay=settings.max_retry_delay_seconds
        )
        self.metrics = OperatorMetrics(
            queue_depth=lambda: len(self.queue), request_counts=kube.request_counts
        )
        self.reconciler = Reconciler(
            kube,
            self.cache,
            settings.render_options(),
            apply_threads=settings.workers + settings.handler_threads,
            policy=settings.policy(),
            observe_apply=lambda kind, seconds: self.metrics.apply_seconds.labels(kind).observe(seconds),
            max_image_rollouts=settings.max_image_rollouts,
        )
        # Where to serve /healthz and /metrics ("" when kopf serves the liveness endpoint itself).
        self.serve_endpoint = serve_endpoint
        self._http: web.AppRunner | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="reconcile")
        self._tasks: list[asyncio.Task[None]] = []
        self.last_resync = time.monotonic()
        self.resyncs = 0  # periodic full passes started (a monotonic marker for probes and tests)
        self.passes = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._executor, self.prime_cache)
        if self.serve_endpoint:
            await self._serve_http(self.serve_endpoint)
        for i in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"bertserve-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._resync(), name="bertserve-resync"))
        log.info("started %d workers, resync every %ss", self.settings.workers, self.settings.resync_seconds)

    def prime_cache(self) -> None:
        """List every child kind and the pods before any pass runs.

        kopf starts the BertServer and child watches together after the startup handler; a
        resume pass that ran before the pod watch had listed would see no pods and report a
        Degraded BertServer as healthy (a false transition, and an Event saying so). Listing
        here, in the startup handler, makes the first pass see what the last one saw.
        """
        started = time.monotonic()
        scopes: tuple[str | None, ...] = self.settings.namespaces or (None,)
        for namespace in scopes:
            for api_version, kind in primed_kinds():
                for item in self._list(api_version, kind, namespace):
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                    if kind == "Pod":
                        self.cache.put_pod(item)
                    else:
                        self.cache.put_child(item)
        log.info("cache primed in %.1fs: %s", time.monotonic() - started, self.cache.sizes())

    def _list(self, api_version: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        query = {"labelSelector": OWNED_SELECTOR, "limit": "500"}
        while True:
            page = self.kube.request("GET", resource_path(api_version, kind, namespace), query=query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": token}

    async def _serve_http(self, endpoint: str) -> None:
        """``/healthz`` (what kopf's liveness endpoint answered) and ``/metrics`` on one port.

        Served from the event loop like kopf's endpoint, so a stuck loop fails the probe too.
        """
        parts = urllib.parse.urlsplit(endpoint)
        health_path = parts.path or "/healthz"

        async def healthz(_: web.Request) -> web.Response:
            try:
                return web.json_response({"bertserve": self.health()})
            except Exception as exc:
                return web.json_response({"error": str(exc)}, status=500)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

        app = web.Application()
        app.add_routes([web.get(health_path, healthz), web.get("/metrics", metrics)])
        self._http = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._http.setup()
        await web.TCPSite(self._http, parts.hostname or "0.0.0.0", parts.port or 8080).start()
        log.info("serving %s and /metrics on %s", health_path, parts.netloc)

    async def stop(self) -> None:
        """Stop taking work, let in-flight passes finish (bounded), release connections."""
        if self._http is not None:
            await self._http.cleanup()
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(None, self._executor.shutdown, True),
                timeout=self.settings.request_timeout_seconds + 5,
            )
        except TimeoutError:
            log.warning("in-flight reconciles did not finish in time; exiting anyway")
        self.reconciler.close()
        self.kube.close()

    def health(self) -> dict[str, Any]:
        """Liveness detail; raises when a worker or the resync task died (kopf then fails the probe)."""
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            raise RuntimeError(f"background tasks stopped: {', '.join(dead)}")
        return {
            "queued": len(self.queue),
            "passes": self.passes,
            "resyncs": self.resyncs,
            "sinceResyncSeconds": round(time.monotonic() - self.last_resync, 1),
            "cached": self.cache.sizes(),
            "requests": self.kube.request_counts(),
        }

    # ------------------------------------------------------------------ events (event loop)

    def on_owner_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            key = key_of(obj)
            self.cache.drop_owner(key)
            self.reconciler.forget(key, (obj.get("metadata") or {}).get("uid"))
        else:
            self.cache.put_owner(obj)

    def on_child_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        owner = self.cache.drop_child(obj) if event_type == "DELETED" else self.cache.put_child(obj)
        self._schedule(owner)

    def on_pod_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        owner = self.cache.drop_pod(obj) if event_type == "DELETED" else self.cache.put_pod(obj)
        self._schedule(owner)

    def _schedule(self, owner: Key | None) -> None:
        """Re-examine ``owner`` shortly: a rollout's burst of child events becomes one pass."""
        if owner is None:
            return
        if self.settings.coalesce_seconds > 0:
            self.queue.add_after(owner, self.settings.coalesce_seconds)
        else:
            self.queue.add(owner)

    # ------------------------------------------------------------------ passes

    def reconcile_now(self, body: Mapping[str, Any]) -> Outcome | None:
        """A pass for kopf's create/update/resume handlers (in one of kopf's threads).

        Failures never go back to kopf: kopf would post an Event per retry and retry on its own
        schedule. The pass has written what the user must know to status; the key goes to the
        work queue, whose exponential back-off (``retry_delay_seconds`` doubling up to
        ``max_retry_delay_seconds``) paces the retries.
        """
        key = self.cache.put_owner(body)
        started = time.monotonic()
        try:
            outcome = self.reconciler.reconcile(body)
        except kopf.PermanentError as exc:
            self._count(exc, started)
            log.error("%s/%s: %s (status records it; the next change retries)", key[0], key[1], exc)
            return None
        except Exception as exc:
            self._count(exc, started)
            delay = float(getattr(exc, "delay", 0.0) or 0.0)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._retry_later, key, delay, exc)
            return None
        self._count(None, started)
        self.passes += 1
        if outcome.recheck_after > 0 and self._loop is not None:
            self._loop.call_soon_threadsafe(self.queue.add_after, key, outcome.recheck_after)
        return outcome

    def _count(self, error: BaseException | None, started: float) -> None:
        """Record a finished pass in the metrics."""
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self.metrics.reconciles.inc()
        if error is None:
            return
        if isinstance(error, ChildConflict):
            reason = "ChildConflict"
        elif isinstance(error, (RefusedApiError, kopf.PermanentError)):
            reason = "ApplyFailed"
        elif isinstance(error, kopf.TemporaryError):
            reason = "Retry"
        else:
            reason = "Unexpected"
        self.metrics.errors.labels(reason).inc()

    def _retry_later(self, key: Key, delay: float, exc: BaseException) -> None:
        wait = self.queue.retry(key, delay)
        log.warning("%s/%s: %s; retrying in %.2fs", key[0], key[1], exc, wait)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self.queue.get()
            started = time.monotonic()
            try:
                outcome = await loop.run_in_executor(self._executor, self.reconciler.reconcile_key, key)
                self._count(None, started)
                self.passes += 1
                self.queue.forget(key)
                if outcome is not None and outcome.recheck_after > 0:
                    self.queue.add_after(key, outcome.recheck_after)
            except kopf.PermanentError as exc:
                self._count(exc, started)
                log.error("%s/%s: %s (status records it; next change retries)", key[0], key[1], exc)
                self.queue.forget(key)
            except kopf.TemporaryError as exc:
                self._count(exc, started)
                self._retry_later(key, float(exc.delay or 0.0), exc)
            except Exception as exc:
                self._count(exc, started)
                wait = self.queue.retry(key)
                log.exception("%s/%s: reconcile failed; retrying in %.2fs", key[0], key[1], wait)
            finally:
                self.queue.done(key)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            keys = self.cache.owner_keys()
            for key in keys:
                self.queue.add(key)
            self.last_resync = time.monotonic()
            self.resyncs += 1
            log.debug("resync: queued %d BertServers", len(keys))
