"""What this machine is, read once: the facts the planner decides by.

Everything here is fixed for the life of the process (the thread count a
call runs on is not: see fastim2col._threads.get_num_threads).
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

from . import _direct, _openmp_info


class Machine(NamedTuple):
    isa: str                    # the direct kernels' instruction set ("avx512", ...)
    isa_level: int              # 0 baseline, 1 AVX2 + FMA, 2 AVX-512 (_direct.force_isa)
    vector_elements_f32: int    # elements per vector of the direct kernels
    vector_elements_f64: int
    cache_line: int             # bytes
    l1d_bytes: int              # per core; 0 where the OS does not say
    l2_bytes: int
    cpus: int                   # usable cores
    openmp: bool

    def vector_elements(self, itemsize: int) -> int:
        return self.vector_elements_f32 if itemsize == 4 else self.vector_elements_f64


def _cache_bytes(level: int) -> int:
    """Data cache size of `level` for cpu0 (Linux sysfs, else sysconf), 0 if unknown."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            path = os.path.join(base, index)
            with open(os.path.join(path, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() not in ("Data", "Unified"):
                    continue
            with open(os.path.join(path, "size")) as f:
                size = f.read().strip()
            scale = {"K": 1024, "M": 1024 ** 2}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    name = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE"}[level]
    try:
        return max(0, int(os.sysconf(name)))
    except (AttributeError, ValueError, OSError):
        return 0


@functools.lru_cache(maxsize=None)
def machine() -> Machine:
    """This machine's record (read on first use, then kept)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(
        isa=_direct.isa(),
        isa_level=_direct.best_isa_level(),
        vector_elements_f32=_direct.vector_elements(4),
        vector_elements_f64=_direct.vector_elements(8),
        cache_line=_direct.CACHE_LINE,
        l1d_bytes=_cache_bytes(1),
        l2_bytes=_cache_bytes(2),
        cpus=cpus or 1,
        openmp=bool(_openmp_info.OPENMP_ENABLED),
    )
