"""Type stub for the compiled kernels in src/_im2col.pyx (keep in sync).

Internal: fastim2col.functional checks every argument before calling them.
"""
import numpy as np

def im2col(
    x: np.ndarray,
    out: np.ndarray,
    *,
    geom: tuple[int, ...],
    nhwc: bool,
    tile: int,
    n_threads: int,
) -> None:
    """Unroll x (N, C, H, W) or (N, H, W, C), any strides, into out (C-contiguous)."""

def col2im(
    cols: np.ndarray,
    out: np.ndarray,
    *,
    geom: tuple[int, ...],
    nhwc: bool,
    rows_per_band: int,
    n_threads: int,
) -> None:
    """Sum the C-contiguous columns cols back into out (C-contiguous)."""
