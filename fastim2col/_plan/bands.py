"""The direct kernels' bands (src/_direct.pyx), shared by conv2d and the
stride-1 input gradient: how a band of output rows and its packed input are
laid out, what a thread's scratch holds, and how the work is cut into units.

Thresholds are fields of thresholds.Thresholds (the record in force:
current(); tuned() changes it for a with block), each with a line or two on
why; the measurements behind them, and the commands that reproduce them, are
in docs/performance.md ("Planner thresholds"), keyed by the field's name or
the function's.
"""
from __future__ import annotations

from .. import _direct
from .common import ceil_div
from .thresholds import current

# The kernels' own limits (src/_direct.pyx), not thresholds: the bands'
# scratch and the cuts for balance are (thresholds.py, DIRECT_BAND_BYTES on).
DIRECT_MAX_CO = _direct.MAX_CO             # output channels a register block, at most
DIRECT_GRID_BYTES = _direct.GRID_BYTES     # grid bytes per output channel (stays in L1)


def band_geometry(win, vector_elements: int) -> tuple[int, int, int]:
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
    span, row_len, halo = band_geometry(win, vector_elements)
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
    t = current()
    fixed, per_row, halo_bytes = _direct_unit_layout(cg, win, itemsize, vector_elements)
    row_len = band_geometry(win, vector_elements)[1]
    if fixed + per_row > t.DIRECT_MAX_BAND_BYTES:
        return None
    band = max(1, min(win.out_h, (t.DIRECT_BAND_BYTES - fixed) // per_row))
    per_unit = 1
    image_bytes = band * per_row + halo_bytes
    if band == win.out_h and og * cg * win.kernel_h * win.kernel_w * itemsize >= image_bytes:
        # weights outweigh an image: let each block of them serve several
        # (else one image per unit keeps its band in L1: depthwise layers)
        per_unit = (t.DIRECT_BAND_BYTES - fixed) // image_bytes
        per_unit = max(1, min(n_images, per_unit))
        while n_images % per_unit:   # equal blocks: units of equal work
            per_unit -= 1
    chunk = og
    if n_threads > 1:
        units_wanted = 4 * n_threads
        outer = ceil_div(n_images, per_unit) * groups
        thinnest = min(win.out_h, ceil_div(t.DIRECT_MIN_POSITIONS, row_len))
        band = min(band, max(thinnest, ceil_div(win.out_h, ceil_div(units_wanted, outer))))
        band = ceil_div(win.out_h, ceil_div(win.out_h, band))   # bands of even height
        units = outer * ceil_div(win.out_h, band)
        if units < units_wanted:
            max_chunks = ceil_div(og, DIRECT_MAX_CO)
            n_chunks = min(max_chunks, ceil_div(units_wanted, units))
            while (units * n_chunks) % n_threads and n_chunks < max_chunks:
                n_chunks += 1
            chunk = min(og, ceil_div(ceil_div(og, n_chunks), DIRECT_MAX_CO) * DIRECT_MAX_CO)
    return band, chunk, per_unit
