"""tools/check_docs_site.py's static check, which CI runs on the built docs
site and the asv dashboard: a page that loads a script, stylesheet, font or
image from another host, or names a local file that is missing, fails."""
import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_docs_site.py"


@pytest.fixture(scope="module")
def tool():
    if not TOOL.is_file():
        pytest.skip("tools/ is not in this copy")
    spec = importlib.util.spec_from_file_location("check_docs_site", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site(tmp_path, html, css=""):
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "local.js").write_text("")
    (tmp_path / "_static" / "style.css").write_text(css)
    (tmp_path / "index.html").write_text(html)
    return tmp_path


def test_clean_site_passes(tool, tmp_path):
    site = _site(tmp_path, '<script src="_static/local.js"></script>'
                           '<link rel="stylesheet" href="_static/style.css">'
                           '<a href="https://example.org/">a link is not a load</a>'
                           '<link rel="canonical" href="https://example.org/">',
                 css="body { background: url(data:image/png;base64,AAAA); }")
    assert tool.static_check(site) == []


@pytest.mark.parametrize("html", [
    '<script src="https://cdn.example.org/jquery.js"></script>',
    '<script src="//cdn.example.org/jquery.js"></script>',
    '<link href="http://fonts.example.org/css" rel="stylesheet">',
    '<img src="https://example.org/logo.png">',
])
def test_remote_loads_fail(tool, tmp_path, html):
    problems = tool.static_check(_site(tmp_path, html))
    assert len(problems) == 1 and "from the network" in problems[0]


def test_remote_font_in_css_fails(tool, tmp_path):
    site = _site(tmp_path, '<link rel="stylesheet" href="_static/style.css">',
                 css='@font-face { src: url("https://fonts.example.org/a.woff2"); }')
    problems = tool.static_check(site)
    assert len(problems) == 1 and "a.woff2" in problems[0]


def test_missing_local_file_fails(tool, tmp_path):
    problems = tool.static_check(_site(tmp_path, '<script src="_static/gone.js"></script>'))
    assert len(problems) == 1 and "does not exist" in problems[0]
