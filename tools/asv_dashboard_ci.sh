#!/usr/bin/env bash
# CI check of the asv dashboard that tools/asv_publish.sh makes: record a few
# smoke-grid results of the installed fastim2col (asv --python=same) into a
# throwaway results folder, publish them with tools/asv_publish.sh, and open
# the dashboard offline in headless Chromium (tools/check_docs_site.py --asv):
# the benchmark grid and one benchmark's graph must render.
#
# Nothing lands in asv_bench/results or asv_bench/html: the smoke numbers are
# not measurements (asv_bench/benchmarks/common.py), so a temporary copy of
# asv.conf.json points results_dir and html_dir elsewhere.
# Environment: PYTHON (default python), SHOTS (screenshot folder, default a
# temporary one).
set -euo pipefail

PYTHON=${PYTHON:-python}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/asv_dashboard.XXXXXX")
trap 'rm -rf "$work"' EXIT
shots=${SHOTS:-$work/screenshots}

"$PYTHON" - "$root" "$work" <<'EOF'
import json, os, sys
from asv.util import load_json
root, work = sys.argv[1:]
conf = load_json(os.path.join(root, "asv_bench", "asv.conf.json"), js_comments=True)
conf.update(repo=root, benchmark_dir=os.path.join(root, "asv_bench", "benchmarks"),
            env_dir=os.path.join(work, "env"), results_dir=os.path.join(work, "results"),
            html_dir=os.path.join(work, "html"))
with open(os.path.join(work, "asv.conf.json"), "w") as f:
    json.dump(conf, f, indent=1)
EOF
conf=$work/asv.conf.json
asv() { (cd "$work" && "$PYTHON" -m asv --config "$conf" "$@"); }

machine=asv-ci-smoke
asv machine --yes --machine "$machine" >/dev/null
# asv publish shows only commits on the configured branch (main); CI runs on
# main, a feature branch borrows main's tip for this smoke check
commit=$(git -C "$root" rev-parse --verify -q main || git -C "$root" rev-parse HEAD)
echo "asv_dashboard_ci: smoke results of two benchmarks as commit ${commit:0:8}"
FASTIM2COL_ASV_SMOKE=1 asv run --machine "$machine" --python=same --quick \
    --set-commit-hash="$commit" --launch-method=forkserver \
    --bench 'bench_conv2d.Conv2d.time' --bench 'bench_conv2d.Conv2dGFlops.track' \
    </dev/null >"$work/run.log" 2>&1 || { cat "$work/run.log"; exit 1; }
ls "$work/results/$machine"/*.json >/dev/null 2>&1 \
    || { cat "$work/run.log"; echo "asv_dashboard_ci: no results recorded"; exit 1; }

ASV_CONFIG=$conf PYTHON=$PYTHON "$root/tools/asv_publish.sh"
"$PYTHON" "$root/tools/check_docs_site.py" "$work/html" --asv --screenshots "$shots"
