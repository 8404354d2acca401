"""The public convolution API, with torch.nn.functional's names and semantics
on NumPy arrays. Each function validates its arguments into a Call
(fastim2col._calls), plans it (fastim2col._planner: one Plan) and executes
the plan (fastim2col._execute); fastim2col.explain returns that plan."""
from __future__ import annotations

import numpy as np

from . import _calls
from typing import Sequence

from ._args import (AnyLayout, ArrayLike, Int1, Int3, IntPair, Layout, Layout1, Layout3,
                    Padding, Padding1, Padding3)
from ._execute import run

__all__ = ["im2col", "col2im", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
           "conv_transpose2d", "conv_transpose3d"]


def im2col(x: ArrayLike, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1, *, layout: AnyLayout | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Unroll sliding windows of ``x`` into columns, like ``torch.nn.functional.unfold``.

    NCHW: x ``(N, C, H, W)`` gives ``(N, C*kh*kw, L)``, rows ordered (c, i, j) and
    L = Ho*Wo output positions in row-major order; unbatched ``(C, H, W)`` gives
    ``(C*kh*kw, L)``. NHWC: x ``(N, H, W, C)`` gives ``(N, L, kh*kw*C)``, columns
    ordered (i, j, c).

    1-d windows (``kernel_size`` a one-element tuple, e.g. ``(5,)``): x ``(N, C, L)``
    (layout ``"NCL"``, the default) gives ``(N, C*k, Lo)``; ``"NLC"``: x ``(N, L, C)``
    gives ``(N, Lo, k*C)``. ``layout=None`` is the channels-first layout.
    """
    return run(_calls.im2col(x, kernel_size, stride, padding, dilation, layout=layout, out=out))


def col2im(cols: ArrayLike, output_size: IntPair, kernel_size: IntPair, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1, *, layout: AnyLayout | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Sum columns back into images, like ``torch.nn.functional.fold``: the adjoint
    of :func:`im2col`, overlapping windows adding up.

    NCHW: cols ``(N, C*kh*kw, L)`` gives ``(N, C, H, W)`` with ``(H, W) = output_size``;
    unbatched ``(C*kh*kw, L)`` gives ``(C, H, W)``. NHWC: cols ``(N, L, kh*kw*C)``
    gives ``(N, H, W, C)``. 1-d (``kernel_size`` and ``output_size`` one-element
    tuples): cols ``(N, C*k, L)`` gives ``(N, C, length)`` (``"NLC"``: ``(N, L, k*C)``
    gives ``(N, length, C)``).
    """
    return run(_calls.col2im(cols, output_size, kernel_size, stride, padding, dilation,
                             layout=layout, out=out))


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1,
           *, layout: Layout = "NCHW", out: np.ndarray | None = None) -> np.ndarray:
    """2-D convolution (cross-correlation), like ``torch.nn.functional.conv2d``.

    NCHW: x ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``, weight
    ``(C_out, C_in/groups, kh, kw)``, result ``(N, C_out, Ho, Wo)``.
    NHWC: x ``(N, H, W, C_in)``, weight ``(C_out, kh, kw, C_in/groups)``,
    result ``(N, Ho, Wo, C_out)``. padding: int, pair, ``"valid"`` or ``"same"``.
    """
    return run(_calls.conv2d(x, weight, bias, stride, padding, dilation, groups,
                             layout=layout, out=out))


def conv_transpose2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                     groups: int = 1, dilation: IntPair = 1, *,
                     output_size: Sequence[int] | None = None, layout: Layout = "NCHW",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 2-D convolution, like ``torch.nn.functional.conv_transpose2d``
    (the input gradient of conv2d, plus a bias).

    NCHW: x ``(N, C_in, H, W)``, weight ``(C_in, C_out/groups, kh, kw)``, result
    ``(N, C_out, Ho, Wo)`` with ``Ho = (H-1)*stride - 2*padding + dilation*(kh-1)
    + output_padding + 1``. NHWC: x ``(N, H, W, C_in)``, weight
    ``(C_in, kh, kw, C_out/groups)``, result ``(N, Ho, Wo, C_out)``.
    output_size ``(Ho, Wo)`` (or ``(N, C_out, Ho, Wo)``), as
    ``torch.nn.ConvTranspose2d.forward`` takes it: picks the output_padding
    that gives it.
    """
    return run(_calls.conv_transpose2d(x, weight, bias, stride, padding, output_padding,
                                       groups, dilation, output_size=output_size,
                                       layout=layout, out=out))


def conv1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: Int1 = 1, padding: Padding1 = 0, dilation: Int1 = 1, groups: int = 1,
           *, layout: Layout1 = "NCL", out: np.ndarray | None = None) -> np.ndarray:
    """1-D convolution (cross-correlation), like ``torch.nn.functional.conv1d``.

    NCL: x ``(N, C_in, L)`` or unbatched ``(C_in, L)``, weight
    ``(C_out, C_in/groups, k)``, result ``(N, C_out, Lo)``. NLC: x ``(N, L, C_in)``,
    weight ``(C_out, k, C_in/groups)``, result ``(N, Lo, C_out)``. stride,
    padding, dilation: an int or a one-element tuple; padding also ``"valid"``
    or ``"same"``. Runs as conv2d of unit height (the same kernels and plan).
    """
    return run(_calls.conv1d(x, weight, bias, stride, padding, dilation, groups,
                             layout=layout, out=out))


def conv_transpose1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: Int1 = 1, padding: Int1 = 0, output_padding: Int1 = 0,
                     groups: int = 1, dilation: Int1 = 1, *,
                     output_size: Sequence[int] | int | None = None, layout: Layout1 = "NCL",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 1-D convolution, like ``torch.nn.functional.conv_transpose1d``.

    NCL: x ``(N, C_in, L)``, weight ``(C_in, C_out/groups, k)``, result
    ``(N, C_out, Lo)`` with ``Lo = (L-1)*stride - 2*padding + dilation*(k-1) +
    output_padding + 1``; NLC: x ``(N, L, C_in)``, weight ``(C_in, k, C_out/groups)``.
    output_size: as for :func:`conv_transpose2d`.
    """
    return run(_calls.conv_transpose1d(x, weight, bias, stride, padding, output_padding,
                                       groups, dilation, output_size=output_size,
                                       layout=layout, out=out))


def conv3d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: Int3 = 1, padding: Padding3 = 0, dilation: Int3 = 1, groups: int = 1,
           *, layout: Layout3 = "NCDHW", out: np.ndarray | None = None) -> np.ndarray:
    """3-D convolution (cross-correlation), like ``torch.nn.functional.conv3d``.

    NCDHW: x ``(N, C_in, D, H, W)`` or unbatched ``(C_in, D, H, W)``, weight
    ``(C_out, C_in/groups, kd, kh, kw)``, result ``(N, C_out, Do, Ho, Wo)``.
    NDHWC: x ``(N, D, H, W, C_in)``, weight ``(C_out, kd, kh, kw, C_in/groups)``,
    result ``(N, Do, Ho, Wo, C_out)``. stride, padding, dilation: an int or a
    triple; padding also ``"valid"`` or ``"same"``. Tiles of the unrolled
    volume and GEMM, as conv2d's GEMM kernel (the whole unrolled matrix never
    exists).
    """
    return run(_calls.conv3d(x, weight, bias, stride, padding, dilation, groups,
                             layout=layout, out=out))


def conv_transpose3d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: Int3 = 1, padding: Int3 = 0, output_padding: Int3 = 0,
                     groups: int = 1, dilation: Int3 = 1, *,
                     output_size: Sequence[int] | None = None, layout: Layout3 = "NCDHW",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 3-D convolution, like ``torch.nn.functional.conv_transpose3d``.

    NCDHW: x ``(N, C_in, D, H, W)``, weight ``(C_in, C_out/groups, kd, kh, kw)``,
    result ``(N, C_out, Do, Ho, Wo)``, each size as for :func:`conv_transpose2d`;
    NDHWC: x ``(N, D, H, W, C_in)``, weight ``(C_in, kd, kh, kw, C_out/groups)``.
    output_size: ``(Do, Ho, Wo)``, as for :func:`conv_transpose2d`.
    """
    return run(_calls.conv_transpose3d(x, weight, bias, stride, padding, output_padding,
                                       groups, dilation, output_size=output_size,
                                       layout=layout, out=out))
