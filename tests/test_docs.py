"""Documentation that is generated must be current."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_field_reference_in_user_guide_matches_the_crd():
    result = subprocess.run(
        [sys.executable, "hack/gen_field_reference.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_field_reference_lists_every_top_level_spec_field():
    import yaml

    crd = yaml.safe_load((ROOT / "crds" / "bertservers.bertserve.io.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    for key in spec["properties"]:
        assert f"| `spec.{key}` |" in guide, key
