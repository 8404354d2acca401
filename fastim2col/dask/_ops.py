"""The N-d operations behind fastim2col.dask's public functions.

Every operation checks its arguments before it builds anything: dask input,
layout, ranks, window parameters, and a dry run of the in-memory function on a
tiny zero array of the same channels and dtype (so weights, bias, groups,
dtypes and the like fail with fastim2col's own errors), then the output sizes
of the real shapes. Only then is the graph built.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

from . import _blocks, _padmodes
from ._blocks import BATCH, CHANNELS, SPATIAL, WEIGHT
from ._geometry import conv_axis, conv_out_size, transpose_axis
from ._threads import check_threads, host_threads_of_client

LAYOUTS = {1: ("NCL", "NLC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}


def in_memory(name: str, nd: int):
    """fastim2col's function for this operation and rank, e.g. conv3d."""
    import fastim2col
    import fastim2col.grad
    module = fastim2col.grad if name.startswith("grad.") else fastim2col
    attribute = name.split(".")[-1].format(nd=nd)
    fn = getattr(module, attribute, None)
    if fn is None:
        raise NotImplementedError(f"fastim2col.{name.format(nd=nd)} does not exist in this "
                                  f"fastim2col ({fastim2col.__version__}): its dask version "
                                  "runs it block by block")
    return fn


def check_layout(layout, nd: int) -> bool:
    """True for channels-last."""
    if not isinstance(layout, str) or layout not in LAYOUTS[nd]:
        raise ValueError(f"layout must be one of {LAYOUTS[nd]}, got {layout!r}")
    return layout == LAYOUTS[nd][1]


def check_dask_array(x, name: str, nd: int, replacement: str):
    import dask.array as da
    if not isinstance(x, da.Array):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(x).__name__}: use "
                        f"{replacement} for in-memory arrays, or wrap it with "
                        "dask.array.from_array(..., chunks=...)")
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"{name} must have {nd + 2} dimensions (or {nd + 1} unbatched), "
                         f"got shape {x.shape}")
    if any(np.isnan(c) for chunks in x.chunks for c in chunks):
        raise ValueError(f"{name} has unknown chunk sizes: call {name}.compute_chunk_sizes() "
                         "first (the blocks' halos are computed from them)")
    return x


def batched(x, nd: int):
    """(x with a batch axis, whether it had none)."""
    return (x[None], True) if x.ndim == nd + 1 else (x, False)


def ints(value, name: str, nd: int, minimum: int) -> tuple[int, ...]:
    """An int, or nd ints (a one-element sequence stands for all), each >= minimum."""
    def one(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
            raise TypeError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
        return operator.index(v)
    if isinstance(value, (tuple, list)) and len(value) in (1, nd):
        result = tuple(one(v) for v in value) * (nd if len(value) == 1 else 1)
    else:
        result = (one(value),) * nd
    if any(v < minimum for v in result):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return result


def padding_pairs(padding, nd: int, kernel, dilation) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis; 'same' as fastim2col (and torch)
    pads d*(k-1) in all, the odd one after."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return [(t // 2, t - t // 2) for t in totals]
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    return [(p, p) for p in ints(padding, "padding", nd, 0)]


def image_shape(n: int, c: int, spatial, channels_last: bool) -> tuple[int, ...]:
    return (n, *spatial, c) if channels_last else (n, c, *spatial)


def kernel_sizes(weight: np.ndarray, nd: int, channels_last: bool, name="weight"):
    if weight.ndim != nd + 2:
        raise ValueError(f"{name} must have {nd + 2} dimensions, got shape {weight.shape}")
    return tuple(weight.shape[1:-1] if channels_last else weight.shape[2:])


def weight_array(weight, name: str = "weight") -> np.ndarray:
    import dask.array as da
    if isinstance(weight, da.Array):
        raise TypeError(f"{name} must be a NumPy array (it is sent whole to every block), "
                        "got a dask array: call .compute() on it first")
    return np.asarray(weight)


def common(x, weight, bias, layout, nd: int, replacement: str):
    channels_last = check_layout(layout, nd)
    x = check_dask_array(x, "x", nd, replacement)
    weight = weight_array(weight)
    bias = None if bias is None else weight_array(bias, "bias")
    return x, weight, bias, channels_last


def conv(nd, x, weight, bias, stride, padding, dilation, groups, layout, threads,
         padding_mode="zeros"):
    fn = in_memory("conv{nd}d", nd)
    mode = _padmodes.check_mode(padding_mode)
    x, weight, bias, channels_last = common(x, weight, bias, layout, nd,
                                            f"fastim2col.conv{nd}d")
    threads = check_threads(threads)
    kernel = kernel_sizes(weight, nd, channels_last)
    s, d = ints(stride, "stride", nd, 1), ints(dilation, "dilation", nd, 1)
    pads = padding_pairs(padding, nd, kernel, d)
    x, unbatched = batched(x, nd)
    c_axis = _blocks.channel_axis(nd, channels_last)
    spatial = _blocks.spatial_axes(nd, channels_last)
    span = [dd * (k - 1) + 1 for k, dd in zip(kernel, d)]
    tiny = np.zeros(image_shape(1, x.shape[c_axis], _padmodes.tiny_sizes(span, pads, mode),
                                channels_last), x.dtype)
    probe = fn(tiny, weight, bias, stride, padding, dilation, groups, padding_mode=mode,
               layout=layout)
    sizes = [x.shape[a] for a in spatial]
    for axis_size, k, ss, dd, (lo, hi) in zip(sizes, kernel, s, d, pads):
        if conv_out_size(axis_size, lo, hi, k, ss, dd) < 1:
            raise ValueError(f"conv{nd}d: kernel {kernel} with dilation {d} is larger than the "
                             f"padded input {tuple(sizes)}")
    # Every block needs all input channels: merge channel chunks.
    x = x.rechunk({c_axis: -1})
    x, pads, shifts = _explicit_padding(x, f"conv{nd}d", mode, spatial, sizes, pads, kernel,
                                        s, d)
    axes = [conv_axis(x.chunks[a], k, ss, dd, lo, hi, shift)
            for a, k, ss, dd, (lo, hi), shift in zip(spatial, kernel, s, d, pads, shifts)]
    x = _blocks.gather(x, spatial, [b.in_ranges for b in axes])
    index = _blocks.array_index(nd, channels_last)
    adjust: dict[str, tuple[int, ...]] = {CHANNELS: (probe.shape[c_axis],)}
    adjust.update({sym: b.out_chunks for sym, b in zip(SPATIAL, axes)})
    out = _blocks.run_blocks(
        _conv_block, [(x, index)], axes, index, dtype=probe.dtype, adjust_chunks=adjust,
        fn=fn, weight=weight, bias=bias, stride=s, dilation=d, groups=groups, layout=layout,
        axes=spatial, threads=threads, host_threads=host_threads_of_client())
    return out[0] if unbatched else out


def _explicit_padding(x, name, mode, spatial, sizes, pads, kernel, s, d):
    """(x, pads, shifts): for a padding_mode other than zeros, x padded
    lazily with what the windows read, then padding 0 (see _padmodes)."""
    if mode == "zeros":
        return x, pads, [0] * len(pads)
    n_out = [conv_out_size(n, lo, hi, k, ss, dd)
             for n, (lo, hi), k, ss, dd in zip(sizes, pads, kernel, s, d)]
    read = _padmodes.read_padding(sizes, pads, n_out, kernel, s, d)
    _padmodes.check_sizes(mode, sizes, read, name)
    return (_padmodes.pad(x, spatial, read, mode), [(0, 0)] * len(pads),
            [lo for lo, _ in read])


def _conv_block(block, *infos, fn, weight, bias, stride, dilation, groups, layout, axes,
                threads, host_threads):
    block, padding = _blocks.pad_block(block, axes, infos)
    return _blocks.under_thread_limit(fn, threads, host_threads, block, weight, bias, stride,
                                      padding, dilation, groups, layout=layout)


def transposed(nd, x, weight, bias, stride, padding, output_padding, groups, dilation,
               output_size, layout, threads, padding_mode="zeros"):
    fn = in_memory("conv_transpose{nd}d", nd)
    x, weight, bias, channels_last = common(x, weight, bias, layout, nd,
                                            f"fastim2col.conv_transpose{nd}d")
    threads = check_threads(threads)
    kernel = kernel_sizes(weight, nd, channels_last)
    s, d = ints(stride, "stride", nd, 1), ints(dilation, "dilation", nd, 1)
    p = ints(padding, "padding", nd, 0)
    op = ints(output_padding, "output_padding", nd, 0)
    x, unbatched = batched(x, nd)
    c_axis = _blocks.channel_axis(nd, channels_last)
    spatial = _blocks.spatial_axes(nd, channels_last)
    sizes = [x.shape[a] for a in spatial]
    base = [(n - 1) * ss - 2 * pp + dd * (k - 1) + 1
            for n, ss, pp, dd, k in zip(sizes, s, p, d, kernel)]
    if output_size is not None:
        if any(op):
            raise ValueError(f"conv_transpose{nd}d: give output_size or output_padding, not both")
        if isinstance(output_size, (numbers.Integral, np.integer)):
            output_size = (output_size,)
        if not isinstance(output_size, (tuple, list)) or len(output_size) < nd:
            raise TypeError(f"output_size must be a tuple of {nd} ints, got {output_size!r}")
        want = ints(tuple(output_size)[-nd:], "output_size", nd, 1)
        op = tuple(w - b for w, b in zip(want, base))
        if not all(0 <= o < max(ss, dd) for o, ss, dd in zip(op, s, d)):
            raise ValueError(f"conv_transpose{nd}d: output_size {want} is not reachable: with "
                             f"these arguments the output is from {tuple(base)} to "
                             f"{tuple(b + max(ss, dd) - 1 for b, ss, dd in zip(base, s, d))}")
    tiny = np.zeros(image_shape(1, x.shape[c_axis], (1,) * nd, channels_last), x.dtype)
    # (fastim2col's transposed convolutions take padding_mode='zeros' only: its error)
    probe = fn(tiny, weight, bias, stride, 0, op, groups, dilation, padding_mode=padding_mode,
               layout=layout)
    n_out = [b + o for b, o in zip(base, op)]
    if min(n_out) < 1:
        raise ValueError(f"conv_transpose{nd}d: padding {p} is too large, the output size "
                         f"would be {tuple(n_out)}")
    return _transposed_graph(nd, x, unbatched, channels_last, kernel, s, d, p, n_out,
                             probe.dtype, probe.shape[c_axis], threads,
                             kind="transpose", fn=fn, weight=weight, bias=bias,
                             groups=groups, layout=layout)


def _transposed_graph(nd, x, unbatched, channels_last, kernel, s, d, p, n_out, dtype,
                      c_out, threads, **block_kwargs):
    c_axis = _blocks.channel_axis(nd, channels_last)
    spatial = _blocks.spatial_axes(nd, channels_last)
    x = x.rechunk({c_axis: -1})
    axes = [transpose_axis(x.chunks[a], n, k, ss, dd, pp)
            for a, n, k, ss, dd, pp in zip(spatial, n_out, kernel, s, d, p)]
    # info per block: (its start in the local result, local length, block length)
    axes = [b._replace(info=tuple(i + (n,) for i, n in zip(b.info, b.out_chunks)))
            for b in axes]
    x = _blocks.gather(x, spatial, [b.in_ranges for b in axes])
    index = _blocks.array_index(nd, channels_last)
    adjust: dict[str, tuple[int, ...]] = {CHANNELS: (c_out,)}
    adjust.update({sym: b.out_chunks for sym, b in zip(SPATIAL, axes)})
    out = _blocks.run_blocks(
        _transposed_block, [(x, index)], axes, index, dtype=dtype, adjust_chunks=adjust,
        stride=s, dilation=d, axes=spatial, channels_last=channels_last, c_out=c_out,
        out_dtype=dtype, threads=threads, host_threads=host_threads_of_client(),
        **block_kwargs)
    return out[0] if unbatched else out


def _transposed_block(block, *infos, kind, fn, weight, bias, groups, layout, stride, dilation,
                      axes, channels_last, c_out, out_dtype, threads, host_threads):
    block_sizes = [int(i[2]) for i in infos]
    out = np.zeros(image_shape(block.shape[0], c_out, block_sizes, channels_last), out_dtype)
    src = [slice(None)] * out.ndim
    dst = [slice(None)] * out.ndim
    reached = True
    for axis, (offset, local_len, block_len) in zip(axes, infos):
        first, at = max(0, int(offset)), max(0, -int(offset))
        n = min(int(local_len) - first, int(block_len) - at)
        reached = reached and n > 0
        src[axis], dst[axis] = slice(first, first + max(n, 0)), slice(at, at + max(n, 0))
    if reached:   # else no input reaches this block: zeros (plus the bias)
        if kind == "transpose":
            local = _blocks.under_thread_limit(fn, threads, host_threads, block, weight, None,
                                               stride, 0, 0, groups, dilation, layout=layout)
        else:
            local_size = image_shape(block.shape[0], c_out, [int(i[1]) for i in infos],
                                     channels_last)
            local = _blocks.under_thread_limit(fn, threads, host_threads, local_size, weight,
                                               block, stride, 0, dilation, groups,
                                               layout=layout)
        out[tuple(dst)] = local[tuple(src)]
    if bias is not None:
        c_axis = out.ndim - 1 if channels_last else 1
        shape = [1] * out.ndim
        shape[c_axis] = c_out
        out += bias.astype(out_dtype, copy=False).reshape(shape)
    return out


def conv_input(nd, input_size, weight, grad_output, stride, padding, dilation, groups,
               layout, threads, padding_mode="zeros"):
    fn = in_memory("grad.conv{nd}d_input", nd)
    mode = _padmodes.check_mode(padding_mode)
    channels_last = check_layout(layout, nd)
    go = check_dask_array(grad_output, "grad_output", nd, f"fastim2col.grad.conv{nd}d_input")
    weight = weight_array(weight)
    threads = check_threads(threads)
    if not isinstance(input_size, (tuple, list)) or len(input_size) != go.ndim:
        raise TypeError(f"input_size must be a tuple of {go.ndim} ints (the input's shape, "
                        f"as batched as grad_output), got {input_size!r}")
    kernel = kernel_sizes(weight, nd, channels_last)
    s, d = ints(stride, "stride", nd, 1), ints(dilation, "dilation", nd, 1)
    pads = padding_pairs(padding, nd, kernel, d)
    size = ints(tuple(input_size), "input_size", go.ndim, 1)
    go, unbatched = batched(go, nd)
    size = (1,) + size if unbatched else size
    c_axis = _blocks.channel_axis(nd, channels_last)
    spatial = _blocks.spatial_axes(nd, channels_last)
    span = [dd * (k - 1) + 1 for k, dd in zip(kernel, d)]
    tiny = _padmodes.tiny_sizes(span, pads, mode)
    tiny_out = [conv_out_size(n, lo, hi, k, ss, dd)
                for n, (lo, hi), k, ss, dd in zip(tiny, pads, kernel, s, d)]
    tiny_go = np.zeros(image_shape(1, go.shape[c_axis], tiny_out, channels_last), go.dtype)
    probe = fn(image_shape(1, size[c_axis], tiny, channels_last), weight, tiny_go, stride,
               padding, dilation, groups, padding_mode=mode, layout=layout)
    expected = [conv_out_size(size[a], lo, hi, k, ss, dd)
                for a, (lo, hi), k, ss, dd in zip(spatial, pads, kernel, s, d)]
    if size[0] != go.shape[0] or expected != [go.shape[a] for a in spatial]:
        raise ValueError(f"grad_output has shape {go.shape}, but a conv{nd}d of input_size "
                         f"{tuple(size)} with these arguments gives spatial size "
                         f"{tuple(expected)} and batch {size[0]}")
    sizes = [size[a] for a in spatial]
    if mode != "zeros":
        # The gradient of the explicitly padded input, folded back (_padmodes).
        read = _padmodes.read_padding(sizes, pads, expected, kernel, s, d)
        _padmodes.check_sizes(mode, sizes, read, f"grad.conv{nd}d_input")
        padded = [n + lo + hi for n, (lo, hi) in zip(sizes, read)]
        g = _transposed_graph(nd, go, False, channels_last, kernel, s, d, [0] * nd, padded,
                              probe.dtype, size[c_axis], threads, kind="input", fn=fn,
                              weight=weight, bias=None, groups=groups, layout=layout)
        g = _padmodes.fold(g, spatial, sizes, read, mode)
        return g[0] if unbatched else g
    return _transposed_graph(nd, go, unbatched, channels_last, kernel, s, d,
                             [lo for lo, _ in pads], sizes, probe.dtype,
                             size[c_axis], threads, kind="input", fn=fn, weight=weight,
                             bias=None, groups=groups, layout=layout)


def conv_weight(nd, x, weight_size, grad_output, stride, padding, dilation, groups, layout,
                threads, split_every, padding_mode="zeros"):
    import dask.array as da
    fn = in_memory("grad.conv{nd}d_weight", nd)
    mode = _padmodes.check_mode(padding_mode)
    channels_last = check_layout(layout, nd)
    x = check_dask_array(x, "input", nd, f"fastim2col.grad.conv{nd}d_weight")
    threads = check_threads(threads)
    if not isinstance(weight_size, (tuple, list)) or len(weight_size) != nd + 2:
        raise TypeError(f"weight_size must be a tuple of {nd + 2} ints, got {weight_size!r}")
    weight_size = ints(tuple(weight_size), "weight_size", nd + 2, 1)
    if not isinstance(grad_output, da.Array):
        grad_output = weight_array(grad_output, "grad_output")
    if grad_output.ndim != x.ndim:
        raise ValueError(f"grad_output must have {x.ndim} dimensions like input, got shape "
                         f"{grad_output.shape}")
    kernel = weight_size[1:-1] if channels_last else weight_size[2:]
    s, d = ints(stride, "stride", nd, 1), ints(dilation, "dilation", nd, 1)
    pads = padding_pairs(padding, nd, kernel, d)
    x, unbatched = batched(x, nd)
    go = grad_output[None] if unbatched else grad_output
    c_axis = _blocks.channel_axis(nd, channels_last)
    spatial = _blocks.spatial_axes(nd, channels_last)
    span = [dd * (k - 1) + 1 for k, dd in zip(kernel, d)]
    tiny = _padmodes.tiny_sizes(span, pads, mode)
    tiny_out = [conv_out_size(n, lo, hi, k, ss, dd)
                for n, (lo, hi), k, ss, dd in zip(tiny, pads, kernel, s, d)]
    probe = fn(np.zeros(image_shape(1, x.shape[c_axis], tiny, channels_last), x.dtype),
               weight_size,
               np.zeros(image_shape(1, go.shape[c_axis], tiny_out, channels_last), go.dtype),
               stride, padding, dilation, groups, padding_mode=mode, layout=layout)
    expected = [conv_out_size(x.shape[a], lo, hi, k, ss, dd)
                for a, (lo, hi), k, ss, dd in zip(spatial, pads, kernel, s, d)]
    if go.shape[0] != x.shape[0] or expected != [go.shape[a] for a in spatial]:
        raise ValueError(f"grad_output has shape {grad_output.shape}, but conv{nd}d of input "
                         f"{x.shape} with these arguments gives spatial size {tuple(expected)}")
    x = x.rechunk({c_axis: -1})
    x, pads, shifts = _explicit_padding(x, f"grad.conv{nd}d_weight", mode, spatial,
                                        [x.shape[a] for a in spatial], pads, kernel, s, d)
    axes = [conv_axis(x.chunks[a], k, ss, dd, lo, hi, shift)
            for a, k, ss, dd, (lo, hi), shift in zip(spatial, kernel, s, d, pads, shifts)]
    x = _blocks.gather(x, spatial, [b.in_ranges for b in axes])
    go_chunks = {0: x.chunks[0], c_axis: -1}
    go_chunks.update({a: b.out_chunks for a, b in zip(spatial, axes)})
    go = go.rechunk(go_chunks) if isinstance(go, da.Array) else da.from_array(
        go, chunks=tuple(go_chunks.get(a, -1) for a in range(go.ndim)))
    x_index = _blocks.array_index(nd, channels_last)
    go_index = tuple("o" if sym == CHANNELS else sym for sym in x_index)
    block_index = (BATCH,) + tuple(SPATIAL[:nd])
    out_index = block_index + tuple(WEIGHT[:nd + 2])
    adjust = {sym: lambda _: 1 for sym in block_index}
    partial = _blocks.run_blocks(
        _weight_block, [(x, x_index), (go, go_index)], axes, out_index, dtype=probe.dtype,
        adjust_chunks=adjust, new_axes=dict(zip(WEIGHT, weight_size)), fn=fn,
        weight_size=weight_size, stride=s, dilation=d, groups=groups, layout=layout,
        axes=spatial, threads=threads, host_threads=host_threads_of_client())
    # The blocks' gradients add up: a tree reduction (split_every blocks per step).
    return partial.sum(axis=tuple(range(len(block_index))), split_every=split_every,
                       dtype=probe.dtype)


def _weight_block(block, grad_block, *infos, fn, weight_size, stride, dilation, groups, layout,
                  axes, threads, host_threads):
    block, padding = _blocks.pad_block(block, axes, infos)
    grad = _blocks.under_thread_limit(fn, threads, host_threads, block, weight_size,
                                      grad_block, stride, padding, dilation, groups,
                                      layout=layout)
    return grad.reshape((1,) * (1 + len(axes)) + grad.shape)
