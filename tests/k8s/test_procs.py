"""hack/cluster/procs.py: stopping a recorded pid never signals a process that is not ours.

The local control plane and the real node both stop components by a pid recorded at start
(``localcluster.py down`` runs in another Python process); a pid can be reused once ours has
exited, so the recorded kernel start time must match before any signal is sent. Real processes,
no control plane needed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from operator_harness import localcluster

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def procs() -> ModuleType:
    return localcluster().procs  # the copy localcluster.py and realnode.py both load


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_pid_whose_start_time_differs_is_not_ours_and_is_left_alone(
    procs: ModuleType, sleeper: subprocess.Popen[bytes]
) -> None:
    started = procs.start_time(sleeper.pid)
    assert started is not None and procs.alive(sleeper.pid, started)
    reused = started + 1  # what a recorded pid looks like after the kernel gave it to someone else
    assert not procs.alive(sleeper.pid, reused)
    assert procs.stop(sleeper.pid, reused, 5.0)  # "gone" as far as the record goes
    assert sleeper.poll() is None, "a process that is not the recorded one was signalled"
    assert procs.stop(sleeper.pid, started, 5.0, popen=sleeper)
    assert sleeper.returncode == -signal.SIGTERM


def test_a_process_ignoring_sigterm_is_killed_and_reaped_without_its_popen(procs: ModuleType) -> None:
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        started = procs.start_time(proc.pid)
        # No Popen: the path ``down`` takes for processes another Python process started.
        assert procs.stop(proc.pid, started, 0.3)
        assert procs.start_time(proc.pid) is None, "the killed child was not reaped"
    finally:
        proc.kill()
        proc.wait(timeout=10)
