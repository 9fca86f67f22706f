"""Process bookkeeping for the local control plane (``localcluster.py``) and the real node (``realnode.py``).

Why it exists: both start long-running components and must stop them later, possibly from another
Python process (``localcluster.py down``, a test session's clean-up), knowing only a recorded pid.
A pid can be reused once our process has exited, so every check here compares the kernel start
time recorded at start with the pid's current one and never signals a process that is not ours.
One copy, so the two scripts cannot drift apart on that safety.

Standard library only, and loaded by path (``hack/cluster`` holds scripts, not a package).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on, or None if ``pid`` does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces or parentheses; split after its last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), or None if it does not exist.

    Stored next to each pid so that a later stop never signals an unrelated process that reused
    the pid after ours exited.
    """
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def alive(pid: int, recorded_start: int | None) -> bool:
    """True if ``pid`` is still the process we started and has not exited (zombies count as dead)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return recorded_start is None or int(fields[19]) == recorded_start


def die_with_parent() -> None:
    """preexec hook: SIGKILL the child when the thread that started it dies.

    Used for test sessions, so a pytest killed with SIGKILL (CI timeout) still leaves nothing
    behind. SIGKILL, not SIGTERM: the apiserver's graceful shutdown can take long, and test data
    is throwaway. Not used by the CLI, whose processes must outlive ``up``.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_exit(
    pid: int, recorded_start: int | None, timeout: float, popen: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait up to ``timeout`` s for the process to exit (reaping it if it is our child); True once gone."""
    if popen is not None:
        try:
            popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid, recorded_start):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # a child of ours would stay a zombie otherwise
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop(
    pid: int,
    recorded_start: int | None,
    timeout: float,
    *,
    popen: subprocess.Popen[bytes] | None = None,
    kill_timeout: float = 10.0,
) -> bool:
    """SIGTERM, bounded wait, SIGKILL, bounded wait: only while ``pid`` is still the process recorded.

    ``popen``: the process's ``Popen`` when this Python process started it (waited on and reaped
    through it). True once the process is gone; False if it survived SIGKILL.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_timeout)):
        if not alive(pid, recorded_start):
            if popen is not None:
                popen.poll()  # reap a zombie child
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_exit(pid, recorded_start, wait, popen):
            return True
    return not alive(pid, recorded_start)


def log_tail(path: str | Path, lines: int) -> str:
    """The last ``lines`` lines of a component's log, for an error message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
