"""The product on the real node, end to end: the chart installs the operator as its own image in a
real pod; BertServers run the server image in real pods with the rendered probes, volumes, user
and hooks; the unmodified ``bert-serving-client`` in the node's network reaches them through the
ClusterIP Service (kube-proxy) and gets the numpy reference's vectors.

The tests share one operator install and one BertServer (``enc``) and run in file order: the
BertServer goes Ready (1 replica), serves exact vectors, scales to 3 (peer mesh through CoreDNS),
rolls on a spec change under load, survives a pod deletion under load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from realnode_helpers import (
    NS,
    OPERATOR_NS,
    TEXTS,
    apply,
    bertserver,
    encode_in_node,
    get_json,
    in_node,
    pod_logs,
    rn,
    wait_for,
)

from bertserve_api import names

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(900)]

NAME = "enc"
SELECTOR = f"app.kubernetes.io/instance={NAME}"

READY_TIMEOUT = 420.0
GROUP = names.CRD_NAME  # the kubectl resource name


#: A client under load: one long-lived BertClient encoding until a stop file appears; it records
#: every request (answered, wrong or failed) so the test can prove nothing was lost.
LOAD_CLIENT = """
import json, os, sys, time
import numpy as np
from bert_serving.client import BertClient
ip, texts, want, stop, out = sys.argv[1], json.loads(sys.argv[2]), np.array(json.loads(sys.argv[3])), sys.argv[4], sys.argv[5]
counts = {"ok": 0, "wrong": 0, "failed": 0, "errors": []}
bc = BertClient(ip=ip, port=5555, port_out=5556, timeout=30000)
deadline = time.monotonic() + 600
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        got = bc.encode(texts)
        counts["ok" if np.allclose(got, want, atol=1e-4) else "wrong"] += 1
    except Exception as exc:
        counts["failed"] += 1
        counts["errors"].append(repr(exc)[:200])
        bc.close()
        bc = BertClient(ip=ip, port=5555, port_out=5556, timeout=30000)
bc.close()
open(out, "w").write(json.dumps(counts))
"""


# --------------------------------------------------------------------------- fixtures


def _conditions(cluster: Any, name: str) -> dict[str, dict[str, Any]]:
    obj = get_json(cluster, GROUP, "-n", NS, name)
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


@pytest.fixture(scope="module")
def served(real_cluster: Any, operator: dict[str, Any], model_dir: Path) -> Iterator[dict[str, Any]]:
    """BertServer ``enc`` on a hostPath-backed PV; records what was observed until it was Ready."""
    real_cluster.create_namespace(NS)
    apply(
        real_cluster,
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": "e2e-models"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "hostPath": {"path": str(model_dir), "type": "Directory"},
                    "persistentVolumeReclaimPolicy": "Retain",
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "models", "namespace": NS},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": "e2e-models",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            bertserver(NAME, {"pvc": {"claimName": "models"}}),
        ],
    )
    observed: list[tuple[str, str, bool]] = []  # (Ready status, reason, some pod container running)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        ready = _conditions(real_cluster, NAME).get("Ready", {})
        pods = get_json(real_cluster, "pods", "-n", NS, "-l", SELECTOR)["items"]
        running = any(
            cs.get("state", {}).get("running")
            for p in pods
            for cs in p["status"].get("containerStatuses", [])
        )
        observed.append((ready.get("status", "?"), ready.get("reason", "?"), running))
        if ready.get("status") == "True":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"BertServer never Ready: {observed[-5:]}\n{pod_logs(real_cluster, NS, SELECTOR)}")
        time.sleep(0.5)
    service = get_json(real_cluster, "service", "-n", NS, NAME)
    yield {"observed": observed, "cluster_ip": service["spec"]["clusterIP"]}


def _ready_pods(cluster: Any) -> list[dict[str, Any]]:
    pods = get_json(cluster, "pods", "-n", NS, "-l", SELECTOR)["items"]
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def _metric(pod_ip: str, name: str) -> float:
    code = (
        "import json, sys, urllib.request as u\n"
        f"text = u.urlopen('http://{pod_ip}:8125/metrics', timeout=5).read().decode()\n"
        f"vals = [float(l.rsplit(' ', 1)[1]) for l in text.splitlines() if l.startswith({name!r})]\n"
        "print(json.dumps(sum(vals)))"
    )
    return float(json.loads(in_node(sys.executable, "-c", code).stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- tests


def test_helm_installs_the_operator_as_its_own_image_in_a_real_pod(
    real_cluster: Any, operator: dict[str, Any]
) -> None:
    pod = operator["pod"]
    assert pod["spec"]["nodeName"] == rn.NODE_NAME
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True and status["state"].get("running"), status
    assert status["image"].endswith(real_cluster.images["operator"].split("/", 1)[1]), status["image"]
    assert status["imageID"], status  # containerd ran the imported image
    # The container really runs as the image's non-root user with a read-only root.
    name = pod["metadata"]["name"]
    uid = real_cluster.kubectl("exec", "-n", OPERATOR_NS, name, "--", "id", "-u").stdout.strip()
    assert uid == "10001"
    probe = real_cluster.kubectl("exec", "-n", OPERATOR_NS, name, "--", "touch", "/probe", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr + probe.stdout


def test_bertserver_becomes_ready_only_when_the_real_readiness_probe_passes(
    real_cluster: Any, served: dict[str, Any]
) -> None:
    observed = served["observed"]
    # While the container ran and the model loaded, the probe failed and the status said so.
    assert any(s == "False" and running for s, _, running in observed), observed
    assert observed[-1][0] == "True"
    (pod,) = _ready_pods(real_cluster)
    assert pod["spec"]["nodeName"] == rn.NODE_NAME
    (cs,) = pod["status"]["containerStatuses"]
    # A BertServer with gpus: 0 runs the CPU server image (the chart's serverCpuImage), no CUDA.
    cpu_image = real_cluster.images["server"]
    assert cpu_image.endswith("-cpu") and cs["image"].endswith(cpu_image.split("/", 1)[1]), cs["image"]
    started = cs["state"]["running"]["startedAt"]
    ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready_at > started, (started, ready_at)  # RFC 3339 UTC strings compare in time order
    # The kubelet's probe hit the server's /readyz: it is 200 now, on the pod's own IP.
    code = f"import urllib.request as u; print(u.urlopen('http://{pod['status']['podIP']}:8125/readyz', timeout=5).status)"
    assert in_node(sys.executable, "-c", code).stdout.strip() == "200"
    # The model came from the hostPath-backed PersistentVolume, mounted read-only.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"]["claimName"] == "models"


def test_unmodified_client_in_the_node_network_gets_the_numpy_reference_through_the_cluster_ip(
    served: dict[str, Any], reference: np.ndarray
) -> None:
    got = encode_in_node(served["cluster_ip"], TEXTS)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)


def test_three_replicas_split_clients_through_kube_proxy_and_find_peers_through_coredns(
    real_cluster: Any, served: dict[str, Any], reference: np.ndarray
) -> None:
    real_cluster.kubectl("patch", GROUP, NAME, "-n", NS, "--type=merge", "-p", '{"spec":{"replicas":3}}')
    wait_for(lambda: len(_ready_pods(real_cluster)) == 3, READY_TIMEOUT, "3 ready replicas", interval=1)
    pods = _ready_pods(real_cluster)
    ips = [p["status"]["podIP"] for p in pods]
    # Each replica resolved <name>-peers.<ns>.svc.cluster.local (CoreDNS) to all three pod IPs.
    wait_for(lambda: all(_metric(ip, "bertserve_peer_addresses") == 3 for ip in ips), 60, "peer discovery")
    before = {ip: _metric(ip, "bertserve_sentences_total") for ip in ips}

    def served_by() -> dict[str, float]:
        return {ip: _metric(ip, "bertserve_sentences_total") - before[ip] for ip in ips}

    # Every client connects anew through the ClusterIP. kube-proxy writes new endpoints' rules a
    # moment after the pods turn ready, so keep going (12 clients at least, up to 60 s) until a
    # second replica has served; a Service stuck on one replica still fails.
    deadline, clients = time.monotonic() + 60, 0
    while clients < 12 or (sum(1 for v in served_by().values() if v > 0) < 2 and time.monotonic() < deadline):
        np.testing.assert_allclose(
            encode_in_node(served["cluster_ip"], TEXTS), reference, atol=1e-4, rtol=1e-4
        )
        clients += 1
    assert sum(1 for v in served_by().values() if v > 0) >= 2, (clients, served_by())


def _load(
    served: dict[str, Any], reference: np.ndarray, tmp: Path
) -> tuple[subprocess.Popen[str], Path, Path]:
    stop, out = tmp / "stop", tmp / "out.json"
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net={rn.NETNS_PATH}",
            "--",
            sys.executable,
            "-c",
            LOAD_CLIENT,
            served["cluster_ip"],
            json.dumps(TEXTS),
            json.dumps(reference.tolist()),
            str(stop),
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, stop, out


def _finish(proc: subprocess.Popen[str], stop: Path, out: Path) -> dict[str, Any]:
    stop.write_text("")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    return dict(json.loads(out.read_text()))


def test_spec_change_rolls_pods_with_prestop_and_drain_and_a_client_under_load_loses_nothing(
    real_cluster: Any, served: dict[str, Any], reference: np.ndarray, tmp_path: Path
) -> None:
    old = {p["metadata"]["name"] for p in _ready_pods(real_cluster)}
    proc, stop, out = _load(served, reference, tmp_path)
    time.sleep(3)  # let the client get going before the disruption (not a synchronisation)
    # A serving change that does not change the vectors (and so rolls every pod).
    real_cluster.kubectl(
        "patch", GROUP, NAME, "-n", NS, "--type=merge", "-p", '{"spec":{"serving":{"maxBatchSize":64}}}'
    )
    wait_for(
        lambda: (
            len(pods := _ready_pods(real_cluster)) == 3 and not old & {p["metadata"]["name"] for p in pods}
        ),
        READY_TIMEOUT,
        "the rollout to replace every pod",
        interval=1,
    )
    counts = _finish(proc, stop, out)
    assert counts["ok"] > 0 and counts["wrong"] == 0 and counts["failed"] == 0, counts
    pod = _ready_pods(real_cluster)[0]
    (container,) = pod["spec"]["containers"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


def test_a_deleted_pod_is_survived_by_a_client_under_load(
    real_cluster: Any, served: dict[str, Any], reference: np.ndarray, tmp_path: Path
) -> None:
    proc, stop, out = _load(served, reference, tmp_path)
    time.sleep(3)  # let the client get going before the disruption (not a synchronisation)
    victim = _ready_pods(real_cluster)[0]["metadata"]["name"]
    real_cluster.kubectl("delete", "pod", "-n", NS, victim, "--wait=false")
    wait_for(
        lambda: (
            len(pods := _ready_pods(real_cluster)) == 3
            and victim not in {p["metadata"]["name"] for p in pods}
        ),
        READY_TIMEOUT,
        "a replacement pod",
        interval=1,
    )
    counts = _finish(proc, stop, out)
    assert counts["ok"] > 0 and counts["wrong"] == 0 and counts["failed"] == 0, counts
