"""Stopping the real node: a crashed node is cleaned up by the next ``up``; ``down`` stops every pid
and puts the machine back as it was (sysctls, fixed paths, mounts, cgroups, the namespace).

Runs last (file name): it restarts and finally stops the session's node.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from realnode_helpers import get_json, rn

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(300)]


def _node_pids(cluster: Any) -> dict[str, tuple[int, int | None]]:
    record = rn.read_machine_record()
    assert record is not None and record["state_dir"] == str(cluster.node.state_dir)
    return {p["name"]: (p["pid"], p["start_time"]) for p in record["processes"]}


def _leftovers(cluster: Any) -> dict[str, Any]:
    node = cluster.node
    return {
        "cgroups": [str(h) for h in rn.cgroup_hierarchies() if (h / rn.CGROUP_ROOT).exists()],
        "mounts": rn.mounts_below(node.state_dir, node.containerd_root, *map(Path, rn.FIXED_PATHS)),
        "netns": rn.NETNS_PATH.exists(),
        "veth": Path(f"/sys/class/net/{rn.HOST_VETH}").exists(),
    }


def test_up_after_a_crash_cleans_up_first_and_the_node_comes_back(real_cluster: Any) -> None:
    before = _node_pids(real_cluster)
    saved_host = rn.read_machine_record()["host"]
    # A crash: the node's processes die without any cleanup (as with a SIGKILLed test run).
    for pid, _ in before.values():
        os.kill(pid, signal.SIGKILL)
    assert rn.NETNS_PATH.exists() and rn.MACHINE_RECORD.exists()
    real_cluster.up()  # must clean the wreck first, then start afresh
    after = _node_pids(real_cluster)
    assert set(after) == set(rn.NODE_COMPONENTS)
    assert not {pid for pid, _ in before.values()} & {pid for pid, _ in after.values()}
    # The host state recorded by the new node is the one from before the first start.
    assert rn.read_machine_record()["host"]["sysctls"] == saved_host["sysctls"]
    nodes = {n["metadata"]["name"] for n in get_json(real_cluster, "nodes")["items"]}
    assert {rn.NODE_NAME, "gpu-node-0", "gpu-node-1"} <= nodes


def test_down_stops_every_pid_and_restores_the_machine(real_cluster: Any) -> None:
    pids = _node_pids(real_cluster)
    saved_host = rn.read_machine_record()["host"]
    changed = rn.read_sysctls()
    # The kubelet really changed machine-wide sysctls (vm.overcommit_memory, kernel.panic, …).
    assert changed != saved_host["sysctls"], changed
    real_cluster.down(purge=False)
    alive = [name for name, (pid, start) in pids.items() if rn.procs.alive(pid, start)]
    assert alive == [], alive
    assert rn.host_differences(saved_host) == {}, (saved_host["sysctls"], changed)
    assert _leftovers(real_cluster) == {"cgroups": [], "mounts": [], "netns": False, "veth": False}
    assert not rn.MACHINE_RECORD.exists()
