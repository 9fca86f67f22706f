"""The operator chart: files, values, lint and rendering (real helm), and install + ``helm test``.

Only the last test needs the cluster; the rest runs the helm binary offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from operator_harness import CHART, REPO_ROOT, get_json, localcluster, service_account_kubeconfig, wait_for

from bertserve_api import names
from bertserve_operator.selfcheck import REQUIRED
from bertserve_operator.settings import from_env

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``helm(*args)`` with isolated config/cache dirs (the binary from hack/cluster/build.sh)."""
    binary = Path(localcluster().build_binaries(quiet=True)) / "helm"
    home = tmp_path_factory.mktemp("helm")
    env = {f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", **env},
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    yield run


def render(
    helm: Any, *sets: str, release: str = "rel", namespace: str = "ops", json_sets: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)] + [a for s in json_sets for a in ("--set-json", s)]
    out = helm("template", release, str(CHART), "-n", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# --------------------------------------------------------------------------- files (no helm)


def test_chart_crd_is_byte_identical_to_the_top_level_crd() -> None:
    top = (REPO_ROOT / "crds" / "bertservers.bertserve.io.yaml").read_bytes()
    assert (CHART / "crds" / "bertservers.bertserve.io.yaml").read_bytes() == top
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["bertservers.bertserve.io.yaml"]


def test_chart_versions_follow_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == VERSION


def test_every_value_is_documented() -> None:
    """Each top-level key is commented, or else each of its direct children is."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    parents_ok: dict[str, bool] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
        commented = prev.strip().startswith("#")
        if depth == 0:
            parent = match.group(2)
            parents_ok[parent] = commented
        elif depth == 1 and not parents_ok.get(parent, False) and not commented:
            undocumented.append(f"{parent}.{match.group(2)}")
    top_without_children = [k for k, ok in parents_ok.items() if not ok and not _has_children(lines, k)]
    assert not undocumented and not top_without_children, undocumented + top_without_children


def _has_children(lines: list[str], key: str) -> bool:
    idx = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
    return idx + 1 < len(lines) and lines[idx + 1].startswith("  ")


def test_values_schema_accepts_the_defaults_and_rejects_typos() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "watchNamespace": ["a"]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "operator": {**values["operator"], "logFormat": "xml"}}, schema)


# --------------------------------------------------------------------------- helm lint / template


@pytest.mark.helm
@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("rbac.clusterWide=false", "watchNamespaces={a,b}"),
        ("operator.verbose=true", "tests.enabled=false"),
    ],
)
def test_helm_lint_passes(helm: Any, sets: tuple[str, ...]) -> None:
    args = [a for s in sets for a in ("--set", s)]
    out = helm("lint", "--strict", str(CHART), *args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


@pytest.mark.helm
def test_operator_deployment_is_single_recreate_non_root_with_liveness(helm: Any) -> None:
    (dep,) = by_kind(render(helm), "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{names.OPERATOR_IMAGE_REPOSITORY}:{VERSION}"
    assert "args" not in container and "command" not in container  # the image's one entry point
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BERTSERVE_DEFAULT_IMAGE"] == names.DEFAULT_SERVER_IMAGE
    assert env["BERTSERVE_DEFAULT_CPU_IMAGE"] == names.DEFAULT_SERVER_CPU_IMAGE
    assert pod["serviceAccountName"] == "rel-bertserve-operator"
    settings = from_env(env)
    assert settings.clusterwide and settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    # Read-only root: HOME and every temporary file live on a /tmp emptyDir.
    assert env["HOME"] == "/tmp"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


@pytest.mark.helm
def test_extra_env_overrides_every_setting_the_chart_sets(helm: Any) -> None:
    """extraEnv wins over the chart's own variable of the same name (never a duplicate), and
    the entry point reads each one: namespaces, log format, liveness endpoint."""
    extra = {
        "BERTSERVE_NAMESPACES": "team-x,team-y",
        "BERTSERVE_LOG_FORMAT": "json",
        "BERTSERVE_LIVENESS_ENDPOINT": "http://0.0.0.0:9999/healthz",
        "BERTSERVE_WORKERS": "7",
    }
    extra_env = json.dumps([{"name": k, "value": v} for k, v in extra.items()])
    (dep,) = by_kind(render(helm, json_sets=(f"extraEnv={extra_env}",)), "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    names_ = [e["name"] for e in container["env"]]
    assert len(names_) == len(set(names_)), names_
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = from_env(env)
    assert settings.namespaces == ("team-x", "team-y")
    assert settings.log_format == "json"
    assert settings.liveness_endpoint == "http://0.0.0.0:9999/healthz"
    assert settings.workers == 7


def _rules_grant(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


@pytest.mark.helm
def test_cluster_wide_rbac_grants_exactly_what_the_operator_uses(helm: Any) -> None:
    docs = render(helm)
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole")}
    operator_role = roles["rel-bertserve-operator"]
    assert _rules_grant(operator_role["rules"]) == set(REQUIRED)
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "rel-bertserve-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-bertserve-operator", "namespace": "ops"}
    ]
    granted = _rules_grant(operator_role["rules"])
    assert not any(v in ("*", "deletecollection") for _, r, v in granted)
    # The one update: blockOwnerDeletion under OwnerReferencesPermissionEnforcement.
    assert {(g, r) for g, r, v in granted if v == "update"} == {("bertserve.io", "bertservers/finalizers")}
    # Secrets: create only (the mesh key, made once); never read, list, watch or change one.
    assert {v for _, r, v in granted if r == "secrets"} == {"create"}
    # Aggregated roles let namespace users work with BertServers.
    assert roles["rel-bertserve-operator-edit"]["metadata"]["labels"][
        "rbac.authorization.k8s.io/aggregate-to-edit"
    ]
    assert roles["rel-bertserve-operator-view"]["metadata"]["labels"][
        "rbac.authorization.k8s.io/aggregate-to-view"
    ]


@pytest.mark.helm
def test_namespaced_rbac_is_one_role_per_watched_namespace(helm: Any) -> None:
    docs = render(
        helm,
        "rbac.clusterWide=false",
        "watchNamespaces={team-a,team-b}",
        "rbac.aggregateToDefaultRoles=false",
    )
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(_rules_grant(r["rules"]) == set(REQUIRED) for r in roles)
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    (dep,) = by_kind(docs, "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert from_env(env).namespaces == ("team-a", "team-b")


@pytest.mark.helm
def test_watching_everything_without_cluster_rbac_is_refused(helm: Any) -> None:
    proc = helm("template", "rel", str(CHART), "--set", "rbac.clusterWide=false", check=False)
    assert proc.returncode != 0
    assert "watchNamespaces is empty" in proc.stderr, proc.stderr


@pytest.mark.helm
def test_long_release_names_give_names_of_at_most_63_characters(helm: Any) -> None:
    docs = render(helm, release="r" * 53)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    assert len({d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")}) == 3


@pytest.mark.helm
def test_helm_test_hook_runs_the_selfcheck_as_the_operator(helm: Any) -> None:
    (job,) = by_kind(render(helm), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-bertserve-operator"
    assert pod["containers"][0]["command"] == ["python", "-m", "bertserve_operator.selfcheck"]


@pytest.mark.helm
def test_helm_test_pod_is_placed_like_the_operator(helm: Any) -> None:
    """Unplaced, the hook's pod can land on a simulated node that reports Succeeded without running
    it (tests/realnode/test_z_helm_test.py shows what that hid: a missing permission)."""
    placement = (
        'nodeSelector={"bertserve.io/node":"real"}',
        'tolerations=[{"key":"bertserve.io/real","operator":"Exists","effect":"NoSchedule"}]',
        'affinity={"nodeAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":'
        '[{"weight":1,"preference":{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}}]}}',
    )
    docs = render(helm, json_sets=placement)
    (deployment,) = by_kind(docs, "Deployment")
    (job,) = by_kind(docs, "Job")
    operator_pod, test_pod = deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert test_pod[key] == operator_pod[key], key
    unplaced = by_kind(render(helm), "Job")[0]["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity"} & unplaced.keys()


# --------------------------------------------------------------------------- install on the cluster


@pytest.mark.k8s
@pytest.mark.helm
def test_helm_install_test_and_uninstall(cluster: Any) -> None:
    ns = "helm-check"
    cluster.helm("install", "hc", str(CHART), "-n", ns, "--create-namespace", "--wait", "--timeout", "180s")
    out = cluster.helm("test", "hc", "-n", ns, "--timeout", "120s").stdout
    # kwok marks the hook's pod Succeeded without running it: this says only that helm ran it.
    assert re.search(r"^TEST SUITE:\s+hc-bertserve-operator-test$", out, re.MULTILINE), out
    assert re.search(r"^Phase:\s+Succeeded$", out, re.MULTILINE), out
    crd = get_json(cluster, "crd", "bertservers.bertserve.io")
    assert crd["spec"]["versions"][0]["name"] == "v1alpha1"
    status = cluster.helm("status", "hc", "-n", ns).stdout
    assert "STATUS: deployed" in status and "kubectl -n ml get bertservers" in status  # NOTES rendered
    cluster.helm("uninstall", "hc", "-n", ns, "--wait", "--timeout", "120s")
    # Helm never deletes CRDs from crds/: BertServers survive an uninstall.
    assert get_json(cluster, "crd", "bertservers.bertserve.io", check=False) is not None


# --------------------------------------------------------------------------- CRD as a release resource


@pytest.mark.helm
def test_crds_install_renders_the_same_crd_kept_on_uninstall(helm: Any) -> None:
    assert by_kind(render(helm), "CustomResourceDefinition") == []  # Helm's own crds/ path
    (crd,) = by_kind(render(helm, "crds.install=true"), "CustomResourceDefinition")
    source = yaml.safe_load((CHART / "crds" / "bertservers.bertserve.io.yaml").read_text())
    assert crd["spec"] == source["spec"]  # one source: the byte-identical copy in crds/
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (dropped,) = by_kind(render(helm, "crds.install=true", "crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in dropped["metadata"].get("annotations", {})


def _hook_command(cluster: Any, release: str, namespace: str) -> tuple[list[str], str]:
    """The chart's test hook as the release installed it: container command + args, ServiceAccount."""
    hooks = yaml.safe_load_all(cluster.helm("get", "hooks", release, "-n", namespace).stdout)
    (job,) = [
        h
        for h in hooks
        if h and h["kind"] == "Job" and h["metadata"]["annotations"]["helm.sh/hook"] == "test"
    ]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return [*container["command"], *container.get("args", [])], pod["serviceAccountName"]


def _run_hook(command: list[str], kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    """What the hook pod runs, run here: the image's interpreter is this venv's (as the demo does)."""
    assert command[0] == "python", command
    return subprocess.run(
        [sys.executable, *command[1:]],
        env={
            "KUBECONFIG": str(kubeconfig),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.k8s
@pytest.mark.helm
def test_helm_upgrade_serves_a_new_crd_field(cluster: Any, tmp_path: Path) -> None:
    """crds.install: the CRD is a release resource, so `helm upgrade` to a chart whose CRD has a
    new field makes the API server keep that field (before: pruned as unknown)."""
    ns, release = "crd-upgrade", "cu"
    crd_file = REPO_ROOT / "crds" / "bertservers.bertserve.io.yaml"
    cluster.kubectl("delete", "crd", "bertservers.bertserve.io", "--ignore-not-found", "--wait=true")
    try:
        cluster.helm(
            "install", release, str(CHART), "-n", ns, "--create-namespace", "--skip-crds",
            "--set", "crds.install=true", "--wait", "--timeout", "120s",
        )  # fmt: skip
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/bertservers.bertserve.io", "--timeout=60s"
        )

        def probe() -> dict[str, Any]:
            obj = {
                "apiVersion": "bertserve.io/v1alpha1",
                "kind": "BertServer",
                "metadata": {"name": "probe", "namespace": ns},
                "spec": {
                    "model": {"source": {"pvc": {"claimName": "m"}}, "pretrainedPath": "b"},
                    "upgradeProbe": "kept",
                },
            }
            out = cluster.kubectl(
                "create",
                "--dry-run=server",
                "--validate=false",
                "-o",
                "json",
                "-f",
                "-",
                input=json.dumps(obj),
            ).stdout
            return dict(json.loads(out)["spec"])

        assert "upgradeProbe" not in probe()
        newer = tmp_path / "chart"
        shutil.copytree(CHART, newer)
        doc = yaml.safe_load(crd_file.read_text())
        spec_props = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "properties"
        ]
        spec_props["upgradeProbe"] = {"type": "string"}
        (newer / "crds" / "bertservers.bertserve.io.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        cluster.helm(
            "upgrade",
            release,
            str(newer),
            "-n",
            ns,
            "--set",
            "crds.install=true",
            "--wait",
            "--timeout",
            "120s",
        )
        wait_for(
            lambda: probe().get("upgradeProbe") == "kept", 30, "the upgraded CRD to serve spec.upgradeProbe"
        )
        cluster.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")
        assert get_json(cluster, "crd", "bertservers.bertserve.io", check=False) is not None  # crds.keep
    finally:
        # The session's other tests get the repository's CRD back.
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_file))


@pytest.mark.k8s
@pytest.mark.helm
def test_helm_test_hook_command_passes_with_the_charts_rbac_and_fails_without_a_required_permission(
    cluster: Any, tmp_path: Path
) -> None:
    """The hook's own command, with a token of the chart's ServiceAccount, against the API server."""
    ns = "helm-hook"
    cluster.helm("install", "hh", str(CHART), "-n", ns, "--create-namespace", "--wait", "--timeout", "180s")
    try:
        command, account = _hook_command(cluster, "hh", ns)
        kubeconfig = service_account_kubeconfig(cluster, ns, account, tmp_path / "sa.kubeconfig")
        ok = _run_hook(command, kubeconfig)
        assert ok.returncode == 0, ok.stdout + ok.stderr

        # Take one permission the operator needs away from the chart's ClusterRole.
        role = get_json(cluster, "clusterrole", "hh-bertserve-operator")
        (status_rule,) = [r for r in role["rules"] if r.get("resources") == ["bertservers/status"]]
        status_rule["verbs"] = [v for v in status_rule["verbs"] if v != "patch"]
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            role["metadata"].pop(key, None)
        cluster.kubectl("replace", "-f", "-", input=json.dumps(role))
        subject = f"system:serviceaccount:{ns}:{account}"
        wait_for(
            lambda: (
                cluster.kubectl(
                    "auth",
                    "can-i",
                    "patch",
                    "bertservers",
                    "--subresource=status",
                    "--as",
                    subject,
                    "-A",
                    check=False,
                ).stdout.strip()
                == "no"
            ),
            30,
            "the API server to apply the reduced ClusterRole",
        )
        failed = _run_hook(command, kubeconfig)
        assert failed.returncode != 0, failed.stdout + failed.stderr
        assert "cannot patch bertservers/status.bertserve.io" in failed.stdout + failed.stderr
    finally:
        cluster.helm("uninstall", "hh", "-n", ns, "--wait", "--timeout", "120s", check=False)
