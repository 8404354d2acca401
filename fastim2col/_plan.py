"""How each kernel call splits its work: tile sizes and unit counts.

Kernels take these numbers as given. The rules:
- a tile of unrolled input (K_g x tile elements) stays within TILE_BYTES,
  a size that stays in a core's L2 next to BLAS's own packed panels;
- there are at least two work units per thread where the shape allows it
  (load balance), by cutting tiles finer and then, when tiles would get too
  thin for an efficient GEMM, by splitting output channels instead;
- scratch memory stays bounded (SCRATCH_BYTES for per-thread sums).

Thresholds are the module's constants, each next to the decision that
applies it (kernel choice or work split, per operation), with a line or two
on why. The measurements behind them, and the commands that reproduce
them, are in docs/performance.md ("Planner thresholds"), keyed by the
constant's name or, for numbers inside a function, the function's.
"""
from __future__ import annotations

import math

from . import _conv, _direct

TILE_BYTES = 1024 * 1024
# Below this much work per thread, starting and joining a thread team costs
# more than it saves (and on a busy machine a descheduled worker stalls the
# whole call at the closing barrier): small calls run on fewer threads.
MIN_FLOPS_PER_THREAD = 4_000_000
MIN_BYTES_PER_THREAD = 256 * 1024
SCRATCH_BYTES = 24 * 1024 * 1024
MIN_GEMM_TILE = 128         # narrower tiles make GEMM inefficient
TILE_SCRATCH_BYTES = 32 * 1024 * 1024   # all threads' tile buffers together
MULTI_TILE_BYTES = 8 * 1024 * 1024      # per thread, for tiles of whole images
TILE_ALIGN = 16
# NCHW convs with kh x kw > 1, and depthwise ones, run in the direct kernels
# (src/_direct.pyx, see use_direct), not unroll + GEMM: nothing is unrolled.
# 1x1 layers stay with GEMM, which reads their input in place (docs/performance.md).
DIRECT_BAND_BYTES = 1024 * 1024       # per-thread scratch: stays in L2
DIRECT_MAX_BAND_BYTES = 8 * 1024 * 1024   # beyond this (huge dilations), GEMM
DIRECT_MAX_CO = _direct.MAX_CO             # output channels a register block, at most
DIRECT_GRID_BYTES = _direct.GRID_BYTES     # grid bytes per output channel (stays in L1)
# Bands are cut for load balance down to about this many grid positions
# (then rounded to even heights; over 6 register blocks of 64 floats): each
# band packs its halo rows again and ends in a partial block, so thinner
# bands cost more than the balance gains (docs/performance.md).
DIRECT_MIN_POSITIONS = 400
# The input gradient reads its weights flipped and transposed in place: a
# register block's weights are then short runs a weight row apart, a new page
# every kh*kw taps, read again by every block. Past this many bytes of weights
# per group the TLB misses cost more than the direct kernels save: GEMM + fold
# there (docs/performance.md).
DIRECT_FLIPPED_WEIGHT_BYTES = 8 * 1024 * 1024
DIRECT_WEIGHT_CHANNELS = 32           # input channels per weight-gradient band, at most
DIRECT_WEIGHT_OUTPUTS = 32
# Ungrouped layers: the direct weight gradient beats unroll + GEMM where the
# GEMM is thin (few output channels) and the input has channels enough to
# split: up to this many outputs in float64, DIRECT_WEIGHT_OUTPUTS in float32
# (docs/performance.md).
DIRECT_WEIGHT_OUTPUTS_F64 = 64
# Fewer input channels than DIRECT_WEIGHT_MIN_CHANNELS (first layers: the
# GEMM's other side, channels x taps, is thin too): direct up to
# DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS in both dtypes. 1x1 kernels stay GEMMs
# (use_direct; docs/performance.md).
DIRECT_WEIGHT_MIN_CHANNELS = 16
DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS = 64
# NHWC (input and grad_output read as strided NCHW views, ungrouped only):
# the same rules, and with stride 1 at most this many outputs
# (docs/performance.md).
NHWC_DIRECT_WEIGHT_OUTPUTS = 32
# ... and in float32 at most this many input channels with stride 1: the
# thin GEMM path has caught up there (docs/performance.md).
NHWC_DIRECT_WEIGHT_F32_CHANNELS = 32
DIRECT_WEIGHT_MIN_POSITIONS = 196
# NCHW, ungrouped, over at least DIRECT_WEIGHT_WIDE_POSITIONS output
# positions: direct with up to DIRECT_WEIGHT_WIDE_OUTPUTS outputs, since its
# register blocks' lane sums run as a tree of pairs (src/_direct_impl.h
# lane_sums). Fewer positions lose (a short reduction), and so do more outputs
# (the GEMM path's unroll is shared by more of them); in NHWC the tap-by-tap
# kernels win (docs/performance.md).
DIRECT_WEIGHT_WIDE_POSITIONS = 784
DIRECT_WEIGHT_WIDE_OUTPUTS = 128
# A unit packs its chunk's input band and its block's grad_output band
# (a thread's next unit reuses whichever of the two it shares): chunks of at
# least this many channels keep the grad_output band from being packed again
# for every thin chunk (docs/performance.md).
DIRECT_WEIGHT_MIN_CHUNK = 8
DIRECT_WEIGHT_MIN_BLOCK = 4           # output channels per unit: a register block (AVX-512)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def threads_for(work: float, n_threads: int, min_work: float) -> int:
    """Threads worth using for `work` (FLOPs or bytes): at most n_threads,
    at least 1, and no fewer than min_work per thread."""
    return max(1, min(n_threads, int(work // min_work)))


def conv_threads(flops: float) -> int:
    from ._threads import get_num_threads
    return threads_for(flops, get_num_threads(), MIN_FLOPS_PER_THREAD)


def copy_threads(nbytes: float) -> int:
    from ._threads import get_num_threads
    return threads_for(nbytes, get_num_threads(), MIN_BYTES_PER_THREAD)


def gemm_tile(kg: int, n_pos: int, itemsize: int, n_threads: int = 1) -> int:
    """Output positions per unrolled tile: K_g * tile * itemsize <= TILE_BYTES,
    but at least MIN_GEMM_TILE positions (thin tiles make GEMM inefficient)
    while all threads' tiles stay within TILE_SCRATCH_BYTES."""
    column = max(1, kg * itemsize)
    tile = max(TILE_BYTES // column,
               min(MIN_GEMM_TILE, TILE_SCRATCH_BYTES // (n_threads * column)), 1)
    if tile >= n_pos:
        return n_pos
    if tile > TILE_ALIGN:
        tile -= tile % TILE_ALIGN
    # Even tiles: ceil(n_pos / n_tiles) avoids a last sliver.
    return _ceil_div(n_pos, _ceil_div(n_pos, tile))


def _tile_per_thread(n_pos: int, units: int, n_threads: int) -> int | None:
    """Positions per tile when the units (whole images x groups, fewer than
    the threads) are cut into one tile a thread; None where such tiles would
    be narrower than MIN_GEMM_TILE."""
    finer = _ceil_div(n_pos, _ceil_div(n_threads, units))
    return finer if finer >= MIN_GEMM_TILE else None


def forward(n_images, groups, og, kg, n_pos, itemsize, n_threads, direct,
            nhwc=False) -> tuple[int, int]:
    """(tile, block of output channels) for conv2d's forward kernel. A direct
    (1x1) convolution unrolls nothing, so its tile is a whole image."""
    tile = n_pos if direct else gemm_tile(kg, n_pos, itemsize, n_threads)
    block = og
    units = n_images * groups * _ceil_div(n_pos, tile)
    if direct and n_threads > 1 and units < n_threads:
        # Nothing to unroll, so nothing to overlap: one GEMM per thread, of a
        # tile of positions (NHWC: contiguous rows of the result) or, in NCHW
        # float64, of whole images and a block of output channels
        # (docs/performance.md, forward).
        finer = _tile_per_thread(n_pos, units, n_threads)
        if finer is not None and (nhwc or itemsize == 4):
            return finer, og
        if og >= 16 * n_threads:
            return tile, _ceil_div(og, _ceil_div(n_threads, units))
    if n_threads > 1 and 2 * n_threads <= units < 8 * n_threads and units % n_threads:
        # Few units: make their count a multiple of the threads (7 tiles on 2
        # threads would leave one thread idle for a seventh of the call).
        per_image = _ceil_div(_ceil_div(units, n_threads) * n_threads, n_images * groups)
        finer = _ceil_div(n_pos, per_image)
        if finer >= MIN_GEMM_TILE:
            tile = finer
            units = n_images * groups * _ceil_div(n_pos, tile)
    want = 2 * n_threads
    if n_threads > 1 and units < want:
        per_image = _ceil_div(want, n_images * groups)
        finer = _ceil_div(n_pos, per_image)
        if finer >= MIN_GEMM_TILE:
            tile = finer
        else:
            n_blocks = min(og, _ceil_div(want, units))
            block = _ceil_div(og, n_blocks)
    return tile, block


def check_scratch(n_threads: int, *buffer_elements: int, itemsize: int) -> None:
    """Refuse per-thread scratch whose byte size would overflow the kernels'
    size arithmetic (only absurd shapes get near this)."""
    total = n_threads * sum(buffer_elements) * itemsize
    if total > 2**62:
        raise MemoryError(f"the per-thread scratch buffers would need {total} bytes")


def _images_per_tile(n_images, groups, bytes_per_image, n_threads,
                     sets_per_thread: bool = True) -> int:
    """Whole images per multi-image tile: as many as MULTI_TILE_BYTES per
    thread (within TILE_SCRATCH_BYTES) hold, but (sets_per_thread) no more
    than keep every thread busy with sets of its own."""
    budget = min(MULTI_TILE_BYTES, TILE_SCRATCH_BYTES // n_threads)
    busy = n_images
    if sets_per_thread and groups < n_threads:
        busy = _ceil_div(n_images * groups, n_threads)
    return min(budget // max(1, bytes_per_image), n_images, busy)


def forward_images(n_images, groups, og, kg, n_pos, itemsize, n_threads, direct):
    """(images per tile, block of output channels) when tiles of several
    whole images pay, else None. Small images with many channels (7-28 px in
    ResNet) give thin per-image tiles for which BLAS re-packs the whole weight
    matrix each time; a wider tile packs it once per several images. Such a
    tile need not fit in L2 (BLAS packs it in blocks), so it may use up to
    MULTI_TILE_BYTES per thread, within TILE_SCRATCH_BYTES in all."""
    if direct or n_images < 2 or og < 2 * n_pos:
        # Only where the weights dwarf a per-image tile: elsewhere the wider
        # tile falls out of cache and costs more than the packing it saves.
        return None
    # per image: the unrolled tile + the GEMM result
    per_tile = _images_per_tile(n_images, groups, (kg + og) * n_pos * itemsize, n_threads)
    if per_tile < 2:
        return None
    sets = _ceil_div(n_images, per_tile) * groups
    n_blocks = min(og, max(1, _ceil_div(2 * n_threads, sets)))
    return per_tile, _ceil_div(og, n_blocks)


def grad_weight_images(n_images, groups, og, kg, n_pos, itemsize, n_threads, n_out, direct):
    """Whole images per tile for the weight gradient of small images (see
    forward_images), or None. Needs per-thread sums within SCRATCH_BYTES."""
    if (direct or n_images < 2 or n_pos >= 4 * MIN_GEMM_TILE
            or n_threads * n_out * kg * itemsize > SCRATCH_BYTES):
        # Only for thin per-image tiles (7-14 px in ResNet): each image would
        # otherwise be a rank-L update that streams the whole (n_out, K_g)
        # sum through memory (docs/performance.md).
        return None
    # per image: the unrolled tile + grad_output rows
    per_tile = _images_per_tile(n_images, groups, (kg + og) * n_pos * itemsize, n_threads)
    return per_tile if per_tile >= 2 else None


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
    per_tile = _images_per_tile(n_images, groups, (kg + og) * n_pos * itemsize, n_threads,
                                sets_per_thread=nhwc)
    if per_tile < 2:
        return None
    units = _ceil_div(n_images, per_tile) * groups
    n_blocks = 1 if nhwc else min(cg, max(1, _ceil_div(2 * n_threads, units)))
    return per_tile, _ceil_div(cg, n_blocks)


def band_rows(kernel_h, stride_h, dilation_h) -> int:
    """Fewest output rows per band so that bands two apart never reach the
    same input row: rows * stride >= (kh - 1) * dilation - stride + 1."""
    reach = (kernel_h - 1) * dilation_h - stride_h + 1
    return max(1, _ceil_div(reach, stride_h))


NHWC_MIN_BLOCK = 32   # input channels per NHWC input-gradient block (GEMMs of that width)


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
FEW_BANDS_PER_THREAD = 8
FEW_COPY_BYTES = 512 * 1024


def use_few_channels(nhwc: bool, cg: int, og: int, direct: bool, win, vector_elements: int,
                     isa_level: int) -> bool:
    """Whether an NHWC input gradient runs element by element
    (FEW_MAX_CHANNELS): not direct (nothing to fold), its output channels a
    group a multiple of the widest vector (of vector_elements), AVX-512
    (AVX2: stride 1)."""
    stride_1 = (win.stride_h, win.stride_w) == (1, 1)
    return (nhwc and not direct and 0 < cg <= FEW_MAX_CHANNELS and og % vector_elements == 0
            and vector_fma(isa_level) and (isa_level >= 2 or stride_1))


def grad_input_few(n_images: int, groups: int, og: int, win, itemsize: int,
                   n_threads: int) -> int:
    """Input rows per unit of the element-by-element input gradient: at
    least FEW_BANDS_PER_THREAD units a thread where the rows allow, and no
    more than FEW_COPY_BYTES of grad_output rows to copy a unit (but at least
    one input row, whatever its grad_output rows take)."""
    bands = _ceil_div(FEW_BANDS_PER_THREAD * n_threads, n_images * groups)
    rows = win.in_h // min(win.in_h, bands)
    # a band of b rows reaches at most (b - 1 + reach) // stride + 1 rows
    copy_rows = FEW_COPY_BYTES // max(1, win.out_w * og * itemsize)
    reach = (win.kernel_h - 1) * win.dilation_h
    return max(1, min(rows, (copy_rows - 1) * win.stride_h - reach + 1))


# Input gradients folded from thin-GEMM tiles (use_thin_positions) of
# layers with at most THIN_FOLD_MAX_CHANNELS input channels (RGB first
# layers: no channel blocks to share among the threads): bands of output
# rows of even height, at least THIN_FOLD_BANDS_PER_THREAD a thread in each
# of the two fold phases. The thin GEMM runs as fast on thin tiles as on
# wide ones, and uneven bands left a thread waiting at the phase barrier;
# with more channels the rule does not pay (docs/performance.md).
THIN_FOLD_MAX_CHANNELS = 3
THIN_FOLD_BANDS_PER_THREAD = 4
THIN_FOLD_MIN_POSITIONS = 256


def grad_input(n_images, groups, cg, kg, win, itemsize, n_threads, nhwc, direct,
               thin_fold=False) -> tuple[int, int]:
    """(tile of whole output rows, block of input channels) for the input
    gradient. thin_fold: the tiles' GEMMs will likely be the thin kernel's
    (see THIN_FOLD_BANDS_PER_THREAD)."""
    n_pos = win.out_h * win.out_w
    if direct:
        tile = n_pos
        units = n_images * groups
        if n_threads > 1 and units < n_threads:
            # Nothing to fold, so nothing to overlap: one GEMM per thread, all
            # input channels by a tile of positions, runs fastest
            # (docs/performance.md, grad_input).
            finer = _tile_per_thread(n_pos, units, n_threads)
            if finer is not None:
                return finer, cg
    else:
        rows = max(band_rows(win.kernel_h, win.stride_h, win.dilation_h),
                   TILE_BYTES // max(1, kg * win.out_w * itemsize),
                   MIN_GEMM_TILE // win.out_w)
        rows = min(rows, win.out_h)
        if (thin_fold and cg <= THIN_FOLD_MAX_CHANNELS
                and rows * win.out_w > THIN_MAX_POSITIONS):   # (else use_thin_gemm's)
            bands = max(_ceil_div(win.out_h, rows), _ceil_div(
                2 * THIN_FOLD_BANDS_PER_THREAD * n_threads, n_images * groups))
            rows = max(band_rows(win.kernel_h, win.stride_h, win.dilation_h),
                       _ceil_div(THIN_FOLD_MIN_POSITIONS, win.out_w),
                       win.out_h // bands)
            rows = _ceil_div(win.out_h, _ceil_div(win.out_h, min(rows, win.out_h)))   # even
        tile = rows * win.out_w
        units = n_images * groups * _ceil_div(_ceil_div(win.out_h, rows), 2)
    block = cg
    if n_threads > 1 and units < 2 * n_threads:
        # NHWC: a block is a slice of every tap's columns (one GEMM per tap,
        # src/_conv.pyx grad_input): blocks at least NHWC_MIN_BLOCK wide
        most = cg // NHWC_MIN_BLOCK if nhwc and not direct else cg
        n_blocks = max(1, min(most, _ceil_div(2 * n_threads, units)))
        block = _ceil_div(cg, n_blocks)
    return tile, block


def grad_input_transposed(tile, rows, itemsize) -> bool:
    """Whether the NCHW input gradient runs its GEMMs transposed, (positions x
    rows) with the rows (a unit's input channels x taps) as OpenBLAS's M,
    then folds (1x1: copies) from that layout: float64 where the rows are at
    least twice the tile's positions (dgemm runs faster with the larger side
    as M, by a margin only then). Never float32: the copy out of the
    transposed tile takes back what sgemm gains (docs/performance.md).
    """
    return itemsize == 8 and 2 * tile <= rows


# float32 input-gradient GEMMs of at most this many positions (a 7 px
# image's 49, a pair of them) run in the thin kernel (src/_direct_impl.h
# thin_gemm): BLAS packs all of W^T for every GEMM and uses each packed
# element only that many times; the thin kernel reads W in place. Past
# about this many positions BLAS's packing pays for itself; float64 not:
# its transposed BLAS GEMMs are as fast (docs/performance.md).
THIN_MAX_POSITIONS = 128


def vector_fma(isa_level: int) -> bool:
    """Whether the kernels run with vector FMA (isa_level >= 1: AVX2 or
    AVX-512; the baseline build has none): the thin kernel's condition."""
    return isa_level >= 1


def thin_kernel_runs(itemsize: int, isa_level: int) -> bool:
    """Whether the thin kernel is an option in place of a BLAS GEMM: float32
    (in float64 it is no faster than dgemm), with vector_fma."""
    return itemsize == 4 and vector_fma(isa_level)


def use_thin_gemm(tile: int, itemsize: int, isa_level: int) -> bool:
    """Whether the input gradient's GEMMs of `tile` positions run in the thin
    kernel (thin_kernel_runs; tiles of at most THIN_MAX_POSITIONS)."""
    return thin_kernel_runs(itemsize, isa_level) and tile <= THIN_MAX_POSITIONS


# NCHW input gradients whose tiles use_thin_gemm() declines, with at most
# this many rows (input channels x taps) a unit, run in the thin kernel the
# other way round: grad_output's rows, positions contiguous, read in place as
# its vectors, the unit's weights (the small operand) broadcast; the tile
# then folds (or, 1x1, lands in the result) as from BLAS. With BLAS,
# positions-contiguous grad_output is the slower orientation (OpenBLAS packs
# it, sgemm_itcopy). float64 not: no faster than BLAS (docs/performance.md).
THIN_POSITIONS_MAX_ROWS = 512


def use_thin_positions(nhwc: bool, unit_rows: int, itemsize: int, isa_level: int) -> bool:
    """Whether an NCHW input gradient whose units compute `unit_rows` rows
    (input channels x taps) runs in the thin kernel over grad_output's rows
    (see THIN_POSITIONS_MAX_ROWS; thin_kernel_runs); the caller asks only
    where use_thin_gemm() declined the tile."""
    return (not nhwc and thin_kernel_runs(itemsize, isa_level)
            and unit_rows <= THIN_POSITIONS_MAX_ROWS)


# NCHW weight gradients split by input channels, tiles of one image's
# positions, at most THIN_WEIGHT_NCHW_MAX_POSITIONS of them, with at least
# THIN_WEIGHT_NCHW_MIN_OUTPUTS output channels a group: the thin
# kernel (both dtypes), the unit's unrolled rows read along their positions
# and copied transposed, a block of rows at a time (thin_gemm's w_row), the
# tile's grad_output broadcast; gw written in place. With fewer channels on
# larger images BLAS is as fast (docs/performance.md).
THIN_WEIGHT_NCHW_MIN_OUTPUTS = 512
THIN_WEIGHT_NCHW_MAX_POSITIONS = 64   # (7 px measured; larger tiles not)


def use_thin_weight_channels(og: int, tile: int, direct: bool, isa_level: int) -> bool:
    """Whether an NCHW weight gradient split by input channels, tiles of
    `tile` positions of one image, runs its GEMMs in the thin kernel (see
    THIN_WEIGHT_NCHW_MIN_OUTPUTS; not 1x1 stride 1, unmeasured)."""
    return (og >= THIN_WEIGHT_NCHW_MIN_OUTPUTS and tile <= THIN_WEIGHT_NCHW_MAX_POSITIONS
            and not direct and vector_fma(isa_level))


# NHWC weight gradients with tiles of this many positions (one image a
# tile): the thin kernel, the unrolled tile's rows (positions x kh*kw*C) its
# vectors, the block's grad_output broadcast, since BLAS packs the unrolled
# tile again for every GEMM; 7 px tiles (49 positions) gain nothing.
# (Layers with TAPS_WEIGHT_MIN_CHANNELS or more run tap by tap instead: 56 px
# is what stays here; docs/performance.md.)
THIN_WEIGHT_MIN_POSITIONS = 96
THIN_WEIGHT_MAX_POSITIONS = 512


def use_thin_weight(tile: int, itemsize: int, isa_level: int) -> bool:
    """Whether an NHWC weight gradient with tiles of `tile` positions (one
    image a tile) runs its GEMMs in the thin kernel (thin_kernel_runs)."""
    return (thin_kernel_runs(itemsize, isa_level)
            and THIN_WEIGHT_MIN_POSITIONS <= tile <= THIN_WEIGHT_MAX_POSITIONS)


# NHWC input gradients (both dtypes, vector_fma) of layers with at least
# TAPS_MIN_CHANNELS input channels a group, except 1x1 stride 1 (one GEMM
# straight into the result): tap by tap (src/_conv.pyx grad_input_taps), each
# tap one thin GEMM that gathers grad_output's rows and scatters its result
# rows into the input gradient; nothing unrolled, folded or split in phases.
# A unit's positions: bands of whole rows, at most TAPS_MAX_POSITIONS (its
# packing scratch, THIN_KC x positions, stays in L2), at least
# TAPS_MIN_POSITIONS (8 register tiles) when bands are cut for balance; images
# smaller than TAPS_SET_POSITIONS go several to a unit (each tap's weights
# then serve them all). Fewer channels: the thin kernel's vectors (channels)
# would run part empty.
TAPS_MIN_CHANNELS = 32
TAPS_MAX_POSITIONS = 400
TAPS_MIN_POSITIONS = 96
TAPS_SET_POSITIONS = 196
# A tap's weights, read in place, are rows kg * itemsize bytes apart: where
# that maps THIN_KC rows onto fewer than TAPS_MIN_L1_SETS of the L1's 64
# sets (64-byte lines), the kernel's slice of them no longer stays in L1;
# each unit then copies each tap's weights (og x block, at most
# TAPS_MAX_COPY_BYTES, so it stays in L2) into rows block + TAPS_COPY_PAD
# apart (odd multiples of 64 bytes for whole register blocks of rows).
TAPS_MIN_L1_SETS = 16
TAPS_MAX_COPY_BYTES = 1024 * 1024
TAPS_COPY_PAD = 16


def use_taps(nhwc: bool, cg: int, direct: bool, isa_level: int) -> bool:
    """Whether an input gradient runs tap by tap (see TAPS_MIN_CHANNELS), in
    both dtypes (it replaces GEMM + fold, not only a GEMM), with vector_fma."""
    return nhwc and not direct and cg >= TAPS_MIN_CHANNELS and vector_fma(isa_level)


def grad_input_taps(n_images, groups, cg, og, kg, win, itemsize, n_threads,
                    vector_elements) -> tuple[int, int, int, int]:
    """(input rows a band, input channels a block, images a set, leading
    dimension of the copied weights or 0: read in place) for the tap-by-tap
    input gradient (see use_taps). Units are
    (set, group, band, block); their count is made a multiple of the threads
    where it is small (finer bands while they keep TAPS_MIN_POSITIONS, then
    blocks of whole register blocks of channels)."""
    h, w = win.in_h, win.in_w
    per_set = 1
    if h * w < TAPS_SET_POSITIONS:
        per_set = max(1, min(n_images, _ceil_div(TAPS_SET_POSITIONS, h * w),
                             _ceil_div(n_images * groups, n_threads)))
    sets = _ceil_div(n_images, per_set) * groups

    def balanced(units):
        return units % n_threads == 0 or units >= 2 * n_threads

    n_bands = 1 if per_set > 1 else _ceil_div(h, max(1, TAPS_MAX_POSITIONS // w))
    if per_set == 1 and not balanced(sets * n_bands):
        most = max(n_bands, h // max(1, _ceil_div(TAPS_MIN_POSITIONS, w)))
        for more in range(n_bands + 1, most + 1):
            n_bands = _ceil_div(h, _ceil_div(h, more))   # bands of even height
            if balanced(sets * n_bands):
                break
    rows = _ceil_div(h, n_bands)
    units = sets * _ceil_div(h, rows)
    block = cg
    if n_threads > 1 and not balanced(units):
        n_blocks = _ceil_div(n_threads, math.gcd(units, n_threads))
        step = 2 * vector_elements   # the thin kernel's register block of rows
        block = min(cg, _ceil_div(_ceil_div(cg, n_blocks), step) * step)
    stride_bytes, copy_ld = kg * itemsize, block + TAPS_COPY_PAD
    if (stride_bytes % 64 or og * copy_ld * itemsize > TAPS_MAX_COPY_BYTES
            or 64 // math.gcd(stride_bytes // 64, 64) >= TAPS_MIN_L1_SETS):
        copy_ld = 0
    return rows, block, per_set, copy_ld


# NHWC weight gradients of layers with at least TAPS_WEIGHT_MIN_CHANNELS
# input channels a group, except 1x1 stride 1 (one GEMM straight from the
# arrays), whose input's channels are contiguous: tap by tap (src/_conv.pyx
# grad_weight_taps), each tap's part of the gradient one thin GEMM over
# gathered rows of the input and grad_output; nothing unrolled, no per-thread
# sums. Calls of about TAPS_WEIGHT_TERMS positions (images several to a
# call as far as the batch goes, or bands of an image's rows), each call's
# rows kept in cache across the unit's taps. Fewer channels: packing
# grad_output's rows, 1/channels of the work, costs more than the taps save
# (docs/performance.md).
TAPS_WEIGHT_MIN_CHANNELS = 128
TAPS_WEIGHT_TERMS = 392
# Output channels a unit: at most (its grad_output slice, THIN_KC x this,
# stays in L2), at least two of the thin kernel's register tiles where the
# threads allow.
TAPS_WEIGHT_MAX_OUT_BLOCK = 128
TAPS_WEIGHT_MIN_OUT_BLOCK = 24


def use_weight_taps(nhwc: bool, cg: int, direct: bool, isa_level: int,
                    channels_contiguous: bool) -> bool:
    """Whether a weight gradient runs tap by tap (see
    TAPS_WEIGHT_MIN_CHANNELS), both dtypes, with vector_fma."""
    return (nhwc and not direct and channels_contiguous and cg >= TAPS_WEIGHT_MIN_CHANNELS
            and vector_fma(isa_level))


def grad_weight_taps(n_images, groups, og, kernel_h, n_taps, out_h, out_w,
                     n_threads) -> tuple[int, int, int, int]:
    """(output channels a unit, taps a unit, images a call, output rows a
    call: fewer than out_h for bands of one image) for the tap-by-tap weight
    gradient (see use_weight_taps). Units (group, taps, output channels): the
    split that keeps the threads busiest, then the fewest blocks of taps
    (each block reads the input again), then blocks of at most
    TAPS_WEIGHT_MAX_OUT_BLOCK channels, the largest."""
    n_pos = out_h * out_w
    if n_pos >= TAPS_WEIGHT_TERMS:
        per_call, band = 1, min(out_h, _ceil_div(TAPS_WEIGHT_TERMS, out_w))
    else:
        per_call, band = min(n_images, _ceil_div(TAPS_WEIGHT_TERMS, n_pos)), out_h
    best_key, best = None, None
    for tap_block in sorted({n_taps, _ceil_div(n_taps, kernel_h), 1}, reverse=True):
        tap_blocks = _ceil_div(n_taps, tap_block)
        for out_blocks in range(1, max(1, og // TAPS_WEIGHT_MIN_OUT_BLOCK) + 1):
            out_block = _ceil_div(og, out_blocks)
            units = groups * tap_blocks * _ceil_div(og, out_block)
            busy = units / (_ceil_div(units, n_threads) * n_threads)
            key = (round(busy, 2), -tap_blocks, out_block <= TAPS_WEIGHT_MAX_OUT_BLOCK,
                   out_block)
            if best_key is None or key > best_key:
                best_key, best = key, (out_block, tap_block)
    assert best is not None
    return best[0], best[1], per_call, band


# NCHW conv2d GEMMs (1x1 layers, and others off the direct kernels) of
# tiles of at least THIN_FORWARD_MIN_POSITIONS positions, at most
# THIN_FORWARD_MAX_OUTPUTS output channels a block and THIN_FORWARD_MAX_TERMS
# input channels x taps: the thin kernel, the tile's rows (x's own rows for
# 1x1) its vectors, the block's weights broadcast. Beyond these limits BLAS
# won or was not measured (docs/performance.md).
THIN_FORWARD_MIN_POSITIONS = 128
THIN_FORWARD_MAX_OUTPUTS = 512
THIN_FORWARD_MAX_TERMS = 1024


def use_thin_forward(nhwc: bool, tile: int, block: int, kg: int, itemsize: int,
                     isa_level: int) -> bool:
    """Whether an NCHW conv2d with tiles of `tile` positions (one image a
    tile), blocks of `block` output channels and kg = C/groups*kh*kw runs
    its GEMMs in the thin kernel (thin_kernel_runs; the limits above)."""
    return (not nhwc and thin_kernel_runs(itemsize, isa_level)
            and tile >= THIN_FORWARD_MIN_POSITIONS and block <= THIN_FORWARD_MAX_OUTPUTS
            and kg <= THIN_FORWARD_MAX_TERMS)


# A channel unit's part of gw (see grad_weight_channels): chunks are cut finer
# only past this, since wide chunks keep the GEMMs wide (docs/performance.md).
GRAD_WEIGHT_PART_BYTES = 8 * 1024 * 1024
MIN_CHUNK_COLUMNS = 64                  # narrower GEMMs lose speed
MIN_UNEVEN_CHUNK = 8                    # uneven chunks at least this wide (balance)
MIN_IMAGE_TILE = 512                    # positions per GEMM before images are batched
CHANNEL_TILE_BYTES = 2 * 1024 * 1024
# Weight-gradient GEMMs of groups with at most this many output channels run
# in the transposed orientation (OpenBLAS is faster with them as its M).
TRANSPOSED_GEMM_OUTPUTS = 64


def grad_weight_channels(n_images, groups, og, cg, taps, n_pos, itemsize, n_threads,
                         direct) -> tuple[int, int, int, bool] | None:
    """(tile, input channels per unit, images per tile, transposed GEMMs?) for
    the NCHW weight gradient split by input channels (src/_conv.pyx
    grad_weight_channels, transposed for groups of at most
    TRANSPOSED_GEMM_OUTPUTS output channels; with several images a
    tile, grad_weight_channels_images).

    Units are (group, chunk of input channels), their count a multiple of
    the threads; chunks are cut finer while a unit's part of gw exceeds
    GRAD_WEIGHT_PART_BYTES across several GEMMs (and stay at least
    MIN_CHUNK_COLUMNS wide). Small images are batched, several whole images
    per GEMM, so that no GEMM sums over fewer than MIN_IMAGE_TILE positions
    where the batch allows.
    None where the channels do not split into even, wide enough chunks (the
    stem's 3 channels, 1x1 layers with few channels): grad_weight() then.
    """
    def gemms_per_unit(chunk):
        if direct:
            return n_images
        return n_images * _ceil_div(n_pos, gemm_tile(chunk * taps, n_pos, itemsize, n_threads))

    n_chunks = min(cg, max(1, n_threads // math.gcd(groups, n_threads)))
    while n_chunks < cg:
        chunk = _ceil_div(cg, n_chunks)
        if gemms_per_unit(chunk) <= 1 or og * chunk * taps * itemsize <= GRAD_WEIGHT_PART_BYTES:
            break
        if _ceil_div(cg, 2 * n_chunks) * taps < MIN_CHUNK_COLUMNS:
            break
        n_chunks *= 2
    chunk = _ceil_div(cg, n_chunks)
    if chunk * taps < MIN_CHUNK_COLUMNS or (cg % chunk and chunk < MIN_UNEVEN_CHUNK):
        return None
    per_tile = 1
    if not direct and n_images > 1 and n_pos < MIN_IMAGE_TILE:
        # within CHANNEL_TILE_BYTES per thread, and the set's grad_output
        # rows (all groups', gathered once) within TILE_SCRATCH_BYTES
        per_tile = max(1, min(n_images, _ceil_div(MIN_IMAGE_TILE, n_pos),
                              CHANNEL_TILE_BYTES // (chunk * taps * n_pos * itemsize),
                              TILE_SCRATCH_BYTES // (groups * og * n_pos * itemsize)))
    if direct:
        tile = n_pos
    elif per_tile > 1:
        tile = per_tile * n_pos
    else:
        tile = gemm_tile(chunk * taps, n_pos, itemsize, n_threads)
    return tile, chunk, per_tile, per_tile == 1 and og <= TRANSPOSED_GEMM_OUTPUTS


def grad_weight(n_images, groups, og, kg, n_pos, itemsize, n_threads, n_out,
                direct=False, thin_isa_level=-1) -> tuple[int, int, bool]:
    """(tile, block of output channels, per-thread sums?) for the weight
    gradient. thin_isa_level (NHWC): the ISA level for use_thin_weight(); -1
    where the thin kernel is not an option (NCHW)."""
    outer = n_images * groups
    if direct:
        # Nothing is unrolled (1x1 stride 1): no tile buffer to bound, so
        # whole images, cut only so that the units are a multiple of the
        # threads (docs/performance.md, grad_weight).
        per_image = n_threads // math.gcd(outer, n_threads)
        tile = _ceil_div(n_pos, max(1, min(per_image, n_pos // MIN_GEMM_TILE)))
    else:
        tile = gemm_tile(kg, n_pos, itemsize, n_threads)
    units = outer * _ceil_div(n_pos, tile)
    min_units = n_threads if direct else 2 * n_threads
    if not direct and n_threads > 1 and 2 * n_threads <= units < 8 * n_threads and units % n_threads:
        # a multiple of the threads: 7 tiles on 2 threads leave one idle for a
        # seventh of the call
        tile = _ceil_div(n_pos, _ceil_div(_ceil_div(units, n_threads) * n_threads, outer))
        units = outer * _ceil_div(n_pos, tile)
    sums_bytes = n_threads * n_out * kg * itemsize
    if n_threads > 1 and units >= min_units and sums_bytes <= SCRATCH_BYTES:
        return tile, og, True
    # Two blocks a thread: one was faster, but its results then changed bits
    # under concurrent calls from other Python threads
    # (test_calls_inside_threadpoolctl_limits; docs/performance.md, grad_weight).
    # The thin kernel (NHWC) calls no BLAS and passes that test with one
    # block a thread.
    per_thread = 1 if use_thin_weight(tile, itemsize, thin_isa_level) else 2
    n_blocks = min(og, max(1, _ceil_div(per_thread * n_threads, groups))) if n_threads > 1 else 1
    return tile, _ceil_div(og, n_blocks), False


def transposed_sums(og, kg, itemsize, whole_images) -> bool:
    """Whether per-thread weight-gradient sums run their GEMMs transposed,
    (K_g x og) with og as OpenBLAS's M: for thin groups (see
    TRANSPOSED_GEMM_OUTPUTS), and in float64 where og > K_g over tiles of
    whole images (dgemm runs faster with the larger side as M there; sgemm
    does not, and over parts of an image it gains nothing: docs/performance.md)."""
    return og <= TRANSPOSED_GEMM_OUTPUTS or (itemsize == 8 and og > kg and whole_images)


def im2col_tile(n_units_outer, n_pos, n_threads) -> int:
    """Positions per im2col unit: enough units (>= 4 per thread) to balance."""
    per_outer = _ceil_div(4 * n_threads, max(1, n_units_outer))
    return max(1, _ceil_div(n_pos, per_outer))


def col2im_rows(n_images, win, n_threads) -> int:
    """Output rows per band for the NHWC col2im (bands alternate by parity)."""
    rows_min = band_rows(win.kernel_h, win.stride_h, win.dilation_h)
    bands_wanted = 2 * _ceil_div(2 * n_threads, max(1, n_images))
    return min(win.out_h, max(rows_min, win.out_h // bands_wanted))


# NHWC conv2d gathers each unit's input band from every pixel's channels, a
# transposition repeated by every block of output channels: past this many
# input channels a group, unroll + GEMM wins (NCHW, which copies its bands,
# keeps the direct kernels; docs/performance.md).
NHWC_DIRECT_MAX_CHANNELS = 384


def use_direct(groups: int, cg: int, og: int, win, nhwc: bool = False,
               itemsize: int = 8) -> bool:
    """Whether a conv2d runs in the direct kernels (see DIRECT_BAND_BYTES):
    windows wider than 1x1, and depthwise ones. In NHWC, a unit gathers its
    group's channels from every pixel: only where they fill a cache line
    (else the NHWC depthwise kernel, or GEMM, read less) and are at most
    NHWC_DIRECT_MAX_CHANNELS."""
    if nhwc and ((groups > 1 and cg * itemsize < 64) or cg > NHWC_DIRECT_MAX_CHANNELS):
        return False
    return win.kernel_h * win.kernel_w > 1 or (groups > 1 and cg == 1)


# NHWC input gradients read grad_output through strided NCHW views: with
# more channels than this the direct kernels' gathers lose to GEMM + fold
# (docs/performance.md).
NHWC_DIRECT_INPUT_CHANNELS = 128


def use_direct_input(groups: int, og: int, cg: int, flipped, nhwc: bool, itemsize: int) -> bool:
    """Whether a stride-1 input gradient (a conv2d of grad_output, og
    channels a group, with the flipped weights) runs in the direct kernels:
    as use_direct, and in NHWC with at most NHWC_DIRECT_INPUT_CHANNELS
    channels of grad_output a group."""
    if nhwc and og > NHWC_DIRECT_INPUT_CHANNELS:
        return False
    return use_direct(groups, og, cg, flipped, nhwc, itemsize)


def _direct_band_geometry(win, vector_elements: int) -> tuple[int, int, int]:
    """(elements of one register block, packed row length, extra input rows
    per phase plane) of the direct kernels' bands, as src/_direct.pyx lays
    them out."""
    return (4 * vector_elements,
            win.out_w + (win.kernel_w - 1) * win.dilation_w // win.stride_w,
            (win.kernel_h - 1) * win.dilation_h // win.stride_h)


def _direct_unit_layout(cg: int, win, itemsize: int,
                        vector_elements: int) -> tuple[int, int, int]:
    """(fixed bytes, bytes per output row, halo bytes of one image) of a
    direct kernel unit's scratch: its input bands (cg channels in stride
    phases, zero padded) and its output grid (see src/_direct.pyx)."""
    span, row_len, halo = _direct_band_geometry(win, vector_elements)
    planes = cg * win.stride_h * win.stride_w
    halo_bytes = planes * halo * row_len * itemsize
    fixed = halo_bytes + (span + row_len) * itemsize
    fixed += DIRECT_MAX_CO * (max(row_len * itemsize, DIRECT_GRID_BYTES)
                              + span * itemsize)   # the grid
    return fixed, planes * row_len * itemsize, halo_bytes


def direct_unit_bytes(cg: int, og: int, win, itemsize: int, vector_elements: int,
                      split: tuple[int, int, int]) -> int:
    """A thread's scratch bytes in the direct kernels under `split` (from
    direct_split), as that bounds them."""
    fixed, per_row, halo_bytes = _direct_unit_layout(cg, win, itemsize, vector_elements)
    band, _, per_unit = split
    return fixed + band * per_row + (per_unit - 1) * (band * per_row + halo_bytes)


def direct_split(n_images: int, groups: int, cg: int, og: int, win, itemsize: int,
                 n_threads: int, vector_elements: int) -> tuple[int, int, int] | None:
    """(output rows, output channels, images) per work unit of the direct
    kernels, or None when one output row's scratch would exceed
    DIRECT_MAX_BAND_BYTES (huge dilations: the blocked GEMM then).

    A unit's scratch (its input bands: cg channels, zero padded, in stride
    phases; and its output grid, see src/_direct.pyx) stays within
    DIRECT_BAND_BYTES where one row allows. Small images go several to a
    unit: each block of weights then serves them all (the weights of a
    512-channel 7x7 layer outweigh its images). For load balance (four units
    per thread, a multiple of the threads where it is cheap), bands are cut
    finer while they keep about DIRECT_MIN_POSITIONS grid positions (the kernels
    compute whole register blocks), then output channels are split in
    multiples of the widest register block."""
    fixed, per_row, halo_bytes = _direct_unit_layout(cg, win, itemsize, vector_elements)
    row_len = _direct_band_geometry(win, vector_elements)[1]
    if fixed + per_row > DIRECT_MAX_BAND_BYTES:
        return None
    band = max(1, min(win.out_h, (DIRECT_BAND_BYTES - fixed) // per_row))
    per_unit = 1
    image_bytes = band * per_row + halo_bytes
    if band == win.out_h and og * cg * win.kernel_h * win.kernel_w * itemsize >= image_bytes:
        # weights outweigh an image: let each block of them serve several
        # (else one image per unit keeps its band in L1: depthwise layers)
        per_unit = (DIRECT_BAND_BYTES - fixed) // image_bytes
        per_unit = max(1, min(n_images, per_unit))
        while n_images % per_unit:   # equal blocks: units of equal work
            per_unit -= 1
    chunk = og
    if n_threads > 1:
        units_wanted = 4 * n_threads
        outer = _ceil_div(n_images, per_unit) * groups
        thinnest = min(win.out_h, _ceil_div(DIRECT_MIN_POSITIONS, row_len))
        band = min(band, max(thinnest, _ceil_div(win.out_h, _ceil_div(units_wanted, outer))))
        band = _ceil_div(win.out_h, _ceil_div(win.out_h, band))   # bands of even height
        units = outer * _ceil_div(win.out_h, band)
        if units < units_wanted:
            max_chunks = _ceil_div(og, DIRECT_MAX_CO)
            n_chunks = min(max_chunks, _ceil_div(units_wanted, units))
            while (units * n_chunks) % n_threads and n_chunks < max_chunks:
                n_chunks += 1
            chunk = min(og, _ceil_div(_ceil_div(og, n_chunks), DIRECT_MAX_CO) * DIRECT_MAX_CO)
    return band, chunk, per_unit


def use_direct_weight(groups: int, cg: int, og: int, win, itemsize: int = 8,
                      nhwc: bool = False) -> bool:
    """Whether a weight gradient runs in the direct kernels: only where
    per-group GEMMs are thin: groups of at most DIRECT_WEIGHT_OUTPUTS output
    channels (ResNeXt, depthwise),
    ungrouped layers over at least DIRECT_WEIGHT_MIN_POSITIONS output
    positions with at most that many outputs (float64:
    DIRECT_WEIGHT_OUTPUTS_F64) where they have DIRECT_WEIGHT_MIN_CHANNELS
    input channels or more, at most DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS where
    they have fewer; NCHW ungrouped layers over at least
    DIRECT_WEIGHT_WIDE_POSITIONS with up to DIRECT_WEIGHT_WIDE_OUTPUTS
    outputs; in NHWC ungrouped only, and with stride 1 at most
    NHWC_DIRECT_WEIGHT_OUTPUTS outputs (and in float32 at most
    NHWC_DIRECT_WEIGHT_F32_CHANNELS input channels).
    Elsewhere the GEMM path wins: the direct weight gradient is a reduction
    over positions, short on small images (docs/performance.md)."""
    if nhwc and (groups > 1 or ((win.stride_h, win.stride_w) == (1, 1) and (
            og > NHWC_DIRECT_WEIGHT_OUTPUTS
            or (itemsize == 4 and cg > NHWC_DIRECT_WEIGHT_F32_CHANNELS)))):
        return False
    if groups == 1:
        if (not nhwc and og <= DIRECT_WEIGHT_WIDE_OUTPUTS
                and win.out_h * win.out_w >= DIRECT_WEIGHT_WIDE_POSITIONS):
            return use_direct(groups, cg, og, win)
        if cg < DIRECT_WEIGHT_MIN_CHANNELS:
            outputs = DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS
        else:
            outputs = DIRECT_WEIGHT_OUTPUTS_F64 if itemsize == 8 else DIRECT_WEIGHT_OUTPUTS
        return (og <= outputs and win.out_h * win.out_w >= DIRECT_WEIGHT_MIN_POSITIONS
                and use_direct(groups, cg, og, win))
    return og <= DIRECT_WEIGHT_OUTPUTS and use_direct(groups, cg, og, win)



def _direct_weight_unit_layout(channels: int, og: int, win, itemsize: int,
                               vector_elements: int) -> tuple[int, int]:
    """(fixed bytes, bytes per output row) of a direct weight-gradient unit's
    scratch: `channels` input channels' bands and og outputs' grad_output rows."""
    span, row_len, halo = _direct_band_geometry(win, vector_elements)
    planes = channels * win.stride_h * win.stride_w
    return ((planes * halo * row_len + span + row_len + og * span) * itemsize,
            (planes + og) * row_len * itemsize)


def direct_weight_unit_bytes(og: int, win, itemsize: int, vector_elements: int,
                             split: tuple[int, int, int]) -> int:
    """A thread's scratch bytes in the direct weight gradient under `split`
    (from direct_weight_split), as that bounds them."""
    band, chunk, _ = split
    fixed, per_row = _direct_weight_unit_layout(chunk, og, win, itemsize, vector_elements)
    return fixed + band * per_row


def direct_weight_split(groups: int, cg: int, og: int, win, itemsize: int, n_threads: int,
                        vector_elements: int) -> tuple[int, int, int] | None:
    """(output rows per band, input channels and output channels per work
    unit) for the direct weight gradient (src/_direct.pyx), or None when one
    row's scratch would exceed DIRECT_MAX_BAND_BYTES. The band depends on the
    shape alone, not on the threads: each weight's sum then runs in the same
    order (the same bits) whatever the thread count and split. Units split
    each group's input channels until there are two per thread, in chunks of
    at least DIRECT_WEIGHT_MIN_CHUNK channels, then its output channels into
    blocks (a unit packs its chunk's input band and its block's
    grad_output band, unless the thread's unit before it packed the same),
    then the channels further."""
    cap = min(cg, DIRECT_WEIGHT_CHANNELS)
    fixed, per_row = _direct_weight_unit_layout(cap, og, win, itemsize, vector_elements)
    if fixed + per_row > DIRECT_MAX_BAND_BYTES:
        return None
    band = max(1, min(win.out_h, (DIRECT_BAND_BYTES - fixed) // per_row))
    wanted = 2 * n_threads
    n_chunks, n_blocks = _ceil_div(cg, cap), 1
    if groups * n_chunks < wanted:
        n_chunks = max(n_chunks, min(_ceil_div(wanted, groups), cg // DIRECT_WEIGHT_MIN_CHUNK))
    if groups * n_chunks < wanted:
        n_blocks = min(_ceil_div(og, DIRECT_WEIGHT_MIN_BLOCK),
                       _ceil_div(wanted, groups * n_chunks))
    if groups * n_chunks * n_blocks < wanted:
        n_chunks = min(cg, _ceil_div(wanted, groups * n_blocks))
    return band, _ceil_div(cg, n_chunks), _ceil_div(og, n_blocks)
