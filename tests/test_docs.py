"""Documentation that is generated must be current."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

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


def _troubleshooting_section() -> str:
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    start = guide.index("## 9. Troubleshooting")
    return guide[start : guide.index("\n## ", start + 1)]


def _condition_reasons() -> set[str]:
    """Every condition reason the operator can set: status.py's reason constants and bad waiting reasons."""
    from bertserve_api import status

    reasons = {
        value
        for name, value in vars(status).items()
        if name.isupper() and isinstance(value, str) and value[:1].isupper() and value.isalpha()
    }
    reasons -= {status.READY, status.PROGRESSING, status.DEGRADED}  # condition types, not reasons
    return reasons | set(status.BAD_WAITING_REASONS)


def test_troubleshooting_lists_every_condition_reason_the_operator_sets():
    reasons = _condition_reasons()
    section = _troubleshooting_section()
    missing = sorted(r for r in reasons if f"`{r}`" not in section)
    assert not missing, f"reasons without a row in the user guide's troubleshooting: {missing}"


def test_every_troubleshooting_reason_is_produced_by_an_end_to_end_test():
    """Each reason of the table is asserted by a test against the real API server (kwok or the
    real node), not only by the summary's unit tests, which once passed while the operator's pod
    cache dropped what Evicted needs. ``Creating`` is the exception: it lasts only from the first
    apply until the Deployment reaches the cache (tests/api/test_status.py produces it)."""
    from bertserve_api import status

    reasons = _condition_reasons() - {status.CREATING}
    sources = "".join(
        path.read_text() for folder in ("k8s", "realnode") for path in (ROOT / "tests" / folder).glob("*.py")
    )
    missing = sorted(r for r in reasons if f'"{r}"' not in sources)
    assert not missing, f"reasons no end-to-end test produces: {missing}"


def _documented_cli_commands() -> list[list[str]]:
    """``bertserve validate|render`` commands in the README and the user guide, as written."""
    import re
    import shlex

    commands = []
    for page in (ROOT / "README.md", ROOT / "docs" / "user-guide.md"):
        text = page.read_text()
        inline = re.findall(r"`(bertserve (?:validate|render) [^`]+)`", text)
        in_blocks = re.findall(r"(?m)^(bertserve (?:validate|render) [^#\n]+)", text)
        commands += [shlex.split(command) for command in inline + in_blocks]
    return commands


def test_documented_cli_commands_run_here():
    """Every documented validate/render of a file in this repository runs and succeeds."""
    ran = 0
    for argv in _documented_cli_commands():
        path = argv[argv.index("-f") + 1]
        if not (ROOT / path).is_file():
            continue  # a placeholder such as my-bertserver.yaml
        result = subprocess.run(
            [sys.executable, "-m", "bertserve_cli", *argv[1:]], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stderr}"
        if argv[1] == "render" and "--image" in argv:
            assert f"image: {argv[argv.index('--image') + 1]}" in result.stdout
        ran += 1
    assert ran >= 3


def _documented_helm_installs() -> list[list[str]]:
    """``helm install`` commands in the READMEs and the user guide (continuation lines joined)."""
    import re
    import shlex

    commands = []
    for page in (
        ROOT / "README.md",
        ROOT / "docs" / "user-guide.md",
        ROOT / "helm" / "bertserve-operator" / "README.md",
    ):
        text = page.read_text().replace("\\\n", " ")
        for line in re.findall(r"(?m)^helm install .+$", text):
            commands.append(shlex.split(line.split("#")[0]))
    return commands


@pytest.mark.helm
def test_documented_helm_install_commands_render(tmp_path):
    """Each documented install, as `helm template` with the same flags, plus the guide's options."""
    from operator_harness import localcluster

    binary = pathlib.Path(localcluster().build_binaries(quiet=True)) / "helm"
    env = {
        "PATH": "/usr/bin:/bin",
        **{f"HELM_{k}_HOME": str(tmp_path / k.lower()) for k in ("CACHE", "CONFIG", "DATA")},
    }
    options = [
        [],
        ["--set", "imagePullSecrets[0].name=regcred"],  # "Private registry"
        [
            "--set",
            "rbac.clusterWide=false",
            "--set",
            "watchNamespaces={ml,search}",
        ],  # "Confined to namespaces"
    ]
    commands = _documented_helm_installs()
    assert len(commands) >= 3
    for argv in commands:
        assert argv[:2] == ["helm", "install"]
        for extra in options:
            args = [str(binary), "template", *argv[2:], *extra]
            result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
            assert result.returncode == 0, f"{' '.join(argv + extra)}:\n{result.stderr}"
            assert "registry.example.com/bertserve-operator:" in result.stdout
