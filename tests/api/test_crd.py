"""The CRD, the spec model and the examples agree with each other."""

from __future__ import annotations

import pathlib
from typing import Any

import jsonschema
import pytest
import yaml
from crd_schema import ROOT, apply_defaults, load_crd, schema_paths, to_jsonschema, version_schema

from bertserve_api import names
from bertserve_api import spec as spec_mod
from bertserve_api.spec import parse_spec, to_dict

EXAMPLES = sorted((ROOT / "crds" / "examples").glob("*.yaml"))
MINIMAL = {"model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "bert"}}


def _validate(obj: dict[str, Any]) -> None:
    jsonschema.validate(obj, to_jsonschema(version_schema()))


def _paths_of(value: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= _paths_of(item, path)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                paths |= _paths_of(item, prefix + "[]")
    return paths


def test_crd_names_match_the_api_constants():
    crd = load_crd()
    assert crd["metadata"]["name"] == names.CRD_NAME
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["names"]["kind"] == names.KIND
    assert crd["spec"]["names"]["plural"] == names.PLURAL
    assert tuple(crd["spec"]["names"]["shortNames"]) == names.SHORT_NAMES
    assert [v["name"] for v in crd["spec"]["versions"]] == [names.VERSION]


def test_printer_columns_and_subresources():
    (version,) = load_crd()["spec"]["versions"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Reason",
        "Replicas",
        "GPUs",
        "Model",
        "Age",
    ]
    scale = version["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert version["subresources"]["status"] == {}


@pytest.mark.parametrize(
    "raw",
    [
        MINIMAL,
        {**MINIMAL, "serving": {"maxSeqLen": None}},
        {
            **MINIMAL,
            "serving": {"ports": {"http": 9000}},
            "autoscaling": {"enabled": True, "metric": "queue"},
        },
        {**MINIMAL, "resources": {"gpus": 0}, "rollout": {}},
    ],
)
def test_schema_defaults_equal_code_defaults(raw):
    """What the API server stores after defaulting is exactly what parse_spec fills in."""
    spec_schema = version_schema()["properties"]["spec"]
    defaulted = apply_defaults(raw, spec_schema)
    from_code = to_dict(parse_spec(raw))
    assert defaulted == from_code


def test_every_spec_field_is_in_the_schema_and_back():
    full = {
        "model": {
            "source": {"uri": {"url": "https://x/m.zip", "sha256": "a" * 64, "secretRef": {"name": "s"}}},
            "pretrainedPath": "p",
            "tunedModelDir": "t",
        },
        "serving": {"numWorker": 1, "classifier": {"enabled": True, "labels": ["no", "yes"]}},
        "resources": {"gpus": 1, "cpu": "2", "memory": "8Gi"},
        "image": "img",
        "imagePullSecrets": [{"name": "s"}],
        "serviceAccountName": "sa",
        "nodeSelector": {"a": "b"},
        "tolerations": [
            {"key": "k", "operator": "Equal", "effect": "NoExecute", "value": "v", "tolerationSeconds": 5}
        ],
        "affinity": {"nodeAffinity": {}},
        "runtimeClassName": "nvidia",
        "priorityClassName": "high",
        "service": {"annotations": {"a": "b"}},
        "network": {"networkPolicy": False, "allowedClients": [{"podSelector": {}}]},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        "podLabels": {"team": "a"},
        "podAnnotations": {"note": "x"},
        "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
        "envFrom": [{"configMapRef": {"name": "cm"}}],
    }
    full["serving"]["apiKeySecret"] = {"name": "api", "key": "token"}
    full["resources"]["gpuResourceName"] = "nvidia.com/mig-1g.10gb"
    # maps whose keys are the user's, and Kubernetes objects passed through unchanged
    free_form = (
        "nodeSelector.",
        "affinity.",
        "service.annotations.",
        "podLabels.",
        "podAnnotations.",
        "network.allowedClients[].",
        "topologySpreadConstraints[].",
        "envFrom[].",
        "env[].value",
    )
    code_paths = {p for p in _paths_of(to_dict(parse_spec(full))) if not p.startswith(free_form)}
    spec_schema = version_schema()["properties"]["spec"]
    schema_only = schema_paths(spec_schema) - code_paths
    # The other two source kinds are alternatives to uri.
    assert schema_only == {
        "model.source.pvc",
        "model.source.pvc.claimName",
        "model.source.pvc.readOnly",
        "model.source.hostPath",
        "model.source.hostPath.path",
        "model.source.hostPath.type",
    }
    assert code_paths - schema_paths(spec_schema) == set()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_schema_and_parse(path: pathlib.Path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == names.API_VERSION and doc["kind"] == names.KIND
    _validate(doc)
    parse_spec(doc["spec"])


def test_there_are_cpu_gpu_and_uri_examples():
    kinds = {p.name: yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES}
    assert any(s.get("resources", {}).get("gpus") == 0 for s in kinds.values())
    assert any(
        s["model"].get("tunedModelDir") and s["model"].get("ckptName") == "model.ckpt-343"
        for s in kinds.values()
    )
    assert any("uri" in s["model"]["source"] for s in kinds.values())


# Invalid manifests: (spec, field path named in the error). Each is rejected by the schema
# (jsonschema here, CEL on the real API server in tests/k8s) or by parse_spec.
INVALID = [
    ({"model": {"source": {"pvc": {"claimName": "m"}}}}, "pretrainedPath"),
    ({**MINIMAL, "serving": {"maxSeqLen": 1024}}, "maxSeqLen"),
    ({**MINIMAL, "serving": {"maxSeqLen": 3}}, "maxSeqLen"),
    ({**MINIMAL, "serving": {"poolingStrategy": "AVG"}}, "poolingStrategy"),
    ({**MINIMAL, "resources": {"gpus": -1}}, "gpus"),
    ({**MINIMAL, "replicas": "two"}, "replicas"),
    ({**MINIMAL, "serving": {"maxSeqLenn": 10}}, "maxSeqLenn"),
    ({**MINIMAL, "model": {**MINIMAL["model"], "source": {"uri": {"url": "ftp://x"}}}}, "url"),
    ({**MINIMAL, "serving": {"classifier": {"enabled": True, "labels": []}}}, "labels"),
    ({**MINIMAL, "serving": {"classifier": {"enabled": True, "labels": ["yes", "no", "yes"]}}}, "labels"),
    (
        {**MINIMAL, "serving": {"classifier": {"enabled": True, "labels": [str(i) for i in range(65)]}}},
        "labels",
    ),
    ({**MINIMAL, "serving": {"classifier": {"enabled": True, "labels": ["a,b"]}}}, "labels"),
    ({**MINIMAL, "serving": {"classifier": {"enabled": True, "labels": [""]}}}, "labels"),
    ({**MINIMAL, "serving": {"classifier": {"enabled": "yes"}}}, "enabled"),
]

# Cross-field rules the schema's CEL expresses (checked on the API server in tests/k8s) and
# parse_spec enforces here.
INVALID_CROSS_FIELD = [
    ({"model": {"source": {}, "pretrainedPath": "p"}}, "spec.model.source", "exactly one of"),
    (
        {"model": {"source": {"pvc": {"claimName": "m"}, "hostPath": {"path": "/d"}}, "pretrainedPath": "p"}},
        "spec.model.source",
        "exactly one of",
    ),
    ({"model": {**MINIMAL["model"], "ckptName": "mrpc/model.ckpt-343"}}, "spec.model.ckptName", "prefix"),
    ({"model": {**MINIMAL["model"], "ckptName": "model.ckpt-343.index"}}, "spec.model.ckptName", "prefix"),
    ({"model": {**MINIMAL["model"], "pretrainedPath": "/abs"}}, "spec.model.pretrainedPath", "relative"),
    ({"model": {**MINIMAL["model"], "tunedModelDir": "../x"}}, "spec.model.tunedModelDir", ".."),
    (
        {**MINIMAL, "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
        "greater than maxReplicas",
    ),
    ({**MINIMAL, "serving": {"ports": {"zmq": 5000, "zmqOut": 5000}}}, "spec.serving.ports", "must differ"),
    ({**MINIMAL, "serving": {"fp16": True}, "resources": {"gpus": 0}}, "spec.serving.fp16", "gpus > 0"),
    ({**MINIMAL, "rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "spec.rollout", "both be 0"),
    ({**MINIMAL, "rollout": {"maxSurge": "0%", "maxUnavailable": 0}}, "spec.rollout", "both be 0"),
    (
        {**MINIMAL, "serving": {"numWorker": 4}, "resources": {"gpus": 2}},
        "spec.serving.numWorker",
        "resources.gpus is 2",
    ),
    (
        {**MINIMAL, "serving": {"maxQueueSize": 8, "maxBatchSize": 16}},
        "spec.serving.maxQueueSize",
        "smaller than maxBatchSize",
    ),
    (
        {**MINIMAL, "autoscaling": {"enabled": False, "minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
        "greater than maxReplicas",
    ),
    ({"model": {**MINIMAL["model"], "configName": "cfg/bert.json"}}, "spec.model.configName", "file name"),
    ({**MINIMAL, "rollout": {"maxSurge": "25"}}, "spec.rollout.maxSurge", "percentage"),
    ({**MINIMAL, "rollout": {"maxUnavailable": "150%"}}, "spec.rollout.maxUnavailable", "percentage"),
    (
        {**MINIMAL, "disruptionBudget": {"maxUnavailable": "x"}},
        "spec.disruptionBudget.maxUnavailable",
        "percentage",
    ),
    (
        {**MINIMAL, "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
        "spec.tolerations[0].value",
        "operator is Exists",
    ),
    (
        {**MINIMAL, "tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        "spec.tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    ({**MINIMAL, "autoscaling": {"enabled": True}}, "spec.autoscaling.metric", "needs resources.cpu"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_manifests_are_rejected_by_schema_and_parser(spec, field):
    doc = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError) as schema_err:
        _validate(doc)
    error = schema_err.value
    assert field in "/".join(map(str, error.absolute_path)) or field in error.message
    with pytest.raises(ValueError, match=field):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("spec", "path", "needle"), INVALID_CROSS_FIELD, ids=[p for _, p, _ in INVALID_CROSS_FIELD]
)
def test_cross_field_rules_name_the_field(spec, path, needle):
    with pytest.raises(ValueError) as exc:
        parse_spec(spec)
    assert str(exc.value).startswith(path + ":")
    assert needle in str(exc.value)


def test_cel_rules_carry_messages_naming_the_fields():
    text = (ROOT / "crds" / "bertservers.bertserve.io.yaml").read_text()
    crd = yaml.safe_load(text)
    rules: list[dict[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(crd)
    messages = " ".join(r["message"] for r in rules)
    for needle in (
        "model.source",
        "minReplicas",
        "ckptName",
        "ports",
        "fp16",
        "pretrainedPath",
        "configName",
        "numWorker",
        "maxQueueSize",
        "rollout.maxSurge",
        "tolerations[].value",
        "tolerations[].tolerationSeconds",
        "metadata.name",
    ):
        assert needle in messages


def _patterns(node: Any, path: str = "") -> dict[str, str]:
    found: dict[str, str] = {}
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found[path] = node["pattern"]
        for key, value in node.items():
            found |= _patterns(value, f"{path}.{key}")
    return found


def test_crd_patterns_are_the_parsers_patterns():
    """One fact in one place: quantity and percentage fields carry spec.py's exact patterns,
    and the name rules quote spec.py's name patterns."""
    patterns = _patterns(version_schema())
    quantity = {p for p in patterns if p.endswith((".cpu", ".memory", ".sizeLimit"))}
    percent = {p for p in patterns if p.endswith((".maxSurge", ".maxUnavailable"))}
    assert len(quantity) >= 3 and len(percent) == 3, patterns
    assert {patterns[p] for p in quantity} == {spec_mod.QUANTITY_PATTERN}
    assert {patterns[p] for p in percent} == {spec_mod.PERCENT_PATTERN}
    rules = " ".join(r["rule"] for r in version_schema()["x-kubernetes-validations"])
    assert f"'{spec_mod.NAME_PATTERN}'" in rules and f"'{spec_mod.PEER_SUFFIX_PATTERN}'" in rules


@pytest.mark.parametrize("name", ["1bert", "my.bert", "Bert", "mrpc-peers", "x-peers-0123abcd", "a-"])
def test_names_children_cannot_carry_are_refused(name):
    with pytest.raises(spec_mod.SpecError, match=r"^metadata\.name: "):
        spec_mod.check_name(name)


@pytest.mark.parametrize("name", ["mrpc", "a", "bert-2", "peers", "x-peersx", "x-peer-key"])
def test_ordinary_names_are_accepted(name):
    spec_mod.check_name(name)
