"""Planning arithmetic every operation shares: thread counts for the work,
tile sizes of unrolled input, scratch bounds, and the copy operations'
(im2col, col2im) splits.

Kernels take these numbers as given. The rules:
- a tile of unrolled input (K_g x tile elements) stays within TILE_BYTES,
  a size that stays in a core's L2 next to BLAS's own packed panels;
- there are at least two work units per thread where the shape allows it
  (load balance), by cutting tiles finer and then, when tiles would get too
  thin for an efficient GEMM, by splitting output channels instead;
- scratch memory stays bounded (SCRATCH_BYTES for per-thread sums).

Thresholds are fields of thresholds.Thresholds (the record in force:
current(); tuned() changes it for a with block), each with a line or two on
why; the measurements behind them, and the commands that reproduce them, are
in docs/performance.md ("Planner thresholds"), keyed by the field's name or
the function's.
"""
from __future__ import annotations

from .._threads import get_num_threads
from .thresholds import current


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def threads_for(work: float, n_threads: int, min_work: float) -> int:
    """Threads worth using for `work` (FLOPs or bytes): at most n_threads,
    at least 1, and no fewer than min_work per thread."""
    return max(1, min(n_threads, int(work // min_work)))


def conv_threads(flops: float) -> int:
    t = current()
    return threads_for(flops, get_num_threads(), t.MIN_FLOPS_PER_THREAD)


def copy_threads(nbytes: float) -> int:
    t = current()
    return threads_for(nbytes, get_num_threads(), t.MIN_BYTES_PER_THREAD)


def gemm_tile(kg: int, n_pos: int, itemsize: int, n_threads: int = 1) -> int:
    """Output positions per unrolled tile: K_g * tile * itemsize <= TILE_BYTES,
    but at least MIN_GEMM_TILE positions (thin tiles make GEMM inefficient)
    while all threads' tiles stay within TILE_SCRATCH_BYTES."""
    t = current()
    column = max(1, kg * itemsize)
    tile = max(t.TILE_BYTES // column,
               min(t.MIN_GEMM_TILE, t.TILE_SCRATCH_BYTES // (n_threads * column)), 1)
    if tile >= n_pos:
        return n_pos
    if tile > t.TILE_ALIGN:
        tile -= tile % t.TILE_ALIGN
    # Even tiles: ceil(n_pos / n_tiles) avoids a last sliver.
    return ceil_div(n_pos, ceil_div(n_pos, tile))


def tile_per_thread(n_pos: int, units: int, n_threads: int) -> int | None:
    """Positions per tile when the units (whole images x groups, fewer than
    the threads) are cut into one tile a thread; None where such tiles would
    be narrower than MIN_GEMM_TILE."""
    t = current()
    finer = ceil_div(n_pos, ceil_div(n_threads, units))
    return finer if finer >= t.MIN_GEMM_TILE else None


def check_scratch(n_threads: int, *buffer_elements: int, itemsize: int) -> None:
    """Refuse per-thread scratch whose byte size would overflow the kernels'
    size arithmetic (only absurd shapes get near this)."""
    total = n_threads * sum(buffer_elements) * itemsize
    if total > 2**62:
        raise MemoryError(f"the per-thread scratch buffers would need {total} bytes")


def images_per_tile(n_images, groups, bytes_per_image, n_threads,
                     sets_per_thread: bool = True) -> int:
    """Whole images per multi-image tile: as many as MULTI_TILE_BYTES per
    thread (within TILE_SCRATCH_BYTES) hold, but (sets_per_thread) no more
    than keep every thread busy with sets of its own."""
    t = current()
    budget = min(t.MULTI_TILE_BYTES, t.TILE_SCRATCH_BYTES // n_threads)
    busy = n_images
    if sets_per_thread and groups < n_threads:
        busy = ceil_div(n_images * groups, n_threads)
    return min(budget // max(1, bytes_per_image), n_images, busy)


def band_rows(kernel_h, stride_h, dilation_h) -> int:
    """Fewest output rows per band so that bands two apart never reach the
    same input row: rows * stride >= (kh - 1) * dilation - stride + 1."""
    reach = (kernel_h - 1) * dilation_h - stride_h + 1
    return max(1, ceil_div(reach, stride_h))


def vector_fma(isa_level: int) -> bool:
    """Whether the kernels run with vector FMA (isa_level >= 1: AVX2 or
    AVX-512; the baseline build has none): the thin kernel's condition."""
    return isa_level >= 1


def thin_kernel_runs(itemsize: int, isa_level: int) -> bool:
    """Whether the thin kernel is an option in place of a BLAS GEMM: float32
    (in float64 it is no faster than dgemm), with vector_fma."""
    return itemsize == 4 and vector_fma(isa_level)


def im2col_tile(n_units_outer, n_pos, n_threads, row: int = 1) -> int:
    """Positions per im2col unit: enough units (>= 4 per thread) to balance,
    rounded up to whole rows of `row` positions (NCHW: the unroll of whole
    output rows skips the per-row bounds work of a partial one)."""
    per_outer = ceil_div(4 * n_threads, max(1, n_units_outer))
    tile = max(1, ceil_div(n_pos, per_outer))
    return min(n_pos, ceil_div(tile, row) * row)


def col2im_rows(n_images, win, n_threads) -> int:
    """Output rows per band for the NHWC col2im (bands alternate by parity;
    volumes: rows of every output plane in turn, whole planes where the
    kernel is deeper than one)."""
    rows_min = band_rows(win.kernel_h, win.stride_h, win.dilation_h)
    bands_wanted = 2 * ceil_div(2 * n_threads, max(1, n_images))
    n_rows = win.out_d * win.out_h
    rows = min(n_rows, max(rows_min, n_rows // bands_wanted))
    if win.kernel_d > 1:
        planes = max(band_rows(win.kernel_d, win.stride_d, win.dilation_d),
                     ceil_div(rows, win.out_h))
        rows = min(planes, win.out_d) * win.out_h
    return rows
