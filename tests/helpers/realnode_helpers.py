"""Helpers for tests on the real node: run commands in the node's network, wait on the API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import operator_harness
from bertserver_manifests import bertserver as bertserver_manifest
from operator_harness import localcluster

rn = localcluster().realnode()
# One copy of the bounded wait and the kubectl JSON reader, under the names these tests import.
wait_for = operator_harness.wait_for
get_json = operator_harness.get_json

OPERATOR_NS = "bertserve-system"
NS = "e2e"
TEXTS = ["hello world", "the dog is good", "a cat", "hello dog"]

#: What a pod needs to land on the real node (and nowhere else).
ON_REAL_NODE: dict[str, Any] = {
    "nodeSelector": {rn.NODE_LABEL[0]: rn.NODE_LABEL[1]},
    "tolerations": [{"key": rn.NODE_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
}


def in_node(*cmd: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the node's network namespace (where ClusterIPs and pod IPs route)."""
    proc = subprocess.run(
        ["nsenter", f"--net={rn.NETNS_PATH}", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} in the node exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def python_in_node(code: str, *args: str, timeout: float = 120.0) -> Any:
    """Run ``code`` with this venv's Python inside the node's network; returns its last line as JSON."""
    proc = in_node(sys.executable, "-c", code, *args, timeout=timeout)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def apply(cluster: Any, objects: Sequence[dict[str, Any]]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    )


def pod_logs(cluster: Any, namespace: str, selector: str) -> str:
    out = cluster.kubectl(
        "logs", "-n", namespace, "-l", selector, "--all-containers", "--tail=50", check=False
    )
    return out.stdout + out.stderr


def bertserver(name: str, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec = {
        "model": {"source": source, "pretrainedPath": "tiny"},
        "resources": {"gpus": 0},
        "imagePullPolicy": "Never",
        "terminationGracePeriodSeconds": 20,
        **ON_REAL_NODE,
        **extra,
    }
    return bertserver_manifest(name, spec, NS)


CLIENT = """
import json, sys
from bert_serving.client import BertClient
ip, texts = sys.argv[1], json.loads(sys.argv[2])
bc = BertClient(ip=ip, port=5555, port_out=5556, timeout=60000)
try:
    print(json.dumps(bc.encode(texts).tolist()))
finally:
    bc.close()
"""


def encode_in_node(cluster_ip: str, texts: list[str]) -> np.ndarray:
    out = in_node(sys.executable, "-c", CLIENT, cluster_ip, json.dumps(texts), timeout=180)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)
