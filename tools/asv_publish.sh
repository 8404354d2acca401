#!/usr/bin/env bash
# asv publish, then make the dashboard open anywhere: the JavaScript and CSS
# that asv's index.html loads from CDNs (jQuery, flot 0.8.3 and its time,
# selection and categories plugins, flot-orderBars, stupidtable, blueimp-md5,
# Bootstrap 3) are vendored into the html folder from Debian's packages, and
# the page is rewritten to load them from there. Run from the repository
# root, after `asv run`:
#
#   tools/asv_publish.sh                 # asv_bench/html, then: asv preview
#   ASV_CONFIG=/abs/conf.json tools/asv_publish.sh   # another asv.conf.json
#
# Extra arguments go to `asv publish`. The .debs are fetched with
# `apt-get download` and unpacked with `dpkg -x` (nothing is installed);
# VENDOR_DEBS=DIR takes them from DIR instead (a cache, or a machine without
# apt). flot-orderBars is not packaged: tools/asv_vendor/ has a stand-in.
# Exits non-zero if a page still loads anything from the network.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
config=${ASV_CONFIG:-$root/asv_bench/asv.conf.json}
packages=(libjs-jquery libghc-js-flot-data libjs-bootstrap fonts-glyphicons-halflings
          libjs-jquery-stupidtable node-blueimp-md5)

work=$(mktemp -d "${TMPDIR:-/tmp}/asv_publish.XXXXXX")
trap 'rm -rf "$work"' EXIT

(cd "$(dirname "$config")" && "$PYTHON" -m asv --config "$config" publish "$@")
html=$(cd "$(dirname "$config")" && "$PYTHON" - "$config" <<'EOF'
import os, sys
from asv.util import load_json
conf = load_json(sys.argv[1], js_comments=True)
print(os.path.abspath(conf.get("html_dir", "html")))
EOF
)
[[ -f "$html/index.html" ]] || { echo "asv_publish: $html/index.html not found"; exit 1; }

# The .debs: from VENDOR_DEBS, else apt-get download (apt-get update once if
# the package lists are missing, as on a fresh machine).
debs=${VENDOR_DEBS:-$work/debs}
mkdir -p "$debs"
missing=()
for p in "${packages[@]}"; do
    compgen -G "$debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
    if ! (cd "$debs" && apt-get download "${missing[@]}" >"$work/apt.log" 2>&1); then
        echo "asv_publish: apt-get download failed; running apt-get update once"
        apt-get update -qq >>"$work/apt.log" 2>&1 || true
        (cd "$debs" && apt-get download "${missing[@]}" >>"$work/apt.log" 2>&1) \
            || { cat "$work/apt.log"; echo "asv_publish: could not download ${missing[*]}"; exit 1; }
    fi
fi
for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$work/x"
done

x=$work/x/usr/share
vendor=$html/vendor
rm -rf "$vendor"
mkdir -p "$vendor/js" "$vendor/css" "$vendor/fonts"
cp "$x/javascript/jquery/jquery.min.js" "$vendor/js/"
for f in jquery.flot.min.js jquery.flot.time.min.js jquery.flot.selection.min.js \
         jquery.flot.categories.min.js; do
    cp "$x/haskell-js-flot/$f" "$vendor/js/"
done
cp "$root/tools/asv_vendor/jquery.flot.orderBars.js" "$vendor/js/"
cp "$x/javascript/jquery-stupidtable/stupidtable.min.js" "$vendor/js/"
cp "$x/javascript/blueimp-md5/md5.min.js" "$vendor/js/"
cp "$x/javascript/bootstrap/js/bootstrap.min.js" "$vendor/js/"
cp "$x/javascript/bootstrap/css/bootstrap.min.css" "$vendor/css/"
# Bootstrap's CSS names its glyph font as ../fonts/glyphicons-halflings-regular.*
cp "$x"/fonts-glyphicons/glyphicons-halflings-regular.* "$vendor/fonts/"
[[ -f "$vendor/fonts/glyphicons-halflings-regular.ttf" ]] \
    || cp "$x"/fonts/truetype/glyphicons/glyphicons-halflings-regular.ttf "$vendor/fonts/"
# The Debian copyright files travel with what they cover.
mkdir -p "$vendor/licenses"
for p in "${packages[@]}"; do
    [[ -f "$x/doc/$p/copyright" ]] && cp "$x/doc/$p/copyright" "$vendor/licenses/$p.copyright"
done

# Point every CDN <script>/<link> of the published pages at the vendored
# copies (by file name), dropping integrity/crossorigin: the vendored files
# are Debian's builds, not byte-identical to the CDN's.
"$PYTHON" - "$html" <<'EOF'
import pathlib, re, sys

html = pathlib.Path(sys.argv[1])
local = {
    "jquery": "vendor/js/jquery.min.js",
    "jquery.flot.min.js": "vendor/js/jquery.flot.min.js",
    "jquery.flot.time.min.js": "vendor/js/jquery.flot.time.min.js",
    "jquery.flot.selection.min.js": "vendor/js/jquery.flot.selection.min.js",
    "jquery.flot.categories.min.js": "vendor/js/jquery.flot.categories.min.js",
    "jquery.flot.orderBars.js": "vendor/js/jquery.flot.orderBars.js",
    "stupidtable.min.js": "vendor/js/stupidtable.min.js",
    "md5.min.js": "vendor/js/md5.min.js",
    "bootstrap.min.js": "vendor/js/bootstrap.min.js",
    "bootstrap.min.css": "vendor/css/bootstrap.min.css",
}
tag_re = re.compile(r"<(script|link)\b[^>]*?\b(src|href)=\"(https?:)?//[^\"]*\"[^>]*>", re.S)
left = []
for page in sorted(html.glob("*.html")):
    text = page.read_text(encoding="utf-8")

    def swap(m):
        tag = m.group(0)
        url = re.search(r"\b(?:src|href)=\"([^\"]*)\"", tag).group(1)
        name = url.rstrip("/").rsplit("/", 1)[-1]
        key = "jquery" if re.fullmatch(r"jquery-[0-9.]+(\.min)?\.js", name) else name
        if key not in local:
            left.append(f"{page.name}: {url}")
            return tag
        tag = re.sub(r"\s(integrity|crossorigin|referrerpolicy)=\"[^\"]*\"", "", tag)
        tag = re.sub(r"\s(crossorigin)(?=[\s>])", "", tag)
        return tag.replace(url, local[key])
    new = tag_re.sub(swap, text)
    if new != text:
        page.write_text(new, encoding="utf-8")
if left:
    print("asv_publish: no vendored copy for:", *left, sep="\n  ")
    sys.exit(1)
EOF
echo "asv_publish: $html carries its own JavaScript and CSS ($(find "$vendor" -type f | wc -l) files in vendor/)"
