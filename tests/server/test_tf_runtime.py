"""How many threads the encoder uses: affinity, capped by a container's CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.tf


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "400000 100000\n"}, 4),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads, each throttled a little
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_limit_is_read_from_v2_or_v1_files(
    tmp_path: Path, files: dict[str, str], limit: int | None
) -> None:
    from bertserve_server.model.tf_encoder import cgroup_cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_available_cpus_never_exceeds_the_affinity_mask() -> None:
    import os

    from bertserve_server.model.tf_encoder import available_cpus

    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
