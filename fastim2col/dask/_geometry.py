"""Per-axis block geometry of a convolution on a chunked array (pure integer
arithmetic: no dask needed, so it is testable on its own).

Each spatial axis is split into output blocks whose edges follow the input's
chunk edges. For every output block the exact input range its windows read is
computed, clipped to the array, and the part that falls outside (zero
padding) is recorded: the block is then computed by the in-memory function on
that small slice alone, with that padding, and its result equals the same
rows of the in-memory result on the whole array (strides and dilations
included: the slice starts on the window of the block's first output).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence


class AxisBlocks(NamedTuple):
    """One spatial axis: output chunk sizes, and per output block the input
    range [start, stop) it reads plus the zero padding before/after it (for
    transposed convolutions: where the block starts in the local result)."""
    out_chunks: tuple[int, ...]
    in_ranges: tuple[tuple[int, int], ...]
    info: tuple[tuple[int, ...], ...]


def _starts(chunks: Sequence[int]) -> list[int]:
    """The start of every chunk but the first."""
    edges, total = [], 0
    for c in chunks[:-1]:
        total += c
        edges.append(total)
    return edges


def _chunks_from_cuts(cuts: set[int], size: int) -> list[tuple[int, int]]:
    """Sorted non-empty [o0, o1) blocks covering [0, size) cut at `cuts`."""
    edges = sorted({0, size} | {c for c in cuts if 0 < c < size})
    return list(zip(edges[:-1], edges[1:]))


def conv_out_size(length: int, pad_lo: int, pad_hi: int, k: int, s: int, d: int) -> int:
    return (length + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


def conv_axis(in_chunks: Sequence[int], k: int, s: int, d: int,
              pad_lo: int, pad_hi: int, shift: int = 0) -> AxisBlocks:
    """A (strided, dilated, padded) convolution along one axis.

    Output o reads inputs o*s - pad_lo + t*d (t < k). Any chunking works:
    uneven, or chunks smaller than the window (a block then reads several).
    shift: where the unpadded input starts in this one (an explicitly padded
    array), so that the blocks still follow the unpadded input's chunks.
    """
    length = sum(in_chunks)
    n_out = conv_out_size(length, pad_lo, pad_hi, k, s, d)
    # Output blocks follow the input chunks scaled by the stride (with "same"
    # padding the output chunks are the input's): block edges at ceil(b / s).
    cuts = {-(-(b - shift) // s) for b in _starts(in_chunks)}
    blocks = _chunks_from_cuts(cuts, n_out)
    out_chunks, in_ranges, info = [], [], []
    for o0, o1 in blocks:
        lo = o0 * s - pad_lo
        hi = (o1 - 1) * s - pad_lo + d * (k - 1) + 1
        start = min(max(lo, 0), length)
        stop = max(start, min(hi, length))
        before = max(0, start - lo) if stop > start else hi - lo
        after = (hi - lo) - before - (stop - start)
        out_chunks.append(o1 - o0)
        in_ranges.append((start, stop))
        info.append((before, after))
    return AxisBlocks(tuple(out_chunks), tuple(in_ranges), tuple(info))


def transpose_axis(in_chunks: Sequence[int], n_out: int, k: int, s: int, d: int,
                   pad: int) -> AxisBlocks:
    """A transposed convolution (the input gradient of a convolution) along one
    axis: input i adds into outputs i*s - pad + t*d.

    An output block [o0, o1) gathers every input that reaches it; the local
    transposed convolution of that slice (padding 0) starts at global output
    start*s - pad, and info holds (where the block starts in the local
    result, local length): the local result can begin after o0 (no input
    reaches the block's first outputs) or be empty.
    """
    length = sum(in_chunks)
    span = d * (k - 1)
    cuts = {b * s for b in _starts(in_chunks)}   # the input chunks scaled by the stride
    blocks = _chunks_from_cuts(cuts, n_out)
    out_chunks, in_ranges, info = [], [], []
    for o0, o1 in blocks:
        start = max(0, -(-(o0 + pad - span) // s))
        stop = min(length, (o1 - 1 + pad) // s + 1)
        stop = max(start, stop)
        local_len = (stop - start - 1) * s + span + 1 if stop > start else 0
        out_chunks.append(o1 - o0)
        in_ranges.append((start, stop))
        info.append((o0 - (start * s - pad), local_len))
    return AxisBlocks(tuple(out_chunks), tuple(in_ranges), tuple(info))
