"""fastim2col.show_config(): what this build is and what it runs on."""
from __future__ import annotations

import json
import platform
import sys


def _build_info() -> dict:
    from . import _openmp_info
    return {
        "openmp": _openmp_info.OPENMP_ENABLED,
        "compiler": _openmp_info.COMPILER,
        "build_flags": _openmp_info.BUILD_FLAGS,
    }


def show_config(mode: str = "stdout"):
    """Print (mode='stdout') or return (mode='dicts') the version, the BLAS
    library SciPy uses and its threads, the OpenMP runtime and its threads, and
    the compiler and flags this build used."""
    import numpy
    import scipy

    from . import __version__
    from ._threads import get_num_threads

    info = {
        "fastim2col": {"version": __version__, "kernel_threads": get_num_threads()},
        "build": _build_info(),
        "python": {"version": sys.version.split()[0], "platform": platform.platform()},
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "threadpools": [],
    }
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (make sure SciPy's BLAS is loaded)
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                   "architecture", "filepath")}
            for d in threadpool_info()
        ]
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    print(json.dumps(info, indent=2, default=str))
    return None
