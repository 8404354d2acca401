"""setuptools + Cython build of the same kernels, for source checkouts:

    python setup.py build_ext --inplace

The real build (pip install, wheels) is meson-python (pyproject.toml,
meson.build). This file builds the same thing from the same description:

- the modules, their defines and C flags: src/extensions.txt, which
  src/meson.build reads too;
- optimization level, C standard and NDEBUG: the default_options of
  project() in meson.build, mapped to flags as meson does;
- flags the compiler rejects are dropped, as meson's
  cc.get_supported_arguments() does; OpenMP is optional in both builds;
- the build is recorded for fastim2col.show_config() in
  fastim2col/_build_flags.py, from the template meson fills (src/_build_flags.py.in).

tests/test_build_config.py checks that the two builds agree. Importing this
file runs no build (only `python setup.py ...` does); read_extensions() and
project_options() need only the standard library, compile_plan() a C
compiler (new_compiler(): setuptools').
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))

# meson's dependency('openmp') reports the OpenMP version from _OPENMP
OPENMP_VERSIONS = {
    "202111": "5.2", "202011": "5.1", "201811": "5.0", "201611": "5.0-revision1",
    "201511": "4.5", "201307": "4.0", "201107": "3.1", "200805": "3.0",
    "200505": "2.5", "200203": "2.0", "199810": "1.0",
}
# meson's built-in buildtype -> (optimization, debug)
BUILDTYPES = {
    "plain": ("plain", False), "debug": ("0", True), "debugoptimized": ("2", True),
    "release": ("3", False), "minsize": ("s", False),
}
# the project() default_options this file knows how to map to flags
KNOWN_OPTIONS = {"buildtype", "b_ndebug", "c_std"}


def read_extensions(root=ROOT):
    """src/extensions.txt as a dict: defines [(NAME, VALUE)], c_args [...],
    cython {directive: value}, modules {name: [flags]} (in file order)."""
    config = {"defines": [], "c_args": [], "cython": {}, "modules": {}}
    path = os.path.join(root, "src", "extensions.txt")
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            kind, rest = words[0], words[1:]
            if kind == "define":
                config["defines"] += [tuple(d.split("=", 1)) if "=" in d else (d, None)
                                      for d in rest]
            elif kind == "c_args":
                config["c_args"] += rest
            elif kind == "cython":
                config["cython"].update(d.split("=", 1) for d in rest)
            elif kind == "module" and rest:
                if rest[0] in config["modules"]:
                    raise ValueError(f"{path}: module {rest[0]} is listed twice")
                config["modules"][rest[0]] = rest[1:]
            else:
                raise ValueError(f"{path}: cannot read the line: {line.strip()}")
    return config


def meson_default_options(root=ROOT):
    """The default_options of project() in meson.build, as a dict."""
    with open(os.path.join(root, "meson.build"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"\bproject\s*\(.*?\bdefault_options\s*:\s*\[(.*?)\]", text, re.S)
    if not m:
        raise ValueError("meson.build: no default_options in project()")
    options = dict(o.split("=", 1) for o in re.findall(r"'([^']*)'", m.group(1)))
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise ValueError(f"meson.build: setup.py does not know how to map the default "
                         f"options {sorted(unknown)} to flags (teach it, setup.py)")
    return options


def project_options(root=ROOT):
    """buildtype, optimization, debug, ndebug and c_std as meson's defaults give them."""
    options = meson_default_options(root)
    buildtype = options.get("buildtype", "debug")
    optimization, debug = BUILDTYPES[buildtype]
    b_ndebug = options.get("b_ndebug", "false")
    return {
        "buildtype": buildtype,
        "optimization": optimization,
        "debug": debug,
        "ndebug": b_ndebug == "true" or (b_ndebug == "if-release" and buildtype == "release"),
        "c_std": options.get("c_std", "none"),
    }


def project_flags(options, compiler_type="unix"):
    """The compiler flags meson derives from project_options(): -O, -g, -std."""
    msvc = compiler_type == "msvc"
    flags = []
    opt = options["optimization"]
    if opt != "plain":
        if msvc:
            flags.append({"0": "/Od", "1": "/O1", "s": "/O1"}.get(opt, "/O2"))
        else:
            flags.append(f"-O{opt}")
    if options["debug"]:
        flags.append("/Z7" if msvc else "-g")
    if options["c_std"] != "none":
        flags.append(f"/std:{options['c_std']}" if msvc else f"-std={options['c_std']}")
    return flags


def _probe(compiler, code, flags, link=False, run=False):
    """Compile (and link, and run) a small C program with flags: its output, or None."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            if not link:
                return ""
            exe = os.path.join(tmp, "probe")
            compiler.link_executable(objs, exe, extra_postargs=flags)
            if not run:
                return ""
            exe += ".exe" if os.name == "nt" else ""
            return subprocess.run([exe], capture_output=True, text=True, check=True,
                                  timeout=60).stdout
        except Exception:
            return None


def supported_args(compiler, args, _cache={}):
    """The args the compiler accepts, as meson's cc.get_supported_arguments():
    each is tried alone with -Werror (-Wno-X by testing -WX, since GCC accepts
    any -Wno-X). MSVC keeps only -D/-U: it ignores GCC-style flags (meson
    drops them too)."""
    if compiler.compiler_type == "msvc":
        return [a for a in args if a.startswith(("-D", "-U", "/D", "/U"))]
    kept = []
    for arg in args:
        key = (tuple(compiler.compiler_so), arg)
        if key not in _cache:
            test = "-W" + arg[len("-Wno-"):] if arg.startswith("-Wno-") else arg
            _cache[key] = _probe(compiler, "int main(void) { return 0; }\n",
                                 [test, "-Werror"]) is not None
        if _cache[key]:
            kept.append(arg)
    return kept


def openmp_flags(compiler):
    """(compile, link, version) for OpenMP, or ([], [], 'not found') when the
    compiler lacks it: the kernels then run single-threaded, as with meson's
    optional dependency."""
    flags = ["/openmp"] if compiler.compiler_type == "msvc" else ["-fopenmp"]
    code = ('#include <omp.h>\n#include <stdio.h>\n'
            'int main(void) { printf("%d\\n", (int)_OPENMP); return omp_get_max_threads() < 1; }\n')
    out = _probe(compiler, code, flags, link=True, run=True)
    if out is None:
        if _probe(compiler, code, flags, link=True) is None:
            print("warning: OpenMP not available: building single-threaded kernels",
                  file=sys.stderr)
            return [], [], "not found"
        out = ""
    version = OPENMP_VERSIONS.get(out.strip(), "unknown")
    return flags, ([] if compiler.compiler_type == "msvc" else flags), version


def compiler_name(compiler):
    """e.g. 'gcc 12.2.0' (msvc: 'msvc')."""
    if compiler.compiler_type == "msvc":
        return "msvc"
    exe = compiler.compiler_so[0]
    version = ""
    for option in ("-dumpfullversion", "-dumpversion"):  # gcc >= 7; clang
        try:
            run = subprocess.run([exe, option], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            break
        if run.returncode == 0 and run.stdout.strip():
            version = run.stdout.strip()
            break
    return f"{os.path.basename(exe)} {version}".strip()


def render_build_flags(values, root=ROOT):
    """src/_build_flags.py.in with its @FIELD@s replaced by values (Python
    literals: str values are quoted, dict values written as dicts of str)."""
    with open(os.path.join(root, "src", "_build_flags.py.in"), encoding="utf-8") as f:
        template = f.read()
    fields = set(re.findall(r"@(\w+)@", template))
    if fields != set(values):
        raise ValueError(f"src/_build_flags.py.in has the fields {sorted(fields)}, "
                         f"setup.py fills {sorted(values)}")
    return re.sub(r"@(\w+)@", lambda m: json.dumps(values[m.group(1)]), template)


def new_compiler():
    """The C compiler setuptools' build_ext would use, set up as it does."""
    import setuptools  # noqa: F401  (provides distutils on Python >= 3.12)
    from distutils.ccompiler import new_compiler as new
    from distutils.sysconfig import customize_compiler

    compiler = new()
    customize_compiler(compiler)
    return compiler


def compile_plan(compiler, root=ROOT):
    """What setup.py builds, for this compiler (a distutils compiler object):

    defines:  [(NAME, VALUE or None)] for every module, NDEBUG included
    modules:  {name: {"sources": [...], "extra_compile_args": [...],
               "extra_link_args": [...]}}, in src/extensions.txt's order
    record:   the fields of src/_build_flags.py.in (for show_config())

    Flags the compiler rejects are dropped and OpenMP is probed, so this runs
    the compiler a few times."""
    import numpy
    import setuptools

    ext = read_extensions(root)
    options = project_options(root)
    defines = list(ext["defines"]) + ([("NDEBUG", None)] if options["ndebug"] else [])
    compile_omp, link_omp, omp_version = openmp_flags(compiler)
    common = supported_args(compiler, ext["c_args"])
    own = {name: supported_args(compiler, args) for name, args in ext["modules"].items()}
    flags = project_flags(options, compiler.compiler_type)
    try:
        from Cython import __version__ as cython_version
    except ImportError:
        cython_version = "not found"
    ext_defines = [f"-D{n}" if v is None else f"-D{n}={v}" for n, v in ext["defines"]]
    record = {
        "BUILD_SYSTEM": f"setup.py (setuptools {setuptools.__version__})",
        "COMPILER": compiler_name(compiler),
        "BUILDTYPE": options["buildtype"],
        "OPTIMIZATION": options["optimization"],
        "NDEBUG": "true" if options["ndebug"] else "false",
        "C_STD": options["c_std"],
        "SANITIZE": "none",
        "C_ARGS": " ".join(ext_defines + common),
        "USER_C_ARGS": " ".join(os.environ.get(v, "") for v in ("CPPFLAGS", "CFLAGS")).strip(),
        "MODULE_C_ARGS": {name: " ".join(args) for name, args in own.items()},
        "OPENMP": omp_version,
        "CYTHON": cython_version,
        "NUMPY_BUILD": numpy.__version__,
        "NUMPY_TARGET": dict(ext["defines"]).get("NPY_TARGET_VERSION") or "not set",
    }
    modules = {
        name: {
            "sources": [f"src/{name}.pyx"],
            "extra_compile_args": flags + common + own[name] + compile_omp,
            "extra_link_args": list(link_omp),
        }
        for name in ext["modules"]
    }
    return {"defines": defines, "modules": modules, "record": record}


def main():
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    from setuptools.command.build_ext import build_ext

    os.chdir(ROOT)
    ext = read_extensions()
    # Any .h or .pxd change rebuilds every module (setuptools does not read
    # the compilers' dependency files; cythonize follows cimports itself).
    depends = sorted(glob.glob("src/*.h") + glob.glob("src/*.pxd"))

    class BuildExt(build_ext):
        def build_extensions(self):
            plan = compile_plan(self.compiler)
            for e in self.extensions:
                module = plan["modules"][e.name.rsplit(".", 1)[1]]
                e.define_macros = list(plan["defines"])
                e.extra_compile_args = module["extra_compile_args"]
                e.extra_link_args = module["extra_link_args"]
            super().build_extensions()
            # next to the compiled modules (setuptools builds in build/lib*/
            # even with --inplace, then copies: see run())
            out = os.path.join(os.path.dirname(self.get_ext_fullpath(self.extensions[0].name)),
                               "_build_flags.py")
            with open(out, "w", encoding="utf-8") as f:
                f.write(render_build_flags(plan["record"]))
            self.build_flags_file = out

        def run(self):
            super().run()
            # setuptools' --inplace copies the compiled modules into
            # fastim2col/ after building them: the record goes along
            if self.inplace and getattr(self, "build_flags_file", None):
                package_dir = self.get_finalized_command("build_py").get_package_dir("fastim2col")
                self.copy_file(self.build_flags_file,
                               os.path.join(package_dir, "_build_flags.py"))

    extensions = [
        Extension(f"fastim2col.{name}", [f"src/{name}.pyx"],
                  include_dirs=[numpy.get_include(), "src"], depends=depends)
        for name in ext["modules"]
    ]
    setup(
        name="fastim2col",
        packages=["fastim2col", "fastim2col._plan", "fastim2col.dask"],
        ext_modules=cythonize(extensions, include_path=["src"],
                              compiler_directives=dict(ext["cython"])),
        cmdclass={"build_ext": BuildExt},
    )


if __name__ == "__main__":
    main()
