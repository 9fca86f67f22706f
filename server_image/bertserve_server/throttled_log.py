"""Log lines that a hostile or broken peer could trigger at wire speed, at most once per interval.

Why it exists: refused subscriptions and dropped answers must be visible in the log, but a client
that sends a million bad subscriptions must not turn into a million log lines (the log is also a
resource of the pod). :class:`ThrottledLog` writes the first occurrence at once and then at most
one line per ``interval_s``, saying how many were suppressed in between. The counters in
``metrics`` stay exact; only the log is sampled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 10.0


class ThrottledLog:
    """``warning(msg, *args)`` logs at most once per ``interval_s`` (thread-safe)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> bool:
        """Log now if the interval has passed (True), else count it as suppressed (False)."""
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self._interval
        if suppressed:
            msg += " (%d more like this in the last %.0fs)"
            args = (*args, suppressed, self._interval)
        self._logger.warning(msg, *args)
        return True
