#!/usr/bin/env bash
# Smoke test of the asv benchmark suite (asv_bench/), for .ci/run.
#
# Runs against the fastim2col installed in the current Python (asv's
# --python=same: no build, no virtualenv, no results recorded). Needs asv in
# that Python: pip install ".[bench]" (or just "asv>=0.6,<0.7").
#
#   1. asv check   discovery and signatures of the FULL suite
#   2. asv run     every benchmark function once (--quick) on a reduced grid
#                  (FASTIM2COL_ASV_SMOKE=1, see asv_bench/benchmarks/common.py)
#
# Exits non-zero when asv check fails, when any benchmark (or parameter
# combination) fails or times out, or when fewer benchmarks ran than asv
# discovered. asv run's own exit code is checked too, but not trusted alone.
#
# Environment: PYTHON (default: python) picks the interpreter.
set -euo pipefail

PYTHON=${PYTHON:-python}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/asv_bench"

log=$(mktemp "${TMPDIR:-/tmp}/asv_ci.XXXXXX")
trap 'rm -f "$log"' EXIT

asv() { "$PYTHON" -m asv "$@"; }

if ! "$PYTHON" -c 'import asv' 2>/dev/null; then
    echo "asv_ci: FAIL: asv is not installed in $("$PYTHON" -c 'import sys; print(sys.executable)')" \
         "(pip install \".[bench]\" or pip install \"asv>=0.6,<0.7\")"
    exit 1
fi

echo "asv_ci: $(asv --version) with $("$PYTHON" -c 'import sys, fastim2col; print(f"fastim2col {fastim2col.__version__} on Python {sys.version.split()[0]}")')"

# asv run refuses to start without a machine description. Use a dedicated
# entry, so that a developer's own ~/.asv-machine.json entries stay untouched.
machine=asv-ci-smoke
asv machine --yes --machine "$machine" >/dev/null

echo "asv_ci: asv check (full suite)"
asv check --python=same

echo "asv_ci: asv run --quick (smoke grid)"
rc=0
FASTIM2COL_ASV_SMOKE=1 asv run --machine "$machine" --python=same --quick --show-stderr \
    --launch-method=forkserver --durations=5 </dev/null 2>&1 | tee "$log" || rc=$?

fail=0
if [[ $rc -ne 0 ]]; then
    echo "asv_ci: FAIL: asv run exited with status $rc"
    fail=1
fi
# Per-benchmark status lines end in "failed" / "N/M failed"; failed parameter
# combinations show "failed" in the result tables; asv reports crashes and
# timeouts as "asv: benchmark failed/timed out"; --show-stderr prints tracebacks.
if grep -nE '\bfailed\b|timed out|Traceback \(most recent call last\)' "$log" >/dev/null; then
    echo "asv_ci: FAIL: benchmark failures:"
    grep -nE '\bfailed\b|timed out|Traceback \(most recent call last\)' "$log" | head -40
    fail=1
fi
total=$(sed -nE 's/.*Running ([0-9]+) total benchmarks.*/\1/p' "$log" | head -1)
ok=$(grep -cE '^\[ *[0-9.]+%\] ··· .* ok$' "$log" || true)
if [[ -z "$total" || "$total" -eq 0 || "$ok" -ne "$total" ]]; then
    echo "asv_ci: FAIL: ${ok} benchmark(s) ok out of ${total:-none} discovered"
    fail=1
fi
if [[ $fail -ne 0 ]]; then
    exit 1
fi
echo "asv_ci: ${ok} passed, 0 failed"
