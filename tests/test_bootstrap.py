"""Every checkout has its own environment (hack/bootstrap.sh).

The dependencies come from one cached environment per dependency pin set, but the project's own
packages and console scripts must resolve to the checkout that runs them: deleting one checkout
must leave every other one working.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _copy_checkout(dest: Path) -> Path:
    """The working tree as a fresh clone would have it (tracked and untracked, not ignored files)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, listed):
        src = ROOT / os.fsdecode(rel)
        if src.is_file():
            (dest / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(rel))
    return dest


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH or active venv leaking the test runner's checkout into the clones."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    pyenv = shutil.which("python3.11")
    if pyenv:
        env["PATH"] = f"{Path(pyenv).parent}:{env['PATH']}"
    return env


def _bootstrap(checkout: Path, env: dict[str, str]) -> None:
    out = subprocess.run(
        ["bash", "hack/bootstrap.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=1800
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_deleting_one_checkout_leaves_another_working(tmp_path: Path) -> None:
    env = _clean_env()
    first = _copy_checkout(tmp_path / "first")
    second = _copy_checkout(tmp_path / "second")
    _bootstrap(first, env)
    _bootstrap(second, env)
    # The second bootstrap ran last: before, it owned the shared editable install.
    shutil.rmtree(second)

    assert not (first / ".venv").is_symlink(), ".venv must be this checkout's own environment"
    cli = subprocess.run(
        [str(first / ".venv/bin/bertserve"), "validate", "-f", "crds/examples/mrpc-gpu-pvc.yaml"],
        cwd=first,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    where = subprocess.run(
        [
            str(first / ".venv/bin/python"),
            "-c",
            "import bertserve_api, bertserve_cli, bertserve_operator, bertserve_server\n"
            "for m in (bertserve_api, bertserve_cli, bertserve_operator, bertserve_server): print(m.__file__)",
        ],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert len(where) == 4
    for path in where:
        assert Path(path).is_relative_to(first), f"{path} is not from the checkout that imports it"
    # Dependencies' console scripts run this checkout's interpreter too.
    assert (first / ".venv/bin/pytest").read_text().splitlines()[0] == f"#!{first}/.venv/bin/python"


def test_bootstrap_replaces_an_old_symlinked_venv_without_touching_its_target(tmp_path: Path) -> None:
    env = _clean_env()
    checkout = _copy_checkout(tmp_path / "checkout")
    target = tmp_path / "shared-venv"
    target.mkdir()
    (target / "marker").write_text("kept")
    (checkout / ".venv").symlink_to(target)
    _bootstrap(checkout, env)
    assert (target / "marker").read_text() == "kept"
    assert (checkout / ".venv").is_dir() and not (checkout / ".venv").is_symlink()
