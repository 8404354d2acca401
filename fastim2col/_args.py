"""Argument normalization shared by every public function.

Everything a kernel relies on is checked here, once: dtypes, ranks, shapes,
window parameters, output sizes, index ranges and ``out=`` arrays. Kernels in
src/ then run without checks.
"""
from __future__ import annotations

import numbers
from typing import Literal, NamedTuple, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _direct

# Types of the public API's arguments.
IntPair = Union[int, Tuple[int, int]]
Padding = Union[int, Tuple[int, int], Literal["valid", "same"]]
Layout = Literal["NCHW", "NHWC"]
Int1 = Union[int, Tuple[int]]
Padding1 = Union[int, Tuple[int], Literal["valid", "same"]]
Layout1 = Literal["NCL", "NLC"]
Layout3 = Literal["NCDHW", "NDHWC"]
Int3 = Union[int, Tuple[int], Tuple[int, int, int]]
Padding3 = Union[int, Tuple[int], Tuple[int, int, int], Literal["valid", "same"]]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
AnyLayout = Literal["NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC"]

LAYOUTS = ("NCHW", "NHWC")
# Window parameters and sizes stay far below this: index arithmetic in the
# kernels is then free of overflow (products of a few of them fit in int64).
_MAX_PARAM = 2**31 - 1
# SciPy's cython_blas takes 32-bit ints for sizes and leading dimensions.
BLAS_INT_MAX = 2**31 - 1
_INTP_MAX = int(np.iinfo(np.intp).max)
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    if type(value) is int:   # the common cases first: no ABC checks (microseconds)
        result = (value, value)
    elif type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int:
        result = value
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        return pair(value[()], name, minimum)   # a 0-d array is its scalar
    elif isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        result = (int(value), int(value))
    elif (isinstance(value, (tuple, list, np.ndarray)) and len(value) in (1, 2)
          and all(isinstance(v, (numbers.Integral, np.integer))
                  and not isinstance(v, (bool, np.bool_)) for v in value)):
        # (a one-element sequence stands for both dimensions, as in torch)
        result = (int(value[0]), int(value[-1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in result:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        if v > _MAX_PARAM:
            raise ValueError(f"{name} must be < 2**31, got {value!r}")
    return result


def output_size_tail(value, dims: int) -> tuple[int, ...]:
    """The spatial sizes of a transposed convolution's output_size: an int
    (1-d), or a sequence whose last `dims` entries are them (torch accepts
    (N, C, *sizes) too)."""
    if dims == 1 and isinstance(value, (numbers.Integral, np.integer)) \
            and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or len(value) not in (dims, dims + 1, dims + 2):
        raise TypeError(f"output_size must be a tuple of {dims} ints (the output's spatial "
                        f"size), got {value!r}")
    return shape_tuple(tuple(value)[-dims:], "output_size", (dims,))


def check_layout(layout) -> bool:
    """True for NHWC, False for NCHW."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout == "NHWC"


# Layouts by number of spatial dimensions: (channels first, channels last).
LAYOUTS_BY_DIMS = {1: ("NCL", "NLC"), 2: LAYOUTS, 3: ("NCDHW", "NDHWC")}


def check_layout_dims(layout, dims: int) -> bool:
    """Channels last? for a layout of `dims` spatial dimensions (None: channels
    first)."""
    first, last = LAYOUTS_BY_DIMS[dims]
    if layout is None:
        return False
    if not isinstance(layout, str) or layout not in (first, last):
        raise ValueError(f"layout must be {first!r} or {last!r} for {dims}-d data, "
                         f"got {layout!r}")
    return layout == last


def single(value, name: str, minimum: int) -> int:
    """A 1-d window parameter: an int or a one-element sequence of one."""
    if isinstance(value, (tuple, list, np.ndarray)) and np.ndim(value) == 1:
        if len(value) != 1:
            raise TypeError(f"{name} must be an int or a one-element tuple for 1-d data, "
                            f"got {value!r}")
        value = value[0]
    elif isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be an int or a one-element tuple, got {value!r}")
    return pair(value, name, minimum)[0]


def as_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array (float32 or float64), got dtype {arr.dtype}")
    return arr


def compute_dtype(*arrays: np.ndarray | None) -> np.dtype:
    """The dtype a computation runs in: NumPy's promotion of the inputs, with
    integers and booleans computed in float64 and float16 in float32."""
    dt = np.result_type(*[a for a in arrays if a is not None])
    if dt.kind in "biu":
        return _FLOAT_DTYPES[1]
    if dt == np.float16:
        return _FLOAT_DTYPES[0]
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"unsupported dtype {dt}: float32 and float64 are computed natively, "
                        "integers and float16 are converted")
    return dt


def strided_operand(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """arr in dtype, any strides kept when the kernels can walk them."""
    if arr.dtype != dtype or not arr.flags.aligned or any(s % arr.itemsize for s in arr.strides):
        # (np.ascontiguousarray would return a contiguous but misaligned
        # array as it is: the kernels need aligned elements.)
        return np.array(arr, dtype=dtype, order="C", copy=True)
    return arr


def contiguous_operand(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """arr in dtype, C order and aligned (copied only when it is not already)."""
    if arr.dtype == dtype and arr.flags.c_contiguous and arr.flags.aligned:
        return arr
    return np.array(arr, dtype=dtype, order="C", copy=True)


CACHE_LINE = _direct.CACHE_LINE   # bytes (src/_lines.pxd, exported by the compiled module)


def line_aligned_copy(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of arr whose data starts on a cache line (NumPy's
    own arrays start 16 bytes past one, and the vector kernels' loads of
    rows a whole number of lines long would then split lines)."""
    nbytes = arr.size * arr.itemsize
    buf = np.empty(nbytes + CACHE_LINE, np.uint8)
    start = -buf.ctypes.data % CACHE_LINE
    out = buf[start:start + nbytes].view(arr.dtype).reshape(arr.shape)
    np.copyto(out, arr)
    return out


def batched(arr: np.ndarray, name: str, spatial: int = 2) -> tuple[np.ndarray, bool]:
    """(arr with a batch axis, whether it had none) for arrays of `spatial`
    dimensions, a channel axis and an optional batch axis."""
    if arr.ndim == spatial + 2:
        return arr, False
    if arr.ndim == spatial + 1:
        return arr[None], True
    raise ValueError(f"{name} must be {spatial + 2}-d (batched) or {spatial + 1}-d "
                     f"(unbatched), got {arr.ndim}-d with shape {arr.shape}")


def dims_nd(shape, nhwc: bool) -> tuple[int, int, tuple[int, ...]]:
    """(N, C, spatial sizes) of a batched shape, channels first or last."""
    if nhwc:
        return shape[0], shape[-1], tuple(shape[1:-1])
    return shape[0], shape[1], tuple(shape[2:])


def shape_nd(n: int, c: int, sizes, nhwc: bool) -> tuple[int, ...]:
    return (n, *sizes, c) if nhwc else (n, c, *sizes)


def weight_dims_nd(shape, nhwc: bool) -> tuple[int, int, tuple[int, ...]]:
    """(rows, channels per group, kernel sizes) of a weight, channels first or last."""
    if nhwc:
        return shape[0], shape[-1], tuple(shape[1:-1])
    return shape[0], shape[1], tuple(shape[2:])


def positive_int(value, name: str) -> int:
    if type(value) is int and value >= 1:   # the common case: no ABC checks
        return value
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def out_size(size: int, pad_total: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


class Window(NamedTuple):
    """One convolution's spatial geometry, in the kernels' order."""
    in_h: int
    in_w: int
    out_h: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int      # top
    pad_w: int      # left
    dilation_h: int
    dilation_w: int
    # volumes' depth (images: one plane, the defaults)
    in_d: int = 1
    out_d: int = 1
    kernel_d: int = 1
    stride_d: int = 1
    pad_d: int = 0      # front
    dilation_d: int = 1
    pad_mode: int = 0   # PAD_MODES' index: what the padding reads

    @property
    def n_out(self) -> int:
        """Output positions."""
        return self.out_d * self.out_h * self.out_w

    @property
    def n_in(self) -> int:
        """Input positions."""
        return self.in_d * self.in_h * self.in_w

    @property
    def n_taps(self) -> int:
        """Window taps."""
        return self.kernel_d * self.kernel_h * self.kernel_w


def window(in_hw, kernel_size, stride, padding, dilation, *, allow_strings: bool,
           out_hw=None) -> Window:
    """Normalize window parameters and compute the output size.

    padding: int, pair, or (allow_strings) 'valid' / 'same' as in torch: 'same'
    pads d*(k-1) in total, the extra odd one at the bottom / right, and is
    refused with stride > 1. out_hw, when given, is used as the output size
    (transposed convolutions know it); otherwise it must come out >= 1.
    """
    kh, kw = pair(kernel_size, "kernel_size", 1)
    sh, sw = pair(stride, "stride", 1)
    dh, dw = pair(dilation, "dilation", 1)
    h, w = in_hw
    if isinstance(padding, str):
        if not allow_strings:
            raise TypeError(f"padding must be an int or a pair of ints, got {padding!r}")
        if padding == "valid":
            totals, (ph, pw) = (0, 0), (0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions "
                                 f"(stride={stride!r}); use an explicit padding")
            totals = (dh * (kh - 1), dw * (kw - 1))
            ph, pw = totals[0] // 2, totals[1] // 2
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        ph, pw = pair(padding, "padding", 0)
        totals = (2 * ph, 2 * pw)
    if out_hw is None:
        out_h = out_size(h, totals[0], kh, sh, dh)
        out_w = out_size(w, totals[1], kw, sw, dw)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"kernel_size {(kh, kw)} with dilation {(dh, dw)} is larger than the padded "
                f"input {(h + totals[0], w + totals[1])}: the output would be empty")
    else:
        out_h, out_w = out_hw
    return Window(h, w, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw)


def triple(value, name: str, minimum: int) -> tuple[int, int, int]:
    """A 3-d window parameter: an int, a one-element or a three-element
    sequence of ints, each >= minimum."""
    if isinstance(value, (tuple, list, np.ndarray)) and np.ndim(value) == 1 and len(value) == 3:
        depth = pair(value[0], name, minimum)[0]
        return (depth,) + pair(tuple(value[1:]), name, minimum)
    if isinstance(value, (tuple, list)) and len(value) not in (1,):
        raise TypeError(f"{name} must be an int or a tuple of 3 ints, got {value!r}")
    v = pair(value, name, minimum)[0]
    return (v, v, v)


def window3(in_dhw, kernel_size, stride, padding, dilation, *, allow_strings: bool,
            out_dhw=None) -> Window:
    """window() for volumes: the (h, w) part as for images, the depth by the
    same rules."""
    kd, kh, kw = triple(kernel_size, "kernel_size", 1)
    sd, sh, sw = triple(stride, "stride", 1)
    dd, dh, dw = triple(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding not in ("valid", "same") or not allow_strings:
            window(in_dhw[1:], (kh, kw), (sh, sw), padding, (dh, dw),
                   allow_strings=allow_strings)   # (raises its error)
        if padding == "same" and sd != 1:
            raise ValueError("padding='same' is not supported for strided convolutions "
                             f"(stride={stride!r}); use an explicit padding")
        pd = dd * (kd - 1) // 2 if padding == "same" else 0
        total_d = dd * (kd - 1) if padding == "same" else 0
        plane_padding: Union[str, tuple[int, int]] = padding
    else:
        pd, ph, pw = triple(padding, "padding", 0)
        total_d = 2 * pd
        plane_padding = (ph, pw)
    plane = window(in_dhw[1:], (kh, kw), (sh, sw), plane_padding, (dh, dw),
                   allow_strings=allow_strings,
                   out_hw=None if out_dhw is None else out_dhw[1:])
    d = in_dhw[0]
    if out_dhw is None:
        out_d = out_size(d, total_d, kd, sd, dd)
        if out_d < 1:
            raise ValueError(
                f"kernel_size {(kd, kh, kw)} with dilation {(dd, dh, dw)} is larger than the "
                f"padded input depth {d + total_d}: the output would be empty")
    else:
        out_d = out_dhw[0]
    return plane._replace(in_d=d, out_d=out_d, kernel_d=kd, stride_d=sd, pad_d=pd,
                          dilation_d=dd)


# torch's padding_mode names, in the order of src/_unroll.pxd's PadMode.
PAD_MODES = ("zeros", "reflect", "replicate", "circular")


def with_padding_mode(win: Window, padding_mode, padding_totals=None) -> Window:
    """win reading its padding as padding_mode says. reflect needs each
    padding smaller than its input size, circular at most it (one
    reflection or wrap, as torch.nn.functional.pad)."""
    if not isinstance(padding_mode, str) or padding_mode not in PAD_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(map(repr, PAD_MODES))}, "
                         f"got {padding_mode!r}")
    mode = PAD_MODES.index(padding_mode)
    if mode == 0:
        return win
    dims = [("depth", win.in_d, win.pad_d, win.out_d, win.kernel_d, win.stride_d,
             win.dilation_d),
            ("height", win.in_h, win.pad_h, win.out_h, win.kernel_h, win.stride_h,
             win.dilation_h),
            ("width", win.in_w, win.pad_w, win.out_w, win.kernel_w, win.stride_w,
             win.dilation_w)]
    padded = False
    for name, size, before, n_out, k, stride, dilation in dims:
        after = max(0, (n_out - 1) * stride + dilation * (k - 1) - before - size + 1)
        most = max(before, after)
        padded = padded or most > 0
        if (mode == 1 and most >= size) or (mode == 3 and most > size):
            rule = "smaller than" if mode == 1 else "at most"
            raise ValueError(f"padding_mode={padding_mode!r} needs the padding ({most}) "
                             f"{rule} the input {name} ({size})")
    # (no padding read: the zero-padding kernels run it, whatever the mode)
    return win._replace(pad_mode=mode) if padded else win


def check_size(shape, itemsize: int, name: str) -> None:
    """Refuse shapes whose byte size overflows what NumPy can address."""
    total = itemsize
    for s in shape:
        total *= int(s)
    if total > _INTP_MAX:
        raise ValueError(f"{name} of shape {tuple(shape)} is too large: {total} bytes "
                         "overflows the address space")


def check_blas(name: str, **dims: int) -> None:
    """Refuse GEMM sizes beyond the 32-bit ints of SciPy's BLAS."""
    for key, value in dims.items():
        if value > BLAS_INT_MAX:
            raise ValueError(f"{name}: {key}={value} exceeds the 32-bit BLAS integer range; "
                             "split the problem (e.g. the batch or the channels)")


def check_output(out, shape, dtype: np.dtype, inputs, name: str) -> None:
    """Refuse a result too large to address, and an ``out`` that is not exactly
    the result: its shape and dtype, C-contiguous, writeable, aligned, sharing
    no memory with the inputs."""
    check_size(shape, dtype.itemsize, f"{name} result")
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name}: out must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: out must have dtype {dtype} (the computation's), got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name}: out must be writeable")
    if not out.flags.aligned:
        raise ValueError(f"{name}: out must be aligned to its dtype")
    for arr in inputs:
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{name}: out must not overlap an input")


def shape_tuple(value, name: str, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """A shape given as a tuple/list of non-negative ints of one of ``lengths``."""
    if not isinstance(value, (tuple, list)) or len(value) not in lengths:
        raise TypeError(f"{name} must be a tuple of {' or '.join(map(str, lengths))} ints, "
                        f"got {value!r}")
    for s in value:
        if type(s) is int:   # the common case first: no ABC checks (microseconds)
            pass
        elif isinstance(s, (bool, np.bool_)) or not isinstance(s, (numbers.Integral, np.integer)):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if s < 0:
            raise ValueError(f"{name} must contain non-negative ints, got {value!r}")
    return tuple(int(s) for s in value)
