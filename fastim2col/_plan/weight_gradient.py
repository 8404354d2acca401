"""The weight gradient (grad.conv2d_weight): which kernel (direct, tap by tap,
thin GEMM) and the GEMM split (by input channels, per-thread sums, or
blocks of output channels).

Thresholds are fields of thresholds.Thresholds (the record in force:
current(); tuned() changes it for a with block), each with a line or two on
why; the measurements behind them, and the commands that reproduce them, are
in docs/performance.md ("Planner thresholds"), keyed by the field's name or
the function's.
"""
from __future__ import annotations

import math

from . import bands as _bands, common as _common, conv2d as _conv2d
from .common import ceil_div
from .thresholds import current


def grad_weight_images(n_images, groups, og, kg, n_pos, itemsize, n_threads, n_out, direct):
    """Whole images per tile for the weight gradient of small images (see
    forward_images), or None. Needs per-thread sums within SCRATCH_BYTES."""
    t = current()
    if (direct or n_images < 2 or n_pos >= 4 * t.MIN_GEMM_TILE
            or n_threads * n_out * kg * itemsize > t.SCRATCH_BYTES):
        # Only for thin per-image tiles (7-14 px in ResNet): each image would
        # otherwise be a rank-L update that streams the whole (n_out, K_g)
        # sum through memory (docs/performance.md).
        return None
    # per image: the unrolled tile + grad_output rows
    per_tile = _common.images_per_tile(n_images, groups, (kg + og) * n_pos * itemsize, n_threads)
    return per_tile if per_tile >= 2 else None


def use_thin_weight_channels(og: int, tile: int, direct: bool, isa_level: int) -> bool:
    """Whether an NCHW weight gradient split by input channels, tiles of
    `tile` positions of one image, runs its GEMMs in the thin kernel (see
    THIN_WEIGHT_NCHW_MIN_OUTPUTS; not 1x1 stride 1, unmeasured)."""
    t = current()
    return (og >= t.THIN_WEIGHT_NCHW_MIN_OUTPUTS and tile <= t.THIN_WEIGHT_NCHW_MAX_POSITIONS
            and not direct and _common.vector_fma(isa_level))


def use_thin_weight(tile: int, itemsize: int, isa_level: int) -> bool:
    """Whether an NHWC weight gradient with tiles of `tile` positions (one
    image a tile) runs its GEMMs in the thin kernel (thin_kernel_runs)."""
    t = current()
    return (_common.thin_kernel_runs(itemsize, isa_level)
            and t.THIN_WEIGHT_MIN_POSITIONS <= tile <= t.THIN_WEIGHT_MAX_POSITIONS)


def use_weight_taps(nhwc: bool, cg: int, direct: bool, isa_level: int,
                    channels_contiguous: bool) -> bool:
    """Whether a weight gradient runs tap by tap (see
    TAPS_WEIGHT_MIN_CHANNELS), both dtypes, with vector_fma."""
    t = current()
    return (nhwc and not direct and channels_contiguous and cg >= t.TAPS_WEIGHT_MIN_CHANNELS
            and _common.vector_fma(isa_level))


def grad_weight_taps(n_images, groups, og, kernel_h, n_taps, out_h, out_w,
                     n_threads) -> tuple[int, int, int, int]:
    """(output channels a unit, taps a unit, images a call, output rows a
    call: fewer than out_h for bands of one image) for the tap-by-tap weight
    gradient (see use_weight_taps). Units (group, taps, output channels): the
    split that keeps the threads busiest, then the fewest blocks of taps
    (each block reads the input again), then blocks of at most
    TAPS_WEIGHT_MAX_OUT_BLOCK channels, the largest."""
    t = current()
    n_pos = out_h * out_w
    if n_pos >= t.TAPS_WEIGHT_TERMS:
        per_call, band = 1, min(out_h, ceil_div(t.TAPS_WEIGHT_TERMS, out_w))
    else:
        per_call, band = min(n_images, ceil_div(t.TAPS_WEIGHT_TERMS, n_pos)), out_h
    best_key, best = None, None
    for tap_block in sorted({n_taps, ceil_div(n_taps, kernel_h), 1}, reverse=True):
        tap_blocks = ceil_div(n_taps, tap_block)
        for out_blocks in range(1, max(1, og // t.TAPS_WEIGHT_MIN_OUT_BLOCK) + 1):
            out_block = ceil_div(og, out_blocks)
            units = groups * tap_blocks * ceil_div(og, out_block)
            busy = units / (ceil_div(units, n_threads) * n_threads)
            key = (round(busy, 2), -tap_blocks, out_block <= t.TAPS_WEIGHT_MAX_OUT_BLOCK,
                   out_block)
            if best_key is None or key > best_key:
                best_key, best = key, (out_block, tap_block)
    assert best is not None
    return best[0], best[1], per_call, band


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
    t = current()
    def gemms_per_unit(chunk):
        if direct:
            return n_images
        tile = _common.gemm_tile(chunk * taps, n_pos, itemsize, n_threads)
        return n_images * ceil_div(n_pos, tile)

    n_chunks = min(cg, max(1, n_threads // math.gcd(groups, n_threads)))
    while n_chunks < cg:
        chunk = ceil_div(cg, n_chunks)
        if gemms_per_unit(chunk) <= 1 or og * chunk * taps * itemsize <= t.GRAD_WEIGHT_PART_BYTES:
            break
        if ceil_div(cg, 2 * n_chunks) * taps < t.MIN_CHUNK_COLUMNS:
            break
        n_chunks *= 2
    chunk = ceil_div(cg, n_chunks)
    if chunk * taps < t.MIN_CHUNK_COLUMNS or (cg % chunk and chunk < t.MIN_UNEVEN_CHUNK):
        return None
    per_tile = 1
    if not direct and n_images > 1 and n_pos < t.MIN_IMAGE_TILE:
        # within CHANNEL_TILE_BYTES per thread, and the set's grad_output
        # rows (all groups', gathered once) within TILE_SCRATCH_BYTES
        per_tile = max(1, min(n_images, ceil_div(t.MIN_IMAGE_TILE, n_pos),
                              t.CHANNEL_TILE_BYTES // (chunk * taps * n_pos * itemsize),
                              t.TILE_SCRATCH_BYTES // (groups * og * n_pos * itemsize)))
    if direct:
        tile = n_pos
    elif per_tile > 1:
        tile = per_tile * n_pos
    else:
        tile = _common.gemm_tile(chunk * taps, n_pos, itemsize, n_threads)
    return tile, chunk, per_tile, per_tile == 1 and og <= t.TRANSPOSED_GEMM_OUTPUTS


def grad_weight(n_images, groups, og, kg, n_pos, itemsize, n_threads, n_out,
                direct=False, thin_isa_level=-1, thin=None) -> tuple[int, int, bool]:
    """(tile, block of output channels, per-thread sums?) for the weight
    gradient. thin_isa_level (NHWC): the ISA level for use_thin_weight(); -1
    where the thin kernel is not an option (NCHW). thin: whether the GEMMs
    will be the thin kernel's, where that is already decided (a forced
    kernel); None: as use_thin_weight() says."""
    t = current()
    outer = n_images * groups
    if direct:
        # Nothing is unrolled (1x1 stride 1): no tile buffer to bound, so
        # whole images, cut only so that the units are a multiple of the
        # threads (docs/performance.md, grad_weight).
        per_image = n_threads // math.gcd(outer, n_threads)
        tile = ceil_div(n_pos, max(1, min(per_image, n_pos // t.MIN_GEMM_TILE)))
    else:
        tile = _common.gemm_tile(kg, n_pos, itemsize, n_threads)
    units = outer * ceil_div(n_pos, tile)
    min_units = n_threads if direct else 2 * n_threads
    if (not direct and n_threads > 1 and 2 * n_threads <= units < 8 * n_threads
            and units % n_threads):
        # a multiple of the threads: 7 tiles on 2 threads leave one idle for a
        # seventh of the call
        tile = ceil_div(n_pos, ceil_div(ceil_div(units, n_threads) * n_threads, outer))
        units = outer * ceil_div(n_pos, tile)
    sums_bytes = n_threads * n_out * kg * itemsize
    if n_threads > 1 and units >= min_units and sums_bytes <= t.SCRATCH_BYTES:
        return tile, og, True
    # Two blocks a thread: one was faster, but its results then changed bits
    # under concurrent calls from other Python threads
    # (test_calls_inside_threadpoolctl_limits; docs/performance.md, grad_weight).
    # The thin kernel (NHWC) calls no BLAS and passes that test with one
    # block a thread.
    if thin is None:
        thin = use_thin_weight(tile, itemsize, thin_isa_level)
    per_thread = 1 if thin else 2
    n_blocks = min(og, max(1, ceil_div(per_thread * n_threads, groups))) if n_threads > 1 else 1
    return tile, ceil_div(og, n_blocks), False


def transposed_sums(og, kg, itemsize, whole_images) -> bool:
    """Whether per-thread weight-gradient sums run their GEMMs transposed,
    (K_g x og) with og as OpenBLAS's M: for thin groups (see
    TRANSPOSED_GEMM_OUTPUTS), and in float64 where og > K_g over tiles of
    whole images (dgemm runs faster with the larger side as M there; sgemm
    does not, and over parts of an image it gains nothing: docs/performance.md)."""
    t = current()
    return og <= t.TRANSPOSED_GEMM_OUTPUTS or (itemsize == 8 and og > kg and whole_images)


def use_direct_weight(groups: int, cg: int, og: int, win, itemsize: int = 8,
                      nhwc: bool = False, isa_level: int = 2) -> bool:
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
    NHWC_DIRECT_WEIGHT_F32_CHANNELS input channels); below AVX-512 ungrouped
    layers as for the forward (conv2d.avx2_keeps_direct).
    Elsewhere the GEMM path wins: the direct weight gradient is a reduction
    over positions, short on small images (docs/performance.md)."""
    t = current()
    if nhwc and (groups > 1 or ((win.stride_h, win.stride_w) == (1, 1) and (
            og > t.NHWC_DIRECT_WEIGHT_OUTPUTS
            or (itemsize == 4 and cg > t.NHWC_DIRECT_WEIGHT_F32_CHANNELS)))):
        return False
    if groups == 1:
        if not _conv2d.avx2_keeps_direct(groups, cg, nhwc, itemsize, isa_level):
            return False
        if (not nhwc and og <= t.DIRECT_WEIGHT_WIDE_OUTPUTS
                and win.out_h * win.out_w >= t.DIRECT_WEIGHT_WIDE_POSITIONS):
            return _conv2d.direct_window(groups, cg, win)
        if cg < t.DIRECT_WEIGHT_MIN_CHANNELS:
            outputs = t.DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS
        else:
            outputs = t.DIRECT_WEIGHT_OUTPUTS_F64 if itemsize == 8 else t.DIRECT_WEIGHT_OUTPUTS
        return (og <= outputs and win.out_h * win.out_w >= t.DIRECT_WEIGHT_MIN_POSITIONS
                and _conv2d.direct_window(groups, cg, win))
    return og <= t.DIRECT_WEIGHT_OUTPUTS and _conv2d.direct_window(groups, cg, win)


def _direct_weight_unit_layout(channels: int, og: int, win, itemsize: int,
                               vector_elements: int) -> tuple[int, int]:
    """(fixed bytes, bytes per output row) of a direct weight-gradient unit's
    scratch: `channels` input channels' bands and og outputs' grad_output rows."""
    span, row_len, halo = _bands.band_geometry(win, vector_elements)
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
    t = current()
    cap = min(cg, t.DIRECT_WEIGHT_CHANNELS)
    fixed, per_row = _direct_weight_unit_layout(cap, og, win, itemsize, vector_elements)
    if fixed + per_row > t.DIRECT_MAX_BAND_BYTES:
        return None
    band = max(1, min(win.out_h, (t.DIRECT_BAND_BYTES - fixed) // per_row))
    wanted = 2 * n_threads
    n_chunks, n_blocks = ceil_div(cg, cap), 1
    if groups * n_chunks < wanted:
        n_chunks = max(n_chunks, min(ceil_div(wanted, groups), cg // t.DIRECT_WEIGHT_MIN_CHUNK))
    if groups * n_chunks < wanted:
        n_blocks = min(ceil_div(og, t.DIRECT_WEIGHT_MIN_BLOCK),
                       ceil_div(wanted, groups * n_chunks))
    if groups * n_chunks * n_blocks < wanted:
        n_chunks = min(cg, ceil_div(wanted, groups * n_blocks))
    return band, ceil_div(cg, n_chunks), ceil_div(og, n_blocks)
