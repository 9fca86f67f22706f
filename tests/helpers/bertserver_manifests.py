"""One BertServer manifest factory for the tests and the benchmarks.

Why it exists: the end-to-end tests and ``benchmarks/bench_operator.py`` each built the same
``apiVersion``/``kind``/``metadata``/``spec`` dictionary by hand; one factory keeps them all on
the CRD's current group and version (``bertserve_api.names``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from bertserve_api import names

KWOK_MODEL: dict[str, Any] = {
    "source": {"hostPath": {"path": "/data/bert"}},
    "pretrainedPath": "uncased_L-12_H-768_A-12",
    "tunedModelDir": "mrpc_output",
    "ckptName": "model.ckpt-343",
}
"""A model on a node directory: enough for kwok nodes, which never read it."""


def bertserver(name: str, spec: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """A BertServer object named ``name`` with ``spec`` (and ``namespace`` when given)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": metadata, "spec": dict(spec)}


def bertserver_yaml(name: str, spec: Mapping[str, Any], namespace: str | None = None) -> str:
    """:func:`bertserver` as YAML, for ``kubectl apply -f -``."""
    return yaml.safe_dump(bertserver(name, spec, namespace))
