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
        return self.cg * self.win.kernel_h * self.win.kernel_w

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
        shape = self.shape if self.lift is None else self.shape[:self.lift] + \
            self.shape[self.lift + 1:]
        return f"{name} {' '.join(parts)} -> {shape} {self.dtype} {layout}"


_INPUT_NAMES = {
    "im2col": ("x",), "col2im": ("cols",), "conv2d": ("x", "weight", "bias"),
    "conv_transpose2d": ("x", "weight", "bias"), "conv2d_input": ("weight", "grad_output"),
    "conv2d_weight": ("input", "grad_output"),
}


def _weights_setup(x_dims, weight_shape, groups, nhwc: bool):
    """(N, C, H, W), (rows, cg, kh, kw), groups of a conv-like call."""
    groups = _args.positive_int(groups, "groups")
    return _args.image_dims(x_dims, nhwc), _args.weight_dims(weight_shape, nhwc), groups


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


def _four_d(weight: np.ndarray, name: str = "weight") -> None:
    if weight.ndim != 4:
        raise ValueError(f"{name} must be 4-d, got {weight.ndim}-d with shape {weight.shape}")


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, *, layout=None,
           out=None) -> Call:
    if _spatial_dims(kernel_size) == 1:
        return im2col_1d(x, kernel_size, stride, padding, dilation, layout, out)
    return im2col_2d(x, kernel_size, stride, padding, dilation, layout=layout or "NCHW",
                     out=out)


def col2im(cols, output_size, kernel_size, stride=1, padding=0, dilation=1, *,
           layout=None, out=None) -> Call:
    if _spatial_dims(kernel_size) == 1:
        return col2im_1d(cols, output_size, kernel_size, stride, padding, dilation, layout, out)
    return col2im_2d(cols, output_size, kernel_size, stride, padding, dilation,
                     layout=layout or "NCHW", out=out)


def im2col_2d(x, kernel_size, stride=1, padding=0, dilation=1, *, layout="NCHW",
              out=None) -> Call:
    nhwc = _args.check_layout(layout)
    x = _args.as_array(x, "x")
    dtype = _args.compute_dtype(x)
    x, unbatched = _args.batched(x, "x")
    n, c, h, w = _args.image_dims(x.shape, nhwc)
    win = _args.window((h, w), kernel_size, stride, padding, dilation, allow_strings=False)
    n_pos = win.out_h * win.out_w
    kk = win.kernel_h * win.kernel_w
    shape = (n, n_pos, kk * c) if nhwc else (n, c * kk, n_pos)
    user = x
    x = _args.strided_operand(x, dtype)
    call = Call("im2col", nhwc, dtype, shape, out, unbatched, win, (user,),
                x=x, n=n, channels=c)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, "im2col")
    return call


def col2im_2d(cols, output_size, kernel_size, stride=1, padding=0, dilation=1, *,
              layout="NCHW", out=None) -> Call:
    nhwc = _args.check_layout(layout)
    cols = _args.as_array(cols, "cols")
    dtype = _args.compute_dtype(cols)
    if cols.ndim not in (2, 3):
        raise ValueError(f"cols must be 3-d (batched) or 2-d (unbatched), got {cols.ndim}-d "
                         f"with shape {cols.shape}")
    unbatched = cols.ndim == 2
    if unbatched:
        cols = cols[None]
    out_hw = _args.pair(output_size, "output_size", 1)
    win = _args.window(out_hw, kernel_size, stride, padding, dilation, allow_strings=False)
    kk = win.kernel_h * win.kernel_w
    n_pos = win.out_h * win.out_w
    n = cols.shape[0]
    rows, length = (cols.shape[2], cols.shape[1]) if nhwc else (cols.shape[1], cols.shape[2])
    if rows % kk:
        axis = "last" if nhwc else "second"
        raise ValueError(f"col2im: the {axis} dimension of cols ({rows}) must be C*kh*kw, "
                         f"a multiple of kh*kw={kk}")
    if length != n_pos:
        raise ValueError(f"col2im: cols has L={length} positions, but output_size {out_hw} with "
                         f"these window parameters gives {win.out_h}x{win.out_w}={n_pos}")
    c = rows // kk
    shape = _args.image_shape(n, c, out_hw[0], out_hw[1], nhwc)
    user = cols
    cols = _args.contiguous_operand(cols, dtype)
    call = Call("col2im", nhwc, dtype, shape, out, unbatched, win, (user,),
                x=cols, n=n, channels=c)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, "col2im")
    return call


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           layout="NCHW", out=None) -> Call:
    nhwc = _args.check_layout(layout)
    x = _args.as_array(x, "x")
    weight = _args.as_array(weight, "weight")
    bias = None if bias is None else _args.as_array(bias, "bias")
    dtype = _args.compute_dtype(x, weight, bias)
    x, unbatched = _args.batched(x, "x")
    _four_d(weight)
    (n, c, h, w), (c_out, cg, kh, kw), groups = _weights_setup(x.shape, weight.shape, groups,
                                                               nhwc)
    _check_groups(c, c_out, cg, groups)
    _check_bias(bias, c_out)
    win = _args.window((h, w), (kh, kw), stride, padding, dilation, allow_strings=True)
    kg = cg * kh * kw
    _args.check_blas("conv2d", positions=win.out_h * win.out_w, out_channels=c_out,
                     window_size=kg)
    shape = _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc)
    call = Call("conv2d", nhwc, dtype, shape, out, unbatched, win,
                (x, weight, bias),
                x=_args.strided_operand(x, dtype),
                w=_args.contiguous_operand(weight, dtype).reshape(c_out, kg),
                bias=None if bias is None else _args.contiguous_operand(bias, dtype),
                n=n, channels=c, rows=c_out, groups=groups)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, "conv2d")
    return call


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, layout="NCHW", out=None) -> Call:
    nhwc = _args.check_layout(layout)
    x = _args.as_array(x, "x")
    weight = _args.as_array(weight, "weight")
    bias = None if bias is None else _args.as_array(bias, "bias")
    dtype = _args.compute_dtype(x, weight, bias)
    x, unbatched = _args.batched(x, "x")
    _four_d(weight)
    (n, c_in, h, w), (w_rows, og, kh, kw), groups = _weights_setup(x.shape, weight.shape,
                                                                  groups, nhwc)
    if w_rows != c_in:
        raise ValueError(f"weight must have C_in={c_in} rows (its first dimension), got {w_rows}")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c_in})")
    c_out = og * groups
    _check_bias(bias, c_out)
    kh, kw = _args.pair((kh, kw), "kernel_size", 1)
    sh, sw = _args.pair(stride, "stride", 1)
    ph, pw = _args.pair(padding, "padding", 0)
    dh, dw = _args.pair(dilation, "dilation", 1)
    oph, opw = _args.pair(output_padding, "output_padding", 0)
    if output_size is not None:
        # as torch.nn.ConvTranspose2d.forward: the output_padding that gives it
        if (oph, opw) != (0, 0):
            raise ValueError("conv_transpose2d: give output_size or output_padding, not both")
        want_h, want_w = _args.output_size_tail(output_size, 2)
        oph = want_h - ((h - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
        opw = want_w - ((w - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        if not (0 <= oph < max(sh, dh) and 0 <= opw < max(sw, dw)):
            lo_h, lo_w = want_h - oph, want_w - opw
            raise ValueError(
                f"conv_transpose2d: output_size {(want_h, want_w)} is not reachable: with these "
                f"arguments the output is from {(lo_h, lo_w)} to "
                f"{(lo_h + max(sh, dh) - 1, lo_w + max(sw, dw) - 1)}")
    if not (oph < max(sh, dh) and opw < max(sw, dw)):
        raise ValueError(f"output_padding {(oph, opw)} must be smaller than either stride "
                         f"{(sh, sw)} or dilation {(dh, dw)}")
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv_transpose2d: padding {(ph, pw)} is too large, the output size "
                         f"would be {(out_h, out_w)}")
    # The convolution whose input gradient this is: input out_h x out_w, output h x w.
    win = Window(out_h, out_w, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    kg = og * kh * kw
    _args.check_blas("conv_transpose2d", positions=max(h * w, out_h * out_w),
                     in_channels=c_in, out_channels=c_out, window_size=kg)
    shape = _args.image_shape(n, c_out, out_h, out_w, nhwc)
    call = Call("conv_transpose2d", nhwc, dtype, shape, out, unbatched, win,
                (x, weight, bias),
                grad=_args.contiguous_operand(x, dtype),
                w=_args.contiguous_operand(weight, dtype).reshape(c_in, kg),
                bias=None if bias is None else _args.contiguous_operand(bias, dtype),
                n=n, channels=c_out, rows=c_in, groups=groups)
    _args.check_output(call.batched_out, shape, dtype, call.inputs, "conv_transpose2d")
    return call


def _gradient_window(name, x_shape, w_shape, grad_output, stride, padding, dilation, groups,
                     nhwc, unbatched):
    """Check a gradient call against the forward conv2d it differentiates:
    ((N, C, C_out, groups), Window)."""
    (n, c, h, w), (c_out, cg, kh, kw), groups = _weights_setup(x_shape, w_shape, groups, nhwc)
    _check_groups(c, c_out, cg, groups, forward=False)
    win = _args.window((h, w), (kh, kw), stride, padding, dilation, allow_strings=True)
    expected = _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc)
    expected_shape = expected[1:] if unbatched else expected
    if tuple(grad_output.shape) != tuple(expected_shape):
        raise ValueError(f"{name}: grad_output must have shape {tuple(expected_shape)} (the "
                         f"conv2d output for these arguments), got {tuple(grad_output.shape)}")
    _args.check_blas(name, positions=max(h * w, win.out_h * win.out_w), out_channels=c_out,
                     in_channels=c, window_size=cg * kh * kw)
    return (n, c, c_out, groups), win


def _check_grad_rank(grad_output: np.ndarray, unbatched: bool, like: str) -> None:
    if grad_output.ndim != (3 if unbatched else 4):
        raise ValueError(f"grad_output must be {3 if unbatched else 4}-d like {like}, got "
                         f"{grad_output.ndim}-d")


def conv2d_input(input_size: Sequence[int], weight, grad_output, stride=1, padding=0,
                 dilation=1, groups=1, *, layout="NCHW", out=None) -> Call:
    nhwc = _args.check_layout(layout)
    weight = _args.as_array(weight, "weight")
    grad_output = _args.as_array(grad_output, "grad_output")
    dtype = _args.compute_dtype(weight, grad_output)
    dims = _args.shape_tuple(input_size, "input_size", (4, 3))
    unbatched = len(dims) == 3
    x_shape = (1,) + dims if unbatched else dims
    _four_d(weight)
    _check_grad_rank(grad_output, unbatched, "input_size")
    (n, c, c_out, groups), win = _gradient_window(
        "conv2d_input", x_shape, weight.shape, grad_output, stride, padding, dilation, groups,
        nhwc, unbatched)
    kg = c // groups * win.kernel_h * win.kernel_w
    call = Call("conv2d_input", nhwc, dtype, x_shape, out, unbatched, win,
                (weight, grad_output),
                grad=_args.contiguous_operand(grad_output, dtype).reshape(
                    _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc)),
                w=_args.contiguous_operand(weight, dtype).reshape(c_out, kg),
                n=n, channels=c, rows=c_out, groups=groups)
    _args.check_output(call.batched_out, x_shape, dtype, call.inputs, "conv2d_input")
    return call


def conv2d_weight(input, weight_size: Sequence[int], grad_output, stride=1, padding=0,
                  dilation=1, groups=1, *, layout="NCHW", out=None) -> Call:
    nhwc = _args.check_layout(layout)
    x = _args.as_array(input, "input")
    grad_output = _args.as_array(grad_output, "grad_output")
    dtype = _args.compute_dtype(x, grad_output)
    x, unbatched = _args.batched(x, "input")
    w_shape = _args.shape_tuple(weight_size, "weight_size", (4,))
    _check_grad_rank(grad_output, unbatched, "input")
    (n, c, c_out, groups), win = _gradient_window(
        "conv2d_weight", x.shape, w_shape, grad_output, stride, padding, dilation, groups,
        nhwc, unbatched)
    # (the weight gradient has no batch axis: out= and the result are never squeezed)
    call = Call("conv2d_weight", nhwc, dtype, w_shape, out, False, win, (x, grad_output),
                x=_args.strided_operand(x, dtype),
                grad=_args.contiguous_operand(grad_output, dtype).reshape(
                    _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc)),
                n=n, channels=c, rows=c_out, groups=groups)
    _args.check_output(out, w_shape, dtype, call.inputs, "conv2d_weight")
    return call


# ---------------------------------------------------------------- 1-d calls
# A 1-d call is the 2-d call of unit height: the arrays gain a unit axis (a
# view), the window (1, k), stride (1, s), padding (0, p), dilation (1, d);
# the same planner and kernels then run it.

def _spatial_dims(kernel_size) -> int:
    """Spatial dimensions of an im2col/col2im call: the length of kernel_size
    (an int means 2-d)."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) in (1, 2):
            return len(kernel_size)
        if len(kernel_size) == 3:
            raise ValueError("kernel_size of length 3 (3-d windows) is not supported yet; "
                             "1-d and 2-d windows are")
        raise ValueError(f"kernel_size must be an int or a tuple of 1 or 2 ints, "
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


def im2col_1d(x, kernel_size, stride, padding, dilation, layout, out) -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    user, x4, unbatched = _lifted_image(x, "x", nhwc)
    k = _args.single(kernel_size, "kernel_size", 1)
    call = im2col_2d(x4, (1, k), (1, _args.single(stride, "stride", 1)),
                  (0, _args.single(padding, "padding", 0)),
                  (1, _args.single(dilation, "dilation", 1)),
                  layout="NHWC" if nhwc else "NCHW")
    # (the 2-d result, (N, C*k, L) or (N, L, k*C), is the 1-d one)
    return _as_1d(call, "im2col", LAYOUTS_1D[nhwc], (user,), out,
                  _user_shape(call.shape, None, unbatched), unbatched, None)


def col2im_1d(cols, output_size, kernel_size, stride, padding, dilation, layout, out) -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    cols = _args.as_array(cols, "cols")
    if cols.ndim not in (2, 3):
        raise ValueError(f"cols must be 3-d (batched) or 2-d (unbatched), got {cols.ndim}-d "
                         f"with shape {cols.shape}")
    length = _args.single(output_size, "output_size", 1)
    call = col2im_2d(cols, (1, length), (1, _args.single(kernel_size, "kernel_size", 1)),
                  (1, _args.single(stride, "stride", 1)),
                  (0, _args.single(padding, "padding", 0)),
                  (1, _args.single(dilation, "dilation", 1)),
                  layout="NHWC" if nhwc else "NCHW")
    lift = _unit_axis(nhwc)
    unbatched = cols.ndim == 2
    return _as_1d(call, "col2im", LAYOUTS_1D[nhwc], (cols,), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


LAYOUTS_1D = _args.LAYOUTS_BY_DIMS[1]


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           layout="NCL", out=None) -> Call:
    nhwc = _args.check_layout_dims(layout, 1)
    user, x4, unbatched = _lifted_image(x, "x", nhwc)
    weight = _args.as_array(weight, "weight")
    call = conv2d(x4, _lift_array(weight, "weight", nhwc, (3,)), bias,
                  (1, _args.single(stride, "stride", 1)), _lift_padding(padding),
                  (1, _args.single(dilation, "dilation", 1)), groups,
                  layout="NHWC" if nhwc else "NCHW")
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv1d", layout, (user, weight, call.inputs[2]), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, layout="NCL", out=None) -> Call:
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
                 dilation=1, groups=1, *, layout="NCL", out=None) -> Call:
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
                        layout="NHWC" if nhwc else "NCHW")
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv1d_input", layout, (weight, grad_output), out,
                  _user_shape(call.shape, lift, unbatched), unbatched, lift)


def conv1d_weight(input, weight_size: Sequence[int], grad_output, stride=1, padding=0,
                  dilation=1, groups=1, *, layout="NCL", out=None) -> Call:
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
                         layout="NHWC" if nhwc else "NCHW")
    # (the weight gradient has no batch axis; its unit height is axis 1 (NLC)
    # or 2 (NCL) of (C_out, ., ., .), as for images)
    lift = _unit_axis(nhwc)
    return _as_1d(call, "conv1d_weight", layout, (user, grad_output), out,
                  _user_shape(call.shape, lift, False), False, lift)
