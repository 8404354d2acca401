"""Thread control: how many OpenMP threads the kernels use, and BLAS pinned to
one thread while they run (OpenMP and OpenBLAS threads would otherwise
oversubscribe the cores: a known 10x slowdown)."""
from __future__ import annotations

import operator
import os
import threading

from . import _openmp_info

__all__ = ["set_num_threads", "get_num_threads"]

_user_threads: int | None = None
# An absurd request would make the OpenMP runtime fail to create threads
# (and abort): refuse it up front.
MAX_THREADS = max(1024, 4 * (os.cpu_count() or 1))
# omp_get_max_threads() at import: OMP_NUM_THREADS, else the usable cores.
_default_threads = _openmp_info.max_threads()


def set_num_threads(n: int | None) -> None:
    """Use ``n`` OpenMP threads in every kernel (``None``: back to the default).

    The default follows ``OMP_NUM_THREADS``, else the number of usable cores.
    A lower limit set with ``threadpoolctl.threadpool_limits`` (OpenMP API)
    still applies on top of it. Without OpenMP the kernels always run on one
    thread.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None for the default.

    Examples
    --------
    >>> import fastim2col
    >>> fastim2col.set_num_threads(1)
    >>> fastim2col.get_num_threads()
    1
    >>> fastim2col.set_num_threads(None)      # back to the default
    """
    global _user_threads
    if n is None:
        _user_threads = None
        return
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int >= 1 or None, got {n!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be between 1 and {MAX_THREADS}, got {n}")
    _user_threads = n


def get_num_threads() -> int:
    """The number of OpenMP threads the next kernel call will use.

    Returns
    -------
    int
        What :func:`set_num_threads` set, else the default, lowered by a
        ``threadpoolctl`` OpenMP limit; 1 in a build without OpenMP.

    Examples
    --------
    >>> import fastim2col
    >>> fastim2col.get_num_threads() >= 1
    True
    """
    if not _openmp_info.OPENMP_ENABLED:
        return 1
    omp_now = _openmp_info.max_threads()
    if _user_threads is None:
        return omp_now
    if omp_now < _default_threads:   # a threadpoolctl / omp_set_num_threads limit
        return min(_user_threads, omp_now)
    return _user_threads


class _BlasLibrary:
    """get/set of one BLAS library's thread count. OpenBLAS is called through
    its own C functions (ctypes): threadpoolctl's setters only act for the
    thread that first used them, and kernels are called from any thread."""

    _OPENBLAS_SYMBOLS = ("openblas_{}_num_threads", "scipy_openblas_{}_num_threads",
                         "scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_")

    def __init__(self, controller) -> None:
        self._controller = controller
        self._get = self._set = None
        if controller.internal_api == "openblas":
            import ctypes
            lib = ctypes.CDLL(controller.filepath, mode=getattr(ctypes, "RTLD_NOLOAD", 0))
            for pattern in self._OPENBLAS_SYMBOLS:
                getter = getattr(lib, pattern.format("get"), None)
                setter = getattr(lib, pattern.format("set"), None)
                if getter is not None and setter is not None:
                    getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                    self._get, self._set = getter, setter
                    break

    def get(self) -> int:
        return self._get() if self._get is not None else self._controller.get_num_threads()

    def set(self, n: int) -> None:
        if self._set is not None:
            self._set(n)
        else:
            self._controller.set_num_threads(n)


class _BlasPinnedToOneThread:
    """Context manager: every BLAS library in the process runs one thread.

    Re-entrant across Python threads: the first caller in saves the thread
    counts and sets 1, the last one out restores them. The libraries are
    looked up once (threadpoolctl's scan costs milliseconds; a direct
    set_num_threads call costs about a microsecond).

    The setting is process-wide (BLAS libraries have no per-thread count):
    a BLAS thread limit changed from another Python thread while a kernel
    runs may be undone when the kernel finishes, or vice versa.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._libraries: list[_BlasLibrary] | None = None
        self._saved: list[int] = []

    def _find(self) -> list[_BlasLibrary]:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:   # pragma: no cover - threadpoolctl is a dependency
            return []
        import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS first)
        ctl = ThreadpoolController().select(user_api="blas")
        return [_BlasLibrary(c) for c in ctl.lib_controllers]

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                if self._libraries is None:
                    self._libraries = self._find()
                self._saved = [lib.get() for lib in self._libraries]
                for lib, n in zip(self._libraries, self._saved):
                    if n != 1:
                        lib.set(1)
            self._depth += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lib, n in zip(self._libraries or (), self._saved):
                    if n != 1:
                        lib.set(n)


blas_single_threaded = _BlasPinnedToOneThread()
