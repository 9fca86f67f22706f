"""What every benchmark report states about the machine it ran on: CPU model and flags, cores, memory.

Why one module: each benchmark describes its machine next to its numbers, and those descriptions
should be read from ``/proc`` the same way, with the same fallbacks where ``/proc`` is missing,
so that two reports from one machine say the same thing about it. Benchmarks run as scripts
from this folder, so they import it by its bare name.
"""

from __future__ import annotations

import os
from pathlib import Path

UNKNOWN_CPU = "unknown CPU"


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The first CPU's ``model name`` (``"unknown CPU"`` where there is no ``/proc/cpuinfo``)."""
    return _cpuinfo_field("model name") or UNKNOWN_CPU


def cpu_flags() -> set[str]:
    """The first CPU's feature flags (``avx512f``, ``amx_bf16``, ...); empty where unknown."""
    return set((_cpuinfo_field("flags") or "").split())


def memory_gib() -> str:
    """Total memory, e.g. ``"24 GiB"`` (``"?"`` where there is no ``/proc/meminfo``)."""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, ValueError, IndexError):
        return "?"
    return f"{kib / 1024 / 1024:.0f} GiB"


def cores() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
