"""fastim2col.show_config(): what this build is and what it runs on."""
from __future__ import annotations

import json
import platform
import sys


def _build_info() -> dict:
    import importlib

    from . import _direct, _openmp_info
    flags: dict = dict(_openmp_info.BUILD_FLAGS)
    try:
        # written next to the compiled modules by meson or setup.py
        # (src/_build_flags.py.in); BUILD_FLAGS above is a copy of its dict
        record = importlib.import_module(f"{__package__}._build_flags")
        flags["module_c_args"] = dict(getattr(record, "MODULE_C_ARGS", {}))
    except ImportError:  # a build older than the record
        pass
    return {
        "openmp": _openmp_info.OPENMP_ENABLED,
        "direct_kernels_isa": _direct.isa(),
        "compiler": _openmp_info.COMPILER,
        # the build system, its options, and the flags each module was
        # compiled with: c_args for all, module_c_args[name] for one
        "build_flags": flags,
    }


def show_config(mode: str = "stdout"):
    """Print or return the build and runtime configuration.

    The version, the BLAS library SciPy uses and its threads, the OpenMP
    runtime and its threads, and the compiler and flags this build used.

    Parameters
    ----------
    mode : {"stdout", "dicts"}, optional
        ``"stdout"`` (the default) prints it; ``"dicts"`` returns it.

    Returns
    -------
    dict or None
        With ``mode="dicts"``, the configuration as nested dicts.

    Examples
    --------
    >>> import fastim2col
    >>> info = fastim2col.show_config(mode="dicts")
    >>> info["fastim2col"]["version"] == fastim2col.__version__
    True
    >>> sorted(info)[:3]
    ['build', 'fastim2col', 'numpy']
    """
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
        import os
        scipy_dir = os.path.dirname(os.path.dirname(scipy.__file__))
        own_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        pools = threadpool_info()
        openmp_pools = [d for d in pools if d.get("user_api") == "openmp"]
        for d in pools:
            path = os.path.abspath(d.get("filepath") or "")
            entry = {k: d.get(k) for k in ("user_api", "internal_api", "num_threads",
                                          "version", "architecture", "filepath")}
            if d.get("user_api") == "blas":
                # SciPy's BLAS is the one fastim2col calls (scipy.linalg.cython_blas):
                # the library bundled in scipy.libs, or a shared one when there is one
                in_scipy = path.startswith(os.path.join(scipy_dir, "scipy"))
                n_blas = sum(p.get("user_api") == "blas" for p in pools)
                entry["used_by_fastim2col"] = in_scipy or n_blas == 1
            else:
                # fastim2col's own runtime: the one vendored in fastim2col.libs,
                # or the only one loaded
                entry["used_by_fastim2col"] = (path.startswith(os.path.join(own_dir, "fastim2col"))
                                               or len(openmp_pools) == 1)
            info["threadpools"].append(entry)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    print(json.dumps(info, indent=2, default=str))
    return None
