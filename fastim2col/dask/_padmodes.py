"""padding_mode='reflect' | 'replicate' | 'circular' on dask arrays.

The in-memory functions read such padding inside their kernels. A block of
a chunked array cannot: its border rows may come from the far side of the
image (circular) or from rows of another chunk. So the padding is made
explicit and lazy instead (dask.array.pad, chunk by chunk: only the padded
rows are new), and the zero-padding machinery runs on the padded array with
padding 0. The input gradient goes the other way: it is computed for the
padded array, then each padded row's gradient is added back onto the input
row it was read from (fold).
"""
from __future__ import annotations

from typing import Sequence

NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def check_mode(padding_mode) -> str:
    if not isinstance(padding_mode, str) or padding_mode not in ("zeros", *NUMPY_MODES):
        raise ValueError("padding_mode must be one of 'zeros', 'reflect', 'replicate', "
                         f"'circular', got {padding_mode!r}")
    return padding_mode


def tiny_sizes(spans: Sequence[int], pads, mode: str) -> list[int]:
    """Sizes of the dry run's zero input: the window, and more than the
    padding where the mode reads the input for it (reflect needs that)."""
    if mode == "zeros":
        return list(spans)
    return [max(span, lo + 1, hi + 1) for span, (lo, hi) in zip(spans, pads)]


def read_padding(sizes, pads, n_out, kernel, stride, dilation) -> list[tuple[int, int]]:
    """The padding the windows actually read: all of it before, after only
    up to the last window's end (a stride can leave the rest unread)."""
    read = []
    for size, (lo, _), n, k, s, d in zip(sizes, pads, n_out, kernel, stride, dilation):
        read.append((lo, max(0, (n - 1) * s + d * (k - 1) - lo - size + 1)))
    return read


def check_sizes(mode: str, sizes, read, name: str) -> None:
    """As fastim2col (and torch.nn.functional.pad): reflect needs each padding
    smaller than the input, circular at most the input."""
    for axis, (size, (lo, hi)) in enumerate(zip(sizes, read)):
        most = max(lo, hi)
        if (mode == "reflect" and most >= size) or (mode == "circular" and most > size):
            rule = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(f"{name}: padding_mode={mode!r} needs the padding ({most}) {rule} "
                             f"the input size ({size}) along spatial axis {axis}")


def pad(x, spatial_axes: Sequence[int], read, mode: str):
    """x padded lazily with the rows the mode reads."""
    import dask.array as da
    widths = [(0, 0)] * x.ndim
    for axis, (lo, hi) in zip(spatial_axes, read):
        widths[axis] = (lo, hi)
    return da.pad(x, widths, mode=NUMPY_MODES[mode])


def fold(g, spatial_axes: Sequence[int], sizes, read, mode: str):
    """The gradient of the padded array folded back onto the input: each
    padded row's gradient added to the row it copies."""
    for axis, size, (lo, hi) in zip(spatial_axes, sizes, read):
        g = _fold_axis(g, axis, size, lo, hi, mode)
    return g


def _fold_axis(g, axis: int, size: int, lo: int, hi: int, mode: str):
    import dask.array as da

    def part(start, stop):
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, stop)
        return g[tuple(index)]

    def placed(piece, start):
        """piece as rows start.. of an otherwise zero array of the input's size."""
        widths = [(0, 0)] * g.ndim
        widths[axis] = (start, size - start - piece.shape[axis])
        return da.pad(piece, widths, mode="constant")

    out = part(lo, lo + size)
    if lo:
        before = part(0, lo)                       # padded rows -lo .. -1
        if mode == "reflect":                      # row -i copies row i
            out = out + placed(da.flip(before, axis), 1)
        elif mode == "replicate":                  # every one copies row 0
            out = out + placed(before.sum(axis=axis, keepdims=True), 0)
        else:                                      # circular: row -i copies size - i
            out = out + placed(before, size - lo)
    if hi:
        after = part(lo + size, lo + size + hi)    # padded rows size .. size + hi - 1
        if mode == "reflect":                      # row size - 1 + i copies size - 1 - i
            out = out + placed(da.flip(after, axis), size - 1 - hi)
        elif mode == "replicate":
            out = out + placed(after.sum(axis=axis, keepdims=True), size - 1)
        else:                                      # circular: row size + i copies row i
            out = out + placed(after, 0)
    return out
