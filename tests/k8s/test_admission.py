"""The real API server refuses every BertServer the operator or Kubernetes could not run.

Each invalid object is sent with ``--dry-run=server``: admission (schema, CEL) runs in full,
nothing is stored, and the message must name the field so the author knows what to fix. The
same specs are refused by ``parse_spec`` (tests/api/test_crd.py), so an object admitted before
a rule existed still ends as ``InvalidSpec`` instead of a half-made set of children.
"""

from __future__ import annotations

from typing import Any

import pytest
from bertserver_manifests import bertserver_yaml
from operator_harness import REPO_ROOT

from bertserve_api import names

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]

MODEL = {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "bert"}
GOOD = {"model": MODEL, "resources": {"gpus": 2}}

# (name, spec, words the API server's message must contain)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("workers", {**GOOD, "serving": {"numWorker": 3}}, "serving.numWorker must not exceed resources.gpus"),
    (
        "queue",
        {**GOOD, "serving": {"maxQueueSize": 10, "maxBatchSize": 64}},
        "serving.maxQueueSize must be at least serving.maxBatchSize",
    ),
    (
        "rollout",
        {**GOOD, "rollout": {"maxSurge": 0, "maxUnavailable": "0%"}},
        "rollout.maxSurge and rollout.maxUnavailable cannot both be 0",
    ),
    ("surge-pattern", {**GOOD, "rollout": {"maxSurge": "lots"}}, "spec.rollout.maxSurge"),
    ("unavail-pattern", {**GOOD, "rollout": {"maxUnavailable": "200%"}}, "spec.rollout.maxUnavailable"),
    (
        "pdb-pattern",
        {**GOOD, "disruptionBudget": {"maxUnavailable": "1x"}},
        "spec.disruptionBudget.maxUnavailable",
    ),
    ("negative", {**GOOD, "rollout": {"maxSurge": -1}}, "spec.rollout.maxSurge"),
    (
        "config",
        {**GOOD, "model": {**MODEL, "configName": "../bert_config.json"}},
        "model.configName must be a file name",
    ),
    (
        "autoscale-off",
        {**GOOD, "autoscaling": {"enabled": False, "minReplicas": 3, "maxReplicas": 2}},
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    (
        "exists-value",
        {**GOOD, "tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
        "tolerations[].value must be empty when operator is Exists",
    ),
    (
        "toleration-seconds",
        {**GOOD, "tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 30}]},
        "tolerations[].tolerationSeconds needs effect NoExecute",
    ),
    ("1bert", GOOD, "metadata.name must start with a lower-case letter"),
    ("my.bert", GOOD, "metadata.name must start with a lower-case letter"),
    ("mrpc-peers", GOOD, "metadata.name must not end in '-peers'"),
    (
        "labels",
        {**GOOD, "podLabels": {"app.kubernetes.io/instance": "other"}},
        "podLabels keys under app.kubernetes.io/",
    ),
    (
        "env",
        {**GOOD, "env": [{"name": "BERTSERVE_API_KEY", "value": "x"}]},
        "env[].name BERTSERVE_* and HOME",
    ),
    ("gpu-name", {**GOOD, "resources": {"gpuResourceName": "gpu"}}, "resources.gpuResourceName must be"),
    ("api-key", {**GOOD, "serving": {"apiKeySecret": {"name": "k"}}}, "spec.serving.apiKeySecret.key"),
]


@pytest.fixture(scope="module")
def crd(cluster: Any) -> None:
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO_ROOT / "crds" / f"{names.CRD_NAME}.yaml"),
    )
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{names.CRD_NAME}", "--timeout=60s")


def _dry_run(cluster: Any, name: str, spec: dict[str, Any]) -> Any:
    manifest = bertserver_yaml(name, spec)
    return cluster.kubectl(
        "create", "--dry-run=server", "-n", "default", "-f", "-", input=manifest, check=False
    )


@pytest.mark.parametrize(("name", "spec", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_invalid_specs_are_refused_naming_the_field(
    cluster: Any, crd: None, name: str, spec: Any, message: str
) -> None:
    proc = _dry_run(cluster, name, spec)
    assert proc.returncode != 0, f"admitted: {proc.stdout}"
    assert message in proc.stderr, proc.stderr


def test_the_boundary_cases_are_admitted(cluster: Any, crd: None) -> None:
    """The rules refuse only what is wrong: equal values, CPU mode, percentages, x-peersx."""
    admitted = [
        ("edge", {**GOOD, "serving": {"numWorker": 2, "maxQueueSize": 256, "maxBatchSize": 256}}),
        ("cpu-workers", {**GOOD, "resources": {"gpus": 0}, "serving": {"numWorker": 4}}),
        ("pct", {**GOOD, "rollout": {"maxSurge": "25%", "maxUnavailable": 0}}),
        (
            "tol",
            {**GOOD, "tolerations": [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 9}]},
        ),
        ("x-peersx", GOOD),
        (
            "surface",
            {
                **GOOD,
                "resources": {"gpus": 1, "gpuResourceName": "nvidia.com/mig-1g.10gb"},
                "serving": {"apiKeySecret": {"name": "api", "key": "token"}},
                "network": {"allowedClients": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]},
                "podLabels": {"team": "a"},
                "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
                "envFrom": [{"configMapRef": {"name": "cm"}}],
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
                ],
            },
        ),
    ]
    for name, spec in admitted:
        proc = _dry_run(cluster, name, spec)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
