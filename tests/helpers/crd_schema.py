"""Helpers to read the CRD's openAPIV3Schema in tests: structural defaulting and jsonschema.

Kept beside the tests because production code never needs it: the API server does this for
real (and tests/k8s checks it there).
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "bertservers.bertserve.io.yaml"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def version_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    crd = crd or load_crd()
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: fill absent properties that have a
    ``default``, recursing into objects (present or just defaulted) and array items."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for key, prop in schema["properties"].items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value and value[key] is not None:
                value[key] = apply_defaults(value[key], prop)
    if isinstance(value, list) and "items" in schema:
        value = [apply_defaults(v, schema["items"]) for v in value]
    return value


def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """Translate the OpenAPI v3 dialect (nullable, int-or-string, x-kubernetes-*) to JSON Schema."""
    out: dict[str, Any] = {}
    for key, val in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format", "default", "description"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in val.items()}
        elif key in ("items", "additionalProperties") and isinstance(val, dict):
            out[key] = to_jsonschema(val)
        else:
            out[key] = val
    if schema.get("x-kubernetes-int-or-string"):
        pattern = out.pop("pattern", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string", **({"pattern": pattern} if pattern else {})}]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True  # the API server refuses duplicates in a set-typed list
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path in the schema (``model.source.pvc.claimName``), not descending into
    preserve-unknown objects."""
    paths: set[str] = set()
    for key, prop in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        if prop.get("type") == "object" and not prop.get("x-kubernetes-preserve-unknown-fields"):
            paths |= schema_paths(prop, path)
        if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            paths |= schema_paths(prop["items"], path + "[]")
    return paths
