"""The Examples sections of the public docstrings (the API reference of the
docs site) and the ``>>>`` examples of the site's own pages run as doctests:
every public function documents an example, and every example is right."""
import doctest
import inspect
from pathlib import Path

import pytest

import fastim2col
import fastim2col.grad

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _public():
    objs = {f"fastim2col.{name}": getattr(fastim2col, name)
            for name in fastim2col.__all__ if name not in ("__version__", "grad")}
    objs.update({f"fastim2col.grad.{name}": getattr(fastim2col.grad, name)
                 for name in fastim2col.grad.__all__})
    return objs


PUBLIC = _public()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _run(test: doctest.DocTest) -> doctest.TestResults:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    return runner.summarize(verbose=False)


@pytest.fixture(autouse=True)
def _threads_restored():
    # set_num_threads's example changes the process-wide setting
    yield
    fastim2col.set_num_threads(None)


def test_every_public_function_is_covered():
    """The list above is what the package exports: a new public name gets
    checked here without editing this file."""
    assert {"fastim2col.conv2d", "fastim2col.conv_transpose2d", "fastim2col.im2col",
            "fastim2col.col2im", "fastim2col.grad.conv2d_input",
            "fastim2col.grad.conv2d_weight", "fastim2col.explain", "fastim2col.kernels",
            "fastim2col.use_kernel", "fastim2col.Plan"} <= set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_has_numpydoc_examples(name):
    doc = inspect.getdoc(PUBLIC[name]) or ""
    assert "\nExamples\n--------\n" in doc, f"{name}: no numpydoc Examples section"
    examples = doc.split("\nExamples\n--------\n", 1)[1]
    assert ">>> " in examples, f"{name}: its Examples section has no >>> example"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_examples_run(name):
    obj = PUBLIC[name]
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(obj, name, globs={}) if t.examples]
    assert tests, f"{name}: no doctest examples found"
    for test in tests:
        result = _run(test)
        assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("page", ["getting_started.rst", "user_guide.rst"])
def test_docs_page_examples_run(page):
    """The ``>>>`` examples written into the site's pages."""
    path = DOCS / page
    if not path.is_file():
        pytest.skip(f"{path} is not in this copy (tests run without docs/)")
    text = path.read_text(encoding="utf-8")
    test = doctest.DocTestParser().get_doctest(text, {}, page, str(path), 0)
    assert test.examples, f"{page}: no >>> examples"
    result = _run(test)
    assert result.failed == 0, f"{page}: {result.failed} of {result.attempted} examples failed"
