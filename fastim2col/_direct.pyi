"""Type stub for the compiled kernel in src/_direct.pyx (keep in sync).

Internal: fastim2col.functional.conv2d checks every argument before calling it.
"""
from typing import Sequence

import numpy as np

def isa() -> str:
    """The instruction set the direct kernels run with on this CPU."""

def force_isa(level: int) -> int:
    """For tests: run the kernels at ISA level `level` (-1: the best)."""

THIN_TERMS: int
THIN_PREFETCH_BYTES: int
THIN_PREFETCH_C_BYTES: int
MAX_CO: int
GRID_BYTES: int
CACHE_LINE: int

def best_isa_level() -> int:
    """The best ISA level this CPU runs (see force_isa), whatever is forced."""

def thin_gemm(w: np.ndarray, g: np.ndarray, n_rows: int, c: np.ndarray,
              add: bool = False, g_at: Sequence[int] | None = None,
              c_at: Sequence[int] | None = None, w_terms: Sequence[int] | None = None,
              g_terms: Sequence[int] | None = None) -> np.ndarray:
    """For tests: c[p, r] = sum_o w[o, r] g[o, p] (add: c[p, r] plus that sum)
    for r < n_rows, by the thin GEMM kernel at the ISA in effect; returns c.
    w may be a transposed view (unit row stride: the kernel's w_row).
    g_at, c_at: position p is g's column g_at[p] and c's row c_at[p].
    w_terms, g_terms: term o is w's row w_terms[o] and g's row g_terms[o]."""

def vector_elements(itemsize: int) -> int:
    """Elements per vector of the direct kernels for this item size."""

def unit_claims(
    n_units: int, n_threads: int, slow_run: int = -1, slow_seconds: float = 0.0
) -> np.ndarray:
    """For tests: the units each of n_threads runs claims from the forward
    kernels' unit scheduler, in order, (n_threads, n_units), -1 past the last."""

def direct_forward(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
    *,
    groups: int,
    geom: tuple[int, ...],
    split: tuple[int, int, int],
    n_threads: int,
    flip_weights: bool = False,
    nhwc: bool = False,
) -> None:
    """out = conv2d(x, w, groups) + bias, NCHW, by direct accumulation; x any
    strides; w C-contiguous (C_out, C/groups*kh*kw); out C-contiguous.
    flip_weights: w are the weights of the conv2d whose input gradient this is;
    nhwc: out is NHWC and w's rows (i, j, c)-ordered (x an NCHW view)."""

def direct_weight(
    x: np.ndarray,
    go: np.ndarray,
    dw: np.ndarray,
    *,
    groups: int,
    geom: tuple[int, ...],
    split: tuple[int, int, int],
    n_threads: int,
) -> bool:
    """dw = the weight gradient of conv2d(x, w, groups), NCHW, by direct
    accumulation; False (dw undefined) when x holds a NaN or an infinity."""
