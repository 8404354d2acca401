#!/usr/bin/env python3
"""Check a built HTML site offline, in headless Chromium.

    python tools/check_docs_site.py docs/_build/html --screenshots DIR
    python tools/check_docs_site.py asv_bench/html --asv --screenshots DIR

Static checks, on every .html and .css file of the site:
  * no script, stylesheet, font, image or frame comes from another host
    (``http://``, ``https://`` or ``//`` in a src/href of such a tag, in a
    CSS ``url()`` or ``@import``);
  * every local file such a tag or url() names exists.

Browser checks (Debian's ``chromium``, headless, every host name resolving to
nothing, so that a page needing the network shows it): each page is opened
from file://, its DOM after the scripts ran is dumped and a screenshot taken.
A page fails when its scripts did not run (Sphinx: pydata-sphinx-theme sets
``data-theme`` on <html>; asv: the benchmark grid or a graph is not drawn, or
its error dialog shows), when its main content is missing, or when the
screenshot is blank. asv's dashboard fetches its JSON with XMLHttpRequest,
which browsers refuse from file://, so it is served from 127.0.0.1 as
``asv preview`` would serve it.

Exits 1 listing every failure; prints one line per page.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

# tags whose src/href the browser fetches when the page opens (<a href> is a
# link the reader may follow, not a load)
_LOADING_TAG = re.compile(r"<(script|link|img|iframe|source|embed|object|audio|video)\b[^>]*>",
                          re.IGNORECASE | re.DOTALL)
_ATTR = re.compile(r"""\b(src|href|data)\s*=\s*(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_CSS_URL = re.compile(r"""url\(\s*(["']?)([^"')]+)\1\s*\)|@import\s+(["'])([^"']+)\3""")
_REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)


def _local_target(page: Path, ref: str) -> Path | None:
    """The file a relative reference names, or None for data:, anchors etc."""
    parts = urlsplit(ref)
    if parts.scheme or not parts.path:
        return None
    return (page.parent / unquote(parts.path)).resolve()


def static_check(site: Path) -> list[str]:
    problems = []
    for page in sorted(site.rglob("*.html")):
        if ".doctrees" in page.parts or "_static" in page.parts:
            continue            # build caches and the theme's template snippets
        text = page.read_text(encoding="utf-8", errors="replace")
        for tag in _LOADING_TAG.finditer(text):
            if tag.group(1).lower() == "link" and re.search(
                    r"""rel\s*=\s*["']?(canonical|alternate|author|license|next|prev|index|search)""",
                    tag.group(0), re.IGNORECASE):
                continue            # navigation metadata, nothing is loaded
            for attr in _ATTR.finditer(tag.group(0)):
                ref = attr.group(3).strip()
                if _REMOTE.match(ref):
                    problems.append(f"{page.relative_to(site)}: loads {ref} from the network")
                else:
                    target = _local_target(page, ref)
                    if target is not None and not target.exists():
                        problems.append(f"{page.relative_to(site)}: {ref} does not exist")
    for css in sorted(site.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for m in _CSS_URL.finditer(text):
            ref = (m.group(2) or m.group(4) or "").strip()
            if _REMOTE.match(ref):
                problems.append(f"{css.relative_to(site)}: url {ref} from the network")
            elif not ref.startswith(("data:", "#")):
                target = _local_target(css, ref)
                if target is not None and not target.exists():
                    problems.append(f"{css.relative_to(site)}: url {ref} does not exist")
    return problems


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(browser: str, profile: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           # nothing resolves: a page that needs the network fails here as it would offline
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           # let scripts and timers run (asv draws its grid and graphs from JSON)
           "--virtual-time-budget=8000", "--run-all-compositor-stages-before-draw",
           "--window-size=1280,1000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _blank(png: Path) -> bool:
    """True when the screenshot is (nearly) one colour."""
    import matplotlib.image as mpimg
    import numpy as np
    img = mpimg.imread(str(png))[..., :3]
    return float(np.std(img)) < 0.02


def page_checks(dom: str, kind: str, name: str) -> list[str]:
    problems = []
    if kind == "sphinx":
        if not re.search(r"<html[^>]*data-theme=\"(light|dark)\"", dom):
            problems.append("the theme's scripts did not run (no data-theme on <html>)")
        if not re.search(r"<main[^>]*main-content", dom):
            problems.append("no main content")
        elif not re.search(r"<h1[^>]*>", dom):
            problems.append("no <h1> heading")
    else:  # asv: index.html is the grid, index.html#<benchmark> its graph
        if "Error fetching content" in dom or "Error loading" in dom or \
                "failed to load" in dom.lower():
            problems.append("asv's error dialog is shown (its data or scripts did not load)")
        if "#" not in name:
            # the summary grid: one box per benchmark, each with its mini plot
            boxes = len(re.findall(r'class="[^"]*\bbenchmark-container\b', dom))
            if boxes == 0:
                problems.append("asv's benchmark grid was not drawn (no benchmark boxes)")
        elif not re.search(r'<canvas[^>]*class="flot-base"', dom):
            problems.append("no graph was drawn (no flot canvas)")
    return problems


@contextlib.contextmanager
def _served(site: Path):
    """An HTTP server for `site` on the loopback interface, for pages that
    fetch their data with XMLHttpRequest (asv's dashboard, as `asv preview`
    serves it), which browsers refuse on file:// URLs."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def browser_check(site: Path, pages: list[str], shots: Path, kind: str,
                  base: str | None = None) -> list[str]:
    browser = find_chromium()
    if browser is None:
        return ["no chromium on PATH (Debian: apt-get install chromium)"]
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    with tempfile.TemporaryDirectory() as profile:
        for rel in pages:
            if base is not None:
                url = base + rel
            else:
                url = (site / rel.split("#")[0]).resolve().as_uri() + (
                    "#" + rel.split("#", 1)[1] if "#" in rel else "")
            png = shots / (re.sub(r"[^A-Za-z0-9_.-]+", "_", rel) + ".png")
            dom = _chromium(browser, profile, "--dump-dom", url).stdout
            shot = _chromium(browser, profile, f"--screenshot={png}", url)
            issues = page_checks(dom, kind, rel.split("/")[-1])
            if shot.returncode != 0 or not png.exists():
                issues.append(f"no screenshot (chromium exit {shot.returncode})")
            elif _blank(png):
                issues.append("blank screenshot")
            print(f"  {'ok  ' if not issues else 'FAIL'} {rel}  -> {png}", flush=True)
            problems += [f"{rel}: {i}" for i in issues]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("site", type=Path, help="the built site's folder")
    p.add_argument("--screenshots", type=Path, default=Path("docs/_build/screenshots"),
                   help="where the screenshots go (default: docs/_build/screenshots)")
    p.add_argument("--asv", action="store_true",
                   help="the site is an asv dashboard (asv publish): check its grid and a graph")
    p.add_argument("--no-browser", action="store_true",
                   help="only the static checks (no chromium)")
    args = p.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        print(f"check_docs_site: {site}/index.html not found: build the site first")
        return 1
    problems = static_check(site)
    print(f"check_docs_site: static check of {site}: {len(problems)} problem(s)")
    if not args.no_browser:
        if args.asv:
            pages = ["index.html"] + _asv_graph_pages(site)
            kind = "asv"
        else:
            pages = sorted(str(pg.relative_to(site)) for pg in site.rglob("*.html")
                           if ".doctrees" not in pg.parts and "_static" not in pg.parts
                           and "_sources" not in pg.parts and "plot_directive" not in pg.parts)
            kind = "sphinx"
        print(f"check_docs_site: {len(pages)} page(s) in headless chromium, offline")
        if args.asv:
            with _served(site) as base:
                problems += browser_check(site, pages, args.screenshots, kind, base)
        else:
            problems += browser_check(site, pages, args.screenshots, kind)
    for line in problems:
        print(f"FAIL: {line}")
    print(f"check_docs_site: {'FAILED' if problems else 'passed'}")
    return 1 if problems else 0


def _asv_graph_pages(site: Path) -> list[str]:
    """One benchmark's graph page of an asv dashboard (#<benchmark name>)."""
    import json
    index = json.loads((site / "index.json").read_text())
    names = sorted(index.get("benchmarks", {}))
    return [f"index.html#{names[0]}"] if names else []


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
