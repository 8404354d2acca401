"""The graph builder shared by every operation of fastim2col.dask.

An operation is split per spatial axis into output blocks (fastim2col.dask.
_geometry); the input rows each block reads are gathered into one chunk of a
new array (slices of the input, concatenated and rechunked: a block reading
several small chunks gets them merged, a halo is read from its neighbours);
then one blockwise task per output block runs the in-memory fastim2col
function on its chunk. The graph stays O(number of blocks).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ._geometry import AxisBlocks
from ._threads import kernel_threads, task_threads

# Index symbols for dask.array.blockwise: batch, channels, spatial axes, and
# the axes of a weight-shaped result.
BATCH, CHANNELS = "n", "c"
SPATIAL = "ijk"
WEIGHT = "pqrstu"


def spatial_axes(nd: int, channels_last: bool) -> list[int]:
    return list(range(1, 1 + nd)) if channels_last else list(range(2, 2 + nd))


def channel_axis(nd: int, channels_last: bool) -> int:
    return 1 + nd if channels_last else 1


def array_index(nd: int, channels_last: bool) -> tuple[str, ...]:
    """blockwise index of a batched image array in this layout."""
    spatial = tuple(SPATIAL[:nd])
    return (BATCH,) + spatial + (CHANNELS,) if channels_last else (BATCH, CHANNELS) + spatial


def gather(x, axis: int, ranges: Sequence[tuple[int, int]]):
    """x with `axis` made of one chunk per range: chunk j holds x[ranges[j]]
    along that axis (ranges may overlap - halos - or be empty)."""
    import dask.array as da
    sizes = tuple(b - a for a, b in ranges)
    edges = np.cumsum((0,) + x.chunks[axis])
    if all(a == edges[j] and b == edges[j + 1] for j, (a, b) in enumerate(ranges)) \
            and len(ranges) == len(x.chunks[axis]):
        return x   # already the needed chunks (e.g. a 1-wide window, stride 1)
    index = [slice(None)] * x.ndim
    pieces = []
    for a, b in ranges:
        index[axis] = slice(a, b)
        pieces.append(x[tuple(index)])
    return da.concatenate(pieces, axis=axis).rechunk({axis: sizes})


def axis_info_array(blocks: AxisBlocks):
    """The per-block (int, int) info of one axis as a dask array with one
    chunk per block, so that blockwise hands each task its own pair."""
    import dask.array as da
    per_block = np.asarray(blocks.info, dtype=np.int64)
    return da.from_array(per_block.reshape(-1), chunks=per_block.shape[1])


def run_blocks(block_fn: Callable, arrays: Sequence[tuple[object, tuple[str, ...]]],
               axis_blocks: Sequence[AxisBlocks], out_index: tuple[str, ...], *, dtype,
               adjust_chunks: dict, new_axes: dict | None = None, **kwargs):
    """blockwise(block_fn, arrays..., per-axis infos...): every array already
    has one chunk per output block along each spatial symbol."""
    import dask.array as da
    args: list = []
    for array, index in arrays:
        args += [array, index]
    for symbol, blocks in zip(SPATIAL, axis_blocks):
        args += [axis_info_array(blocks), (symbol,)]
    meta = np.empty((0,) * len(out_index), dtype=dtype)
    return da.blockwise(block_fn, out_index, *args, dtype=dtype, meta=meta,
                        align_arrays=False, concatenate=True, adjust_chunks=adjust_chunks,
                        new_axes=new_axes or {}, **kwargs)


def under_thread_limit(fn: Callable, threads: int | None, host_threads: dict, *args, **kwargs):
    with kernel_threads(task_threads(threads, host_threads)):
        return fn(*args, **kwargs)


def pad_block(block: np.ndarray, axes: Sequence[int], pads: Sequence[Sequence[int]]):
    """(block, padding): symmetric padding goes to the kernel as its padding
    argument (no copy); only an uneven one (edge blocks) pads the block."""
    if all(lo == hi for lo, hi in pads):
        return block, tuple(int(lo) for lo, _ in pads)
    widths = [(0, 0)] * block.ndim
    for axis, (lo, hi) in zip(axes, pads):
        widths[axis] = (int(lo), int(hi))
    return np.pad(block, widths), (0,) * len(pads)
