"""``pip install .`` into a fresh virtual environment gives a working ``bertserve`` CLI.

Why it exists: the distribution once declared no dependencies, so the README's CLI died with
``ModuleNotFoundError: No module named 'yaml'`` anywhere but in the project's own venv. Here the
project is built as a wheel from a copy of the checkout, then installed with ``--no-index`` from a
folder holding only that wheel and the pinned wheels of what it declares: a dependency the CLI
needs but the metadata leaves out makes the run below fail, exactly as it did for users.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

from bertserve_api import names

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = ROOT / "crds" / "examples" / "mrpc-gpu-pvc.yaml"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CACHE = pathlib.Path(os.environ.get("BERTSERVE_CACHE", pathlib.Path.home() / ".cache" / "bertserve"))

pytestmark = pytest.mark.slow


def _run(*args: str | pathlib.Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def _wheelhouse_with_declared_dependencies() -> pathlib.Path:
    """The pinned wheels of ``project.dependencies``, downloaded once into the cache."""
    pins = "-".join(sorted(PROJECT["dependencies"])).replace("=", "").replace(" ", "")
    house = CACHE / f"wheelhouse-{pins}"
    if PROJECT["dependencies"] and not (house / ".complete").exists():
        house.mkdir(parents=True, exist_ok=True)
        _run(
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--constraint", ROOT / "constraints.txt", "--dest", house, *PROJECT["dependencies"],
        )  # fmt: skip
        (house / ".complete").touch()
    return house


@pytest.fixture(scope="module")
def fresh_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, str]]:
    work = tmp_path_factory.mktemp("install")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("api", "operator", "server_image", "cli"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    wheels = work / "wheels"
    # The project's pinned build backend is in the test environment: build without fetching it.
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        wheels,
        source,
    )
    for wheel in _wheelhouse_with_declared_dependencies().glob("*.whl"):
        shutil.copy2(wheel, wheels)
    venv = work / "venv"
    # No pip inside (ensurepip alone takes longer than the rest): the test environment's pip
    # installs into it with --python, which is what `pip install .` inside it would do.
    _run(sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    _run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
        "--no-index", "--find-links", wheels, "bertserve", env=env,
    )  # fmt: skip
    return venv, env


def test_pip_install_gives_a_working_validate(fresh_cli) -> None:
    venv, env = fresh_cli
    out = _run(venv / "bin" / "bertserve", "validate", "-f", SEED, env=env)
    assert out.stdout.strip() == "mrpc: valid"


def test_render_shows_the_operators_default_image(fresh_cli) -> None:
    venv, env = fresh_cli
    out = _run(venv / "bin" / "bertserve", "render", "-f", SEED, env=env)
    assert f"image: {names.DEFAULT_SERVER_IMAGE}" in out.stdout


def test_the_cli_install_carries_no_server_or_operator_stack(fresh_cli) -> None:
    venv, env = fresh_cli
    listed = _run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "list", "--format=freeze", env=env
    ).stdout.lower()
    installed = {line.split("==")[0] for line in listed.split()}
    assert {"bertserve", "pyyaml"} <= installed
    assert not installed & {"tensorflow", "kopf", "kubernetes", "pyzmq", "numpy"}
    # The heavy subcommand says which extra it needs instead of a traceback.
    result = subprocess.run(
        [venv / "bin" / "bertserve", "convert-checkpoint", "--help"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1 and "pip install 'bertserve[server]'" in result.stderr
