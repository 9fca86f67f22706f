"""How long the server took from process start to ready, phase by phase.

Why it exists: autoscaling and rollouts wait on readiness, so "time to ready" is something users
feel, and its cost moves between phases as the code changes (a heavier import, a slower trace, a
longer warm-up). The server measures each phase once, logs them in one line and exposes them as
the gauge ``bertserve_startup_seconds{phase}`` so operators see them too:

* ``import``: process start until Python, the server's modules and TensorFlow are imported
  (interpreter start-up, flag parsing and validation, the vocabulary, the HTTP listener included);
* ``load``: reading the checkpoint and placing the weights (the model build minus its trace);
* ``trace``: tracing the ``tf.function`` into a graph;
* ``warmup``: the warm-up calls that make the first request as fast as later ones;
* ``total``: process start until ``/readyz`` answers 200 (so ``total`` ≥ the sum of the phases).

"Process start" is read from ``/proc/self/stat`` (10 ms resolution), so the interpreter's own
start-up counts; where there is no ``/proc``, the time this module was first imported stands in.
Standard library only: the CLI imports it before TensorFlow.
"""

from __future__ import annotations

import os
import time

PHASES = ("import", "load", "trace", "warmup")
TOTAL = "total"

_IMPORTED_AT = time.monotonic()


def process_age() -> float:
    """Seconds since this process started (since this module's import where /proc is missing)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            stat = handle.read()
        # Fields after the command name (which may hold spaces and parentheses); starttime is
        # field 22 of the whole line, i.e. index 19 after "pid (comm)".
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        started = start_ticks / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED_AT


class StartupTimes:
    """The phases of one start-up, in seconds; ``import`` and ``total`` are process ages."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to ``phase`` (several encoders' loads add up)."""
        if phase not in PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}; one of {', '.join(PHASES)}")
        self.seconds[phase] = self.seconds.get(phase, 0.0) + max(0.0, seconds)

    def imported(self) -> None:
        """Python and TensorFlow are imported: the ``import`` phase ends now."""
        self.seconds["import"] = process_age()

    def ready(self) -> None:
        """The server is ready: ``total`` is the process's age now."""
        self.seconds[TOTAL] = process_age()

    def summary(self) -> str:
        """``import 2.10s, load 0.31s, trace 0.45s, warmup 0.80s, total 4.02s`` (phases recorded)."""
        parts = [f"{p} {self.seconds[p]:.2f}s" for p in (*PHASES, TOTAL) if p in self.seconds]
        return ", ".join(parts)
