"""The public convolution API, with torch.nn.functional's names and semantics
on NumPy arrays. Each function validates its arguments into a Call
(fastim2col._calls), plans it (fastim2col._planner: one Plan) and executes
the plan (fastim2col._execute); fastim2col.explain returns that plan."""
from __future__ import annotations

import numpy as np

from . import _calls
from typing import Sequence

from ._args import (AnyLayout, ArrayLike, Int1, Int3, IntPair, Layout, Layout1, Layout3,
                    Padding, Padding1, Padding3, PaddingMode)
from ._execute import run

__all__ = ["im2col", "col2im", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
           "conv_transpose2d", "conv_transpose3d"]


def im2col(x: ArrayLike, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1, *, padding_mode: PaddingMode = "zeros",
           layout: AnyLayout | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Unroll sliding windows of ``x`` into columns, like ``torch.nn.functional.unfold``.

    Parameters
    ----------
    x : array_like
        NCHW: ``(N, C, H, W)`` or unbatched ``(C, H, W)``. NHWC: ``(N, H, W, C)``
        or unbatched ``(H, W, C)``. 1-d: ``(N, C, L)`` (NCL) or ``(N, L, C)``
        (NLC); 3-d: ``(N, C, D, H, W)`` (NCDHW) or ``(N, D, H, W, C)`` (NDHWC).
    kernel_size : int or tuple of 1, 2 or 3 ints
        The window's size; its length is the number of spatial dimensions (an
        int: 2-d, ``(kh, kw)``).
    stride, padding, dilation : int or tuple, optional
        As in ``torch.nn.functional.unfold`` (defaults 1, 0, 1). Padding is zeros.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : str, optional
        Memory layout of ``x`` and of the result: ``"NCHW"``/``"NHWC"`` (2-d),
        ``"NCL"``/``"NLC"`` (1-d), ``"NCDHW"``/``"NDHWC"`` (3-d); default (None)
        channels first.
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCHW: ``(N, C*kh*kw, L)``, rows ordered (c, i, j) and ``L = Ho*Wo``
        output positions in row-major order (unbatched: ``(C*kh*kw, L)``).
        NHWC: ``(N, L, kh*kw*C)``, columns ordered (i, j, c). 1-d and 3-d
        alike: rows (c, taps in row-major order), or columns (taps, c).

    See Also
    --------
    col2im : the adjoint, summing columns back into images.

    Examples
    --------
    >>> import numpy as np
    >>> import fastim2col
    >>> x = np.arange(9.0).reshape(1, 3, 3)          # one channel of 3x3, unbatched
    >>> fastim2col.im2col(x, kernel_size=2)          # 4 taps x 4 windows
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    >>> fastim2col.im2col(np.zeros((2, 3, 8, 8), np.float32), 3, stride=2, padding=1).shape
    (2, 27, 16)
    >>> fastim2col.im2col(np.zeros((2, 3, 10)), (4,)).shape          # 1-d windows
    (2, 12, 7)
    """
    return run(_calls.im2col(x, kernel_size, stride, padding, dilation,
                             padding_mode=padding_mode, layout=layout, out=out))


def col2im(cols: ArrayLike, output_size: IntPair, kernel_size: IntPair, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1, *, padding_mode: PaddingMode = "zeros",
           layout: AnyLayout | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Sum columns back into images, like ``torch.nn.functional.fold``: the adjoint
    of :func:`im2col`, overlapping windows adding up.

    Parameters
    ----------
    cols : array_like
        NCHW: ``(N, C*kh*kw, L)`` or unbatched ``(C*kh*kw, L)``. NHWC:
        ``(N, L, kh*kw*C)`` or unbatched ``(L, kh*kw*C)``. 1-d and 3-d alike.
    output_size : int or tuple
        The images' ``(H, W)`` (1-d: ``(L,)``, 3-d: ``(D, H, W)``).
    kernel_size : int or tuple of 1, 2 or 3 ints
        The window's size; its length is the number of spatial dimensions.
    stride, padding, dilation : int or tuple, optional
        As in ``torch.nn.functional.fold`` (defaults 1, 0, 1).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : str, optional
        Memory layout of ``cols`` and of the result, as for :func:`im2col`.
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCHW: ``(N, C, H, W)`` (unbatched: ``(C, H, W)``). NHWC: ``(N, H, W, C)``.

    See Also
    --------
    im2col : the unrolling this sums back.

    Examples
    --------
    Folding the columns of an all-ones image counts how many windows cover
    each pixel:

    >>> import numpy as np
    >>> import fastim2col
    >>> cols = fastim2col.im2col(np.ones((1, 3, 3)), kernel_size=2)
    >>> fastim2col.col2im(cols, output_size=3, kernel_size=2)
    array([[[1., 2., 1.],
            [2., 4., 2.],
            [1., 2., 1.]]])
    """
    return run(_calls.col2im(cols, output_size, kernel_size, stride, padding, dilation,
                             padding_mode=padding_mode, layout=layout, out=out))


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1,
           *, padding_mode: PaddingMode = "zeros",
           layout: Layout = "NCHW", out: np.ndarray | None = None) -> np.ndarray:
    """2-D convolution (cross-correlation), like ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : array_like
        NCHW: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``. NHWC:
        ``(N, H, W, C_in)`` or unbatched ``(H, W, C_in)``.
    weight : array_like
        NCHW: ``(C_out, C_in/groups, kh, kw)``. NHWC: ``(C_out, kh, kw, C_in/groups)``.
    bias : array_like, optional
        ``(C_out,)``, added to every output position.
    stride, dilation : int or (int, int), optional
        Defaults 1.
    padding : int, (int, int), "valid" or "same", optional
        Zero padding (default 0). ``"same"`` keeps the input's size (the odd
        extra row/column goes at the bottom/right, as in torch; stride 1 only).
    groups : int, optional
        Split the channels into this many groups (``groups == C_in``: depthwise).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : {"NCHW", "NHWC"}, optional
        Memory layout of ``x``, ``weight`` and the result (default ``"NCHW"``).
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCHW: ``(N, C_out, Ho, Wo)``; NHWC: ``(N, Ho, Wo, C_out)``, with
        ``Ho = (H + 2*padding - dilation*(kh-1) - 1) // stride + 1``.
        float32 inputs give float32 (``sgemm``), float64 and integers float64.

    See Also
    --------
    fastim2col.grad.conv2d_input, fastim2col.grad.conv2d_weight : its gradients.
    fastim2col.explain : the kernel and threads a call would use.

    Examples
    --------
    >>> import numpy as np
    >>> import fastim2col
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)            # (N, C_in, H, W)
    >>> w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])       # (C_out, C_in, kh, kw)
    >>> fastim2col.conv2d(x, w)                            # x[i, j] - x[i+1, j+1]
    array([[[[-5., -5., -5.],
             [-5., -5., -5.],
             [-5., -5., -5.]]]])
    >>> fastim2col.conv2d(x, w, bias=[10.0], stride=2, padding=1)
    array([[[[10.,  8., 10.],
             [ 2.,  5., 17.],
             [10., 23., 25.]]]])

    Channels last, and ``padding="same"``:

    >>> xs = np.ones((2, 5, 5, 3), np.float32)              # (N, H, W, C_in)
    >>> ws = np.ones((4, 3, 3, 3), np.float32)              # (C_out, kh, kw, C_in)
    >>> fastim2col.conv2d(xs, ws, padding="same", layout="NHWC").shape
    (2, 5, 5, 4)
    """
    return run(_calls.conv2d(x, weight, bias, stride, padding, dilation, groups,
                             padding_mode=padding_mode, layout=layout, out=out))


def conv_transpose2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                     groups: int = 1, dilation: IntPair = 1, *,
                     padding_mode: PaddingMode = "zeros",
                     output_size: Sequence[int] | None = None, layout: Layout = "NCHW",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 2-D convolution, like ``torch.nn.functional.conv_transpose2d``
    (the input gradient of conv2d, plus a bias).

    Parameters
    ----------
    x : array_like
        NCHW: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``. NHWC:
        ``(N, H, W, C_in)``.
    weight : array_like
        NCHW: ``(C_in, C_out/groups, kh, kw)``. NHWC: ``(C_in, kh, kw, C_out/groups)``.
    bias : array_like, optional
        ``(C_out,)``.
    stride, padding, dilation : int or (int, int), optional
        Defaults 1, 0, 1.
    output_padding : int or (int, int), optional
        Extra rows/columns at the bottom/right of the result (default 0);
        smaller than stride or dilation.
    groups : int, optional
        Default 1.
    output_size : tuple of ints, optional
        ``(Ho, Wo)`` (or ``(N, C_out, Ho, Wo)``), as
        ``torch.nn.ConvTranspose2d.forward`` takes it: the output_padding that
        gives it (then output_padding must be 0).
    padding_mode : {"zeros"}, optional
        Only ``"zeros"``, as torch's transposed convolutions.
    layout : {"NCHW", "NHWC"}, optional
        Memory layout of ``x``, ``weight`` and the result (default ``"NCHW"``).
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCHW: ``(N, C_out, Ho, Wo)`` with ``Ho = (H-1)*stride - 2*padding +
        dilation*(kh-1) + output_padding + 1``. NHWC: ``(N, Ho, Wo, C_out)``.

    Examples
    --------
    Each input pixel stamps the kernel, scaled, into the output, ``stride``
    pixels apart:

    >>> import numpy as np
    >>> import fastim2col
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])          # (N, C_in, H, W)
    >>> w = np.ones((1, 1, 2, 2))                           # (C_in, C_out, kh, kw)
    >>> fastim2col.conv_transpose2d(x, w, stride=2)
    array([[[[1., 1., 2., 2.],
             [1., 1., 2., 2.],
             [3., 3., 4., 4.],
             [3., 3., 4., 4.]]]])
    >>> fastim2col.conv_transpose2d(x, w)                   # stride 1: overlaps add up
    array([[[[ 1.,  3.,  2.],
             [ 4., 10.,  6.],
             [ 3.,  7.,  4.]]]])
    """
    return run(_calls.conv_transpose2d(x, weight, bias, stride, padding, output_padding,
                                       groups, dilation, output_size=output_size,
                                       padding_mode=padding_mode, layout=layout, out=out))


def conv1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: Int1 = 1, padding: Padding1 = 0, dilation: Int1 = 1, groups: int = 1,
           *, padding_mode: PaddingMode = "zeros",
           layout: Layout1 = "NCL", out: np.ndarray | None = None) -> np.ndarray:
    """1-D convolution (cross-correlation), like ``torch.nn.functional.conv1d``.

    Runs as conv2d of unit height: the same planner and kernels.

    Parameters
    ----------
    x : array_like
        NCL: ``(N, C_in, L)`` or unbatched ``(C_in, L)``. NLC: ``(N, L, C_in)``.
    weight : array_like
        NCL: ``(C_out, C_in/groups, k)``. NLC: ``(C_out, k, C_in/groups)``.
    bias : array_like, optional
        ``(C_out,)``.
    stride, dilation : int or (int,), optional
        Defaults 1.
    padding : int, (int,), "valid" or "same", optional
        Zero padding (default 0); ``"same"`` keeps the length (stride 1 only).
    groups : int, optional
        Default 1 (``groups == C_in``: depthwise).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : {"NCL", "NLC"}, optional
        Memory layout of ``x``, ``weight`` and the result (default ``"NCL"``).
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCL: ``(N, C_out, Lo)``; NLC: ``(N, Lo, C_out)``, with
        ``Lo = (L + 2*padding - dilation*(k-1) - 1) // stride + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastim2col
    >>> x = np.arange(6.0).reshape(1, 1, 6)           # (N, C_in, L)
    >>> w = np.array([[[1.0, -1.0]]])                 # (C_out, C_in, k)
    >>> fastim2col.conv1d(x, w)                       # x[i] - x[i+1]
    array([[[-1., -1., -1., -1., -1.]]])
    >>> fastim2col.conv1d(x, w, stride=2, padding=1)
    array([[[ 0., -1., -1.,  5.]]])

    A dilated (WaveNet-style) layer, channels last:

    >>> fastim2col.conv1d(np.ones((2, 16000, 1), np.float32), np.ones((8, 2, 1), np.float32),
    ...                   dilation=4, layout="NLC").shape
    (2, 15996, 8)
    """
    return run(_calls.conv1d(x, weight, bias, stride, padding, dilation, groups,
                             padding_mode=padding_mode, layout=layout, out=out))


def conv_transpose1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: Int1 = 1, padding: Int1 = 0, output_padding: Int1 = 0,
                     groups: int = 1, dilation: Int1 = 1, *, padding_mode: PaddingMode = "zeros",
                     output_size: Sequence[int] | int | None = None, layout: Layout1 = "NCL",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 1-D convolution, like ``torch.nn.functional.conv_transpose1d``.

    Parameters
    ----------
    x : array_like
        NCL: ``(N, C_in, L)`` or unbatched ``(C_in, L)``. NLC: ``(N, L, C_in)``.
    weight : array_like
        NCL: ``(C_in, C_out/groups, k)``. NLC: ``(C_in, k, C_out/groups)``.
    bias : array_like, optional
        ``(C_out,)``.
    stride, padding, output_padding, dilation : int or (int,), optional
        Defaults 1, 0, 0, 1.
    groups : int, optional
        Default 1.
    output_size : int or tuple of ints, optional
        The result's length (or ``(N, C_out, Lo)``), as
        ``torch.nn.ConvTranspose1d.forward`` takes it: the output_padding that gives it.
    padding_mode : {"zeros"}, optional
        Only ``"zeros"``, as torch's transposed convolutions.
    layout : {"NCL", "NLC"}, optional
        Default ``"NCL"``.
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCL: ``(N, C_out, Lo)`` with ``Lo = (L-1)*stride - 2*padding +
        dilation*(k-1) + output_padding + 1``; NLC: ``(N, Lo, C_out)``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastim2col
    >>> y = np.array([[[1.0, 2.0, 3.0]]])
    >>> fastim2col.conv_transpose1d(y, np.ones((1, 1, 2)), stride=2)
    array([[[1., 1., 2., 2., 3., 3.]]])
    >>> fastim2col.conv_transpose1d(y, np.ones((1, 1, 2)), stride=2, output_size=7).shape
    (1, 1, 7)
    """
    return run(_calls.conv_transpose1d(x, weight, bias, stride, padding, output_padding,
                                       groups, dilation, output_size=output_size,
                                       padding_mode=padding_mode, layout=layout, out=out))


def conv3d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: Int3 = 1, padding: Padding3 = 0, dilation: Int3 = 1, groups: int = 1,
           *, padding_mode: PaddingMode = "zeros",
           layout: Layout3 = "NCDHW", out: np.ndarray | None = None) -> np.ndarray:
    """3-D convolution (cross-correlation), like ``torch.nn.functional.conv3d``.

    Tiles of the unrolled volume and GEMM, as conv2d's GEMM kernel: the whole
    unrolled matrix never exists.

    Parameters
    ----------
    x : array_like
        NCDHW: ``(N, C_in, D, H, W)`` or unbatched ``(C_in, D, H, W)``. NDHWC:
        ``(N, D, H, W, C_in)``.
    weight : array_like
        NCDHW: ``(C_out, C_in/groups, kd, kh, kw)``. NDHWC:
        ``(C_out, kd, kh, kw, C_in/groups)``.
    bias : array_like, optional
        ``(C_out,)``.
    stride, dilation : int or (int, int, int), optional
        Defaults 1.
    padding : int, (int, int, int), "valid" or "same", optional
        Zero padding (default 0).
    groups : int, optional
        Default 1.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : {"NCDHW", "NDHWC"}, optional
        Default ``"NCDHW"``.
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCDHW: ``(N, C_out, Do, Ho, Wo)``; NDHWC: ``(N, Do, Ho, Wo, C_out)``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastim2col
    >>> x = np.ones((1, 1, 3, 3, 3))                  # (N, C_in, D, H, W)
    >>> fastim2col.conv3d(x, np.ones((1, 1, 2, 2, 2)))  # each window sums 8 ones
    array([[[[[8., 8.],
              [8., 8.]],
    <BLANKLINE>
             [[8., 8.],
              [8., 8.]]]]])
    >>> x = np.zeros((1, 64, 8, 56, 56), np.float32)    # a C3D layer
    >>> fastim2col.conv3d(x, np.zeros((128, 64, 3, 3, 3), np.float32), padding=1).shape
    (1, 128, 8, 56, 56)
    """
    return run(_calls.conv3d(x, weight, bias, stride, padding, dilation, groups,
                             padding_mode=padding_mode, layout=layout, out=out))


def conv_transpose3d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: Int3 = 1, padding: Int3 = 0, output_padding: Int3 = 0,
                     groups: int = 1, dilation: Int3 = 1, *, padding_mode: PaddingMode = "zeros",
                     output_size: Sequence[int] | None = None, layout: Layout3 = "NCDHW",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 3-D convolution, like ``torch.nn.functional.conv_transpose3d``.

    Parameters
    ----------
    x : array_like
        NCDHW: ``(N, C_in, D, H, W)`` or unbatched. NDHWC: ``(N, D, H, W, C_in)``.
    weight : array_like
        NCDHW: ``(C_in, C_out/groups, kd, kh, kw)``. NDHWC:
        ``(C_in, kd, kh, kw, C_out/groups)``.
    bias : array_like, optional
        ``(C_out,)``.
    stride, padding, output_padding, dilation : int or (int, int, int), optional
        Defaults 1, 0, 0, 1.
    groups : int, optional
        Default 1.
    output_size : tuple of ints, optional
        ``(Do, Ho, Wo)`` (or with ``N, C_out`` first), as
        ``torch.nn.ConvTranspose3d.forward`` takes it.
    padding_mode : {"zeros"}, optional
        Only ``"zeros"``, as torch's transposed convolutions.
    layout : {"NCDHW", "NDHWC"}, optional
        Default ``"NCDHW"``.
    out : ndarray, optional
        A C-contiguous array of exactly the result's shape and dtype to fill.

    Returns
    -------
    ndarray
        NCDHW: ``(N, C_out, Do, Ho, Wo)``, each size as for
        :func:`conv_transpose2d`; NDHWC: ``(N, Do, Ho, Wo, C_out)``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastim2col
    >>> fastim2col.conv_transpose3d(np.ones((1, 1, 1, 1, 2)), np.ones((1, 1, 1, 2, 2)))
    array([[[[[1., 2., 1.],
              [1., 2., 1.]]]]])
    >>> x = np.ones((1, 4, 2, 3, 3))
    >>> fastim2col.conv_transpose3d(x, np.ones((4, 2, 3, 3, 3)), stride=2, padding=1,
    ...                             output_size=(4, 6, 6)).shape
    (1, 2, 4, 6, 6)
    """
    return run(_calls.conv_transpose3d(x, weight, bias, stride, padding, output_padding,
                                       groups, dilation, output_size=output_size,
                                       padding_mode=padding_mode, layout=layout, out=out))
