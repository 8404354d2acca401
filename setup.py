"""setuptools + Cython build of the same kernels, for source checkouts:

    python setup.py build_ext --inplace

The real build (pip install, wheels) is meson-python (pyproject.toml,
meson.build). This file only mirrors it: same sources, same OpenMP fallback.
"""
import os
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["_im2col", "_conv", "_depthwise", "_direct", "_openmp_info"]
# as in src/meson.build: FMA contraction for the vector kernels of _direct_kernels.h
# (_direct's, and _conv's thin GEMM)
FP_CONTRACT = ["-ffp-contract=fast"] if os.name != "nt" else []
EXTRA_ARGS = {"_direct": FP_CONTRACT, "_conv": FP_CONTRACT}


def openmp_flags(compiler):
    """(compile, link) flags for OpenMP, or ([], []) when the compiler lacks it:
    the kernels then run single-threaded, as with meson's optional dependency."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    flags = ["-fopenmp"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "omp"), extra_postargs=flags)
        except Exception:
            print("warning: OpenMP not available: building single-threaded kernels",
                  file=sys.stderr)
            return [], []
    return flags, flags


class BuildExt(build_ext):
    def build_extensions(self):
        compile_flags, link_flags = openmp_flags(self.compiler)
        for ext in self.extensions:
            ext.extra_compile_args += compile_flags
            ext.extra_link_args += link_flags
        super().build_extensions()


extensions = [
    Extension(
        f"fastim2col.{name}",
        [f"src/{name}.pyx"],
        include_dirs=[numpy.get_include(), "src"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=(["-O3"] if os.name != "nt" else ["/O2"]) + EXTRA_ARGS.get(name, []),
    )
    for name in MODULES
]

setup(
    name="fastim2col",
    packages=["fastim2col"],
    ext_modules=cythonize(extensions, include_path=["src"],
                          compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
