"""``helm test`` on the real node: the chart's test pod runs the self-check for real, as the
operator's ServiceAccount, so it fails when the operator's ClusterRole lacks a permission the
operator needs (here: reading pods) and passes again once the rule is back.

The hook's pod must be placed like the operator's pod: unplaced, it landed on a simulated (kwok)
node, which reports every pod Succeeded without running it, so ``helm test`` passed whatever the
RBAC said.

Runs after the other product tests (file name): while the rule is away, the operator itself cannot
watch pods.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from realnode_helpers import OPERATOR_NS, get_json, rn, wait_for

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "bs"
ROLE = f"{RELEASE}-bertserve-operator"
ACCOUNT = f"system:serviceaccount:{OPERATOR_NS}:{ROLE}"


def _helm_test(cluster: Any) -> subprocess.CompletedProcess[str]:
    return cluster.helm("test", RELEASE, "-n", OPERATOR_NS, "--timeout", "150s", check=False, timeout=200)


def _test_log(cluster: Any) -> str:
    """The last test pod's log (a failed hook Job stays until the next ``helm test``)."""
    done = cluster.kubectl("logs", "-n", OPERATOR_NS, f"job/{ROLE}-test", check=False)
    return str(done.stdout + done.stderr)


def _can_list_pods(cluster: Any) -> str:
    done = cluster.kubectl("auth", "can-i", "list", "pods", "--as", ACCOUNT, "-A", check=False)
    return str(done.stdout.strip())


def _replace_role(cluster: Any, role: dict[str, Any]) -> None:
    body = json.loads(json.dumps(role))
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        body["metadata"].pop(key, None)
    cluster.kubectl("replace", "-f", "-", input=json.dumps(body))


def _test_pod_node(cluster: Any) -> str:
    pods = get_json(cluster, "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=test")["items"]
    return str(pods[-1]["spec"].get("nodeName", "")) if pods else ""


def test_helm_test_runs_for_real_and_fails_without_the_pods_rule(
    real_cluster: Any, operator: dict[str, Any]
) -> None:
    ok = _helm_test(real_cluster)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    role = get_json(real_cluster, "clusterrole", ROLE)
    reduced = json.loads(json.dumps(role))
    reduced["rules"] = [r for r in reduced["rules"] if r.get("resources") != ["pods"]]
    assert len(reduced["rules"]) == len(role["rules"]) - 1
    _replace_role(real_cluster, reduced)
    try:
        wait_for(lambda: _can_list_pods(real_cluster) == "no", 30, "the reduced ClusterRole to apply")
        failed = _helm_test(real_cluster)
        assert failed.returncode != 0, failed.stdout + failed.stderr
        # The pod really ran, on the real node, as the operator's account, and says what is missing.
        assert _test_pod_node(real_cluster) == rn.NODE_NAME
        log = _test_log(real_cluster)
        assert "selfcheck: cannot list pods in all namespaces" in log, log
    finally:
        _replace_role(real_cluster, role)
    wait_for(lambda: _can_list_pods(real_cluster) == "yes", 30, "the restored ClusterRole to apply")
    again = _helm_test(real_cluster)
    assert again.returncode == 0, again.stdout + again.stderr
