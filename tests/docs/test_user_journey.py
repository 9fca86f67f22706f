"""What a platform engineer copies from the docs works as written.

Why it exists: each check here is a step that once stopped a first user on a real cluster: a
client example without a timeout (the default waits forever), a heredoc in the install NOTES whose
indented terminator never ended the paste, a CRD upgrade command without ``--force-conflicts``,
chart images that nothing builds, README and guide using different namespaces.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import tomllib

import yaml

from bertserve_api import names
from bertserve_api.spec import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "bertserve-operator"
NOTES = CHART / "templates" / "NOTES.txt"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
APP_NAMESPACE = "ml"
"""The one application namespace of the docs: BertServers, their model claim and its copy Job."""


def _docs() -> list[pathlib.Path]:
    """Every page a user reads: READMEs, docs/, the chart's README and NOTES, benchmark results."""
    pages = [ROOT / "README.md", CHART / "README.md", NOTES, ROOT / "operator" / "README.md"]
    pages += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "benchmarks").rglob("*.md"))
    return [p for p in pages if p.is_file()]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_documented_bert_client_sets_a_timeout() -> None:
    seen = 0
    for page in _docs():
        text = page.read_text()
        for block in _python_blocks(text):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BertClient":
                    seen += 1
                    timeout = {k.arg: k.value for k in node.keywords}.get("timeout")
                    assert isinstance(timeout, ast.Constant), f"{page.name}: BertClient(...) without timeout"
                    assert isinstance(timeout.value, int) and timeout.value > 0, page.name
        # Mentions outside code blocks (prose, NOTES) show the argument too.
        for call in re.findall(r"BertClient\([^)]*\)", re.sub(r"```python\n.*?```", "", text, flags=re.S)):
            seen += 1
            assert "timeout=" in call, f"{page.name}: {call}"
    assert seen >= 2


def _notes_paste_block() -> str:
    """The NOTES lines a user pastes: from the heredoc command to the last kubectl after it."""
    lines = NOTES.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "<<'YAML'" in line)
    end = start
    while end + 1 < len(lines) and lines[end + 1].strip():
        end += 1
    return "\n".join(lines[start : end + 1]) + "\n"


def test_notes_heredoc_ends_and_applies_a_valid_bertserver(tmp_path: pathlib.Path) -> None:
    block = _notes_paste_block()
    assert "{{" not in block  # the pasted lines are the same after helm renders NOTES
    # kubectl stands in as a shell function: it records each call and what it read on stdin.
    script = (
        'kubectl() { echo "kubectl $*" >>calls; if [ "$*" != "${*%-f -}" ]; then cat >applied.yaml; fi; }\n'
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script + block], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"kubectl -n {APP_NAMESPACE} apply -f -"
    assert any(c.startswith(f"kubectl -n {APP_NAMESPACE} wait") for c in calls[1:]), calls
    doc = yaml.safe_load((tmp_path / "applied.yaml").read_text())
    assert doc["apiVersion"] == names.API_VERSION and doc["kind"] == names.KIND
    parse_spec(doc["spec"])


def test_one_crd_upgrade_command_everywhere() -> None:
    commands = []
    for page in _docs():
        for line in page.read_text().splitlines():
            if "kubectl apply" in line and "crds" in line and "examples" not in line:
                commands.append((page.name, line.strip()))
    assert len(commands) >= 3, commands  # user guide, chart README, NOTES
    for page, line in commands:
        assert "--server-side --force-conflicts" in line, f"{page}: {line}"


def test_chart_defaults_are_the_images_make_images_builds() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    build = (ROOT / "hack" / "images" / "build.sh").read_text()
    tagged = dict(re.findall(r'^\s+([-a-z*]+)\) echo "(localhost/[^"]+)" ;;$', build, re.MULTILINE))
    assert tagged == {
        "server-cpu": "localhost/bertserve-server:$VERSION-cpu",
        "*": "localhost/bertserve-$1:$VERSION",
    }
    assert values["serverImage"] == names.DEFAULT_SERVER_IMAGE == f"localhost/bertserve-server:{VERSION}"
    assert (
        values["serverCpuImage"]
        == names.DEFAULT_SERVER_CPU_IMAGE
        == f"localhost/bertserve-server:{VERSION}-cpu"
    )
    assert values["image"]["repository"] == names.OPERATOR_IMAGE_REPOSITORY == "localhost/bertserve-operator"
    from bertserve_operator.settings import Settings

    assert Settings().default_image == names.DEFAULT_SERVER_IMAGE
    assert Settings().default_cpu_image == names.DEFAULT_SERVER_CPU_IMAGE


def test_one_namespace_story() -> None:
    """Client hostnames and namespaced kubectl commands in the README and guide agree on one namespace."""
    for page in (ROOT / "README.md", ROOT / "docs" / "user-guide.md", NOTES):
        text = page.read_text()
        for host_ns in re.findall(r"\bmrpc\.([a-z0-9-]+)\.svc\b", text):
            assert host_ns == APP_NAMESPACE, f"{page.name}: mrpc.{host_ns}.svc"
        for line in text.splitlines():
            if re.search(r"kubectl (apply|wait|get|describe|scale)\b", line) and (
                "crds/examples" in line or "model-copy-job" in line or "bertserver/" in line
            ):
                assert f"-n {APP_NAMESPACE}" in line, f"{page.name}: {line.strip()}"


def test_render_defaults_to_the_operators_image() -> None:
    from bertserve_cli.main import build_parser

    args = build_parser().parse_args(["render", "-f", os.devnull])
    assert args.image == names.DEFAULT_SERVER_IMAGE
    assert args.cpu_image == names.DEFAULT_SERVER_CPU_IMAGE
