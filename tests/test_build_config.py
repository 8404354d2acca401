"""The two builds agree: meson (pip install, wheels) and setup.py (in place).

Both take the modules, their defines and flags from src/extensions.txt, and
the optimization level, C standard and NDEBUG from meson.build's project()
default_options. Here:

- setup.py's reading of those files is checked against an independent
  reading, and src/meson.build is checked to hard-code no module or flag;
- a real `meson setup` (when meson, ninja and cython are at hand) is asked
  with `meson introspect` what it compiles each module with, and that is
  compared with what setup.py compiles it with, flag by flag; the record
  meson writes for show_config() is compared with the one setup.py writes;
- show_config() is checked to describe the build actually imported.

The source-tree tests skip where the tests run without the checkout (the
installed-wheel runs of tools/test_wheel.sh and cibuildwheel).
"""
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

import fastim2col
from fastim2col import _openmp_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "src", "extensions.txt")
in_checkout = pytest.mark.skipif(
    not (os.path.exists(os.path.join(ROOT, "setup.py")) and os.path.exists(SHARED)),
    reason="needs the source checkout (setup.py, src/extensions.txt)")

# Flags meson gives every C target on its own, whatever the project says
# (and include directories, -I...): not part of what the builds must share.
# Its warning_level flags are among them (-w: meson 1.2's Python extensions).
MESON_OWN = {"-fvisibility=hidden", "-fdiagnostics-color=always", "-D_FILE_OFFSET_BITS=64",
             "-fPIC", "-pthread", "-Winvalid-pch", "-w", "-Wall", "-Wextra", "-Wpedantic"}
# The fields of fastim2col/_build_flags.py allowed to differ between the builds.
RECORD_MAY_DIFFER = {"build_system", "compiler", "cython"}


def load_setup_py():
    """setup.py as a module (importing it builds nothing)."""
    spec = importlib.util.spec_from_file_location("fastim2col_setup_py",
                                                  os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_file():
    """src/extensions.txt read independently of setup.py: (defines as -D
    flags, flags for all modules, {module: own flags})."""
    defines, common, modules = [], [], {}
    with open(SHARED, encoding="utf-8") as f:
        for line in f:
            kind, *rest = line.split() or ["#"]
            if kind.startswith("#") or kind == "cython":
                continue
            if kind == "define":
                defines += ["-D" + d for d in rest]
            elif kind == "c_args":
                common += rest
            else:
                assert kind == "module", line
                modules[rest[0]] = rest[1:]
    return defines, common, modules


def meson_strings(path):
    """The quoted strings of a meson.build file, comments left out."""
    strings = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            # a line is code, then maybe a comment; strings are '...' with \-escapes
            for m in re.finditer(r"'((?:[^'\\\n]|\\.)*)'|(#.*)", line):
                if m.group(2) is not None:
                    break
                strings.append(m.group(1))
    return strings


def record_of(path):
    """BUILD_FLAGS and MODULE_C_ARGS of a fastim2col/_build_flags.py file."""
    scope = {}
    with open(path, encoding="utf-8") as f:
        exec(f.read(), scope)
    return {**scope["BUILD_FLAGS"], "module_c_args": scope["MODULE_C_ARGS"]}


# --------------------------------------------------------------------------- static

@in_checkout
def test_setup_py_reads_the_shared_file():
    setup = load_setup_py()
    defines, common, modules = shared_file()
    ext = setup.read_extensions()
    assert list(ext["modules"]) == list(modules)
    assert ext["modules"] == modules
    assert ext["c_args"] == common
    assert [f"-D{n}" if v is None else f"-D{n}={v}" for n, v in ext["defines"]] == defines
    assert "-DNPY_TARGET_VERSION=NPY_1_25_API_VERSION" in defines
    assert ext["cython"].get("language_level") == "3"


@in_checkout
def test_every_pyx_is_a_module_with_its_stub():
    _, _, modules = shared_file()
    pyx = sorted(f[:-4] for f in os.listdir(os.path.join(ROOT, "src")) if f.endswith(".pyx"))
    assert sorted(modules) == pyx, "src/*.pyx and the modules of src/extensions.txt differ"
    installed = meson_strings(os.path.join(ROOT, "fastim2col", "meson.build"))
    for name in modules:
        assert os.path.exists(os.path.join(ROOT, "fastim2col", name + ".pyi")), name
        assert name + ".pyi" in installed, f"fastim2col/meson.build does not install {name}.pyi"


@in_checkout
def test_every_pxd_with_inline_code_sets_the_kernel_directives():
    # A .pxd's inline functions compile with the .pxd's own directives: without
    # the line, // and % get Python's floor semantics and zero checks.
    src = os.path.join(ROOT, "src")
    for name in sorted(os.listdir(src)):
        if name.endswith((".pxd", ".pyx")):
            with open(os.path.join(src, name), encoding="utf-8") as f:
                text = f.read()
            if "cdef inline" in text and ("//" in text or " % " in text):
                first = text.splitlines()[0]
                assert first.startswith("# cython:") and "cdivision=True" in first, name


@in_checkout
def test_meson_installs_every_python_module():
    """Every tracked .py of the package (not the generated _build_flags.py) is
    in fastim2col/meson.build's install lists, and setup.py lists its
    subpackages: a module missing there is missing from every wheel."""
    package = os.path.join(ROOT, "fastim2col")
    on_disk = sorted(os.path.relpath(os.path.join(d, f), package).replace(os.sep, "/")
                     for d, _, files in os.walk(package) for f in files
                     if f.endswith(".py") and f != "_build_flags.py")
    installed = meson_strings(os.path.join(package, "meson.build"))
    missing = [f for f in on_disk if f not in installed]
    assert not missing, f"fastim2col/meson.build does not install {missing}"
    subpackages = sorted({os.path.dirname(f) for f in on_disk} - {""})
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        setup_text = f.read()
    for sub in subpackages:
        assert f'"fastim2col.{sub}"' in setup_text, f"setup.py does not list fastim2col.{sub}"


@in_checkout
def test_meson_build_hard_codes_no_module_or_flag():
    """Modules and flags belong in src/extensions.txt, where setup.py sees them."""
    files = [os.path.join(ROOT, d, "meson.build") for d in ("", "src", "fastim2col")]
    calls = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            calls += f.read().count("extension_module(")
        # command-line options of meson's own tools (python -c, cython's -X
        # and --include-dir) and the '-D' put before each shared define
        flags = [s for s in meson_strings(path) if s.startswith("-")]
        assert set(flags) <= {"-c", "-X", "--include-dir", "-D"}, (path, flags)
    assert calls == 1
    with open(os.path.join(ROOT, "src", "meson.build"), encoding="utf-8") as f:
        src = f.read()
    assert "fs.read('extensions.txt')" in src
    assert re.search(r"foreach name : ext_modules\n(?:  .*\n)*?  py\.extension_module\(", src)


@in_checkout
def test_setup_py_maps_the_meson_default_options(tmp_path):
    setup = load_setup_py()
    options = setup.project_options()   # meson.build's, today release and c11
    assert setup.project_flags(options)[0] == "-O" + options["optimization"]
    assert f"-std={options['c_std']}" in setup.project_flags(options)
    assert options["ndebug"] == (options["buildtype"] == "release")
    # as meson maps them
    (tmp_path / "meson.build").write_text(
        "project('x', 'c',\n  default_options: ['buildtype=debugoptimized', 'c_std=c17',\n"
        "                    'b_ndebug=true'])\n")
    options = setup.project_options(str(tmp_path))
    assert options == {"buildtype": "debugoptimized", "optimization": "2", "debug": True,
                       "ndebug": True, "c_std": "c17"}
    assert setup.project_flags(options) == ["-O2", "-g", "-std=c17"]
    assert setup.project_flags(options, "msvc") == ["/O2", "/Z7", "/std:c17"]
    # an option setup.py cannot map is an error, not silently a difference
    (tmp_path / "meson.build").write_text("project('x', 'c', default_options: ['b_lto=true'])\n")
    with pytest.raises(ValueError, match="b_lto"):
        setup.project_options(str(tmp_path))


# --------------------------------------------------------------------------- meson itself

def meson_setup(build_dir):
    """`meson setup` of the checkout in build_dir, run by this Python (whose
    numpy and scipy meson's python.find_installation() then finds)."""
    try:
        import mesonbuild  # noqa: F401
    except ImportError:
        pytest.skip("meson is not installed in this Python")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CFLAGS", "CPPFLAGS", "LDFLAGS", "LD_PRELOAD")}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    for tool in ("ninja", "cython"):
        if not shutil.which(tool, path=env["PATH"]):
            pytest.skip(f"{tool} is not on PATH")
    meson = [sys.executable, "-m", "mesonbuild.mesonmain"]
    run = subprocess.run(meson + ["setup", str(build_dir), ROOT], env=env,
                         cwd=str(build_dir.parent), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run = subprocess.run(meson + ["introspect", "--targets", str(build_dir)], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(run.stdout)


@in_checkout
def test_meson_and_setup_py_compile_every_module_alike(tmp_path, monkeypatch):
    # both builds without the user's flags, and their compilers without
    # tools/sanitize.sh's libasan
    for var in ("CFLAGS", "CPPFLAGS", "LDFLAGS", "LD_PRELOAD"):
        monkeypatch.delenv(var, raising=False)
    targets = meson_setup(tmp_path / "build")
    try:
        setup = load_setup_py()
        compiler = setup.new_compiler()
    except ImportError as exc:
        pytest.skip(f"setup.py's compiler needs setuptools: {exc}")
    if compiler.compiler_type == "msvc":
        pytest.skip("flags compared for GCC-style compilers")
    plan = setup.compile_plan(compiler)

    meson_modules = {}
    for t in targets:
        if t["type"] != "shared module":
            continue
        (c,) = [s for s in t["target_sources"] if s.get("language") == "c"]
        meson_modules[t["name"].split(".")[0]] = c
    assert list(meson_modules) == list(plan["modules"]), "the builds build different modules"

    defines = [f"-D{n}" if v is None else f"-D{n}={v}" for n, v in plan["defines"]]
    for name, c in meson_modules.items():
        ours = plan["modules"][name]
        generated = [os.path.basename(s) for s in c["generated_sources"]]
        assert generated == [os.path.basename(ours["sources"][0]) + ".c"], (name, generated)
        setup_py = defines + ours["extra_compile_args"]
        meson = [p for p in c["parameters"] if not p.startswith(("-I", "-isystem"))]
        only_setup_py = sorted(set(setup_py) - set(meson))
        only_meson = sorted(set(meson) - set(setup_py) - MESON_OWN)
        assert not only_setup_py, f"{name}: setup.py compiles with {only_setup_py}, meson not"
        assert not only_meson, f"{name}: meson compiles with {only_meson}, setup.py not"

    # what each build records for show_config()
    meson_record = record_of(tmp_path / "build" / "src" / "_build_flags.py")
    (tmp_path / "setup_py_record.py").write_text(setup.render_build_flags(plan["record"]))
    setup_record = record_of(tmp_path / "setup_py_record.py")
    assert set(meson_record) == set(setup_record)
    differ = {k for k in meson_record if meson_record[k] != setup_record[k]}
    assert differ <= RECORD_MAY_DIFFER, {k: (meson_record[k], setup_record[k]) for k in differ}
    assert meson_record["build_system"].startswith("meson ")
    assert setup_record["build_system"].startswith("setup.py ")


# --------------------------------------------------------------------------- show_config

def test_show_config_describes_the_imported_build():
    flags = fastim2col.show_config("dicts")["build"]["build_flags"]
    assert "build_system" in flags, \
        f"no build record (fastim2col/_build_flags.py) in this build: rebuild it ({flags})"
    for key in ("compiler", "buildtype", "optimization", "ndebug", "c_std", "sanitize",
                "c_args", "user_c_args", "openmp", "cython", "numpy_at_build",
                "numpy_target", "module_c_args"):
        assert key in flags, key
    # the record lies next to the compiled modules it describes, and names them all
    package = os.path.dirname(os.path.realpath(_openmp_info.__file__))
    record = importlib.import_module("fastim2col._build_flags")
    assert os.path.dirname(os.path.realpath(record.__file__)) == package
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = {f[:-len(suffix)] for f in os.listdir(package) if f.endswith(suffix)}
    assert set(flags["module_c_args"]) == compiled
    assert (flags["openmp"] != "not found") == _openmp_info.OPENMP_ENABLED
    assert f"-DNPY_TARGET_VERSION={flags['numpy_target']}" in flags["c_args"].split()
    # built in place in the checkout: setup.py; anywhere else (site-packages,
    # meson-python's editable build directory, tools/sanitize.sh): meson
    in_place = package == os.path.realpath(os.path.join(ROOT, "fastim2col"))
    assert flags["build_system"].split()[0] == ("setup.py" if in_place else "meson"), \
        (package, flags["build_system"])
    if os.path.exists(SHARED):
        defines, _, modules = shared_file()
        assert set(flags["module_c_args"]) == set(modules), \
            "the build predates src/extensions.txt: rebuild it"
        assert set(defines) <= set(flags["c_args"].split())
        for name, args in flags["module_c_args"].items():
            assert set(args.split()) <= set(modules[name]), name


def test_test_dependency_group_matches_the_test_extra():
    """pyproject.toml: `pip install --group test` (PEP 735) and the `test`
    extra (cibuildwheel's test-extras) install the same."""
    tomllib = pytest.importorskip("tomllib")
    path = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("no pyproject.toml")
    with open(path, "rb") as f:
        pyproject = tomllib.load(f)
    assert pyproject["dependency-groups"]["test"] \
        == pyproject["project"]["optional-dependencies"]["test"]
