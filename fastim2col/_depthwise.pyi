"""Type stub for the compiled kernel in src/_depthwise.pyx (keep in sync).

Internal: fastim2col.functional.conv2d checks every argument before calling it.
"""
import numpy as np

def depthwise_forward(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
    multiplier: int,
    geom: tuple[int, ...],
    nhwc: bool,
    n_threads: int,
) -> None:
    """out = depthwise conv2d(x, w) + bias; x any strides; w C-contiguous,
    (C_out, kh*kw) for NCHW or (kh*kw, C_out) for NHWC; out C-contiguous."""
