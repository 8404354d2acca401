#!/usr/bin/env bash
# Check the source distribution: build it, compare it with the committed files,
# build a wheel from the sdist alone in a clean temporary directory (no git, no
# repository next to it), then repair and test that wheel in a fresh venv with
# tools/test_wheel.sh, using the tests shipped in the sdist. Linux only.
#
# meson-python makes the sdist with `meson dist`, i.e. a `git archive` of HEAD:
# only COMMITTED files are in it. Uncommitted changes are reported and left out.
#
# Usage:
#   tools/check_sdist.sh [PYTHON]          # or: PYTHON=python3.12 tools/check_sdist.sh
# Environment: PYTHON, KEEP=1, OUT_DIR (sdist and repaired wheel are copied
# there; default <repo>/wheelhouse), SKIP_WHEEL_TESTS=1 (stop after building
# the wheel), and everything tools/test_wheel.sh reads (PYTEST_ARGS, ...).
# Exits non-zero on any failure.
set -euo pipefail

PYTHON=${1:-${PYTHON:-python3}}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$REPO/wheelhouse}
W=$(mktemp -d "${TMPDIR:-/tmp}/fastim2col-sdist.XXXXXX")
cleanup() { if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$W"; fi; }
trap cleanup EXIT
START=$SECONDS
step() { printf '\n=== [%4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { echo "check_sdist.sh: ERROR: $*" >&2; exit 1; }

"$PYTHON" -c 'import sys' 2>/dev/null || die "cannot run the interpreter '$PYTHON'"
git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || die "$REPO is not a git checkout"
echo "work: $W"

step "working tree vs HEAD (only HEAD goes into the sdist)"
dirty=$(git -C "$REPO" status --porcelain --untracked-files=normal)
if [[ -n "$dirty" ]]; then
    echo "WARNING: these changes are NOT in the sdist (commit them first):"
    echo "$dirty" | sed 's/^/    /'
else
    echo "clean"
fi

step "tools venv: build, twine"
"$PYTHON" -m venv "$W/tools"
TOOLS="$W/tools/bin"
"$TOOLS/python" -m pip install -q --disable-pip-version-check build twine

step "python -m build --sdist"
"$TOOLS/python" -m build --sdist --outdir "$W/sdist" "$REPO"
shopt -s nullglob
sdists=("$W"/sdist/fastim2col-*.tar.gz)
shopt -u nullglob
(( ${#sdists[@]} == 1 )) || die "expected one sdist, found ${#sdists[@]}"
sdist=${sdists[0]}
ls -l "$sdist"

step "sdist contents vs git ls-tree HEAD"
git -C "$REPO" ls-tree -r --name-only HEAD | sort > "$W/tracked.txt"
tar tzf "$sdist" | grep -v '/$' | cut -d/ -f2- | sort > "$W/in-sdist.txt"
sed 's/^/    /' "$W/in-sdist.txt"
missing=$(comm -23 "$W/tracked.txt" "$W/in-sdist.txt")
extra=$(comm -13 "$W/tracked.txt" "$W/in-sdist.txt" | grep -vx 'PKG-INFO' || true)
[[ -z "$missing" ]] || die "committed files missing from the sdist:"$'\n'"$missing"
[[ -z "$extra" ]] || echo "in the sdist but not tracked: $extra"
for f in PKG-INFO LICENSE README.md pyproject.toml meson.build src/meson.build \
         fastim2col/meson.build fastim2col/py.typed tools/version.py; do
    grep -qx "$f" "$W/in-sdist.txt" || die "the sdist lacks $f"
done
version=$("$PYTHON" "$REPO/tools/version.py")
pkg_version=$(tar xzf "$sdist" -O --wildcards '*/PKG-INFO' | sed -n 's/^Version: //p' | head -1)
[[ "$pkg_version" == "$version" ]] \
    || die "PKG-INFO says $pkg_version, fastim2col/_version.py says $version"
[[ $(basename "$sdist") == "fastim2col-$version.tar.gz" ]] || die "unexpected sdist name"
echo "version $version: PKG-INFO and file name agree with fastim2col/_version.py"

step "build a wheel from the sdist alone, in a clean directory"
mkdir -p "$W/src"
tar xzf "$sdist" -C "$W/src"
SRC="$W/src/fastim2col-$version"
[[ -d "$SRC" && ! -e "$SRC/.git" ]] || die "unexpected sdist layout"
(cd "$W" && "$TOOLS/python" -m build --wheel --outdir "$W/wheel" "$SRC")
shopt -s nullglob
wheels=("$W"/wheel/fastim2col-*.whl)
shopt -u nullglob
(( ${#wheels[@]} == 1 )) || die "expected one wheel, found ${#wheels[@]}"

step "twine check (metadata renders on PyPI)"
"$TOOLS/twine" check --strict "$sdist" "${wheels[0]}"
mkdir -p "$OUT_DIR"
cp "$sdist" "$OUT_DIR/"

if [[ "${SKIP_WHEEL_TESTS:-0}" == 1 ]]; then
    step "done (SKIP_WHEEL_TESTS=1): $(basename "$sdist") builds $(basename "${wheels[0]}")"
    exit 0
fi
step "repair and test the wheel built from the sdist (tools/test_wheel.sh)"
WHEEL="${wheels[0]}" TEST_ROOT="$SRC" OUT_DIR="$OUT_DIR" KEEP="${KEEP:-0}" \
    "$REPO/tools/test_wheel.sh" "$PYTHON"
step "done: sdist and wheel OK in $((SECONDS - START)) s"
