"""A de-duplicating, rate-limited work queue of BertServer keys (asyncio).

Why it exists: a single rollout produces a burst of Deployment and pod events; reconciling once
per event would multiply API traffic and let two passes over the same BertServer race. As in
client-go's workqueue, a key is queued at most once, a key being processed is never handed to a
second worker (an add during processing marks it dirty and re-queues it afterwards), and failed
keys come back after an exponential delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to reconcile; call :meth:`get`, work, then always :meth:`done`."""

    def __init__(self, *, base_delay: float = 1.0, max_delay: float = 300.0) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._closed = False

    def __len__(self) -> int:
        return len(self._queued) + len(self._dirty)

    def add(self, key: K) -> None:
        """Queue ``key`` now (no-op if already queued; deferred if being processed)."""
        if self._closed:
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds (an earlier :meth:`add` wins)."""
        if self._closed or key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: K, delay: float | None = None) -> float:
        """Re-queue a failed ``key`` with exponential backoff; returns the delay used."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        backoff = min(self._max_delay, self._base_delay * 2.0 ** (failures - 1))
        wait = max(backoff, float(delay or 0.0))
        self.add_after(key, min(wait, self._max_delay))
        return wait

    def forget(self, key: K) -> None:
        """Reset ``key``'s backoff after a success."""
        self._failures.pop(key, None)

    async def get(self) -> K:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        """Stop accepting keys and cancel pending delayed adds."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
