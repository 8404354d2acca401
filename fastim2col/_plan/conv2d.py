"""conv2d: which kernel (the direct kernels, the thin GEMM) and the unroll +
GEMM split.

Thresholds are fields of thresholds.Thresholds (the record in force:
current(); tuned() changes it for a with block), each with a line or two on
why; the measurements behind them, and the commands that reproduce them, are
in docs/performance.md ("Planner thresholds"), keyed by the field's name or
the function's.
"""
from __future__ import annotations

from . import common as _common
from .common import ceil_div
from .thresholds import current


def forward(n_images, groups, og, kg, n_pos, itemsize, n_threads, direct,
            nhwc=False) -> tuple[int, int]:
    """(tile, block of output channels) for conv2d's forward kernel. A direct
    (1x1) convolution unrolls nothing, so its tile is a whole image."""
    t = current()
    tile = n_pos if direct else _common.gemm_tile(kg, n_pos, itemsize, n_threads)
    block = og
    units = n_images * groups * ceil_div(n_pos, tile)
    if direct and n_threads > 1 and units < n_threads:
        # Nothing to unroll, so nothing to overlap: one GEMM per thread, of a
        # tile of positions (NHWC: contiguous rows of the result) or, in NCHW
        # float64, of whole images and a block of output channels
        # (docs/performance.md, forward).
        finer = _common.tile_per_thread(n_pos, units, n_threads)
        if finer is not None and (nhwc or itemsize == 4):
            return finer, og
        if og >= 16 * n_threads:
            return tile, ceil_div(og, ceil_div(n_threads, units))
    if n_threads > 1 and 2 * n_threads <= units < 8 * n_threads and units % n_threads:
        # Few units: make their count a multiple of the threads (7 tiles on 2
        # threads would leave one thread idle for a seventh of the call).
        per_image = ceil_div(ceil_div(units, n_threads) * n_threads, n_images * groups)
        finer = ceil_div(n_pos, per_image)
        if finer >= t.MIN_GEMM_TILE:
            tile = finer
            units = n_images * groups * ceil_div(n_pos, tile)
    want = 2 * n_threads
    if n_threads > 1 and units < want:
        per_image = ceil_div(want, n_images * groups)
        finer = ceil_div(n_pos, per_image)
        if finer >= t.MIN_GEMM_TILE:
            tile = finer
        else:
            n_blocks = min(og, ceil_div(want, units))
            block = ceil_div(og, n_blocks)
    return tile, block


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
    per_tile = _common.images_per_tile(n_images, groups, (kg + og) * n_pos * itemsize, n_threads)
    if per_tile < 2:
        return None
    sets = ceil_div(n_images, per_tile) * groups
    n_blocks = min(og, max(1, ceil_div(2 * n_threads, sets)))
    return per_tile, ceil_div(og, n_blocks)


def use_thin_forward(nhwc: bool, tile: int, block: int, kg: int, itemsize: int,
                     isa_level: int) -> bool:
    """Whether an NCHW conv2d with tiles of `tile` positions (one image a
    tile), blocks of `block` output channels and kg = C/groups*kh*kw runs
    its GEMMs in the thin kernel (thin_kernel_runs; the limits above)."""
    t = current()
    return (not nhwc and _common.thin_kernel_runs(itemsize, isa_level)
            and tile >= t.THIN_FORWARD_MIN_POSITIONS and block <= t.THIN_FORWARD_MAX_OUTPUTS
            and kg <= t.THIN_FORWARD_MAX_TERMS)


def direct_window(groups: int, cg: int, win, nhwc: bool = False, itemsize: int = 8) -> bool:
    """Whether the direct kernels take this window and layout (see
    DIRECT_BAND_BYTES): windows wider than 1x1, and depthwise ones. In NHWC,
    a unit gathers its group's channels from every pixel: only where they
    fill a cache line (else the NHWC depthwise kernel, or GEMM, read less)
    and are at most NHWC_DIRECT_MAX_CHANNELS."""
    if nhwc and ((groups > 1 and cg * itemsize < 64)
                 or cg > current().NHWC_DIRECT_MAX_CHANNELS):
        return False
    return win.kernel_h * win.kernel_w > 1 or (groups > 1 and cg == 1)


def use_direct(groups: int, cg: int, og: int, win, nhwc: bool = False,
               itemsize: int = 8, isa_level: int = 2) -> bool:
    """Whether a conv2d runs in the direct kernels: direct_window and
    avx2_keeps_direct."""
    return (avx2_keeps_direct(groups, cg, nhwc, itemsize, isa_level)
            and direct_window(groups, cg, win, nhwc, itemsize))


def avx2_keeps_direct(groups: int, cg: int, nhwc: bool, itemsize: int,
                      isa_level: int) -> bool:
    """Below AVX-512 (isa_level < 2) an ungrouped layer's forward and weight
    gradient run direct only in float32 NCHW with at most
    DIRECT_AVX2_MAX_CHANNELS input channels (a register block of 4 doubles a
    vector, or NHWC's gather, loses to GEMM from 3 channels on)."""
    return not (groups == 1 and avx2_direct_rule(isa_level) and (
        nhwc or itemsize == 8 or cg > current().DIRECT_AVX2_MAX_CHANNELS))


def avx2_direct_rule(isa_level: int) -> bool:
    """Whether the limits of machines below AVX-512 on ungrouped direct
    layers apply (AVX2_DIRECT_RULE forces them on or off)."""
    forced = current().AVX2_DIRECT_RULE
    return isa_level < 2 if forced is None else forced
