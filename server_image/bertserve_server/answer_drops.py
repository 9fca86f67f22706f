"""Counting and logging answers that will never reach their client: one way for the frontend and the mesh.

Why it exists: the ZeroMQ frontend (no subscriber in time, hold full, subscriber not reading,
shutdown) and the peer mesh's answer routing (no replica announced the client, hold full,
shutdown) both lose answers. Every loss must be counted in the one metric
``bertserve_answers_dropped_total{reason}`` and be visible in the log without a flood of
lines: a throttled warning per reason, so that a storm of one kind cannot hide another.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from bertserve_server.metrics import Metrics
from bertserve_server.throttled_log import ThrottledLog


class AnswerDrops:
    """``drop(reason, count, why, *args)``: count ``count`` lost answers and log why (throttled).

    ``also``: a component's own counter with a ``reason`` label, counted the same (the mesh's
    ``bertserve_peer_answers_dropped_total``). Thread-safe.
    """

    def __init__(self, metrics: Metrics, logger: logging.Logger, *, also: Counter | None = None) -> None:
        self._metrics = metrics
        self._logger = logger
        self._also = also
        self._logs: dict[str, ThrottledLog] = {}

    def drop(self, reason: str, count: int, why: str, *args: object) -> None:
        """``why`` is a %-format for ``args``; nothing happens for ``count`` <= 0."""
        if count <= 0:
            return
        self._metrics.answer_dropped(reason, count)
        if self._also is not None:
            self._also.labels(reason=reason).inc(count)
        log = self._logs.get(reason) or self._logs.setdefault(reason, ThrottledLog(self._logger))
        log.warning("dropped %d answer(s) (%s): " + why, count, reason, *args)
