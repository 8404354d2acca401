"""The input gradient (grad.conv2d_input, conv_transpose2d): which kernel
(tap by tap, element by element, direct, thin GEMM) and the GEMM + fold
split.

Thresholds are fields of thresholds.Thresholds (the record in force:
current(); tuned() changes it for a with block), each with a line or two on
why; the measurements behind them, and the commands that reproduce them, are
in docs/performance.md ("Planner thresholds"), keyed by the field's name or
the function's.
"""
from __future__ import annotations

import math

from .. import _conv
from . import common as _common, conv2d as _conv2d
from .common import ceil_div
from .thresholds import current


def grad_input_images(n_images, groups, cg, og, kg, n_pos, itemsize, n_threads, nhwc, direct):
    """(images per unit, block of input channels) for the input gradient of
    small images (see forward_images), or None. NHWC already where the
    output channels are half the positions: there a set of images is one
    run of grad_output rows (nothing gathered), and each GEMM packs the
    whole weight matrix (kh*kw*C x C_out) again, so fewer, wider GEMMs pack
    it less (docs/performance.md)."""
    if direct or n_images < 2 or og < (n_pos // 2 if nhwc else 2 * n_pos):
        return None
    # per image: the GEMM result + grad_output rows. NCHW splits the input
    # channels among the threads: every image in one set where the scratch
    # allows, so that each thread packs its block's part of the weights once
    # (with a set of images a thread, each thread packs all of them).
    per_tile = _common.images_per_tile(n_images, groups, (kg + og) * n_pos * itemsize, n_threads,
                                sets_per_thread=nhwc)
    if per_tile < 2:
        return None
    units = ceil_div(n_images, per_tile) * groups
    n_blocks = 1 if nhwc else min(cg, max(1, ceil_div(2 * n_threads, units)))
    return per_tile, ceil_div(cg, n_blocks)


# NHWC input gradients of layers with at most FEW_MAX_CHANNELS input
# channels a group (RGB and grayscale first layers) run element by element
# (src/_conv.pyx grad_input_few): each element a dot product over the
# grad_output pixels and taps that reach it, in registers, nothing unrolled,
# folded or reduced, one phase. A GEMM there has only cg*kh*kw columns (the
# stem's 147), and its fold of 3-channel pixels costs more again.
# Units are bands of input rows, FEW_BANDS_PER_THREAD a thread; where
# grad_output does not start on a cache line (NumPy's arrays start 16 bytes
# past one) each copies the grad_output rows it reaches into a buffer that
# does, at most FEW_COPY_BYTES: vector loads that split lines are slower, and
# so are smaller copies. AVX2 only at stride 1: its blocks of 4 positions
# lose at stride 2 (docs/performance.md).
FEW_MAX_CHANNELS = _conv.FEW_CHANNELS   # the element-by-element kernel's channels a group


def use_few_channels(nhwc: bool, cg: int, og: int, direct: bool, win, vector_elements: int,
                     isa_level: int) -> bool:
    """Whether an NHWC input gradient runs element by element
    (FEW_MAX_CHANNELS): not direct (nothing to fold), its output channels a
    group a multiple of the widest vector (of vector_elements), AVX-512
    (AVX2: stride 1)."""
    stride_1 = (win.stride_h, win.stride_w) == (1, 1)
    return (nhwc and not direct and 0 < cg <= FEW_MAX_CHANNELS and og % vector_elements == 0
            and _common.vector_fma(isa_level) and (isa_level >= 2 or stride_1))


def grad_input_few(n_images: int, groups: int, og: int, win, itemsize: int,
                   n_threads: int) -> int:
    """Input rows per unit of the element-by-element input gradient: at
    least FEW_BANDS_PER_THREAD units a thread where the rows allow, and no
    more than FEW_COPY_BYTES of grad_output rows to copy a unit (but at least
    one input row, whatever its grad_output rows take)."""
    t = current()
    bands = ceil_div(t.FEW_BANDS_PER_THREAD * n_threads, n_images * groups)
    rows = win.in_h // min(win.in_h, bands)
    # a band of b rows reaches at most (b - 1 + reach) // stride + 1 rows
    copy_rows = t.FEW_COPY_BYTES // max(1, win.out_w * og * itemsize)
    reach = (win.kernel_h - 1) * win.dilation_h
    return max(1, min(rows, (copy_rows - 1) * win.stride_h - reach + 1))


def grad_input(n_images, groups, cg, kg, win, itemsize, n_threads, nhwc, direct,
               thin_fold=False) -> tuple[int, int]:
    """(tile of whole output rows, block of input channels) for the input
    gradient. thin_fold: the tiles' GEMMs will likely be the thin kernel's
    (see THIN_FOLD_BANDS_PER_THREAD)."""
    t = current()
    n_pos = win.n_out
    if direct:
        tile = n_pos
        units = n_images * groups
        if n_threads > 1 and units < n_threads:
            # Nothing to fold, so nothing to overlap: one GEMM per thread, all
            # input channels by a tile of positions, runs fastest
            # (docs/performance.md, grad_input).
            finer = _common.tile_per_thread(n_pos, units, n_threads)
            if finer is not None:
                return finer, cg
    else:
        # (volumes: the rows of every output plane in turn)
        n_rows = win.out_d * win.out_h
        rows = max(_common.band_rows(win.kernel_h, win.stride_h, win.dilation_h),
                   t.TILE_BYTES // max(1, kg * win.out_w * itemsize),
                   t.MIN_GEMM_TILE // win.out_w)
        rows = min(rows, n_rows)
        if win.kernel_d > 1:
            # planes two bands apart must not reach one input plane: bands of
            # whole output planes, as many as rows of an image's band
            planes = max(_common.band_rows(win.kernel_d, win.stride_d, win.dilation_d),
                         ceil_div(rows, win.out_h))
            rows = min(planes, win.out_d) * win.out_h
        elif (thin_fold and cg <= t.THIN_FOLD_MAX_CHANNELS
                and rows * win.out_w > t.THIN_MAX_POSITIONS):   # (else use_thin_gemm's)
            bands = max(ceil_div(win.out_h, rows), ceil_div(
                2 * t.THIN_FOLD_BANDS_PER_THREAD * n_threads, n_images * groups))
            rows = max(_common.band_rows(win.kernel_h, win.stride_h, win.dilation_h),
                       ceil_div(t.THIN_FOLD_MIN_POSITIONS, win.out_w),
                       win.out_h // bands)
            rows = ceil_div(win.out_h, ceil_div(win.out_h, min(rows, win.out_h)))   # even
        tile = rows * win.out_w
        units = n_images * groups * ceil_div(ceil_div(n_rows, rows), 2)
    block = cg
    if n_threads > 1 and units < 2 * n_threads:
        # NHWC: a block is a slice of every tap's columns (one GEMM per tap,
        # src/_conv.pyx grad_input): blocks at least NHWC_MIN_BLOCK wide
        most = cg // t.NHWC_MIN_BLOCK if nhwc and not direct else cg
        n_blocks = max(1, min(most, ceil_div(2 * n_threads, units)))
        block = ceil_div(cg, n_blocks)
    return tile, block


def grad_input_transposed(tile, rows, itemsize) -> bool:
    """Whether the NCHW input gradient runs its GEMMs transposed, (positions x
    rows) with the rows (a unit's input channels x taps) as OpenBLAS's M,
    then folds (1x1: copies) from that layout: float64 where the rows are at
    least twice the tile's positions (dgemm runs faster with the larger side
    as M, by a margin only then). Never float32: the copy out of the
    transposed tile takes back what sgemm gains (docs/performance.md).
    """
    forced = current().TRANSPOSED_INPUT_GEMMS
    if forced is not None:
        return forced
    return itemsize == 8 and 2 * tile <= rows


def use_thin_gemm(tile: int, itemsize: int, isa_level: int) -> bool:
    """Whether the input gradient's GEMMs of `tile` positions run in the thin
    kernel (thin_kernel_runs; tiles of at most THIN_MAX_POSITIONS)."""
    t = current()
    return _common.thin_kernel_runs(itemsize, isa_level) and tile <= t.THIN_MAX_POSITIONS


def use_thin_positions(nhwc: bool, unit_rows: int, itemsize: int, isa_level: int) -> bool:
    """Whether an NCHW input gradient whose units compute `unit_rows` rows
    (input channels x taps) runs in the thin kernel over grad_output's rows
    (see THIN_POSITIONS_MAX_ROWS; thin_kernel_runs); the caller asks only
    where use_thin_gemm() declined the tile."""
    t = current()
    if t.THIN_POSITIONS is not None:
        return not nhwc and t.THIN_POSITIONS
    return (not nhwc and _common.thin_kernel_runs(itemsize, isa_level)
            and unit_rows <= t.THIN_POSITIONS_MAX_ROWS)


def use_taps(nhwc: bool, cg: int, direct: bool, isa_level: int) -> bool:
    """Whether an input gradient runs tap by tap (see TAPS_MIN_CHANNELS), in
    both dtypes (it replaces GEMM + fold, not only a GEMM), with vector_fma."""
    t = current()
    return nhwc and not direct and cg >= t.TAPS_MIN_CHANNELS and _common.vector_fma(isa_level)


def grad_input_taps(n_images, groups, cg, og, kg, win, itemsize, n_threads,
                    vector_elements) -> tuple[int, int, int, int]:
    """(input rows a band, input channels a block, images a set, leading
    dimension of the copied weights or 0: read in place) for the tap-by-tap
    input gradient (see use_taps). Units are
    (set, group, band, block); their count is made a multiple of the threads
    where it is small (finer bands while they keep TAPS_MIN_POSITIONS, then
    blocks of whole register blocks of channels)."""
    t = current()
    h, w = win.in_h, win.in_w
    per_set = 1
    if h * w < t.TAPS_SET_POSITIONS:
        per_set = max(1, min(n_images, ceil_div(t.TAPS_SET_POSITIONS, h * w),
                             ceil_div(n_images * groups, n_threads)))
    sets = ceil_div(n_images, per_set) * groups

    def balanced(units):
        return units % n_threads == 0 or units >= 2 * n_threads

    n_bands = 1 if per_set > 1 else ceil_div(h, max(1, t.TAPS_MAX_POSITIONS // w))
    if per_set == 1 and not balanced(sets * n_bands):
        most = max(n_bands, h // max(1, ceil_div(t.TAPS_MIN_POSITIONS, w)))
        for more in range(n_bands + 1, most + 1):
            n_bands = ceil_div(h, ceil_div(h, more))   # bands of even height
            if balanced(sets * n_bands):
                break
    rows = ceil_div(h, n_bands)
    units = sets * ceil_div(h, rows)
    block = cg
    if n_threads > 1 and not balanced(units):
        n_blocks = ceil_div(n_threads, math.gcd(units, n_threads))
        step = 2 * vector_elements   # the thin kernel's register block of rows
        block = min(cg, ceil_div(ceil_div(cg, n_blocks), step) * step)
    stride_bytes, copy_ld = kg * itemsize, block + t.TAPS_COPY_PAD
    if (stride_bytes % 64 or og * copy_ld * itemsize > t.TAPS_MAX_COPY_BYTES
            or 64 // math.gcd(stride_bytes // 64, 64) >= t.TAPS_MIN_L1_SETS):
        copy_ld = 0
    if t.TAPS_COPY_WEIGHTS is not None:
        copy_ld = block + t.TAPS_COPY_PAD if t.TAPS_COPY_WEIGHTS else 0
    return rows, block, per_set, copy_ld


def use_flipped_forward(groups: int, positions: int, isa_level: int) -> bool:
    """Whether a stride-1 NCHW input gradient off the direct kernels runs as
    the forward's unroll + GEMM of grad_output with flipped weights instead
    of GEMM + fold: below AVX-512, where the direct kernels leave ungrouped
    layers (conv2d.use_direct) and the forward's tiles (the thin kernel
    among them) beat the fold's, over at least FLIPPED_FORWARD_MIN_POSITIONS
    result positions (all images): the flipped copy of the weights costs
    about what multiplying them by that many positions does."""
    t = current()
    if t.FLIPPED_FORWARD_INPUT is not None:
        return t.FLIPPED_FORWARD_INPUT
    return (groups == 1 and positions >= t.FLIPPED_FORWARD_MIN_POSITIONS
            and _conv2d.avx2_direct_rule(isa_level))


def use_direct_input(groups: int, og: int, cg: int, flipped, nhwc: bool, itemsize: int,
                     isa_level: int = 2) -> bool:
    """Whether a stride-1 input gradient (a conv2d of grad_output, og
    channels a group, with the flipped weights) runs in the direct kernels:
    conv2d.direct_window, in NHWC with at most NHWC_DIRECT_INPUT_CHANNELS
    channels of grad_output a group, and below AVX-512 an ungrouped layer
    with at most DIRECT_AVX2_MAX_CHANNELS of them (in either layout)."""
    t = current()
    if nhwc and og > t.NHWC_DIRECT_INPUT_CHANNELS:
        return False
    if groups == 1 and _conv2d.avx2_direct_rule(isa_level) and og > t.DIRECT_AVX2_MAX_CHANNELS:
        return False
    return _conv2d.direct_window(groups, og, flipped, nhwc, itemsize)
