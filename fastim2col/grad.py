"""Gradients of conv2d, with torch.nn.grad's names and semantics.

The bias gradient needs no function: it is ``grad_output.sum(axis=(0, 2, 3))``
in NCHW and ``grad_output.sum(axis=(0, 1, 2))`` in NHWC (drop the leading 0
for unbatched arrays).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _args, _plan
from ._args import ArrayLike, IntPair, Layout, Padding
from . import _conv, _direct
from .functional import _batched_out, _input_gradient, _is_direct, _squeeze
from ._threads import blas_single_threaded

__all__ = ["conv2d_input", "conv2d_weight"]


def _sizes(size, name: str):
    """A 4-d (batched) or 3-d (unbatched) shape, as (batched shape, unbatched)."""
    dims = _args.shape_tuple(size, name, (4, 3))
    return (dims if len(dims) == 4 else (1,) + dims), len(dims) == 3


def _grad_setup(name, x_shape, w_shape, grad_output, stride, padding, dilation, groups, nhwc,
                unbatched):
    """Check a gradient call against the forward conv2d it differentiates."""
    n, c, h, w = _args.image_dims(x_shape, nhwc)
    c_out, cg, kh, kw = _args.weight_dims(w_shape, nhwc)
    groups = _args.positive_int(groups, "groups")
    if c % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both the input channels ({c}) and the "
                         f"output channels ({c_out})")
    if cg != c // groups:
        raise ValueError(f"weight expects {cg} input channels per group, but the input has {c} "
                         f"channels in {groups} group(s)")
    win = _args.window((h, w), (kh, kw), stride, padding, dilation, allow_strings=True)
    expected = _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc)
    got = grad_output.shape
    expected_shape: tuple[int, ...] = expected[1:] if unbatched else expected
    got_shape = got
    if tuple(got_shape) != tuple(expected_shape):
        raise ValueError(f"{name}: grad_output must have shape {tuple(expected_shape)} (the "
                         f"conv2d output for these arguments), got {tuple(got_shape)}")
    _args.check_blas(name, positions=max(h * w, win.out_h * win.out_w), out_channels=c_out,
                     in_channels=c, window_size=cg * kh * kw)
    return (n, c, c_out, groups, cg), win


def conv2d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1,
                 groups: int = 1, *, layout: Layout = "NCHW",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ``conv2d`` with respect to its input, like ``torch.nn.grad.conv2d_input``.

    input_size: the input's shape, ``(N, C, H, W)`` (NHWC: ``(N, H, W, C)``) or
    unbatched ``(C, H, W)``. Computed without materializing the column matrix:
    tile by tile (GEMM of the weights' transpose with grad_output, folded back),
    or by the direct, tap-by-tap or element-by-element kernels where the
    planner picks them (see the README's "How the work is done").
    """
    nhwc = _args.check_layout(layout)
    weight = _args.as_array(weight, "weight")
    grad_output = _args.as_array(grad_output, "grad_output")
    dtype = _args.compute_dtype(weight, grad_output)
    x_shape, unbatched = _sizes(input_size, "input_size")
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-d, got {weight.ndim}-d with shape {weight.shape}")
    if grad_output.ndim != (3 if unbatched else 4):
        raise ValueError(f"grad_output must be {3 if unbatched else 4}-d like input_size, got "
                         f"{grad_output.ndim}-d")
    (n, c, c_out, groups, cg), win = _grad_setup(
        "conv2d_input", x_shape, weight.shape, grad_output, stride, padding, dilation, groups,
        nhwc, unbatched)
    kg = cg * win.kernel_h * win.kernel_w
    go = _args.contiguous_operand(grad_output, dtype).reshape(
        _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc))
    w2 = _args.contiguous_operand(weight, dtype).reshape(c_out, kg)
    res = _args.output(_batched_out(out, unbatched), x_shape, dtype, (weight, grad_output),
                       "conv2d_input")
    if res.size:
        if kg == 0 or go.size == 0:
            res.fill(0)
        else:
            _input_gradient(go, w2, None, res, (n, c, c_out), win, groups, nhwc)
    return out if out is not None else _squeeze(res, unbatched)


def _direct_weight_gradient(x, go, res, groups, win, n_threads, nhwc) -> bool:
    """The weight gradient by the direct kernels, where the planner picks
    them (thin GEMMs: see _plan.use_direct_weight) and x is finite; False
    (nothing done) else. NHWC arrays go in as transposed views, the
    gradient through an NCHW-ordered copy of the (small) weights."""
    c_out, cg = res.shape[0], res.shape[3 if nhwc else 1]
    if not _plan.use_direct_weight(groups, cg, c_out // groups, win, res.itemsize, nhwc):
        return False
    split = _plan.direct_weight_split(groups, cg, c_out // groups, win, res.itemsize, n_threads,
                                      _direct.vector_elements(res.itemsize))
    if split is None:
        return False
    if not nhwc:
        return _direct.direct_weight(x, go, res, groups=groups, geom=tuple(win), split=split,
                                     n_threads=n_threads)
    dw = np.empty((c_out, cg, win.kernel_h, win.kernel_w), res.dtype)
    if not _direct.direct_weight(x.transpose(0, 3, 1, 2), go.transpose(0, 3, 1, 2), dw,
                                 groups=groups, geom=tuple(win), split=split,
                                 n_threads=n_threads):
        return False
    res[...] = dw.transpose(0, 2, 3, 1)
    return True


def _taps_weight_gradient(x, go, res, dims, win, nhwc, n_threads) -> bool:
    """The NHWC weight gradient tap by tap (src/_conv.pyx grad_weight_taps)
    where _plan.use_weight_taps says so; False (nothing done) else."""
    n, c, c_out, groups = dims
    cg = c // groups
    if not _plan.use_weight_taps(nhwc, cg, _is_direct(x, win, nhwc, cg),
                                 _direct.best_isa_level(), x.strides[3] == x.itemsize):
        return False
    out_block, tap_block, per_call, band = _plan.grad_weight_taps(
        n, groups, c_out // groups, win.kernel_h, win.kernel_h * win.kernel_w, win.out_h,
        win.out_w, n_threads)
    terms = (per_call * win.out_h if band >= win.out_h else band) * win.out_w
    _plan.check_scratch(n_threads, _direct.THIN_TERMS * out_block, itemsize=res.itemsize)
    _plan.check_scratch(n_threads, 2 * terms, itemsize=8)
    _conv.taps_grad_weight(x, go, res.reshape(c_out, -1), shape=dims, geom=tuple(win),
                           split=(cg, out_block), taps_split=(tap_block, per_call, band),
                           n_threads=n_threads)
    return True


def _gemm_weight_gradient(x, go, res, dims, win, nhwc, n_threads) -> None:
    """The weight gradient by unrolled tiles and GEMM (src/_conv.pyx): split by
    input channels (NCHW, where they split evenly), else by tiles of positions
    into per-thread sums, or by blocks of output channels."""
    n, c, c_out, groups = dims
    cg, og = c // groups, c_out // groups
    taps = win.kernel_h * win.kernel_w
    kg, n_pos = cg * taps, win.out_h * win.out_w
    itemsize = res.itemsize
    direct = _is_direct(x, win, nhwc, cg)
    isa_level = _direct.best_isa_level()
    # NCHW: split by input channels where they split evenly (no per-thread
    # sums of the whole gw to reduce, no tile unrolled twice); measured
    # faster than tiles of positions into per-thread sums on every ResNet
    # 3x3 layer, batch 1 and 8, float32 and float64.
    by_channels = None if nhwc else _plan.grad_weight_channels(
        n, groups, og, cg, taps, n_pos, itemsize, n_threads, direct)
    thin = False
    if by_channels is not None:
        tile, block, per_tile, transposed = by_channels
        sums = False
        if per_tile == 1 and _plan.use_thin_weight_channels(og, tile, direct, isa_level):
            thin, transposed = True, False   # (its GEMMs write gw in place)
        # per thread: the unrolled chunk and the transposed part; shared: the
        # gathered grad_output rows of a set of images
        _plan.check_scratch(n_threads, block * taps * (tile + og), c_out * tile,
                            itemsize=itemsize)
    else:
        transposed = False
        per_tile = _plan.grad_weight_images(n, groups, og, kg, n_pos, itemsize, n_threads,
                                            c_out, direct) or 1
        if per_tile > 1:
            tile, block, sums = per_tile * n_pos, og, True
            _plan.check_scratch(n_threads, (kg + og) * tile, c_out * kg, itemsize=itemsize)
        else:
            tile, block, sums = _plan.grad_weight(n, groups, og, kg, n_pos, itemsize,
                                                  n_threads, c_out, direct,
                                                  isa_level if nhwc else -1)
            _plan.check_scratch(n_threads, kg * tile, (c_out * kg) if sums else 0,
                                itemsize=itemsize)
            transposed = sums and not nhwc and _plan.transposed_sums(og, kg, itemsize,
                                                                     tile == n_pos)
    if nhwc:
        thin = per_tile == 1 and _plan.use_thin_weight(tile, itemsize, isa_level)
    _plan.check_scratch(n_threads, _direct.THIN_TERMS * og if thin else 0, itemsize=itemsize)
    with blas_single_threaded:
        if by_channels is not None:
            _conv.gemm_grad_weight_by_channels(
                x, go, res.reshape(c_out, kg), shape=dims, geom=tuple(win), split=(tile, block),
                in_place=direct, n_threads=n_threads, images_per_tile=per_tile,
                transposed=transposed, thin=thin)
        else:
            _conv.gemm_grad_weight(
                x, go, res.reshape(c_out, kg), shape=dims, geom=tuple(win), split=(tile, block),
                in_place=direct, nhwc=nhwc, per_thread_sums=sums, n_threads=n_threads,
                images_per_tile=per_tile, transposed=transposed, thin=thin)


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
    nhwc = _args.check_layout(layout)
    x = _args.as_array(input, "input")
    grad_output = _args.as_array(grad_output, "grad_output")
    dtype = _args.compute_dtype(x, grad_output)
    x, unbatched = _args.batched(x, "input")
    w_shape = _args.shape_tuple(weight_size, "weight_size", (4,))
    if grad_output.ndim != (3 if unbatched else 4):
        raise ValueError(f"grad_output must be {3 if unbatched else 4}-d like input, got "
                         f"{grad_output.ndim}-d")
    (n, c, c_out, groups, cg), win = _grad_setup(
        "conv2d_weight", x.shape, w_shape, grad_output, stride, padding, dilation, groups,
        nhwc, unbatched)
    kg = cg * win.kernel_h * win.kernel_w
    og = c_out // groups
    n_pos = win.out_h * win.out_w
    go = _args.contiguous_operand(grad_output, dtype).reshape(
        _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc))
    x = _args.strided_operand(x, dtype)
    res = _args.output(out, w_shape, dtype, (x, grad_output), "conv2d_weight")
    if res.size:
        n_threads = _plan.conv_threads(2.0 * go.size * kg)
        if go.size == 0 or x.size == 0:
            res.fill(0)
        elif kg and _direct_weight_gradient(x, go, res, groups, win, n_threads, nhwc):
            pass
        elif not _taps_weight_gradient(x, go, res, (n, c, c_out, groups), win, nhwc,
                                       n_threads):
            _gemm_weight_gradient(x, go, res, (n, c, c_out, groups), win, nhwc, n_threads)
    return res
