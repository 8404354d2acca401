"""Sphinx configuration of fastim2col's documentation site.

Build (from the repository root, after ``pip install ".[docs]"``)::

    python -m sphinx -W -b html docs docs/_build/html

Every page is made to open offline: no script, stylesheet or font comes from
the internet (tests/test_docs_offline.py checks the built HTML).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# matplotlib must not try a GUI backend while the gallery and plots run
os.environ.setdefault("MPLBACKEND", "Agg")
# The gallery's timings would fight over the cores with each other otherwise
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# `python -m sphinx` puts the working directory (the repository root) first on
# sys.path. Without an in-place build its fastim2col/ folder holds no compiled
# kernels and would shadow the installed package: then use the installed one.
_root = Path(__file__).resolve().parent.parent
if not any((_root / "fastim2col").glob("_conv*.so")) and \
        not any((_root / "fastim2col").glob("_conv*.pyd")):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _root]

import fastim2col  # noqa: E402  (imported after the environment is set)

project = "fastim2col"
author = "fastim2col developers"
copyright = "fastim2col developers, BSD-3-Clause"
release = fastim2col.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "gallery/README.rst", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# design.md and performance.md are pages as they are (the Markdown stays the
# source): GitHub-style heading anchors make their in-page links resolve.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]
# Their links to files outside docs/ (../README.md, ../asv_bench/README.md)
# are meant for GitHub; on the site they stay plain links.
suppress_warnings = ["myst.xref_missing"]

autodoc_typehints = "none"          # numpydoc's Parameters sections say it
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = {"GL08"}  # every public object has a docstring

html_theme = "pydata_sphinx_theme"
html_title = f"fastim2col {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": True,
    # No icon links, analytics or version switcher: nothing that is fetched
    # from elsewhere when a page opens.
    "icon_links": [],
}
html_static_path: list[str] = []
html_show_sourcelink = False

sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    # its execution-times page loads DataTables and jQuery from CDNs
    "write_computation_times": False,
    # no Binder/JupyterLite links: they point to online services
}

plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 96)]
