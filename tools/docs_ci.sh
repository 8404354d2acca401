#!/usr/bin/env bash
# CI stage for the documentation (.ci/run): install the docs extra's
# requirements next to the already installed fastim2col (read from its
# installed metadata, so nothing is rebuilt), build the site with the exact
# command that README and docs/getting_started.rst give, check it offline in
# headless Chromium (tools/check_docs_site.py), then the asv dashboard
# (tools/asv_dashboard_ci.sh). Needs Debian's chromium: installed here with
# apt-get when missing (CI runs as root).
#
# Environment: PYTHON (default python); DOCS_SHOTS, where the screenshots go
# (default docs/_build/screenshots).
set -euo pipefail

PYTHON=${PYTHON:-python}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
t0=$SECONDS

# The docs extra of the installed fastim2col, as `pip install ".[docs]"` would
# install it, without building fastim2col again.
mapfile -t reqs < <("$PYTHON" - <<'PY'
import re
from importlib.metadata import requires
for r in requires("fastim2col") or []:
    if re.search(r"""extra\s*==\s*["']docs["']""", r):
        print(r.split(";")[0].strip())
PY
)
((${#reqs[@]})) || { echo "docs_ci: the installed fastim2col has no docs extra"; exit 1; }
echo "docs_ci: pip install ${reqs[*]}"
"$PYTHON" -m pip install -q "${reqs[@]}"

if ! command -v chromium >/dev/null 2>&1; then
    echo "docs_ci: installing Debian's chromium"
    if [[ $(id -u) -ne 0 ]]; then
        echo "docs_ci: FAIL: chromium is missing and this is not root (apt-get install chromium)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "docs_ci: $(chromium --version 2>/dev/null) ($((SECONDS - t0)) s)"

# A fresh build every time: sphinx-gallery skips examples it ran before.
rm -rf docs/_build docs/auto_examples
echo "+ python -m sphinx -W -b html docs docs/_build/html"
"$PYTHON" -m sphinx -W -b html docs docs/_build/html
echo "docs_ci: site built ($((SECONDS - t0)) s)"
"$PYTHON" tools/check_docs_site.py docs/_build/html \
    --screenshots "${DOCS_SHOTS:-docs/_build/screenshots}"

PYTHON=$PYTHON tools/asv_dashboard_ci.sh
echo "docs_ci: done ($((SECONDS - t0)) s)"
