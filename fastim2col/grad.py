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
                    Padding1, Padding3)
from ._execute import run

__all__ = ["conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight",
           "conv3d_input", "conv3d_weight"]


def conv2d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1,
                 groups: int = 1, *, layout: Layout = "NCHW",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv2d`` with respect to its input, like ``torch.nn.grad.conv2d_input``.

    input_size: the input's shape, ``(N, C, H, W)`` (NHWC: ``(N, H, W, C)``) or
    unbatched ``(C, H, W)``. Computed without materializing the column matrix:
    tile by tile (GEMM of the weights' transpose with grad_output, folded back),
    or by the direct, tap-by-tap or element-by-element kernels where the
    planner picks them (fastim2col.explain shows which; docs/design.md).
    """
    return run(_calls.conv2d_input(input_size, weight, grad_output, stride, padding, dilation,
                                   groups, layout=layout, out=out))


def conv2d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1,
                  groups: int = 1, *, layout: Layout = "NCHW",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv2d`` with respect to its weight, like ``torch.nn.grad.conv2d_weight``.

    weight_size: ``(C_out, C_in/groups, kh, kw)`` (NHWC: ``(C_out, kh, kw, C_in/groups)``).
    Tiles of the unrolled input are GEMMed against grad_output; each weight
    is summed by one work unit in a fixed order, or (where the channels do
    not split evenly among the threads) in per-thread sums reduced in thread
    order: the same bits on every call with the same thread count.
    """
    return run(_calls.conv2d_weight(input, weight_size, grad_output, stride, padding, dilation,
                                    groups, layout=layout, out=out))


def conv1d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: Int1 = 1, padding: Padding1 = 0, dilation: Int1 = 1,
                 groups: int = 1, *, layout: Layout1 = "NCL",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv1d`` with respect to its input, like ``torch.nn.grad.conv1d_input``.

    input_size: ``(N, C, L)`` (NLC: ``(N, L, C)``) or unbatched ``(C, L)``.
    Runs as conv2d_input of unit height.
    """
    return run(_calls.conv1d_input(input_size, weight, grad_output, stride, padding, dilation,
                                   groups, layout=layout, out=out))


def conv1d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: Int1 = 1, padding: Padding1 = 0, dilation: Int1 = 1,
                  groups: int = 1, *, layout: Layout1 = "NCL",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv1d`` with respect to its weight, like ``torch.nn.grad.conv1d_weight``.

    weight_size: ``(C_out, C_in/groups, k)`` (NLC: ``(C_out, k, C_in/groups)``).
    Runs as conv2d_weight of unit height.
    """
    return run(_calls.conv1d_weight(input, weight_size, grad_output, stride, padding, dilation,
                                    groups, layout=layout, out=out))


def conv3d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: Int3 = 1, padding: Padding3 = 0, dilation: Int3 = 1,
                 groups: int = 1, *, layout: Layout3 = "NCDHW",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv3d`` with respect to its input, like ``torch.nn.grad.conv3d_input``.

    input_size: ``(N, C, D, H, W)`` (NDHWC: ``(N, D, H, W, C)``) or unbatched
    ``(C, D, H, W)``. GEMM of the weights' transpose with grad_output, folded
    back tile by tile.
    """
    return run(_calls.conv3d_input(input_size, weight, grad_output, stride, padding, dilation,
                                   groups, layout=layout, out=out))


def conv3d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: Int3 = 1, padding: Padding3 = 0, dilation: Int3 = 1,
                  groups: int = 1, *, layout: Layout3 = "NCDHW",
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv3d`` with respect to its weight, like ``torch.nn.grad.conv3d_weight``.

    weight_size: ``(C_out, C_in/groups, kd, kh, kw)`` (NDHWC:
    ``(C_out, kd, kh, kw, C_in/groups)``).
    """
    return run(_calls.conv3d_weight(input, weight_size, grad_output, stride, padding, dilation,
                                    groups, layout=layout, out=out))
