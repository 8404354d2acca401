"""How many kernel threads one dask task may use, and running a block under
that limit.

A dask worker already runs several tasks at once (its threads); if each task
also ran fastim2col on every core, cores x threads OpenMP threads would fight
for the cores. So each task runs with max(1, cores // threads sharing them):
the threads of every worker on the same host on a dask.distributed cluster
(known from the client when the graph is built, else asked by the first task
of each worker process), the pool's threads on the local threaded scheduler,
all cores on the synchronous one. ``threads=`` overrides it.

The limit is set with OpenMP's per-thread setting (threadpoolctl), which
fastim2col.get_num_threads honours: concurrent tasks in one process do not
disturb each other. (A fastim2col.set_num_threads(n) made inside a worker
process can override it: leave it unset there, ``threads=`` is the knob.)
"""
from __future__ import annotations

import multiprocessing
import operator
import os
import threading
from contextlib import contextmanager
from typing import Iterator, Mapping

_openmp_controller = None
_controller_lock = threading.Lock()


def check_threads(threads) -> int | None:
    """threads=: None (automatic) or an int >= 1."""
    if threads is None:
        return None
    try:
        if isinstance(threads, bool):
            raise TypeError
        threads = operator.index(threads)
    except TypeError:
        raise TypeError(f"threads must be an int >= 1 or None, got {threads!r}") from None
    if threads < 1:
        raise ValueError(f"threads must be an int >= 1 or None, got {threads}")
    return threads


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not on Linux
        return os.cpu_count() or 1


def host_threads_of_client() -> dict[str, int]:
    """{host: total worker threads on it} of the current dask.distributed
    client's cluster, {} without one. Read when the graph is built: a task
    cannot cheaply ask how many workers share its host."""
    try:
        from distributed import default_client
        from distributed.comm import get_address_host
        client = default_client()
    except (ImportError, ValueError):
        return {}
    totals: dict[str, int] = {}
    for address, n in client.nthreads().items():
        host = get_address_host(address)
        totals[host] = totals.get(host, 0) + n
    return totals


_asked_cluster: dict[str, int] | None = None


def _cluster_host_threads() -> dict[str, int]:
    """host_threads_of_client() asked from inside a task, once a process: for
    graphs built before any client existed."""
    global _asked_cluster
    if _asked_cluster is None:
        try:
            from distributed import get_client
            from distributed.comm import get_address_host
            totals: dict[str, int] = {}
            for address, n in get_client().nthreads().items():
                host = get_address_host(address)
                totals[host] = totals.get(host, 0) + n
            _asked_cluster = totals
        except Exception:   # any failure: fall back to the worker's own threads
            _asked_cluster = {}
    return _asked_cluster


def task_threads(requested: int | None, host_threads: Mapping[str, int]) -> int:
    """The kernel threads of a task running now (see the module docstring)."""
    if requested is not None:
        return requested
    cores = usable_cores()
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        from distributed.comm import get_address_host
        host = get_address_host(worker.address)
        sharing = (host_threads or _cluster_host_threads()).get(host) or worker.state.nthreads
        return max(1, cores // max(1, sharing))
    import dask
    if threading.current_thread() is threading.main_thread():
        if multiprocessing.parent_process() is None:
            return cores              # the synchronous scheduler: one task at a time
        sharing = dask.config.get("num_workers", None) or cores   # processes scheduler
        return max(1, cores // sharing)
    sharing = dask.config.get("num_workers", None) or cores       # threaded scheduler
    return max(1, cores // sharing)


@contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    """Run the block's kernels on n OpenMP threads (this Python thread only)."""
    global _openmp_controller
    with _controller_lock:
        if _openmp_controller is None:
            from threadpoolctl import ThreadpoolController
            import fastim2col   # noqa: F401  (its OpenMP runtime loaded before the scan)
            _openmp_controller = ThreadpoolController().select(user_api="openmp")
    if not _openmp_controller.lib_controllers:   # a build without OpenMP
        yield
        return
    with _openmp_controller.limit(limits=n):
        yield
