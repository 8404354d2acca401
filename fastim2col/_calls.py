"""Validation: each public function's arguments checked and prepared into one
Call record, before anything is planned or computed.

A Call holds the operands as the kernels read them (converted to the
computation's dtype; copied only where the kernels cannot walk their
strides), the geometry, and the result's shape; the result itself is
allocated only when the call runs (fastim2col.explain allocates nothing).
Every builder takes exactly its public function's arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from . import _args
from ._args import Window

_ABSENT = np.empty(0)   # an operand this op does not have


def _absent():
    return field(default_factory=lambda: _ABSENT)


@dataclass
class Call:
    op: str                     # the public function's name
    nhwc: bool
    dtype: np.dtype
    shape: tuple                # the batched result's shape
    out: Any                    # the user's out=, as given (returned as it is)
    squeeze: bool               # an unbatched call: drop the batch axis of the result
    win: Window
    inputs: tuple = ()          # the user's arrays (out= must not overlap them)
    x: np.ndarray = _absent()   # im2col / conv input, batched; col2im: cols
    w: np.ndarray = _absent()   # weights as (rows, K_g), C-contiguous
    bias: Optional[np.ndarray] = None
    grad: np.ndarray = _absent()  # grad_output (conv_transpose2d: x), C-contiguous
    n: int = 0
    channels: int = 0           # the conv input's channels (im2col/col2im: the image's)
    rows: int = 0               # the weights' rows: C_out (conv_transpose2d: C_in)
    groups: int = 1
    # 1-d calls run as 2-d ones of unit height: the public name and layout,
    # and the axis of the batched 2-d result that the public result lacks
    name: str = ""
    layout: str = ""
    lift: Optional[int] = None
    spatial: int = 2            # the arrays' spatial dimensions (1-d calls: 2)

    @property
    def batched_out(self) -> Optional[np.ndarray]:
        """out= as the 2-d batched result the kernels write through (a view)."""
        out = self.out
        if not isinstance(out, np.ndarray):
            return out
        if self.squeeze:
            out = out[None]
        return out if self.lift is None else np.expand_dims(out, self.lift)

    def public_result(self, res: np.ndarray) -> np.ndarray:
        """The kernels' batched 2-d result as the public function returns it."""
        if self.lift is not None:
            res = res.squeeze(self.lift)
        return res[0] if self.squeeze else res

    @property
    def volume(self) -> bool:
        """3-d arrays: for the GEMM kernels only, whatever the depths."""
        return self.spatial == 3

    @property
    def cg(self) -> int:
        """Input channels a group."""
        return self.channels // self.groups

    @property
    def og(self) -> int:
        """Weight rows (output channels of the forward conv) a group."""
        return self.rows // self.groups

    @property
    def kg(self) -> int:
        """One group's window size: input channels x taps."""
        return self.cg * self.win.n_taps

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def result_size(self) -> int:
        size = 1
        for s in self.shape:
            size *= s
        return size

    def describe(self) -> str:
        """The call's operands as the user passed them, for FASTIM2COL_VERBOSE."""
        layout = self.layout or ("NHWC" if self.nhwc else "NCHW")
        name = self.name or self.op
        parts = [f"{arg}={tuple(a.shape)}" for arg, a in zip(_INPUT_NAMES[self.op], self.inputs)
                 if a is not None]
        shape = _user_shape(self.shape, self.lift, False)
        return f"{name} {' '.join(parts)} -> {shape} {self.dtype} {layout}"


_INPUT_NAMES = {
    "im2col": ("x",), "col2im": ("cols",), "conv2d": ("x", "weight", "bias"),
    "conv_transpose2d": ("x", "weight", "bias"), "conv2d_input": ("weight", "grad_output"),
    "conv2d_weight": ("input", "grad_output"),
    "conv3d": ("x", "weight", "bias"), "conv_transpose3d": ("x", "weight", "bias"),
    "conv3d_input": ("weight", "grad_output"), "conv3d_weight": ("input", "grad_output"),
}

# Images (2 spatial dimensions) and volumes (3) share every builder below: a
# volume's Window has depth, its arrays one more axis, and the 2-d names of
# the planner and kernels run it ("conv2d" plans a conv3d: _KERNEL_OP).
_KERNEL_OP = {"conv3d": "conv2d", "conv_transpose3d": "conv_transpose2d",
              "conv3d_input": "conv2d_input", "conv3d_weight": "conv2d_weight"}


def _layout(layout, spatial: int) -> bool:
    """Channels last? (images: exactly 'NCHW' or 'NHWC')"""
    if spatial == 2:
        return _args.check_layout(layout)
    if layout is None:
        raise ValueError(f"layout must be one of {_args.LAYOUTS_BY_DIMS[spatial]}, got None")
    return _args.check_layout_dims(layout, spatial)


def _window(sizes, kernel_size, stride, padding, dilation, *, allow_strings: bool,
            out_sizes=None) -> Window:
    if len(sizes) == 3:
        return _args.window3(sizes, kernel_size, stride, padding, dilation,
                             allow_strings=allow_strings, out_dhw=out_sizes)
    return _args.window(sizes, kernel_size, stride, padding, dilation,
                        allow_strings=allow_strings, out_hw=out_sizes)


def _out_sizes(win: Window, spatial: int) -> tuple:
    return ((win.out_d,) if spatial == 3 else ()) + (win.out_h, win.out_w)


def _weights_setup(x_dims, weight_shape, groups, nhwc: bool):
    """(N, C, sizes), (rows, cg, kernel sizes), groups of a conv-like call."""
    groups = _args.positive_int(groups, "groups")
    return _args.dims_nd(x_dims, nhwc), _args.weight_dims_nd(weight_shape, nhwc), groups


def _check_groups(c: int, c_out: int, cg: int, groups: int, forward: bool = True) -> None:
    if c % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both the input channels ({c}) and the "
                         f"output channels ({c_out})")
    if cg != c // groups:
        what = f"x has {c} channels in {groups} group(s), i.e. {c // groups} per group" \
            if forward else f"the input has {c} channels in {groups} group(s)"
        raise ValueError(f"weight expects {cg} input channels per group, but {what}")


def _check_bias(bias, n: int):
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},) (one value per output channel), "
                         f"got {bias.shape}")


def _weight_rank(weight: np.ndarray, spatial: int, name: str = "weight") -> None:
    if weight.ndim != spatial + 2:
        raise ValueError(f"{name} must be {spatial + 2}-d, got {weight.ndim}-d with shape "
                         f"{weight.shape}")


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, *, padding_mode="zeros",
           layout=None, out=None) -> Call:
    spatial = _spatial_dims(kernel_size)
    if spatial == 1:
        return im2col_1d(x, kernel_size, stride, padding, dilation, layout, out, padding_mode)
    return _im2col(x, kernel_size, stride, padding, dilation, spatial,
                   layout or _args.LAYOUTS_BY_DIMS[spatial][0], out, padding_mode)


def col2im(cols, output_size, kernel_size, stride=1, padding=0, dilation=1, *,
           padding_mode="zeros", layout=None, out=None) -> Call:
    spatial = _spatial_dims(kernel_size)
    if spatial == 1:
        return col2im_1d(cols, output_size, kernel_size, stride, padding, dilation, layout, out,
                         padding_mode)
    return _col2im(cols, output_size, kernel_size, stride, padding, dilation, spatial,
                   layout or _args.LAYOUTS_BY_DIMS[spatial][0], out, padding_mode)


def _im2col(x, kernel_size, stride, padding, dilation, spatial, layout, out,
            padding_mode="zeros") -> Call:
    nhwc = _layout(layout, spatial)
    x = _args.as_array(x, "x")
    dtype = _args.compute_dtype(x)
    x, unbatched = _args.batched(x, "x", spatial)
    n, c, sizes = _args.dims_nd(x.shape, nhwc)
    win = _args.with_padding_mode(
        _window(sizes, kernel_size, stride, padding, dilation, allow_strings=False),
        padding_mode)
    n_pos, kk = win.n_out, win.n_taps
    shape = (n, n_pos, kk * c) if nhwc else (n, c * kk, n_pos)
    user = x
    x = _args.strided_operand(x, dtype)
    call = Call("im2col", nhwc, dtype, shape, out, unbatched, win, (user,),
                x=x, n=n, channels=c, spatial=spatial)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, "im2col")
    return call


def _col2im(cols, output_size, kernel_size, stride, padding, dilation, spatial, layout,
            out, padding_mode="zeros") -> Call:
    nhwc = _layout(layout, spatial)
    cols = _args.as_array(cols, "cols")
    dtype = _args.compute_dtype(cols)
    if cols.ndim not in (2, 3):
        raise ValueError(f"cols must be 3-d (batched) or 2-d (unbatched), got {cols.ndim}-d "
                         f"with shape {cols.shape}")
    unbatched = cols.ndim == 2
    if unbatched:
        cols = cols[None]
    sizes = (_args.triple if spatial == 3 else _args.pair)(output_size, "output_size", 1)
    win = _args.with_padding_mode(
        _window(sizes, kernel_size, stride, padding, dilation, allow_strings=False),
        padding_mode)
    kk, n_pos = win.n_taps, win.n_out
    n = cols.shape[0]
    rows, length = (cols.shape[2], cols.shape[1]) if nhwc else (cols.shape[1], cols.shape[2])
    if rows % kk:
        axis = "last" if nhwc else "second"
        raise ValueError(f"col2im: the {axis} dimension of cols ({rows}) must be C times "
                         f"the window's {kk} taps")
    if length != n_pos:
        raise ValueError(f"col2im: cols has L={length} positions, but output_size {sizes} with "
                         f"these window parameters gives {'x'.join(map(str, _out_sizes(win, spatial)))}"
                         f"={n_pos}")
    c = rows // kk
    shape = _args.shape_nd(n, c, sizes, nhwc)
    user = cols
    cols = _args.contiguous_operand(cols, dtype)
    call = Call("col2im", nhwc, dtype, shape, out, unbatched, win, (user,),
                x=cols, n=n, channels=c, spatial=spatial)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, "col2im")
    return call


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", layout="NCHW", out=None) -> Call:
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups, layout, out,
                 padding_mode)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", layout="NCDHW", out=None) -> Call:
    return _conv("conv3d", 3, x, weight, bias, stride, padding, dilation, groups, layout, out,
                 padding_mode)


def _named(call: Call, name: str, layout: str) -> Call:
    """A volume's call runs under its 2-d kernel op; it keeps its own name
    and layout."""
    if name in _KERNEL_OP:
        call.name, call.op, call.layout = name, _KERNEL_OP[name], layout
    return call


def _conv(name, spatial, x, weight, bias, stride, padding, dilation, groups, layout,
          out, padding_mode="zeros") -> Call:
    nhwc = _layout(layout, spatial)
    x = _args.as_array(x, "x")
    weight = _args.as_array(weight, "weight")
    bias = None if bias is None else _args.as_array(bias, "bias")
    dtype = _args.compute_dtype(x, weight, bias)
    x, unbatched = _args.batched(x, "x", spatial)
    _weight_rank(weight, spatial)
    (n, c, sizes), (c_out, cg, ksizes), groups = _weights_setup(x.shape, weight.shape, groups,
                                                                nhwc)
    _check_groups(c, c_out, cg, groups)
    _check_bias(bias, c_out)
    win = _args.with_padding_mode(
        _window(sizes, ksizes, stride, padding, dilation, allow_strings=True), padding_mode)
    kg = cg * win.n_taps
    _args.check_blas(name, positions=win.n_out, out_channels=c_out, window_size=kg)
    shape = _args.shape_nd(n, c_out, _out_sizes(win, spatial), nhwc)
    call = _named(Call(name, nhwc, dtype, shape, out, unbatched, win,
                       (x, weight, bias),
                       x=_args.strided_operand(x, dtype),
                       w=_args.contiguous_operand(weight, dtype).reshape(c_out, kg),
                       bias=None if bias is None else _args.contiguous_operand(bias, dtype),
                       n=n, channels=c, rows=c_out, groups=groups, spatial=spatial), name,
                  layout)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, name)
    return call


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", layout="NCHW",
                     out=None) -> Call:
    _zeros_only("conv_transpose2d", padding_mode)
    return _conv_transpose("conv_transpose2d", 2, x, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size, layout, out)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", layout="NCDHW",
                     out=None) -> Call:
    _zeros_only("conv_transpose3d", padding_mode)
    return _conv_transpose("conv_transpose3d", 3, x, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size, layout, out)


def _zeros_only(name: str, padding_mode) -> None:
    # (as torch's ConvTranspose: its padding removes outputs, nothing is read)
    if padding_mode != "zeros":
        raise ValueError(f"{name}: padding_mode must be 'zeros' (transposed convolutions "
                         f"support no other), got {padding_mode!r}")


def _conv_transpose(name, spatial, x, weight, bias, stride, padding, output_padding, groups,
                    dilation, output_size, layout, out) -> Call:
    nhwc = _layout(layout, spatial)
    x = _args.as_array(x, "x")
    weight = _args.as_array(weight, "weight")
    bias = None if bias is None else _args.as_array(bias, "bias")
    dtype = _args.compute_dtype(x, weight, bias)
    x, unbatched = _args.batched(x, "x", spatial)
    _weight_rank(weight, spatial)
    (n, c_in, sizes), (w_rows, og, ksizes), groups = _weights_setup(x.shape, weight.shape,
                                                                    groups, nhwc)
    if w_rows != c_in:
        raise ValueError(f"weight must have C_in={c_in} rows (its first dimension), got {w_rows}")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c_in})")
    c_out = og * groups
    _check_bias(bias, c_out)
    norm = _args.triple if spatial == 3 else _args.pair
    ks = norm(ksizes, "kernel_size", 1)
    strides = norm(stride, "stride", 1)
    pads = norm(padding, "padding", 0)
    dils = norm(dilation, "dilation", 1)
    ops = list(norm(output_padding, "output_padding", 0))
    # the smallest output each dimension reaches; output_padding adds up to
    # max(stride, dilation) - 1 to it
    least = [(i - 1) * s - 2 * p + d * (k - 1) + 1
             for i, s, p, d, k in zip(sizes, strides, pads, dils, ks)]
    if output_size is not None:
        # as torch.nn.ConvTranspose2d.forward: the output_padding that gives it
        if any(ops):
            raise ValueError(f"{name}: give output_size or output_padding, not both")
        want = _args.output_size_tail(output_size, spatial)
        ops = [w - lo for w, lo in zip(want, least)]
        if not all(0 <= o < max(s, d) for o, s, d in zip(ops, strides, dils)):
            reach = tuple(lo + max(s, d) - 1 for lo, s, d in zip(least, strides, dils))
            raise ValueError(f"{name}: output_size {tuple(want)} is not reachable: with these "
                             f"arguments the output is from {tuple(least)} to {reach}")
    if not all(o < max(s, d) for o, s, d in zip(ops, strides, dils)):
        raise ValueError(f"output_padding {tuple(ops)} must be smaller than either stride "
                         f"{tuple(strides)} or dilation {tuple(dils)}")
    out_sizes = tuple(lo + o for lo, o in zip(least, ops))
    if min(out_sizes) < 1:
        raise ValueError(f"{name}: padding {tuple(pads)} is too large, the output size "
                         f"would be {out_sizes}")
    # The convolution whose input gradient this is: input out_sizes, output sizes.
    win = _window(out_sizes, ks, strides, pads, dils, allow_strings=False, out_sizes=sizes)
    kg = og * win.n_taps
    # (x's positions are the window's outputs)
    _args.check_blas(name, positions=max(win.n_out, win.n_in), in_channels=c_in,
                     out_channels=c_out, window_size=kg)
    shape = _args.shape_nd(n, c_out, out_sizes, nhwc)
    call = _named(Call(name, nhwc, dtype, shape, out, unbatched, win,
                       (x, weight, bias),
                       grad=_args.contiguous_operand(x, dtype),
                       w=_args.contiguous_operand(weight, dtype).reshape(c_in, kg),
                       bias=None if bias is None else _args.contiguous_operand(bias, dtype),
                       n=n, channels=c_out, rows=c_in, groups=groups, spatial=spatial),
                  name, layout)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, name)
    return call


def _gradient_window(name, x_shape, w_shape, grad_output, stride, padding, dilation, groups,
                     nhwc, unbatched, padding_mode="zeros"):
    """Check a gradient call against the forward convolution it differentiates:
    ((N, C, C_out, groups), Window, grad_output's batched shape)."""
    spatial = len(x_shape) - 2
    (n, c, sizes), (c_out, cg, ksizes), groups = _weights_setup(x_shape, w_shape, groups, nhwc)
    _check_groups(c, c_out, cg, groups, forward=False)
    win = _args.with_padding_mode(
        _window(sizes, ksizes, stride, padding, dilation, allow_strings=True), padding_mode)
    expected = _args.shape_nd(n, c_out, _out_sizes(win, spatial), nhwc)
    expected_shape = expected[1:] if unbatched else expected
    if tuple(grad_output.shape) != tuple(expected_shape):
        raise ValueError(f"{name}: grad_output must have shape {tuple(expected_shape)} (the "
                         f"forward output for these arguments), got {tuple(grad_output.shape)}")
    _args.check_blas(name, positions=max(win.n_in, win.n_out), out_channels=c_out,
                     in_channels=c, window_size=cg * win.n_taps)
    return (n, c, c_out, groups), win, expected


def _check_grad_rank(grad_output: np.ndarray, unbatched: bool, like: str, spatial: int) -> None:
    rank = spatial + (1 if unbatched else 2)
    if grad_output.ndim != rank:
        raise ValueError(f"grad_output must be {rank}-d like {like}, got {grad_output.ndim}-d")


def conv2d_input(input_size: Sequence[int], weight, grad_output, stride=1, padding=0,
                 dilation=1, groups=1, *, padding_mode="zeros", layout="NCHW",
                 out=None) -> Call:
    return _conv_input("conv2d_input", 2, input_size, weight, grad_output, stride, padding,
                       dilation, groups, layout, out, padding_mode)


def conv3d_input(input_size: Sequence[int], weight, grad_output, stride=1, padding=0,
                 dilation=1, groups=1, *, padding_mode="zeros", layout="NCDHW",
                 out=None) -> Call:
    return _conv_input("conv3d_input", 3, input_size, weight, grad_output, stride, padding,
                       dilation, groups, layout, out, padding_mode)


def _conv_input(name, spatial, input_size, weight, grad_output, stride, padding, dilation,
                groups, layout, out, padding_mode="zeros") -> Call:
    nhwc = _layout(layout, spatial)
    weight = _args.as_array(weight, "weight")
    grad_output = _args.as_array(grad_output, "grad_output")
    dtype = _args.compute_dtype(weight, grad_output)
    dims = _args.shape_tuple(input_size, "input_size", (spatial + 2, spatial + 1))
    unbatched = len(dims) == spatial + 1
    x_shape = (1,) + dims if unbatched else dims
    _weight_rank(weight, spatial)
    _check_grad_rank(grad_output, unbatched, "input_size", spatial)
    (n, c, c_out, groups), win, go_shape = _gradient_window(
        name, x_shape, weight.shape, grad_output, stride, padding, dilation, groups,
        nhwc, unbatched, padding_mode)
    kg = c // groups * win.n_taps
    call = _named(Call(name, nhwc, dtype, x_shape, out, unbatched, win,
                       (weight, grad_output),
                       grad=_args.contiguous_operand(grad_output, dtype).reshape(go_shape),
                       w=_args.contiguous_operand(weight, dtype).reshape(c_out, kg),
                       n=n, channels=c, rows=c_out, groups=groups, spatial=spatial), name,
                  layout)
    _args.check_output(call.batched_out, x_shape, dtype, call.inputs, name)
    return call


def conv2d_weight(input, weight_size: Sequence[int], grad_output, stride=1, padding=0,
                  dilation=1, groups=1, *, padding_mode="zeros", layout="NCHW",
                  out=None) -> Call:
    return _conv_weight("conv2d_weight", 2, input, weight_size, grad_output, stride, padding,
                        dilation, groups, layout, out, padding_mode)


def conv3d_weight(input, weight_size: Sequence[int], grad_output, stride=1, padding=0,
                  dilation=1, groups=1, *, padding_mode="zeros", layout="NCDHW",
                  out=None) -> Call:
    return _conv_weight("conv3d_weight", 3, input, weight_size, grad_output, stride, padding,
                        dilation, groups, layout, out, padding_mode)


def _conv_weight(name, spatial, input, weight_size, grad_output, stride, padding, dilation,
                 groups, layout, out, padding_mode="zeros") -> Call:
    nhwc = _layout(layout, spatial)
    x = _args.as_array(input, "input")
    grad_output = _args.as_array(grad_output, "grad_output")
    dtype = _args.compute_dtype(x, grad_output)
    x, unbatched = _args.batched(x, "input", spatial)
    w_shape = _args.shape_tuple(weight_size, "weight_size", (spatial + 2,))
    _check_grad_rank(grad_output, unbatched, "input", spatial)
    (n, c, c_out, groups), win, go_shape = _gradient_window(
        name, x.shape, w_shape, grad_output, stride, padding, dilation, groups,
        nhwc, unbatched, padding_mode)
    # (the weight gradient has no batch axis: out= and the result are never squeezed)
    call = _named(Call(name, nhwc, dtype, w_shape, out, False, win, (x, grad_output),
                       x=_args.strided_operand(x, dtype),
                       grad=_args.contiguous_operand(grad_output, dtype).reshape(go_shape),
                       n=n, channels=c, rows=c_out, groups=groups, spatial=spatial), name,
                  layout)
    _args.check_output(out, w_shape, dtype, call.inputs, name)
    return call


# ---------------------------------------------------------------- 1-d calls
# A 1-d call is the 2-d call of unit height: the arrays gain a unit axis (a
# view), the window (1, k), stride (1, s), padding (0, p), dilation (1, d);
# the same planner and kernels then run it.

def _spatial_dims(kernel_size) -> int:
    """Spatial dimensions of an im2col/col2im call: the length of kernel_size
    (an int means 2-d)."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) in (1, 2, 3):
            return len(kernel_size)
        raise ValueError(f"kernel_size must be an int or a tuple of 1, 2 or 3 ints, "
                         f"got {kernel_size!r}")
    return 2


def _unit_axis(nhwc: bool) -> int:
    """Where a 1-d array gains its unit height: NCL (N, C, L) -> (N, C, 1, L),
    NLC (N, L, C) -> (N, 1, L, C) (weights: (C_out, C_g, 1, k) and
    (C_out, 1, k, C_g), the same axes)."""
    return 1 if nhwc else 2


def _lift_array(arr: np.ndarray, name: str, nhwc: bool, ranks: tuple[int, ...]) -> np.ndarray:
    """arr (one of `ranks` dims) with its unit height: the axis before the
    length (NCL) or before it (NLC), counted from the end."""
    if arr.ndim not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise ValueError(f"{name} must be {want} for 1-d data, got {arr.ndim}-d with shape "
                         f"{arr.shape}")
    return np.expand_dims(arr, -3 if nhwc else -2)


def _lift_padding(padding):
    if isinstance(padding, str):
        return padding
    return (0, _args.single(padding, "padding", 0))


def _as_1d(call: Call, name: str, layout: str, inputs: tuple, out, user_shape: tuple,
           squeeze: bool, lift: Optional[int]) -> Call:
    """A 2-d call built from lifted arrays, made the 1-d call `name`: the user's
    arrays and out=, checked against the 1-d result's shape."""
    call.name, call.layout, call.inputs, call.lift = name, layout, inputs, lift
    call.out, call.squeeze = out, squeeze
    _args.check_output(out, user_shape, call.dtype, inputs, name)
    return call


def _user_shape(shape: tuple, lift: Optional[int], squeeze: bool) -> tuple:
    if lift is not None:
        shape = shape[:lift] + shape[lift + 1:]
    return shape[1:] if squeeze else shape


def _lifted_image(x, name: str, nhwc: bool):
    x = _args.as_array(x, name)
    lifted = _lift_array(x, name, nhwc, (3, 2))
    return x, lifted, x.ndim == 2


def im2col_1d(x, kernel_size, stride, padding, dilation, layout, out,
              padding_mode="zeros") -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    user, x4, unbatched = _lifted_image(x, "x", nhwc)
    k = _args.single(kernel_size, "kernel_size", 1)
    call = _im2col_2d(x4, (1, k), (1, _args.single(stride, "stride", 1)),
                  (0, _args.single(padding, "padding", 0)),
                  (1, _args.single(dilation, "dilation", 1)),
                  layout="NHWC" if nhwc else "NCHW", padding_mode=padding_mode)
    # (the 2-d result, (N, C*k, L) or (N, L, k*C), is the 1-d one)
    return _as_1d(call, "im2col", LAYOUTS_1D[nhwc], (user,), out,
                  _user_shape(call.shape, None, unbatched), unbatched, None)


def col2im_1d(cols, output_size, kernel_size, stride, padding, dilation, layout, out,
              padding_mode="zeros") -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    cols = _args.as_array(cols, "cols")
    if cols.ndim not in (2, 3):
        raise ValueError(f"cols must be 3-d (batched) or 2-d (unbatched), got {cols.ndim}-d "
                         f"with shape {cols.shape}")
    length = _args.single(output_size, "output_size", 1)
    call = _col2im_2d(cols, (1, length), (1, _args.single(kernel_size, "kernel_size", 1)),
                  (1, _args.single(stride, "stride", 1)),
                  (0, _args.single(padding, "padding", 0)),
                  (1, _args.single(dilation, "dilation", 1)),
                  layout="NHWC" if nhwc else "NCHW", padding_mode=padding_mode)
    lift = _unit_axis(nhwc)
    unbatched = cols.ndim == 2
    return _as_1d(call, "col2im", LAYOUTS_1D[nhwc], (cols,), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


LAYOUTS_1D = _args.LAYOUTS_BY_DIMS[1]


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", layout="NCL", out=None) -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    user, x4, unbatched = _lifted_image(x, "x", nhwc)
    weight = _args.as_array(weight, "weight")
    call = conv2d(x4, _lift_array(weight, "weight", nhwc, (3,)), bias,
                  (1, _args.single(stride, "stride", 1)), _lift_padding(padding),
                  (1, _args.single(dilation, "dilation", 1)), groups,
                  padding_mode=padding_mode, layout="NHWC" if nhwc else "NCHW")
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv1d", layout, (user, weight, call.inputs[2]), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", layout="NCL",
                     out=None) -> Call:
    _zeros_only("conv_transpose1d", padding_mode)
    nhwc = _args.check_layout_dims(layout, 1)
    user, x4, unbatched = _lifted_image(x, "x", nhwc)
    weight = _args.as_array(weight, "weight")
    if output_size is not None:
        output_size = (1,) + _args.output_size_tail(output_size, 1)
    call = conv_transpose2d(x4, _lift_array(weight, "weight", nhwc, (3,)), bias,
                            (1, _args.single(stride, "stride", 1)),
                            (0, _args.single(padding, "padding", 0)),
                            (0, _args.single(output_padding, "output_padding", 0)), groups,
                            (1, _args.single(dilation, "dilation", 1)), output_size=output_size,
                            layout="NHWC" if nhwc else "NCHW")
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv_transpose1d", layout, (user, weight, call.inputs[2]), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


def conv1d_input(input_size: Sequence[int], weight, grad_output, stride=1, padding=0,
                 dilation=1, groups=1, *, padding_mode="zeros", layout="NCL",
                 out=None) -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    dims = _args.shape_tuple(input_size, "input_size", (3, 2))
    weight = _args.as_array(weight, "weight")
    grad_output = _args.as_array(grad_output, "grad_output")
    unbatched = len(dims) == 2
    axis = len(dims) - (2 if nhwc else 1)
    size4 = dims[:axis] + (1,) + dims[axis:]
    call = conv2d_input(size4, _lift_array(weight, "weight", nhwc, (3,)),
                        _lift_array(grad_output, "grad_output", nhwc, (2,) if unbatched else (3,)),
                        (1, _args.single(stride, "stride", 1)), _lift_padding(padding),
                        (1, _args.single(dilation, "dilation", 1)), groups,
                        padding_mode=padding_mode, layout="NHWC" if nhwc else "NCHW")
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv1d_input", layout, (weight, grad_output), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


def conv1d_weight(input, weight_size: Sequence[int], grad_output, stride=1, padding=0,
                  dilation=1, groups=1, *, padding_mode="zeros", layout="NCL",
                  out=None) -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    user, x4, unbatched = _lifted_image(input, "input", nhwc)
    dims = _args.shape_tuple(weight_size, "weight_size", (3,))
    grad_output = _args.as_array(grad_output, "grad_output")
    size4 = dims[:1] + (1,) + dims[1:] if nhwc else dims[:2] + (1,) + dims[2:]
    call = conv2d_weight(x4, size4,
                         _lift_array(grad_output, "grad_output", nhwc,
                                     (2,) if unbatched else (3,)),
                         (1, _args.single(stride, "stride", 1)), _lift_padding(padding),
                         (1, _args.single(dilation, "dilation", 1)), groups,
                         padding_mode=padding_mode, layout="NHWC" if nhwc else "NCHW")
    # (the weight gradient has no batch axis; its unit height is axis 1 (NLC)
    # or 2 (NCL) of (C_out, ., ., .), as for images)
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv1d_weight", layout, (user, grad_output), out,
                  _user_shape(call.shape, lift, False), False, lift)


def _im2col_2d(x, kernel_size, stride, padding, dilation, *, layout, padding_mode):
    return _im2col(x, kernel_size, stride, padding, dilation, 2, layout, None, padding_mode)


def _col2im_2d(cols, output_size, kernel_size, stride, padding, dilation, *, layout,
               padding_mode):
    return _col2im(cols, output_size, kernel_size, stride, padding, dilation, 2, layout, None,
                   padding_mode)
