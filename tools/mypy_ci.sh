#!/usr/bin/env bash
# Type-check the fastim2col package with mypy, configured by [tool.mypy] in
# pyproject.toml (files = fastim2col; the compiled modules are typed by the
# fastim2col/*.pyi stubs). Runs in a throwaway venv with only mypy and NumPy
# (NumPy ships its own type information; SciPy/threadpoolctl are untyped and
# ignored). Usage: tools/mypy_ci.sh [PYTHON]. Exits non-zero on any error.
set -euo pipefail
PYTHON=${1:-${PYTHON:-python3}}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/fastim2col-mypy.XXXXXX")
trap 'rm -rf "$W"' EXIT
"$PYTHON" -m venv "$W/venv"
"$W/venv/bin/python" -m pip install -q --disable-pip-version-check "mypy>=1.11" "numpy>=2"
cd "$REPO"
"$W/venv/bin/python" -m mypy --version
"$W/venv/bin/python" -m mypy --cache-dir "$W/mypy_cache"
