"""The one way tests wait: poll an observable condition until it holds, bounded, naming it on failure.

Why one module: waits are the tests' synchronisation (never sleeps), and a wait that fails must say
what it waited for and what it saw last. ``server_harness.wait_until`` and
``operator_harness.wait_for`` are this function with their historical defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` every ``interval`` s until it returns something truthy, and return that.

    ``retry_on``: exceptions that mean "not yet" (e.g. an object not created yet); any other
    exception fails at once. After ``timeout`` s: ``AssertionError`` naming ``what`` and the last value.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except retry_on as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)
