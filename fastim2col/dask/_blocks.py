"""The graph builder shared by every operation of fastim2col.dask.

An operation is split per spatial axis into output blocks (fastim2col.dask.
_geometry); one gather task per block copies the input rows that block reads
(its halo from the neighbouring chunks, several chunks where they are smaller
than the halo) into one chunk; then one blockwise task per output block runs
the in-memory fastim2col function on it. The graph is O(number of blocks).
"""
from __future__ import annotations

import operator
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


def gather(x, axes: Sequence[int], ranges: Sequence[Sequence[tuple[int, int]]]):
    """x re-cut so that along axes[i] chunk j holds x[ranges[i][j]] (ranges
    may overlap - the halos - or be empty): one task per new chunk, copying
    the pieces of the input chunks it overlaps into place (a chunk smaller
    than the halo is read by several blocks)."""
    import itertools

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if all(len(r) == len(x.chunks[a]) and all(
            (lo, hi) == (e0, e1) for (lo, hi), e0, e1 in zip(r, _edges(x.chunks[a])[:-1],
                                                             _edges(x.chunks[a])[1:]))
           for a, r in zip(axes, ranges)):
        return x   # already the needed chunks (e.g. a 1-wide window, stride 1)
    # Along each axis, per new chunk: (input chunk, slice in it, slice in the new chunk).
    pieces: dict[int, list[list[tuple[int, slice, slice]]]] = {}
    for a, axis_ranges in zip(axes, ranges):
        edges = _edges(x.chunks[a])
        per_chunk = []
        for lo, hi in axis_ranges:
            first = max(0, int(np.searchsorted(edges, lo, side="right")) - 1)
            items = []
            for c in range(first, len(edges) - 1):
                s0, s1 = max(lo, edges[c]), min(hi, edges[c + 1])
                if edges[c] >= hi:
                    break
                if s0 < s1:
                    items.append((c, slice(s0 - edges[c], s1 - edges[c]),
                                  slice(s0 - lo, s1 - lo)))
            per_chunk.append(items)
        pieces[a] = per_chunk
    chunks = list(x.chunks)
    for a, axis_ranges in zip(axes, ranges):
        chunks[a] = tuple(hi - lo for lo, hi in axis_ranges)
    name = "fastim2col-gather-" + tokenize(x.name, tuple(axes), tuple(map(tuple, ranges)))
    graph: dict[tuple, tuple] = {}
    for index in itertools.product(*(range(len(c)) for c in chunks)):
        shape = tuple(chunks[axis][i] for axis, i in enumerate(index))
        choices = [pieces[axis][i] if axis in pieces else [(i, slice(None), slice(None))]
                   for axis, i in enumerate(index)]
        keys, sources, targets = [], [], []
        for combination in itertools.product(*choices):
            keys.append((x.name,) + tuple(c for c, _, _ in combination))
            sources.append(tuple(src for _, src, _ in combination))
            targets.append(tuple(dst for _, _, dst in combination))
        # The largest piece (the block's own chunk) is read in place; every
        # other piece - a halo - is cut out by a task of its own, which the
        # scheduler runs where that chunk is: only the halo travels between
        # workers, not the neighbour's whole chunk.
        sizes = [int(np.prod([len(range(*sl.indices(n))) for sl, n in
                              zip(src, _chunk_shape(x.chunks, key[1:]))])) for src, key in
                 zip(sources, keys)]
        home = int(np.argmax(sizes)) if sizes else -1
        for p in range(len(keys)):
            if p != home:
                halo_key = (name + "-halo",) + index + (p,)
                graph[halo_key] = (operator.getitem, keys[p], sources[p])
                keys[p], sources[p] = halo_key, (slice(None),) * x.ndim
        graph[(name,) + index] = (_assemble, shape, x.dtype, keys, sources, targets)
    layer_graph = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    return da.Array(layer_graph, name, chunks=tuple(chunks), meta=x._meta)


def _chunk_shape(chunks, index) -> tuple[int, ...]:
    return tuple(c[i] for c, i in zip(chunks, index))


def _edges(chunks: Sequence[int]) -> list[int]:
    return np.cumsum((0,) + tuple(chunks)).tolist()


def _assemble(shape, dtype, parts, sources, targets) -> np.ndarray:
    """One new chunk from pieces of input chunks."""
    if len(parts) == 1 and parts[0][sources[0]].shape == tuple(shape):
        return parts[0][sources[0]]   # a single whole piece: a view, no copy
    out = np.empty(shape, dtype)
    for part, source, target in zip(parts, sources, targets):
        out[target] = part[source]
    return out


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
    # Weights and bias as one graph key each, sent once to a worker, rather
    # than copied into every task.
    import dask
    kwargs = {k: dask.delayed(v, pure=True) if isinstance(v, np.ndarray) else v
              for k, v in kwargs.items()}
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
