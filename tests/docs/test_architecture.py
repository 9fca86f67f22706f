"""The pictures in docs/architecture.md show the names and ports the builders render.

Why it exists: a diagram is the first thing to go stale when a port or a child changes. Every
``<port name> <number>`` pair and every object name the pictures show is checked against the
objects the operator renders for the seed example, and the drain timeline's numbers against
:func:`bertserve_api.manifests.drain_budget`.
"""

from __future__ import annotations

import pathlib
import re

import yaml

from bertserve_api import manifests
from bertserve_api.contract import parse_argv
from bertserve_api.manifests import Owner, RenderOptions, render
from bertserve_api.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text()
SEED = yaml.safe_load((ROOT / "crds" / "examples" / "mrpc-gpu-pvc.yaml").read_text())
OWNER = Owner(SEED["metadata"]["name"], "ml", "uid")
SPEC = parse_spec(SEED["spec"])
CHILDREN = render(OWNER, SPEC, RenderOptions(default_image="img"))


def _rendered_ports() -> dict[str, int]:
    """Port name → number, from the container, the Service and the peer Service (all must agree)."""
    ports: dict[str, int] = {}
    (container,) = CHILDREN.deployment["spec"]["template"]["spec"]["containers"]
    sources = [
        [(p["name"], p["containerPort"]) for p in container["ports"]],
        [(p["name"], p["port"]) for p in CHILDREN.service["spec"]["ports"]],
        [(p["name"], p["port"]) for p in CHILDREN.peer_service["spec"]["ports"]],
    ]
    for pairs in sources:
        for name, number in pairs:
            assert ports.setdefault(name, number) == number, name
    return ports


def _blocks(kind: str) -> list[str]:
    """Fenced blocks whose info string is ``kind`` ("" for plain text), in page order."""
    blocks: list[str] = []
    current: list[str] | None = None
    info = ""
    for line in PAGE.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == kind:
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_every_port_shown_is_the_rendered_port() -> None:
    ports = _rendered_ports()
    shown = re.findall(r"\b(zmq-out|zmq|http|peer) (\d+)\b", "\n".join(_blocks("mermaid") + _blocks("")))
    assert shown, "no ports in the pictures"
    for name, number in shown:
        assert int(number) == ports[name], f"picture shows {name} {number}, builders render {ports[name]}"
    assert {name for name, _ in shown} == set(ports), "every rendered port appears in a picture"


def test_the_children_shown_are_the_rendered_children() -> None:
    (objects,) = _blocks("mermaid")[:1]
    shown = set(
        re.findall(
            r"\b(Deployment|Service|HorizontalPodAutoscaler|PodDisruptionBudget|NetworkPolicy) ([a-z0-9-]+)",
            objects,
        )
    )
    raw = {
        **SEED["spec"],
        "resources": {**SEED["spec"]["resources"], "cpu": "2"},  # the HPA measures CPU utilisation
        "autoscaling": {"enabled": True},
        "disruptionBudget": {"enabled": True},
    }
    everything = render(OWNER, parse_spec(raw), RenderOptions(default_image="img")).all()
    rendered = {(o["kind"], o["metadata"]["name"]) for o in everything}
    assert shown == rendered
    (container,) = CHILDREN.deployment["spec"]["template"]["spec"]["containers"]
    assert f"container {container['name']}: {container['command'][0]}" in objects
    assert f"init container {manifests.FETCH_CONTAINER}" in objects
    assert f"uid {manifests.RUN_AS_USER}" in objects
    assert f"PersistentVolumeClaim {SEED['spec']['model']['source']['pvc']['claimName']}" in objects
    assert f'"{manifests.MODEL_MOUNT}, read-only"' in objects
    assert CHILDREN.peer_service["spec"]["clusterIP"] == "None" and "headless" in objects
    assert CHILDREN.service["spec"]["type"] == "ClusterIP" and "Service mrpc (ClusterIP" in objects


def test_sequence_diagram_names_the_rendered_services() -> None:
    (_, sequence) = _blocks("mermaid")
    assert f"Service {manifests.service_name(OWNER.name)}" in sequence
    assert f"over {manifests.peer_service_name(OWNER.name)}" in sequence


def test_drain_timeline_numbers_are_the_rendered_budget() -> None:
    (timeline,) = _blocks("")
    grace = SPEC.termination_grace_period_seconds
    sleep, drain = manifests.drain_budget(grace)
    pod = CHILDREN.deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] == grace
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == sleep
    assert parse_argv(container["args"]).drain_timeout == drain
    assert f"sleep {sleep} s" in timeline
    assert re.search(rf"^t = {sleep} s +SIGTERM", timeline, flags=re.M)
    assert f"-drain_timeout {drain:g} s" in timeline
    assert f"t <= {sleep + drain:g} s" in timeline
    assert re.search(rf"^t = {grace} s +terminationGracePeriodSeconds", timeline, flags=re.M)
    prose = f"`spec.terminationGracePeriodSeconds: {grace}`"
    assert prose in PAGE and f"sleep\nof {sleep} s and `-drain_timeout={drain:g}`" in PAGE
