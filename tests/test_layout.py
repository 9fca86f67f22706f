"""Packaging and layering facts that other parts rely on."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_operator_folder_does_not_shadow_the_stdlib_operator_module():
    # Run in a fresh interpreter from the repo root, where a package named "operator" would win.
    code = "import operator, sys; print(operator.__file__); print(operator.itemgetter(1)([0, 7]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    path, value = out.stdout.split()
    assert "site-packages" not in path and "lib/python3" in path
    assert value == "7"
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "server_image" / "__init__.py").exists()


def test_installed_packages_import_from_the_checkout():
    for name in ("bertserve_api", "bertserve_operator", "bertserve_server"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert pathlib.Path(module.__file__).resolve().is_relative_to(ROOT), name


def test_api_core_is_standard_library_only():
    code = (
        "import sys, bertserve_api.contract, bertserve_api.spec, bertserve_api.names\n"
        "heavy = ('yaml', 'kopf', 'kubernetes', 'tensorflow', 'zmq', 'numpy')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
