# cython: language_level=3
"""What the OpenMP runtime this build links to says (1 thread without OpenMP)."""
from _openmp cimport FASTIM2COL_OPENMP, omp_get_max_threads

OPENMP_ENABLED = bool(FASTIM2COL_OPENMP)


def max_threads():
    """omp_get_max_threads(): honours OMP_NUM_THREADS and threadpoolctl limits."""
    return omp_get_max_threads()


cdef extern from *:
    """
    #if defined(__clang__)
        #define FASTIM2COL_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
        #define FASTIM2COL_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
        #define FASTIM2COL_COMPILER "msvc"
    #else
        #define FASTIM2COL_COMPILER "unknown"
    #endif
    """
    const char* FASTIM2COL_COMPILER

COMPILER = FASTIM2COL_COMPILER.decode()
# Written by meson at configure time (src/meson.build); setup.py builds lack it.
try:
    from fastim2col._build_flags import BUILD_FLAGS
except ImportError:
    BUILD_FLAGS = {"build": "setup.py (flags not recorded)"}
