"""The operator survives what production does to it: SIGKILL mid-work, an API server restart, SIGTERM.

Same set-up as test_operator.py (chart installed, operator local with the chart's ServiceAccount),
under its own release so the two modules never share an operator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bertserver_manifests import bertserver
from operator_harness import (
    RESYNC_S,
    OperatorProcess,
    apply_yaml,
    chart_operator,
    condition,
    get_json,
    wait_for,
)

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(900)]

RELEASE = "bsr"
OPERATOR_NS = "bertserve-resilience"
COUNT = 20


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # Its log may hold Tracebacks from the API server restart; the SIGTERM test checks the last run's.
    with chart_operator(
        cluster,
        tmp_path_factory.mktemp("operator-resilience"),
        RELEASE,
        OPERATOR_NS,
        resync_s=RESYNC_S,
        clean_log=False,
    ) as op:
        yield op


def bertservers(names_: list[str]) -> str:
    spec = {
        "model": {"source": {"hostPath": {"path": "/data/bert"}}, "pretrainedPath": "base"},
        "resources": {"gpus": 0},
        "replicas": 0,
    }
    return yaml.safe_dump_all([bertserver(name, spec) for name in names_])


def converged(cluster: Any, ns: str, expected: set[str]) -> bool:
    """Every BertServer has its status for its generation and exactly its own children."""
    items = get_json(cluster, "bertservers", "-n", ns)["items"]
    if {i["metadata"]["name"] for i in items} != expected:
        return False
    for item in items:
        status = item.get("status") or {}
        if status.get("observedGeneration") != item["metadata"]["generation"]:
            return False
        if condition(item, "Ready").get("reason") != "ScaledToZero":
            return False
    deployments = {d["metadata"]["name"] for d in get_json(cluster, "deployments", "-n", ns)["items"]}
    services = {s["metadata"]["name"] for s in get_json(cluster, "services", "-n", ns)["items"]}
    return deployments == expected and services == expected | {f"{n}-peers" for n in expected}


def test_killed_mid_reconcile_and_restarted_converges_without_duplicates(
    cluster: Any, operator: OperatorProcess
) -> None:
    ns = "crash"
    cluster.create_namespace(ns)
    wanted = [f"crash-{i:02d}" for i in range(COUNT)]
    apply_yaml(cluster, bertservers(wanted), ns)
    # Kill as soon as the first children appear: some objects done, some half done, some untouched.
    wait_for(lambda: get_json(cluster, "deployments", "-n", ns)["items"], 60, "the first Deployment")
    operator.kill()
    done_before = len(get_json(cluster, "deployments", "-n", ns)["items"])
    operator.start()
    wait_for(
        lambda: converged(cluster, ns, set(wanted)), 180, f"{COUNT} BertServers to converge after a SIGKILL"
    )

    # No duplicates: one ReplicaSet per Deployment, children named after their owner only. The
    # controller-manager creates a Deployment's ReplicaSet a moment after the Deployment: wait
    # until every Deployment has one before comparing.
    def replicaset_owners() -> list[str]:
        replicasets = get_json(cluster, "replicasets", "-n", ns)["items"]
        return [rs["metadata"]["ownerReferences"][0]["name"] for rs in replicasets]

    wait_for(lambda: set(replicaset_owners()) == set(wanted), 60, "a ReplicaSet for every Deployment")
    owners = replicaset_owners()
    assert sorted(owners) == sorted(wanted), owners
    for dep in get_json(cluster, "deployments", "-n", ns)["items"]:
        (ref,) = dep["metadata"]["ownerReferences"]
        assert ref["name"] == dep["metadata"]["name"]
    # Nothing of kopf's half-done bookkeeping is left behind on the objects.
    for item in get_json(cluster, "bertservers", "-n", ns)["items"]:
        leftovers = [
            k for k in item["metadata"].get("annotations", {}) if k.startswith("kopf.bertserve.io/reconcile")
        ]
        assert not leftovers, (item["metadata"]["name"], leftovers)
    assert 0 < done_before <= COUNT
    cluster.kubectl("delete", "bertservers", "--all", "-n", ns, "--wait=true", "--timeout=60s")


def test_api_server_restart_is_survived(cluster: Any, operator: OperatorProcess) -> None:
    ns = "restart"
    cluster.create_namespace(ns)
    apply_yaml(cluster, bertservers(["before"]), ns)
    wait_for(lambda: converged(cluster, ns, {"before"}), 60, "the first BertServer")
    cluster.restart_apiserver()
    assert operator.alive, operator.tail()  # and still alive and healthy after the work below
    # New objects, changes and drift are all handled by the resumed watches and clients.
    apply_yaml(cluster, bertservers(["after"]), ns)
    cluster.kubectl("scale", "bertserver/before", "--replicas=1", "-n", ns)
    wait_for(
        lambda: (
            (dep := get_json(cluster, "deployment", "before", "-n", ns, check=False))
            and dep["spec"]["replicas"] == 1
        ),
        120,
        "the scale-up to reach the Deployment after the restart",
    )
    wait_for(
        lambda: get_json(cluster, "deployment", "after", "-n", ns, check=False),
        120,
        "a Deployment for a BertServer created after the restart",
    )
    wait_for(
        lambda: (
            condition(get_json(cluster, "bertserver", "before", "-n", ns), "Ready").get("status") == "True"
        ),
        120,
        "the scaled-up BertServer to become Ready",
    )
    operator.wait_healthy(30)
    cluster.kubectl("delete", "bertservers", "--all", "-n", ns, "--wait=true", "--timeout=60s")


def test_sigterm_stops_the_operator_gracefully(operator: OperatorProcess) -> None:
    started = time.monotonic()
    rc = operator.stop(timeout=30)
    assert rc == 0, operator.tail()
    assert time.monotonic() - started < 30
    last_run = operator.log().rsplit("===== start #", 1)[-1]
    assert "Traceback" not in last_run, operator.tail(80)
