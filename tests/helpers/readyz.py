"""The one "wait until a server process answers ``/readyz`` 200" for tests and benchmarks.

Why it exists: five copies polled ``/readyz`` each with its own loop, interval and failure text.
One wait, built on :func:`polling.wait_for`: it fails at once when the process exits (with the
tail of its log) and, after ``timeout``, names the statuses it saw.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from polling import wait_for


def readyz_status(http_port: int, host: str = "127.0.0.1") -> int:
    """HTTP status of ``GET /readyz`` (0 while nothing listens or the server does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_readyz(
    proc: subprocess.Popen[bytes],
    http_port: int,
    log: Path | Callable[[], str],
    timeout: float,
    *,
    what: str = "the server",
    interval: float = 0.1,
) -> list[int]:
    """Poll ``/readyz`` until 200; return the statuses it answered on the way (in order)."""
    seen: list[int] = []

    def text() -> str:
        return (log() if callable(log) else log.read_text(errors="replace"))[-4000:]

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{text()}")
        status = readyz_status(http_port)
        if status:
            seen.append(status)
        return status == 200

    try:
        wait_for(ready, timeout, f"{what} /readyz 200", interval=interval)
    except AssertionError as exc:
        if "exited with" in str(exc):
            raise
        raise AssertionError(
            f"{exc} (statuses answered: {sorted(set(seen)) or 'none: not listening'})\n{text()}"
        ) from None
    return seen
