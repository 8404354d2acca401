"""Type stub for the compiled kernel in src/_depthwise.pyx (keep in sync).

Internal: fastim2col.functional.conv2d checks every argument before calling it.
"""
import numpy as np

def depthwise_forward(
    x: np.ndarray,
    w_taps: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
    *,
    multiplier: int,
    geom: tuple[int, ...],
    n_threads: int,
) -> None:
    """out = depthwise conv2d(x, w) + bias, NHWC; x (N, H, W, C) any strides;
    w_taps C-contiguous (kh*kw, C_out); out C-contiguous (N, Ho, Wo, C_out)."""
