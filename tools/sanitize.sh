#!/usr/bin/env bash
# Build fastim2col's compiled kernels with AddressSanitizer and
# UndefinedBehaviorSanitizer, then run the test suite against that build.
#
#   tools/sanitize.sh                     # tests/ minus leak and timing tests
#   tools/sanitize.sh tests/test_hardening_views.py -k property   # any pytest args
#
# Environment:
#   PYTHON        interpreter whose environment has numpy, scipy, threadpoolctl,
#                 pytest, hypothesis, meson, meson-python, Cython and ninja
#                 (default: python3). Nothing is installed into it.
#   SANITIZE_DIR  scratch directory (default: /tmp/fastim2col-sanitize); the
#                 build there is reused (incremental) on the next run.
#   CC            C compiler (default: cc); its libasan is preloaded.
#
# How: `meson setup -Db_sanitize=address,undefined -Db_lundef=false` builds
# the extension modules (debugoptimized, frame pointers kept) and
# installs them with the Python sources into $SANITIZE_DIR/site. A throwaway
# venv sees $PYTHON's packages through a .pth file -- which does not run the
# .pth hooks in there, so an editable install of fastim2col in $PYTHON's
# environment stays out of the way -- and PYTHONPATH puts the sanitized
# package first. Python itself is not instrumented, so libasan is
# LD_PRELOADed; leak detection is off (CPython keeps memory until exit by
# design); UBSan stops at the first report (UBSAN_OPTIONS=halt_on_error=0
# collects them all). The leak tests (RSS under ASan's quarantine means
# nothing) and the denormal timing test are deselected by default.
#
# Exit status: 0 clean; 1 test failures (or a sanitizer abort); 2 setup
# problem; 3 tests passed but the sanitizers reported something.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${SANITIZE_DIR:-/tmp/fastim2col-sanitize}
CC=${CC:-cc}
export CC
start=$SECONDS

PYTHON=$(command -v "$PYTHON")
# meson, ninja and cython as installed next to $PYTHON come first on PATH
export PATH="$(dirname "$PYTHON"):$PATH"
"$PYTHON" -c 'import mesonbuild, numpy, scipy, threadpoolctl, pytest, hypothesis' || {
    echo "sanitize.sh: $PYTHON lacks meson / numpy / scipy / threadpoolctl / pytest / hypothesis" >&2
    exit 2
}
libasan=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "sanitize.sh: $CC has no libasan.so (install the compiler's ASan runtime)" >&2
    exit 2
fi

mkdir -p "$WORK"
site="$WORK/site"
setup_args=(
    -Db_sanitize=address,undefined -Db_lundef=false
    -Dbuildtype=debugoptimized -Dc_args=-fno-omit-frame-pointer
    "-Dpython.purelibdir=$site" "-Dpython.platlibdir=$site"
)
echo "== configure + build ($WORK/build)"
if [ -f "$WORK/build/build.ninja" ]; then
    "$PYTHON" -m mesonbuild.mesonmain setup --reconfigure "$WORK/build" "$ROOT" "${setup_args[@]}" >/dev/null
else
    "$PYTHON" -m mesonbuild.mesonmain setup "$WORK/build" "$ROOT" "${setup_args[@]}" >/dev/null
fi
"$PYTHON" -m mesonbuild.mesonmain compile -C "$WORK/build" > "$WORK/build.log" 2>&1 || {
    tail -n 60 "$WORK/build.log" >&2
    echo "sanitize.sh: build failed, full log in $WORK/build.log" >&2
    exit 2
}
rm -rf "$site"
"$PYTHON" -m mesonbuild.mesonmain install -C "$WORK/build" --quiet
build_s=$((SECONDS - start))

# A venv that sees $PYTHON's packages but runs none of their .pth hooks.
if [ ! -x "$WORK/venv/bin/python" ]; then
    "$PYTHON" -m venv --without-pip "$WORK/venv"
fi
venv_site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PYTHON" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' \
    | sort -u > "$venv_site/_fastim2col_sanitize_deps.pth"

export PYTHONPATH="$site"
export LD_PRELOAD="$libasan"
# ASan reports go to $WORK/logs/asan.PID (child processes too), UBSan's to
# stderr (kept in $WORK/pytest.log); both are summarized at the end. Options
# given in the environment come last and win, e.g. UBSAN_OPTIONS=halt_on_error=0
# to collect every UB report instead of stopping at the first.
logs="$WORK/logs"
rm -rf "$logs"
mkdir -p "$logs"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:log_path=$logs/asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export FASTIM2COL_WATCHDOG_S=${FASTIM2COL_WATCHDOG_S:-1800}
export PYTHONFAULTHANDLER=1
cd "$ROOT"
"$WORK/venv/bin/python" -P -c '
import fastim2col, sys
flags = fastim2col.show_config("dicts")["build"]["build_flags"]
print("== testing", fastim2col.__file__, "sanitize:", flags["sanitize"])
sys.exit(0 if "address" in flags["sanitize"] else "not the sanitized build")'

if [ $# -eq 0 ]; then
    set -- tests -k "not leak and not denormal"
fi
echo "== pytest $*"
set +e
"$WORK/venv/bin/python" -P -m pytest -p no:cacheprovider --capture=sys "$@" 2>&1 \
    | tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
set -e

ub=$(grep -ao "src/[^ ]*: runtime error: .*" "$WORK/pytest.log" \
     | sed -E 's/0x[0-9a-f]+/ADDR/g' | sort -u || true)
asan=$(grep -l "ERROR: AddressSanitizer\|runtime error" "$logs"/* 2>/dev/null | sort || true)
if [ -n "$ub" ] || [ -n "$asan" ]; then
    echo "== sanitizer reports"
    if [ -n "$ub" ]; then
        echo "-- UndefinedBehaviorSanitizer, distinct sites (stacks in $WORK/pytest.log):"
        # annotate each generated-C line with the .pyx/.pxd line it came from
        echo "$ub" | "$PYTHON" -c '
import re, sys
build = sys.argv[1]
for line in sys.stdin:
    m = re.match(r"(src/\S+?\.c):(\d+)", line)
    origin = ""
    if m:
        try:
            with open(f"{build}/{m.group(1)}", errors="replace") as f:
                c_lines = f.readlines()[:int(m.group(2))]
            for text in reversed(c_lines):
                k = re.search(r"/\* \"(\S+\.(?:pyx|pxd|pxi))\":(\d+)", text)
                if k:
                    origin = f"  [{k.group(1)}:{k.group(2)}]"
                    break
        except OSError:
            pass
    print(line.rstrip() + origin)' "$WORK/build"
    fi
    for f in $asan; do
        echo "-- $f"
        grep -v "failed to allocate" "$f" | head -n 40
    done
    [ "$status" -eq 0 ] && status=3
fi
echo "== sanitize.sh: build ${build_s}s, total $((SECONDS - start))s, exit status $status" \
     "(0: clean; 3: tests passed but sanitizer reports)"
exit "$status"
