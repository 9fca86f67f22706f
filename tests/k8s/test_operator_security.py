"""The operator as a cautious administrator installs it: chart defaults, namespaced mode.

The chart is installed with ``rbac.clusterWide=false`` and one watched namespace, so the
operator holds a Role there and nothing cluster-wide (cluster-scope reads are denied), and
with an ``extraEnv`` setting, so the one entry point is shown to honour it. Against that
operator: what a BertServer author may not ask for (hostPath, foreign ServiceAccounts and
runtimeClasses) ends as ``InvalidSpec`` naming the setting; a served BertServer gets its mesh
key Secret (made once, owned, mounted read-only) and its NetworkPolicy; the HTTP API key reaches
the pod by Secret reference only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from bertserver_manifests import bertserver_yaml
from operator_harness import (
    RESYNC_S,
    OperatorProcess,
    apply_yaml,
    chart_fullname,
    chart_operator,
    condition,
    get_json,
    wait_for,
)

from bertserve_api import manifests, names

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "bss"
OPERATOR_NS = "bertserve-secure"
FULLNAME = chart_fullname(RELEASE)
WATCHED = "team-sec"
UNWATCHED = "team-other"


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    for ns in (WATCHED, UNWATCHED, OPERATOR_NS):
        cluster.create_namespace(ns)
    values = [
        "rbac.clusterWide=false",
        f"watchNamespaces={{{WATCHED}}}",
        "extraEnv[0].name=BERTSERVE_LOG_FORMAT",
        "extraEnv[0].value=json",
    ]
    with chart_operator(
        cluster,
        tmp_path_factory.mktemp("operator-secure"),
        RELEASE,
        OPERATOR_NS,
        values=values,
        resync_s=RESYNC_S,
    ) as op:
        yield op


def bertserver(name: str, source: dict[str, Any] | None = None, **spec: Any) -> str:
    body: dict[str, Any] = {
        "model": {
            "source": source or {"uri": {"url": "https://models.example/bert.zip"}},
            "pretrainedPath": "bert",
        },
        "resources": {"gpus": 0},
        **spec,
    }
    return bertserver_yaml(name, body)


def ready(cluster: Any, ns: str, name: str, op: OperatorProcess) -> None:
    proc = cluster.kubectl(
        "wait", "--for=condition=Ready", f"bertserver/{name}", "-n", ns, "--timeout=90s",
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stderr}\n{op.tail()}"


def invalid(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        cond = condition(get_json(cluster, "bertserver", name, "-n", ns), "Ready")
        return cond if cond.get("reason") == "InvalidSpec" else {}

    return wait_for(check, 30, f"{name}: Ready=False InvalidSpec")


def test_namespaced_mode_holds_no_cluster_scope_reads_and_honours_extra_env(
    cluster: Any, operator: OperatorProcess
) -> None:
    sa = f"system:serviceaccount:{OPERATOR_NS}:{FULLNAME}"
    for args in (
        ("list", "bertservers", "-A"),
        ("list", "pods", "-A"),
        ("list", "deployments", "-n", UNWATCHED),
        ("list", "namespaces"),
        ("get", "secrets", "-n", WATCHED),
    ):
        answer = cluster.kubectl("auth", "can-i", *args, "--as", sa, check=False).stdout.strip()
        assert answer == "no", f"{sa} may {' '.join(args)}"
    assert (
        cluster.kubectl("auth", "can-i", "create", "secrets", "-n", WATCHED, "--as", sa).stdout.strip()
        == "yes"
    )
    # BERTSERVE_LOG_FORMAT=json came from extraEnv only: the operator's log lines are JSON.
    lines = [line for line in operator.log().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line).get("message") is not None for line in lines[:5]), operator.tail()
    # A BertServer outside the watched namespace is not touched (and causes no errors).
    apply_yaml(cluster, bertserver("elsewhere"), UNWATCHED)
    apply_yaml(cluster, bertserver("inside"), WATCHED)
    ready(cluster, WATCHED, "inside", operator)
    assert get_json(cluster, "bertserver", "elsewhere", "-n", UNWATCHED).get("status") is None
    assert get_json(cluster, "deployment", "elsewhere", "-n", UNWATCHED, check=False) is None
    # (not a bare "403": JSON log timestamps hold such digits)
    assert "Forbidden" not in operator.log() and "HTTP 403" not in operator.log(), operator.tail()


@pytest.mark.parametrize(
    "case",
    [
        (
            "host",
            {"source": {"hostPath": {"path": "/etc"}}},
            "spec.model.source.hostPath",
            "allowHostPath=false",
        ),
        (
            "account",
            {"serviceAccountName": "ci-deployer"},
            "spec.serviceAccountName",
            "allowedServiceAccounts",
        ),
        ("runtime", {"runtimeClassName": "unconfined"}, "spec.runtimeClassName", "allowedRuntimeClasses"),
    ],
    ids=lambda case: case[0],
)
def test_what_the_settings_do_not_allow_is_invalid_spec_naming_the_setting(
    cluster: Any, operator: OperatorProcess, case: tuple[str, dict[str, Any], str, str]
) -> None:
    name, change, field, setting = case
    apply_yaml(cluster, bertserver(name, **change), WATCHED)
    cond = invalid(cluster, WATCHED, name)
    assert cond["status"] == "False" and cond["message"].startswith(field), cond
    assert setting in cond["message"], cond
    assert get_json(cluster, "deployment", name, "-n", WATCHED, check=False) is None
    cluster.kubectl("delete", "bertserver", name, "-n", WATCHED)


def test_mesh_key_secret_network_policy_and_api_key_reach_the_pods(
    cluster: Any, operator: OperatorProcess
) -> None:
    api_key = {"name": "mesh-api", "key": "token"}
    cluster.kubectl("create", "secret", "generic", "mesh-api", "--from-literal=token=s3cret", "-n", WATCHED)
    allowed = [{"podSelector": {"matchLabels": {"role": "client"}}}]
    apply_yaml(
        cluster,
        bertserver(
            "mesh", replicas=2, serving={"apiKeySecret": api_key}, network={"allowedClients": allowed}
        ),
        WATCHED,
    )
    ready(cluster, WATCHED, "mesh", operator)
    owner_uid = get_json(cluster, "bertserver", "mesh", "-n", WATCHED)["metadata"]["uid"]

    secret = get_json(cluster, "secret", "mesh-peer-key", "-n", WATCHED)
    key = secret["data"][manifests.PEER_KEY_FILE]
    assert len(base64.b64decode(key)) >= manifests.PEER_KEY_MIN_BYTES
    assert secret["metadata"]["ownerReferences"][0]["uid"] == owner_uid and secret["immutable"] is True

    policy = get_json(cluster, "networkpolicy", "mesh", "-n", WATCHED)
    clients, peers = policy["spec"]["ingress"]
    assert clients["from"] == allowed
    assert peers["from"] == [{"podSelector": {"matchLabels": names.selector_labels("mesh")}}]
    assert peers["ports"] == [{"port": manifests.PEER_PORT, "protocol": "TCP"}]

    pods = get_json(cluster, "pods", "-n", WATCHED, "-l", f"{names.LABEL_INSTANCE}=mesh")["items"]
    assert len(pods) == 2
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "peer-key")
        assert mount["readOnly"] is True
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "peer-key")
        assert volume["secret"]["secretName"] == "mesh-peer-key"
        assert f"-peer_key_file={mount['mountPath']}/{manifests.PEER_KEY_FILE}" in container["args"]
        env = {e["name"]: e for e in container["env"]}
        assert env[manifests.API_KEY_ENV]["valueFrom"] == {"secretKeyRef": api_key}
        assert not any("s3cret" in a for a in container["args"])

    # Never rotated: an operator restart and a spec change leave the key as it was.
    operator.stop()
    operator.start()
    cluster.kubectl(
        "patch", "bertserver", "mesh", "-n", WATCHED, "--type=merge", "-p", '{"spec":{"replicas":1}}'
    )
    wait_for(
        lambda: get_json(cluster, "deployment", "mesh", "-n", WATCHED)["spec"]["replicas"] == 1,
        30,
        "the restarted operator to scale mesh to 1",
    )
    assert get_json(cluster, "secret", "mesh-peer-key", "-n", WATCHED)["data"][manifests.PEER_KEY_FILE] == key

    # Switched off in the spec: the NetworkPolicy goes.
    cluster.kubectl(
        "patch",
        "bertserver",
        "mesh",
        "-n",
        WATCHED,
        "--type=merge",
        "-p",
        '{"spec":{"network":{"networkPolicy":false}}}',
    )
    wait_for(
        lambda: get_json(cluster, "networkpolicy", "mesh", "-n", WATCHED, check=False) is None,
        30,
        "the NetworkPolicy to be deleted",
    )
    cluster.kubectl("delete", "bertserver", "mesh", "-n", WATCHED, "--wait=true", "--timeout=60s")


SERVICE_MONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def test_a_service_monitor_appears_once_its_crd_is_served(cluster: Any, operator: OperatorProcess) -> None:
    """Without the Prometheus operator's CRD the BertServer still becomes Ready (no
    ServiceMonitor, a log line); once a (minimal) ServiceMonitor CRD is served, one appears."""
    apply_yaml(cluster, bertserver("mon", monitoring={"serviceMonitor": {"enabled": True}}), WATCHED)
    ready(cluster, WATCHED, "mon", operator)
    assert "ServiceMonitor API (monitoring.coreos.com/v1) is not served" in operator.log(), operator.tail()
    try:
        apply_yaml(cluster, SERVICE_MONITOR_CRD)
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
            "--timeout=60s",
        )
        monitor = wait_for(
            lambda: get_json(
                cluster, "servicemonitors.monitoring.coreos.com", "mon", "-n", WATCHED, check=False
            ),
            60,
            "the operator to create the ServiceMonitor",
        )
        assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
        assert monitor["spec"]["selector"] == {"matchLabels": names.selector_labels("mon")}
        owner_uid = get_json(cluster, "bertserver", "mon", "-n", WATCHED)["metadata"]["uid"]
        assert monitor["metadata"]["ownerReferences"][0]["uid"] == owner_uid
    finally:
        cluster.kubectl("delete", "bertserver", "mon", "-n", WATCHED, "--wait=true", "--timeout=60s")
        cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--ignore-not-found")
