"""Type stub for src/_openmp_info.pyx (keep in sync)."""

OPENMP_ENABLED: bool
"""Whether this build was compiled with OpenMP (else kernels run on one thread)."""
COMPILER: str
"""The C compiler that built the extensions, e.g. 'gcc 12.2.0'."""
BUILD_FLAGS: dict[str, str]
"""What meson recorded at configure time (fastim2col/_build_flags.py)."""

def max_threads() -> int:
    """omp_get_max_threads(): honours OMP_NUM_THREADS and threadpoolctl limits."""
