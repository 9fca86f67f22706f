"""The real node itself: it registers Ready next to kwok's GPU nodes, runs pods from the imported
images, and gives them cluster DNS (CoreDNS) and ClusterIP routing (kube-proxy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from polling import wait_for
from realnode_helpers import ON_REAL_NODE, apply, get_json, in_node, rn

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

NS = "node-checks"


def test_real_node_is_ready_labelled_and_tainted_next_to_the_kwok_gpu_nodes(real_cluster: Any) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(real_cluster, "nodes")["items"]}
    node = nodes[rn.NODE_NAME]
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    assert node["metadata"]["labels"][rn.NODE_LABEL[0]] == rn.NODE_LABEL[1]
    taints = [(t["key"], t.get("value"), t["effect"]) for t in node["spec"]["taints"]]
    assert (rn.NODE_TAINT["key"], rn.NODE_TAINT["value"], rn.NODE_TAINT["effect"]) in taints
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == rn.NODE_IP
    runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
    assert runtime.startswith("containerd://"), runtime
    # kwok's simulated GPU nodes stay for the scheduling tests.
    for name in ("gpu-node-0", "gpu-node-1"):
        assert nodes[name]["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    # The images the tests use were imported into the node's containerd (no registry here).
    images = real_cluster.node.image_digests()
    assert {rn.PAUSE_IMAGE, *real_cluster.images.values()} <= set(images), images


def _web_pods(image: str) -> list[dict[str, Any]]:
    """Two replicas of a tiny HTTP server (the server image's Python) that answers its pod name."""
    labels = {"app": "web"}
    pod_spec = {
        **ON_REAL_NODE,
        "containers": [
            {
                "name": "web",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "cd /tmp && hostname > name && exec python3 -m http.server 8000"],
                "ports": [{"containerPort": 8000, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/name", "port": 8000}, "periodSeconds": 1},
            }
        ],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-peers", "namespace": NS},
            "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 8000}]},
        },
    ]


@pytest.fixture(scope="module")
def web(real_cluster: Any) -> dict[str, Any]:
    real_cluster.create_namespace(NS)
    apply(real_cluster, _web_pods(real_cluster.images["server"]))
    real_cluster.kubectl("rollout", "status", "-n", NS, "deployment/web", "--timeout=180s", timeout=200)
    pods = get_json(real_cluster, "pods", "-n", NS, "-l", "app=web")["items"]
    return {
        "pods": {p["status"]["podIP"]: p["metadata"]["name"] for p in pods},
        "cluster_ip": get_json(real_cluster, "service", "-n", NS, "web")["spec"]["clusterIP"],
    }


def test_pods_run_for_real_with_ips_from_the_node_bridge(real_cluster: Any, web: dict[str, Any]) -> None:
    assert len(web["pods"]) == 2
    for ip, name in web["pods"].items():
        assert ip.startswith(rn.POD_SUBNET.rsplit(".", 1)[0] + "."), ip
        # Straight to the pod IP from the node's network: the process inside really answers.
        got = in_node(
            sys.executable,
            "-c",
            f"import urllib.request as u; print(u.urlopen('http://{ip}:8000/name', timeout=5).read().decode())",
        )
        assert got.stdout.strip() == name
    # logs and exec go API server -> kubelet.
    name = next(iter(web["pods"].values()))
    assert "Serving HTTP" in real_cluster.kubectl("logs", "-n", NS, name).stdout
    assert real_cluster.kubectl("exec", "-n", NS, name, "--", "cat", "/tmp/name").stdout.strip() == name


def test_cluster_ip_routes_to_every_ready_pod_through_kube_proxy(web: dict[str, Any]) -> None:
    # kube-proxy writes a Service's rules and each new endpoint a moment after the pod turns Ready
    # (seen: 200 quick answers, all from the one pod whose endpoint was written first), so keep
    # asking for up to 60 s, paced, until every pod has answered; a Service that never reaches one
    # of them still fails.
    want = sorted(set(web["pods"].values()))
    code = (
        "import json, time, urllib.request as u\n"
        f"want = set({want!r}); names = []; end = time.monotonic() + 60\n"
        "errors = []\n"
        "while time.monotonic() < end and not want <= set(names):\n"
        "    try:\n"
        f"        names.append(u.urlopen('http://{web['cluster_ip']}/name', timeout=5).read().decode().strip())\n"
        "    except OSError as exc:  # refused until kube-proxy has written the Service's rules\n"
        "        errors.append(str(exc))\n"
        "    time.sleep(0.05)\n"
        "print(json.dumps({'answers': len(names), 'names': sorted(set(names)), 'errors': errors[-3:]}))"
    )
    got = json.loads(in_node(sys.executable, "-c", code).stdout.strip().splitlines()[-1])
    assert set(got["names"]) == set(want), got


def test_coredns_resolves_services_and_headless_peers_to_pod_ips_inside_pods(
    real_cluster: Any, web: dict[str, Any]
) -> None:
    name = next(iter(web["pods"].values()))
    code = (
        "import json, socket\n"
        f"peers = socket.gethostbyname_ex('web-peers.{NS}.svc.cluster.local')[2]\n"
        "svc = socket.gethostbyname('web')\n"  # the pod's search path: <ns>.svc.cluster.local
        "print(json.dumps({'peers': sorted(peers), 'svc': svc}))"
    )

    def answer() -> dict[str, Any] | None:
        out = real_cluster.kubectl("exec", "-n", NS, name, "--", "python3", "-c", code, check=False)
        lines = out.stdout.strip().splitlines()
        got: dict[str, Any] = json.loads(lines[-1]) if out.returncode == 0 and lines else {}
        return got if got.get("peers") == sorted(web["pods"]) else None

    # CoreDNS serves a headless Service's records from the EndpointSlices, which list a pod a
    # moment after it turns Ready: ask again (bounded) until both pods are there.
    got = wait_for(answer, 60, "CoreDNS to answer web-peers with both pod IPs", interval=1.0)
    assert got["svc"] == web["cluster_ip"], got


def test_refuses_in_one_line_without_root() -> None:
    """Non-root: `up --real-node` exits 2 with one line naming why, and starts nothing."""
    if os.geteuid() != 0:
        pytest.fail("this check itself drops root; run the suite as root", pytrace=False)
    script = str(rn.__file__).replace("realnode.py", "localcluster.py")
    proc = subprocess.run(
        # The harness is stdlib-only: the system Python runs it (the venv lives in root's home).
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            script,
            "--state-dir",
            "/tmp/bertserve-refusal-check",
            "up",
            "--real-node",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "real node refused: must run as root" in lines[0], proc.stderr


def test_refuses_in_one_line_without_the_capabilities() -> None:
    proc = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-net_admin",
            "/usr/bin/python3",
            "-c",
            f"import sys; sys.path.insert(0, {str(rn.__file__).rsplit('/', 1)[0]!r}); import realnode; print(realnode.refusal())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "real node refused: missing capabilities CAP_NET_ADMIN", proc.stdout
