"""docs/security.md states the ports, user and pod settings the builders render.

Why it exists: a security page that drifts from the manifests is worse than none. The port table
and every pod setting the page promises are checked against what the operator applies for the
seed example.
"""

from __future__ import annotations

import pathlib
import re

import yaml

from bertserve_api import manifests
from bertserve_api.manifests import Owner, RenderOptions, render
from bertserve_api.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "security.md").read_text()
SEED = yaml.safe_load((ROOT / "crds" / "examples" / "mrpc-gpu-pvc.yaml").read_text())
CHILDREN = render(Owner("mrpc", "ml"), parse_spec(SEED["spec"]), RenderOptions(default_image="img"))
POD = CHILDREN.deployment["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]


def test_port_table_matches_the_rendered_ports() -> None:
    rows = re.findall(r"^\| (\d+) \| `([a-z-]+)` \|", PAGE, flags=re.M)
    rendered = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert {name: int(port) for port, name in rows} == rendered
    exposed = {p["name"] for p in CHILDREN.service["spec"]["ports"]}
    assert manifests.PORT_PEER not in exposed  # "never exposed by spec.service"


def test_pod_settings_the_page_promises() -> None:
    security = POD["securityContext"]
    assert f"uid {security['runAsUser']}, gid {security['runAsGroup']}" in PAGE
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert f"`fsGroup: {security['fsGroup']}`" in PAGE
    assert f"`fsGroupChangePolicy: {security['fsGroupChangePolicy']}`" in PAGE
    assert POD["automountServiceAccountToken"] is False and POD["enableServiceLinks"] is False
    container_security = CONTAINER["securityContext"]
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["capabilities"] == {"drop": ["ALL"]}
    assert container_security["allowPrivilegeEscalation"] is False
    model_mount = next(m for m in CONTAINER["volumeMounts"] if m["name"] == "model")
    assert model_mount["readOnly"] is True


def test_copy_job_writes_as_the_server_user() -> None:
    docs = list(yaml.safe_load_all((ROOT / "docs" / "examples" / "model-copy-job.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "Job"]
    security = job["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsUser"] == security["fsGroup"] == POD["securityContext"]["runAsUser"]


def test_defaults_the_page_warns_about() -> None:
    spec = parse_spec(SEED["spec"])
    assert spec.serving.cors == "*" and '`"*"`' in PAGE
    assert spec.serving.enable_termination is False
    assert spec.service.type == "ClusterIP"
