"""Manifest builders: golden files per example, plus the rules the goldens are meant to show.

Regenerate the goldens after an intended change with ``BERTSERVE_UPDATE_GOLDEN=1 pytest
tests/api/test_manifests.py`` and review the diff like code.
"""

from __future__ import annotations

import base64
import copy
import os
import pathlib
from typing import Any

import pytest
import yaml

from bertserve_api import manifests, names
from bertserve_api.contract import ServerConfig, parse_argv
from bertserve_api.manifests import Owner, RenderOptions, render
from bertserve_api.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "crds" / "examples").glob("*.yaml"))
OPTIONS = RenderOptions(default_image="registry.example.com/bertserve-server:0.1.0")
OWNER = Owner("mrpc", "ml", "0f4e3c2a-1111-2222-3333-444455556666")

MRPC: dict[str, Any] = {
    "model": {
        "source": {"pvc": {"claimName": "bert-models"}},
        "pretrainedPath": "uncased_L-12_H-768_A-12",
        "tunedModelDir": "mrpc_output",
        "ckptName": "model.ckpt-343",
    },
    "resources": {"gpus": 1, "memory": "8Gi"},
}

# Cases beyond the shipped examples, each showing one feature in its golden file.
EXTRA_CASES: dict[str, dict[str, Any]] = {
    "hostpath-subpath-autoscaling-pdb": {
        "model": {
            "source": {"hostPath": {"path": "/data/bert"}},
            "pretrainedPath": "google/uncased_L-12_H-768_A-12",
            "tunedModelDir": "google/mrpc_output",
            "ckptName": "model.ckpt-343",
            "revision": "7",
        },
        "resources": {"gpus": 2, "cpu": "4", "memory": "16Gi"},
        "serving": {"maxSeqLen": None, "poolingStrategy": "CLS_TOKEN", "fp16": True},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "disruptionBudget": {"enabled": True},
        "rollout": {"maxSurge": 1, "maxUnavailable": 0},
        "image": "my/bert:gpu",
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccountName": "bert-sa",
        "runtimeClassName": "nvidia",
        "priorityClassName": "inference",
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "mrpc"}},
                        },
                    }
                ]
            }
        },
        "startupTimeoutSeconds": 1800,
        "terminationGracePeriodSeconds": 120,
        "service": {
            "type": "LoadBalancer",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
        },
        "monitoring": {"prometheusAnnotations": True},
    },
}


def _cases() -> dict[str, tuple[Owner, dict[str, Any]]]:
    cases = {}
    for path in EXAMPLES:
        obj = yaml.safe_load(path.read_text())
        owner = Owner(obj["metadata"]["name"], "ml", OWNER.uid)
        cases[path.stem] = (owner, obj["spec"])
    for name, spec in EXTRA_CASES.items():
        cases[name] = (OWNER, spec)
    return cases


CASES = _cases()


def _render_yaml(owner: Owner, raw: dict[str, Any]) -> str:
    children = render(owner, parse_spec(raw), OPTIONS)
    return yaml.safe_dump_all(children.all(), sort_keys=False, width=120)


def _compare_with_golden(case: str, golden_dir: pathlib.Path) -> None:
    """Compare; with ``BERTSERVE_UPDATE_GOLDEN=1`` a differing golden is rewritten and the test
    still fails (saying so), so the switch can never turn a wrong rendering into a pass."""
    owner, raw = CASES[case]
    text = _render_yaml(owner, raw)
    golden = golden_dir / f"{case}.yaml"
    before = golden.read_text() if golden.exists() else None
    if os.environ.get("BERTSERVE_UPDATE_GOLDEN") == "1" and before != text:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
        pytest.fail(
            f"golden {golden} changed: rewritten because BERTSERVE_UPDATE_GOLDEN=1; review the diff "
            "and rerun without the switch",
            pytrace=False,
        )
    assert before is not None, f"missing {golden}; run with BERTSERVE_UPDATE_GOLDEN=1"
    assert text == before, f"{golden.name} differs; if intended, regenerate and review"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_children_match_golden_file(case: str) -> None:
    _compare_with_golden(case, GOLDEN)


def test_updating_a_golden_file_rewrites_it_and_still_fails(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = sorted(CASES)[0]
    stale = tmp_path / f"{case}.yaml"
    stale.write_text("stale: true\n")
    monkeypatch.setenv("BERTSERVE_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match="changed: rewritten because BERTSERVE_UPDATE_GOLDEN=1"):
        _compare_with_golden(case, tmp_path)
    assert stale.read_text() == (GOLDEN / f"{case}.yaml").read_text()
    _compare_with_golden(case, tmp_path)  # once rewritten, the same switch passes: nothing changed


def _deployment(raw: dict[str, Any], owner: Owner = OWNER) -> dict[str, Any]:
    return manifests.deployment(owner, parse_spec(raw), OPTIONS)


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def test_seed_paths_map_to_model_dir_tuned_model_dir_and_ckpt_name() -> None:
    args = _container(_deployment(MRPC))["args"]
    assert args[:3] == [
        "-model_dir=/models/uncased_L-12_H-768_A-12",
        "-tuned_model_dir=/models/mrpc_output",
        "-ckpt_name=model.ckpt-343",
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_args_are_what_the_server_parser_accepts(case: str) -> None:
    owner, raw = CASES[case]
    spec = parse_spec(raw)
    container = _container(manifests.deployment(owner, spec, OPTIONS))
    assert container["command"] == ["bert-serving-start"]
    parsed = parse_argv(container["args"])
    assert parsed == manifests.server_config(owner, spec, OPTIONS)
    assert parsed.http_port == spec.serving.ports.http
    assert parsed.peer_service == f"{owner.name}-peers.ml.svc.cluster.local"
    assert "-peer_port=5557" in container["args"]


def test_gpus_become_a_gpu_limit_and_a_device_map() -> None:
    container = _container(_deployment({**MRPC, "resources": {"gpus": 2}}))
    assert container["resources"]["limits"][names.GPU_RESOURCE] == "2"
    assert container["resources"]["requests"][names.GPU_RESOURCE] == "2"
    cfg = parse_argv(container["args"])
    assert (cfg.cpu, cfg.device_map, cfg.num_worker) == (False, (0, 1), 2)


def test_zero_gpus_runs_on_cpu_without_requesting_a_gpu() -> None:
    container = _container(_deployment({**MRPC, "resources": {"gpus": 0, "cpu": "2"}}))
    assert "-cpu" in container["args"]
    assert names.GPU_RESOURCE not in str(container["resources"])
    assert container["resources"] == {"requests": {"cpu": "2"}}


def test_size_classes_are_on_by_default_and_turned_off_by_the_spec() -> None:
    """``serving.sizeClasses: false`` trades speed for memory (see the CRD's description)."""
    cpu = {**MRPC, "resources": {"gpus": 0}}
    default = _container(_deployment(cpu))["args"]
    assert "-no_size_classes" not in default and not parse_argv(default).no_size_classes
    off = _container(_deployment({**cpu, "serving": {"sizeClasses": False}}))["args"]
    assert "-no_size_classes" in off and parse_argv(off).no_size_classes


def test_pod_is_non_root_with_read_only_root_and_a_writable_tmp() -> None:
    dep = _deployment(MRPC)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    # Files a copy Job wrote into a writable volume become readable by the server's group.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"] == 10001
    sc = _container(dep)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in _container(dep)["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]


def test_pvc_is_mounted_read_only_and_narrowed_to_the_common_directory() -> None:
    raw = copy.deepcopy(MRPC)
    raw["model"]["pretrainedPath"] = "bert/base"
    raw["model"]["tunedModelDir"] = "bert/runs/mrpc"
    container = _container(_deployment(raw))
    mount = container["volumeMounts"][0]
    assert mount == {"name": "model", "mountPath": "/models/bert", "readOnly": True, "subPath": "bert"}
    assert "-model_dir=/models/bert/base" in container["args"]
    assert "-tuned_model_dir=/models/bert/runs/mrpc" in container["args"]


def test_uri_source_is_fetched_by_an_init_container_that_alone_sees_the_secret() -> None:
    owner, raw = CASES["uri-source"]
    pod = manifests.deployment(owner, parse_spec(raw), OPTIONS)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == _container({"spec": {"template": {"spec": pod}}})["image"]
    url = raw["model"]["source"]["uri"]["url"]
    assert init["command"] == [
        "bertserve-fetch",
        "--dest",
        "/models/uncased_L-12_H-768_A-12",  # the fetch unwraps the zip's top folder into pretrainedPath
        "--sha256",
        raw["model"]["source"]["uri"]["sha256"],
        "--auth-dir",
        manifests.AUTH_MOUNT,
    ]
    # The URL (possibly pre-signed: a credential) is never an argument: it comes from a Secret
    # the operator creates, through the environment bertserve-fetch reads.
    assert not any(url in str(c) for c in (pod["containers"], init["command"], init["env"]))
    secret = manifests.model_uri_secret(owner, parse_spec(raw))
    assert secret is not None and secret["immutable"] is True
    assert base64.b64decode(secret["data"]["url"]).decode() == url
    ref = next(e for e in init["env"] if e["name"] == manifests.FETCH_URL_ENV)["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "url"}
    assert {"name": "model", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
    assert any(m["name"] == "model-auth" for m in init["volumeMounts"])
    server = pod["containers"][0]
    assert all(m["name"] != "model-auth" for m in server["volumeMounts"])
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]


@pytest.mark.parametrize(
    ("pretrained", "tuned", "dest"),
    [
        ("uncased_L-12_H-768_A-12", None, "/models/uncased_L-12_H-768_A-12"),
        ("uncased_L-12_H-768_A-12", "mrpc_output", "/models"),
        ("bundle/uncased", "bundle/mrpc_output", "/models/bundle"),
        (".", None, "/models"),
    ],
)
def test_uri_fetch_dest_is_the_directory_holding_both_model_paths(
    pretrained: str, tuned: str | None, dest: str
) -> None:
    model: dict[str, Any] = {"source": {"uri": {"url": "https://x/m.tgz"}}, "pretrainedPath": pretrained}
    if tuned:
        model["tunedModelDir"] = tuned
    pod = _deployment({"model": model})["spec"]["template"]["spec"]
    command = pod["initContainers"][0]["command"]
    assert command[command.index("--dest") + 1] == dest


def test_probes_give_model_loading_the_startup_budget() -> None:
    container = _container(_deployment({**MRPC, "startupTimeoutSeconds": 1205}))
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1205
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    dep = _deployment({**MRPC, "startupTimeoutSeconds": 1205})
    assert dep["spec"]["progressDeadlineSeconds"] > 1205


def test_drain_fits_inside_the_termination_grace_period() -> None:
    dep = _deployment({**MRPC, "terminationGracePeriodSeconds": 40})
    pod = dep["spec"]["template"]["spec"]
    container = _container(dep)
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = parse_argv(container["args"]).drain_timeout
    assert pod["terminationGracePeriodSeconds"] == 40
    assert sleep > 0 and sleep + drain < 40


def test_rollout_defaults_to_no_surge_because_gpus_are_scarce() -> None:
    assert _deployment(MRPC)["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_autoscaling_leaves_replicas_to_the_hpa() -> None:
    raw = {
        **MRPC,
        "replicas": 3,
        "resources": {"gpus": 1, "cpu": "2"},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 5},
    }
    children = render(OWNER, parse_spec(raw), OPTIONS)
    assert "replicas" not in children.deployment["spec"]
    assert children.hpa is not None
    assert children.hpa["spec"]["scaleTargetRef"]["name"] == children.deployment["metadata"]["name"]
    assert (children.hpa["spec"]["minReplicas"], children.hpa["spec"]["maxReplicas"]) == (1, 5)
    plain = render(OWNER, parse_spec({**MRPC, "replicas": 3}), OPTIONS)
    assert plain.deployment["spec"]["replicas"] == 3 and plain.hpa is None and plain.pdb is None


def test_config_hash_rolls_pods_on_effective_changes_only() -> None:
    def hash_of(raw: dict[str, Any], owner: Owner = OWNER) -> str:
        ann = _deployment(raw, owner)["spec"]["template"]["metadata"]["annotations"]
        return str(ann[names.ANNOTATION_CONFIG_HASH])

    base = hash_of(MRPC)
    assert hash_of(copy.deepcopy(MRPC)) == base  # deterministic
    assert hash_of(MRPC, Owner("mrpc", "ml", "another-uid")) == base  # identity is not config
    bumped = copy.deepcopy(MRPC)
    bumped["model"]["revision"] = "2"
    assert hash_of(bumped) != base
    assert hash_of({**MRPC, "serving": {"maxSeqLen": 64}}) != base
    assert hash_of({**MRPC, "replicas": 4}) == base  # scaling is not a new template


def test_revision_bump_changes_only_the_hash_annotation() -> None:
    bumped = copy.deepcopy(MRPC)
    bumped["model"]["revision"] = "2"
    a, b = _deployment(MRPC), _deployment(bumped)
    a["spec"]["template"]["metadata"]["annotations"].clear()
    b["spec"]["template"]["metadata"]["annotations"].clear()
    assert a == b


def test_services_expose_named_ports_and_a_headless_peer_service() -> None:
    children = render(OWNER, parse_spec(MRPC), OPTIONS)
    svc = children.service
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("zmq", 5555),
        ("zmq-out", 5556),
        ("http", 8125),
    ]
    peers = children.peer_service
    assert peers["metadata"]["name"] == "mrpc-peers"
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert peers["spec"]["ports"] == [{"name": "peer", "port": 5557, "targetPort": "peer", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == peers["spec"]["selector"] == names.selector_labels("mrpc")


def test_service_type_and_annotations_come_from_spec_service() -> None:
    default = render(OWNER, parse_spec(MRPC), OPTIONS).service
    assert default["spec"]["type"] == "ClusterIP"
    assert "annotations" not in default["metadata"]
    raw = {**MRPC, "service": {"type": "NodePort", "annotations": {"example.com/owner": "search"}}}
    children = render(OWNER, parse_spec(raw), OPTIONS)
    assert children.service["spec"]["type"] == "NodePort"
    assert children.service["metadata"]["annotations"] == {"example.com/owner": "search"}
    assert [p["name"] for p in children.service["spec"]["ports"]] == ["zmq", "zmq-out", "http"]
    # The mesh port is never exposed: the peer Service stays headless and unannotated.
    assert children.peer_service["spec"]["clusterIP"] == "None"
    assert "type" not in children.peer_service["spec"]
    assert "annotations" not in children.peer_service["metadata"]


def test_prometheus_annotations_point_at_metrics_on_the_http_port() -> None:
    unmonitored = {**MRPC, "serving": {"ports": {"http": 9000}}}
    plain = _deployment(unmonitored)["spec"]["template"]["metadata"]["annotations"]
    assert not any(key.startswith("prometheus.io/") for key in plain)
    raw = {**unmonitored, "monitoring": {"prometheusAnnotations": True}}
    annotations = _deployment(raw)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9000"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations[names.ANNOTATION_CONFIG_HASH] == plain[names.ANNOTATION_CONFIG_HASH]


def test_children_are_owned_by_the_bertserver_with_fixed_names() -> None:
    for obj in render(OWNER, parse_spec(EXTRA_CASES["hostpath-subpath-autoscaling-pdb"]), OPTIONS).all():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "bertserve.io/v1alpha1",
            "kind": "BertServer",
            "name": "mrpc",
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["name"] in ("mrpc", "mrpc-peers")


def test_long_owner_names_give_valid_child_names() -> None:
    long = Owner("a" * 120, "ml", "u")
    for obj in render(long, parse_spec(MRPC), OPTIONS).all():
        assert names.is_dns_label(obj["metadata"]["name"]), obj["metadata"]["name"]
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63


def test_builders_do_not_alias_or_mutate_their_inputs() -> None:
    raw = copy.deepcopy(EXTRA_CASES["hostpath-subpath-autoscaling-pdb"])
    spec = parse_spec(raw)
    before = copy.deepcopy(spec)
    first = render(OWNER, spec, OPTIONS)
    first.deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].clear()
    first.deployment["spec"]["template"]["spec"]["nodeSelector"] = {"x": "y"}
    assert spec == before
    assert render(OWNER, spec, OPTIONS) == render(OWNER, parse_spec(raw), OPTIONS)


def test_default_image_comes_from_the_options_and_spec_image_wins() -> None:
    assert _container(_deployment(MRPC))["image"] == OPTIONS.default_image
    assert _container(_deployment({**MRPC, "image": "mine:1"}))["image"] == "mine:1"


def test_cpu_bertservers_get_the_cpu_image_gpu_ones_the_default_and_spec_image_wins() -> None:
    options = RenderOptions(default_image="reg/server:1", default_cpu_image="reg/server:1-cpu")
    cpu = {**MRPC, "resources": {"gpus": 0, "memory": "2Gi"}}

    def image(raw: dict[str, Any], opts: RenderOptions = options) -> str:
        dep = render(OWNER, parse_spec(raw), opts).deployment
        return str(_container(dep)["image"])

    assert image(cpu) == "reg/server:1-cpu"
    assert image(MRPC) == "reg/server:1"  # gpus: 1
    assert image({**MRPC, "resources": {"gpus": 2}}) == "reg/server:1"
    assert image({**cpu, "image": "mine:1"}) == "mine:1"
    assert image({**MRPC, "image": "mine:1"}) == "mine:1"
    # Without a CPU default every BertServer runs the one default image (as before it existed).
    assert image(cpu, RenderOptions(default_image="reg/server:1")) == "reg/server:1"
    assert manifests.server_image_for(parse_spec(cpu), options) == "reg/server:1-cpu"


def test_status_helpers_name_the_model_and_endpoints() -> None:
    spec = parse_spec(MRPC)
    assert manifests.model_summary(spec.model) == "uncased_L-12_H-768_A-12 + mrpc_output/model.ckpt-343"
    assert manifests.endpoints(OWNER, spec) == {
        "zmq": "mrpc.ml.svc:5555",
        "zmqOut": "mrpc.ml.svc:5556",
        "http": "http://mrpc.ml.svc:8125",
    }


# --------------------------------------------------------------------------- mesh key, network, API key


def test_every_pod_mounts_the_peer_key_read_only_and_passes_its_file() -> None:
    dep = render(OWNER, parse_spec(MRPC), OPTIONS).deployment
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "peer-key")
    assert mount == {"name": "peer-key", "mountPath": manifests.PEER_KEY_MOUNT, "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "peer-key")
    assert volume["secret"]["secretName"] == "mrpc-peer-key"
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    assert parse_argv(container["args"]).peer_key_file == f"{manifests.PEER_KEY_MOUNT}/peer.key"


def test_the_peer_key_secret_is_pure_owned_and_refuses_short_keys() -> None:
    key = bytes(range(32))
    first = manifests.peer_key_secret(OWNER, key)
    assert first == manifests.peer_key_secret(OWNER, key)  # the caller brings the randomness
    assert first["metadata"]["name"] == "mrpc-peer-key" and first["immutable"] is True
    assert first["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert first["data"] == {"peer.key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}
    with pytest.raises(ValueError, match="at least 32 bytes"):
        manifests.peer_key_secret(OWNER, b"short")


def test_network_policy_admits_peers_from_the_same_bertserver_and_clients_as_configured() -> None:
    policy = render(OWNER, parse_spec(MRPC), OPTIONS).network_policy
    assert policy is not None and policy["spec"]["policyTypes"] == ["Ingress"]
    clients, peers = policy["spec"]["ingress"]
    assert "from" not in clients  # default: any client
    assert sorted(p["port"] for p in clients["ports"]) == [5555, 5556, 8125]
    assert peers["ports"] == [{"port": manifests.PEER_PORT, "protocol": "TCP"}]
    assert peers["from"] == [{"podSelector": {"matchLabels": names.selector_labels("mrpc")}}]
    allowed = [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]
    spec = parse_spec({**MRPC, "network": {"allowedClients": allowed}})
    limited = render(OWNER, spec, OPTIONS).network_policy
    assert limited is not None and limited["spec"]["ingress"][0]["from"] == allowed
    assert (
        render(OWNER, parse_spec({**MRPC, "network": {"networkPolicy": False}}), OPTIONS).network_policy
        is None
    )
    off = RenderOptions(default_image="i", network_policies=False)
    assert render(OWNER, parse_spec(MRPC), off).network_policy is None


def test_the_api_key_comes_from_its_secret_by_environment_never_as_an_argument() -> None:
    spec = parse_spec({**MRPC, "serving": {"apiKeySecret": {"name": "api", "key": "token"}}})
    (container,) = render(OWNER, spec, OPTIONS).deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[manifests.API_KEY_ENV] == {
        "name": "BERTSERVE_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}},
    }
    assert not any("api" in a.lower() and "key" in a.lower() for a in container["args"])


@pytest.mark.parametrize(
    ("memory", "expected"),
    [(None, None), ("8Gi", 2**30), ("2048Mi", 2**28), ("16G", 2 * 10**9), ("1Mi", 2**20)],
)
def test_max_response_bytes_follows_the_memory_limit(memory: str | None, expected: int | None) -> None:
    spec = parse_spec({**MRPC, "resources": {"gpus": 1, **({"memory": memory} if memory else {})}})
    args = render(OWNER, spec, OPTIONS).deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    default = ServerConfig(model_dir="/m").max_response_bytes
    assert parse_argv(args).max_response_bytes == (default if expected is None else expected)


def test_gpu_operator_surface_reaches_the_pod() -> None:
    spec = parse_spec(
        {
            **MRPC,
            "resources": {"gpus": 2, "gpuResourceName": "nvidia.com/mig-1g.10gb"},
            "serving": {"numWorker": 2},
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
            ],
            "podLabels": {"team": "a"},
            "podAnnotations": {"note": "x"},
            "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
            "envFrom": [{"secretRef": {"name": "extra"}}],
            "imagePullSecrets": [{"name": "regcred"}],
            "priorityClassName": "gpu-high",
        }
    )
    template = render(OWNER, spec, OPTIONS).deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "2"}
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    assert template["metadata"]["labels"]["team"] == "a"
    assert template["metadata"]["labels"][names.LABEL_INSTANCE] == "mrpc"
    assert template["metadata"]["annotations"]["note"] == "x"
    assert names.ANNOTATION_CONFIG_HASH in template["metadata"]["annotations"]
    assert {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["priorityClassName"] == "gpu-high"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"podLabels": {"app.kubernetes.io/instance": "x"}}, "spec.podLabels.app.kubernetes.io/instance"),
        ({"env": [{"name": "BERTSERVE_API_KEY", "value": "k"}]}, "spec.env[0].name"),
        ({"env": [{"name": "HOME", "value": "/"}]}, "spec.env[0].name"),
        ({"resources": {"gpuResourceName": "gpu"}}, "spec.resources.gpuResourceName"),
        ({"serving": {"apiKeySecret": {"name": "a"}}}, "spec.serving.apiKeySecret.key"),
    ],
)
def test_the_operators_own_settings_cannot_be_overridden_from_the_spec(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError) as err:
        parse_spec({**MRPC, **change})
    assert str(err.value).startswith(field + ":"), err.value


def test_a_uri_may_live_only_in_its_secret() -> None:
    raw = {
        "model": {"source": {"uri": {"secretRef": {"name": "signed"}}}, "pretrainedPath": "bert"},
        "resources": {"gpus": 0},
    }
    spec = parse_spec(raw)
    assert manifests.model_uri_secret(OWNER, spec) is None  # nothing to create
    (init,) = manifests.deployment(OWNER, spec, OPTIONS)["spec"]["template"]["spec"]["initContainers"]
    ref = next(e for e in init["env"] if e["name"] == manifests.FETCH_URL_ENV)["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "signed", "key": "url"}
    with pytest.raises(ValueError, match=r"^spec.model.source.uri.url: is required"):
        parse_spec({**raw, "model": {"source": {"uri": {}}, "pretrainedPath": "bert"}})


def test_queue_autoscaling_scales_on_the_servers_queue_gauge() -> None:
    from prometheus_client import generate_latest

    from bertserve_server.metrics import Metrics

    exposed = generate_latest(Metrics().registry).decode()
    assert f"# TYPE {manifests.QUEUE_METRIC} gauge" in exposed
    raw = {**MRPC, "autoscaling": {"enabled": True, "metric": "queue", "targetQueuedSentencesPerPod": 32}}
    hpa = render(OWNER, parse_spec(raw), OPTIONS).hpa
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": manifests.QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": "32"},
            },
        }
    ]


def test_classifier_renders_its_flags_and_labels_only_when_enabled() -> None:
    labels = ["not_paraphrase", "paraphrase"]
    args = _container(_deployment({**MRPC, "serving": {"classifier": {"enabled": True, "labels": labels}}}))[
        "args"
    ]
    assert "-classifier" in args and "-classifier_labels=not_paraphrase,paraphrase" in args
    assert parse_argv(args).classifier_labels == tuple(labels)
    off = _container(_deployment({**MRPC, "serving": {"classifier": {"enabled": False, "labels": labels}}}))[
        "args"
    ]
    assert not any(a.startswith("-classifier") for a in off)
    assert not any(a.startswith("-classifier") for a in _container(_deployment(MRPC))["args"])
