"""The shipped operator image itself reconciles a BertServer on the local control plane.

Elsewhere the operator runs as a local process with the image's entry point; here it is the
image: the OCI archive ``make images`` writes, unpacked and run with runc (read-only root, the
image's user, host network so it reaches the API server on loopback), with the args and
environment of the chart's Deployment and only a token of the chart's ServiceAccount. A
BertServer applied afterwards must get its Deployment and a ``Ready`` status from it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import oci_images
import pytest
from bertserver_manifests import bertserver_yaml
from operator_harness import apply_yaml, condition, get_json, install_chart, service_account_kubeconfig
from polling import wait_for
from ports import free_port

from bertserve_api import names

pytestmark = [pytest.mark.k8s, pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(1800)]

RELEASE = "img"
OPERATOR_NS = "bertserve-image"
NS = "from-image"
KUBECONFIG_IN_CONTAINER = "/var/run/bertserve/kubeconfig"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_the_operator_image_reconciles_a_bertserver(cluster: Any, tmp_path: Path) -> None:
    problems = oci_images.toolchain_problems()
    if problems:
        pytest.fail("container image toolchain unusable: " + "; ".join(problems), pytrace=False)
    try:
        bundle = oci_images.unpack(oci_images.build_images(["operator"])["operator"])
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)

    install_chart(cluster, RELEASE, OPERATOR_NS, "operator.allowHostPath=true")  # kwok reads no node path
    fullname = f"{RELEASE}-bertserve-operator"
    kubeconfig = service_account_kubeconfig(cluster, OPERATOR_NS, fullname, tmp_path / "sa.kubeconfig")
    kubeconfig.chmod(0o644)  # the image's non-root user reads it through the read-only bind
    dep = get_json(cluster, "deployment", fullname, "-n", OPERATOR_NS)
    (chart_container,) = dep["spec"]["template"]["spec"]["containers"]
    port = free_port()
    health_url = f"http://127.0.0.1:{port}/healthz"
    entry = _image_entrypoint(bundle)
    args = chart_container.get("args", [])
    env = {e["name"]: e["value"] for e in chart_container.get("env", []) if "value" in e}
    env["KUBECONFIG"] = KUBECONFIG_IN_CONTAINER
    # Every setting is a BERTSERVE_* variable; only the liveness port moves (host network).
    env["BERTSERVE_LIVENESS_ENDPOINT"] = health_url
    with oci_images.Container(
        bundle,
        command=entry,
        args=args,
        binds={str(kubeconfig): KUBECONFIG_IN_CONTAINER},
        env=env,
        lifetime_s=900,
        memory_limit_bytes=1024**3,
    ) as container:  # started by the with statement
        wait_for(lambda: _healthy(health_url) or not container.running(), 120, "the operator's liveness")
        assert container.running(), container.output()

        cluster.create_namespace(NS)
        apply_yaml(cluster, _bertserver("enc"), NS)
        wait_for(
            lambda: get_json(cluster, "deployment", "enc", "-n", NS, check=False),
            60,
            "the Deployment the operator image applied",
        )
        wait_for(
            lambda: (
                condition(get_json(cluster, "bertserver", "enc", "-n", NS), "Ready").get("status") == "True"
            ),
            120,
            "Ready=True written by the operator image",
        )
        obj = get_json(cluster, "bertserver", "enc", "-n", NS)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        managers = {
            m["manager"]
            for m in get_json(cluster, "deployment", "enc", "-n", NS, "--show-managed-fields")["metadata"][
                "managedFields"
            ]
        }
        assert names.FIELD_MANAGER in managers, managers
        assert "Traceback" not in container.output(), container.output()[-3000:]
        cluster.kubectl("delete", "bertserver", "enc", "-n", NS, "--wait=true", "--timeout=60s")
    cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "120s", check=False)


def _image_entrypoint(bundle: Path) -> list[str]:
    config = json.loads((bundle / oci_images.IMAGE_CONFIG).read_text())["config"]
    return list(config.get("Entrypoint") or [])


def _bertserver(name: str) -> str:
    return bertserver_yaml(
        name,
        {
            "model": {
                "source": {"hostPath": {"path": "/data/bert"}},
                "pretrainedPath": "uncased_L-2_H-32_A-4",
            },
            "replicas": 1,
            "resources": {"gpus": 0, "cpu": "1"},
        },
    )
