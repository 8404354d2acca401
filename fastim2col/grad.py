"""Gradients of conv1d, conv2d and conv3d, with torch.nn.grad's names and semantics.

The bias gradient needs no function: it is ``grad_output.sum(axis=(0, 2, 3))``
in NCHW and ``grad_output.sum(axis=(0, 1, 2))`` in NHWC (drop the leading 0
for unbatched arrays).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _calls
from ._args import (ArrayLike, Int1, Int3, IntPair, Layout, Layout1, Layout3, Padding,
                    Padding1, Padding3, PaddingMode)
from ._execute import run

__all__ = ["conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight",
           "conv3d_input", "conv3d_weight"]


def conv2d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1,
                 groups: int = 1, *, padding_mode: PaddingMode = "zeros",
                 layout: Layout = "NCHW",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv2d`` with respect to its input, like ``torch.nn.grad.conv2d_input``.

    Computed without materializing the column matrix: tile by tile (GEMM of
    the weights' transpose with ``grad_output``, folded back), or by the
    direct, tap-by-tap or element-by-element kernels where the planner picks
    them (:func:`fastim2col.explain` shows which; docs/design.md).

    Parameters
    ----------
    input_size : sequence of int
        The input's shape: ``(N, C, H, W)`` (NHWC: ``(N, H, W, C)``) or
        unbatched ``(C, H, W)``.
    weight : array_like
        The convolution's weight, as :func:`fastim2col.conv2d` takes it.
    grad_output : array_like
        The gradient of the loss with respect to conv2d's output.
    stride, padding, dilation, groups
        The forward call's arguments (padding may be ``"valid"``/``"same"``).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : {"NCHW", "NHWC"}, optional
        Default ``"NCHW"``.
    out : ndarray, optional
        A C-contiguous array of shape ``input_size`` and the result's dtype to fill.

    Returns
    -------
    ndarray
        The gradient with respect to the input, of shape ``input_size``.

    Examples
    --------
    The input gradient of a sum over a 2x2 all-ones convolution counts the
    windows each input pixel is in:

    >>> import numpy as np
    >>> import fastim2col
    >>> w = np.ones((1, 1, 2, 2))
    >>> grad_output = np.ones((1, 1, 2, 2))                 # d(sum)/d(output)
    >>> fastim2col.grad.conv2d_input((1, 1, 3, 3), w, grad_output)
    array([[[[1., 2., 1.],
             [2., 4., 2.],
             [1., 2., 1.]]]])
    """
    return run(_calls.conv2d_input(input_size, weight, grad_output, stride, padding, dilation,
                                   groups, padding_mode=padding_mode, layout=layout, out=out))


def conv2d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1,
                  groups: int = 1, *, padding_mode: PaddingMode = "zeros",
                  layout: Layout = "NCHW",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv2d`` with respect to its weight, like ``torch.nn.grad.conv2d_weight``.

    Tiles of the unrolled input are GEMMed against ``grad_output`` (or direct
    kernels run, where the planner picks them); each weight is summed by one
    work unit in a fixed order, or (where the channels do not split evenly
    among the threads) in per-thread sums reduced in thread order: the same
    bits on every call with the same thread count.

    Parameters
    ----------
    input : array_like
        The forward call's input.
    weight_size : sequence of int
        ``(C_out, C_in/groups, kh, kw)`` (NHWC: ``(C_out, kh, kw, C_in/groups)``).
    grad_output : array_like
        The gradient of the loss with respect to conv2d's output.
    stride, padding, dilation, groups
        The forward call's arguments (padding may be ``"valid"``/``"same"``).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        What the padding reads, as ``torch.nn.Conv2d(padding_mode=...)``:
        zeros (default), or the input reflected, replicated or wrapped
        around; computed inside the unroll, no padded copy is made.
    layout : {"NCHW", "NHWC"}, optional
        Default ``"NCHW"``.
    out : ndarray, optional
        A C-contiguous array of shape ``weight_size`` and the result's dtype to fill.

    Returns
    -------
    ndarray
        The gradient with respect to the weight, of shape ``weight_size``.

    Examples
    --------
    With an all-ones ``grad_output`` each weight's gradient is the sum of the
    input pixels it touches:

    >>> import numpy as np
    >>> import fastim2col
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> fastim2col.grad.conv2d_weight(x, (1, 1, 2, 2), np.ones((1, 1, 2, 2)))
    array([[[[ 8., 12.],
             [20., 24.]]]])

    The bias gradient needs no function:

    >>> np.ones((1, 1, 2, 2)).sum(axis=(0, 2, 3))
    array([4.])
    """
    return run(_calls.conv2d_weight(input, weight_size, grad_output, stride, padding, dilation,
                                    groups, padding_mode=padding_mode, layout=layout, out=out))


def conv1d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: Int1 = 1, padding: Padding1 = 0, dilation: Int1 = 1,
                 groups: int = 1, *, padding_mode: PaddingMode = "zeros",
                 layout: Layout1 = "NCL",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv1d`` with respect to its input, like ``torch.nn.grad.conv1d_input``.

    Parameters
    ----------
    input_size : tuple of ints
        The input's shape: ``(N, C, L)`` (NLC: ``(N, L, C)``) or unbatched ``(C, L)``.
    weight : array_like
        As for :func:`fastim2col.conv1d`.
    grad_output : array_like
        The gradient with respect to conv1d's result.
    stride, padding, dilation, groups, padding_mode, layout, out
        As for :func:`fastim2col.conv1d`.

    Returns
    -------
    ndarray
        Of shape ``input_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastim2col import grad
    >>> grad.conv1d_input((1, 1, 6), np.array([[[1.0, -1.0]]]), np.ones((1, 1, 5)))
    array([[[ 1.,  0.,  0.,  0.,  0., -1.]]])
    """
    return run(_calls.conv1d_input(input_size, weight, grad_output, stride, padding, dilation,
                                   groups, padding_mode=padding_mode, layout=layout, out=out))


def conv1d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: Int1 = 1, padding: Padding1 = 0, dilation: Int1 = 1,
                  groups: int = 1, *, padding_mode: PaddingMode = "zeros",
                  layout: Layout1 = "NCL",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv1d`` with respect to its weight, like ``torch.nn.grad.conv1d_weight``.

    Parameters
    ----------
    input : array_like
        conv1d's input.
    weight_size : tuple of ints
        ``(C_out, C_in/groups, k)`` (NLC: ``(C_out, k, C_in/groups)``).
    grad_output : array_like
        The gradient with respect to conv1d's result.
    stride, padding, dilation, groups, padding_mode, layout, out
        As for :func:`fastim2col.conv1d`.

    Returns
    -------
    ndarray
        Of shape ``weight_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastim2col import grad
    >>> x = np.arange(6.0).reshape(1, 1, 6)
    >>> grad.conv1d_weight(x, (1, 1, 2), np.ones((1, 1, 5)))     # sums of x[0:5], x[1:6]
    array([[[10., 15.]]])
    """
    return run(_calls.conv1d_weight(input, weight_size, grad_output, stride, padding, dilation,
                                    groups, padding_mode=padding_mode, layout=layout, out=out))


def conv3d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: Int3 = 1, padding: Padding3 = 0, dilation: Int3 = 1,
                 groups: int = 1, *, padding_mode: PaddingMode = "zeros",
                 layout: Layout3 = "NCDHW",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv3d`` with respect to its input, like ``torch.nn.grad.conv3d_input``.

    Parameters
    ----------
    input_size : tuple of ints
        ``(N, C, D, H, W)`` (NDHWC: ``(N, D, H, W, C)``) or unbatched ``(C, D, H, W)``.
    weight : array_like
        As for :func:`fastim2col.conv3d`.
    grad_output : array_like
        The gradient with respect to conv3d's result.
    stride, padding, dilation, groups, padding_mode, layout, out
        As for :func:`fastim2col.conv3d`.

    Returns
    -------
    ndarray
        Of shape ``input_size``: the GEMM of the weights' transpose with
        grad_output, folded back tile by tile.

    Examples
    --------
    >>> import numpy as np
    >>> from fastim2col import grad
    >>> grad.conv3d_input((1, 1, 2, 2, 2), np.ones((1, 1, 2, 2, 2)), np.ones((1, 1, 1, 1, 1)))
    array([[[[[1., 1.],
              [1., 1.]],
    <BLANKLINE>
             [[1., 1.],
              [1., 1.]]]]])
    """
    return run(_calls.conv3d_input(input_size, weight, grad_output, stride, padding, dilation,
                                   groups, padding_mode=padding_mode, layout=layout, out=out))


def conv3d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: Int3 = 1, padding: Padding3 = 0, dilation: Int3 = 1,
                  groups: int = 1, *, padding_mode: PaddingMode = "zeros",
                  layout: Layout3 = "NCDHW",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv3d`` with respect to its weight, like ``torch.nn.grad.conv3d_weight``.

    Parameters
    ----------
    input : array_like
        conv3d's input.
    weight_size : tuple of ints
        ``(C_out, C_in/groups, kd, kh, kw)`` (NDHWC: ``(C_out, kd, kh, kw, C_in/groups)``).
    grad_output : array_like
        The gradient with respect to conv3d's result.
    stride, padding, dilation, groups, padding_mode, layout, out
        As for :func:`fastim2col.conv3d`.

    Returns
    -------
    ndarray
        Of shape ``weight_size``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastim2col import grad
    >>> x = np.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> grad.conv3d_weight(x, (1, 1, 1, 1, 1), np.ones((1, 1, 2, 2, 2)))   # 0 + 1 + ... + 7
    array([[[[[28.]]]]])
    """
    return run(_calls.conv3d_weight(input, weight_size, grad_output, stride, padding, dilation,
                                    groups, padding_mode=padding_mode, layout=layout, out=out))
