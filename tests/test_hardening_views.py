"""Hardening (issue #7): every public function over odd memory layouts.

Property tests (hypothesis) of every public function over odd memory
layouts: views into larger arrays (steps, offsets), negative strides,
Fortran and permuted orders, read-only arrays, stride-0 (broadcast) axes,
unaligned struct fields, non-native dtypes, and ``out=`` inside a guarded
buffer, on varied kernel thread counts and work splits. The data are small
integers, so float32 and float64 results are exact: every result must equal
tests/reference.py bit for bit, inputs must come back untouched, and nothing
may be written outside ``out``.

FASTIM2COL_HARDENING_EXAMPLES=2000 for a deeper (slower) search.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

import fastim2col as fi
from fastim2col import grad
import reference as ref
import _hardening_helpers
from _hardening_helpers import LAYOUTS, PROPS, Guarded, int_values, split_tiny_calls

# The autouse fixture of every hardening file: a hang fails the run (all
# stacks dumped); the kernel thread count and planner minima come back.
_watchdog = _hardening_helpers._watchdog


# --------------------------------------------------------------------------- arrays

def compute_dtype(*dtypes) -> np.dtype:
    """The documented computation dtype: integers/bools in float64, float16
    in float32, float32/float64 as they are (any byte order)."""
    rt = np.result_type(*dtypes)
    if rt.kind in "biu":
        return np.dtype(np.float64)
    return np.dtype(np.float32 if rt.itemsize <= 4 else np.float64)


def _sentinel(dtype):
    dtype = np.dtype(dtype)
    return np.nan if dtype.kind == "f" else (True if dtype.kind == "b" else 77)


@st.composite
def memory_layouts(draw, ndim):
    """None (fresh C order), Fortran order, or a view: permuted axes, steps,
    offsets, flipped (negative-stride) axes, read-only, unaligned field."""
    kind = draw(st.sampled_from(["C", "F", "view", "view"]))
    if kind == "C":
        return None
    if kind == "F":
        return dict(perm=tuple(reversed(range(ndim))), steps=(1,) * ndim, offs=(0,) * ndim,
                    flips=(False,) * ndim, readonly=draw(st.booleans()), unaligned=False)
    return dict(perm=tuple(draw(st.permutations(range(ndim)))),
                steps=tuple(draw(st.integers(1, 3)) for _ in range(ndim)),
                offs=tuple(draw(st.integers(0, 2)) for _ in range(ndim)),
                flips=tuple(draw(st.booleans()) for _ in range(ndim)),
                readonly=draw(st.booleans()),
                unaligned=draw(st.integers(0, 5)) == 0)


def realize(a, spec):
    """(view, buffer): an array equal to ``a`` laid out as ``spec`` says, and
    the whole buffer behind it. Buffer elements outside the view hold NaN (or
    a sentinel), so a kernel reading outside the view gives a wrong result."""
    if spec is None:
        v = np.array(a, order="C", copy=True)
        return v, v
    nd = a.ndim
    sizes = [a.shape[k] * spec["steps"][k] + spec["offs"][k] for k in range(nd)]
    mem_shape = tuple(sizes[k] for k in spec["perm"])
    if spec["unaligned"]:   # a field of a packed record: stride itemsize + 1
        base = np.zeros(mem_shape, np.dtype([("pad", "u1"), ("v", a.dtype)]))
        buf = base["v"]
    else:
        base = buf = np.empty(mem_shape, a.dtype)
    buf[...] = _sentinel(a.dtype)
    v = buf.transpose(np.argsort(spec["perm"]))
    v = v[tuple(slice(o, o + n * s, s)
                for n, s, o in zip(a.shape, spec["steps"], spec["offs"]))]
    for ax in range(nd):
        if spec["flips"][ax]:
            v = np.flip(v, ax)
    v[...] = a
    if spec["readonly"]:
        v.flags.writeable = False
    return v, base


class Inputs:
    """Draws input arrays and remembers their buffers, to check afterwards
    that no input was written to."""

    def __init__(self, data, rng):
        self.data, self.rng, self.buffers = data, rng, []

    def array(self, shape, dtype, label):
        shape = tuple(shape)
        data = self.data
        axes = [ax for ax, s in enumerate(shape) if s > 1]
        b_axes = set()
        if axes and data.draw(st.integers(0, 3), label=f"{label}-broadcast?") == 0:
            b_axes = data.draw(st.sets(st.sampled_from(axes), min_size=1, max_size=2),
                               label=f"{label}-stride0-axes")
        vals = int_values(self.rng, tuple(1 if ax in b_axes else s
                                          for ax, s in enumerate(shape)), dtype)
        arr, buf = realize(vals, data.draw(memory_layouts(len(shape)), label=f"{label}-layout"))
        if b_axes:
            arr = np.broadcast_to(arr, shape)
        self.buffers.append((buf, buf.tobytes()))
        return arr

    def check_untouched(self):
        for buf, before in self.buffers:
            assert buf.tobytes() == before, "fastim2col wrote into an input array"


EXOTIC_DTYPES = (">f4", ">f8", "f2", "i2", "i8", "u1", "?")


def draw_dtype(data, main, label):
    """Mostly the example's float dtype, sometimes one that gets converted."""
    if data.draw(st.integers(0, 7), label=f"{label}-exotic?") == 0:
        return np.dtype(data.draw(st.sampled_from(EXOTIC_DTYPES), label=f"{label}-dtype"))
    return main


def fmt_pair(data, pair, label):
    """A pair parameter in one of the accepted spellings."""
    a, b = pair
    options = [tuple(pair), list(pair), np.array(pair), (np.int64(a), np.int32(b))]
    if a == b:
        options += [a, np.int64(a)]
    return data.draw(st.sampled_from(options), label=label)


def maybe_out(data, shape, dtype):
    if data.draw(st.integers(0, 3), label="out=?") == 0:
        return Guarded(shape, dtype)
    return None


def check_result(result, expected, dtype, guarded, inputs):
    dtype = np.dtype(dtype)
    assert isinstance(result, np.ndarray)
    if guarded is not None:
        assert result is guarded.out
        guarded.check()
    else:
        assert result.flags.c_contiguous and result.flags.writeable
    assert result.dtype == dtype, (result.dtype, dtype)
    assert result.shape == expected.shape, (result.shape, expected.shape)
    np.testing.assert_array_equal(result, expected.astype(dtype))
    inputs.check_untouched()


def f64(a):
    return np.asarray(a, dtype=np.float64)


@st.composite
def windows(draw, strings):
    """kernel, stride, dilation (pairs), padding as passed, padding for the
    reference ('same', 'valid' or a pair) and the four pads."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    dilation = (draw(st.sampled_from([1, 1, 2, 3, 4])), draw(st.sampled_from([1, 1, 2, 3, 4])))
    kinds = ["int", "pair", "pair"] + (["valid", "same"] if strings else [])
    kind = draw(st.sampled_from(kinds))
    stride = (1, 1) if kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kind == "int":
        p = draw(st.integers(0, 3))
        padding, pad_ref = draw(st.sampled_from([p, np.int64(p), (p, p)])), (p, p)
    elif kind == "pair":
        # up to the kernel's whole span: with the small images draw_hw then
        # picks, whole kernel rows / columns of windows lie in the padding
        pad_ref = tuple(draw(st.integers(0, d * (k - 1) + 1)) for k, d in zip(kernel, dilation))
        padding = draw(st.sampled_from([pad_ref, list(pad_ref), np.array(pad_ref)]))
    else:
        padding = pad_ref = kind
    pads = ref.pads_of(pad_ref, kernel, dilation)
    return dict(kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                pad_ref=pad_ref, pads=pads)


def draw_hw(data, win, allow_zero=True):
    """(H, W) for which the padded image holds a window (sometimes 0-sized
    when the padding alone does)."""
    hw = []
    for k, d, p in zip(win["kernel"], win["dilation"],
                       (win["pads"][0] + win["pads"][1], win["pads"][2] + win["pads"][3])):
        need = d * (k - 1) + 1 - p
        zero = allow_zero and data.draw(st.integers(0, 9), label="allow-0?") == 0
        lo = max(0 if zero else 1, need)
        # often the smallest images: one or two output positions, where an
        # over-padded window's kernel columns lie wholly in the padding
        extra = st.integers(0, 1) if data.draw(st.booleans(), label="tight?") else st.integers(0, 5)
        hw.append(lo + data.draw(extra, label="size"))
    return tuple(hw)


def ref_kw(win, groups=None):
    kw = dict(stride=win["stride"], padding=win["pad_ref"], dilation=win["dilation"])
    if groups is not None:
        kw["groups"] = groups
    return kw


def lib_kw(data, win, groups=None):
    kw = dict(stride=fmt_pair(data, win["stride"], "stride"), padding=win["padding"],
              dilation=fmt_pair(data, win["dilation"], "dilation"))
    if groups is not None:
        kw["groups"] = data.draw(st.sampled_from([groups, np.int64(groups)]), label="groups")
    return kw


def to_layout(a_nchw, nhwc, unbatched):
    a = ref.to_nhwc(a_nchw) if nhwc else a_nchw
    return a[0] if unbatched else a


def from_layout(a, nhwc, unbatched):
    a = f64(a)
    if unbatched:
        a = a[None]
    return ref.to_nchw(a) if nhwc else a


def image_shape(n, c, h, w, nhwc, unbatched):
    s = (n, h, w, c) if nhwc else (n, c, h, w)
    return s[1:] if unbatched else s


def wshape(o, c, kh, kw, nhwc):
    return (o, kh, kw, c) if nhwc else (o, c, kh, kw)


def w_nchw(w, nhwc):
    return np.moveaxis(f64(w), 3, 1) if nhwc else f64(w)


def _setup(data):
    # The kernels' work split depends on the thread count: vary it, and let
    # tiny calls use it too (the planner normally keeps calls under a few
    # MFLOP on one thread). The autouse fixture restores both after the test.
    fi.set_num_threads(data.draw(st.sampled_from([None, None, 1, 1, 2, 3]), label="threads"))
    split_small = data.draw(st.booleans(), label="split tiny calls?")
    split_tiny_calls(split_small)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    nhwc = data.draw(st.sampled_from(LAYOUTS), label="layout") == "NHWC"
    main = np.dtype(data.draw(st.sampled_from([np.float32, np.float64]), label="dtype"))
    unbatched = data.draw(st.integers(0, 3), label="unbatched?") == 0
    n = 1 if unbatched else data.draw(st.integers(0, 3), label="N")
    return rng, nhwc, main, unbatched, n, Inputs(data, rng)


# --------------------------------------------------------------------------- properties

@PROPS
@given(data=st.data())
def test_property_im2col(data):
    _, nhwc, main, unbatched, n, inp = _setup(data)
    win = data.draw(windows(strings=False))
    c = data.draw(st.integers(0, 3), label="C")
    h, w = draw_hw(data, win)
    x = inp.array(image_shape(n, c, h, w, nhwc, unbatched), draw_dtype(data, main, "x"), "x")
    cols = ref.im2col(from_layout(x, nhwc, unbatched), win["kernel"], **ref_kw(win))
    if nhwc:
        cols = ref.cols_to_nhwc(cols, c, win["kernel"])
    expected = cols[0] if unbatched else cols
    dtype = compute_dtype(x.dtype)
    guarded = maybe_out(data, expected.shape, dtype)
    result = fi.im2col(x, fmt_pair(data, win["kernel"], "kernel_size"), **lib_kw(data, win),
                       layout="NHWC" if nhwc else "NCHW",
                       out=None if guarded is None else guarded.out)
    check_result(result, expected, dtype, guarded, inp)


@PROPS
@given(data=st.data())
def test_property_col2im(data):
    _, nhwc, main, unbatched, n, inp = _setup(data)
    win = data.draw(windows(strings=False))
    c = data.draw(st.integers(0, 3), label="C")
    h, w = draw_hw(data, win, allow_zero=False)   # output_size must be >= 1
    kh, kw = win["kernel"]
    ho, wo = ref.out_hw(h, w, win["kernel"], win["stride"], win["pads"], win["dilation"])
    length = ho * wo
    shape = (n, length, kh * kw * c) if nhwc else (n, c * kh * kw, length)
    cols = inp.array(shape[1:] if unbatched else shape, draw_dtype(data, main, "cols"), "cols")
    c64 = f64(cols)[None] if unbatched else f64(cols)
    if nhwc:   # (N, L, kh*kw*C) -> (N, C*kh*kw, L)
        c64 = c64.reshape(n, length, kh, kw, c).transpose(0, 4, 2, 3, 1).reshape(
            n, c * kh * kw, length)
    expected = to_layout(ref.col2im(c64, (h, w), win["kernel"], **ref_kw(win)), nhwc, unbatched)
    dtype = compute_dtype(cols.dtype)
    guarded = maybe_out(data, expected.shape, dtype)
    result = fi.col2im(cols, fmt_pair(data, (h, w), "output_size"),
                       fmt_pair(data, win["kernel"], "kernel_size"), **lib_kw(data, win),
                       layout="NHWC" if nhwc else "NCHW",
                       out=None if guarded is None else guarded.out)
    check_result(result, expected, dtype, guarded, inp)


def _conv_channels(data):
    groups = data.draw(st.integers(1, 3), label="groups")
    cg = data.draw(st.sampled_from([0, 1, 1, 2, 3]), label="C/groups")
    og = data.draw(st.sampled_from([0, 1, 1, 2, 3]), label="C_out/groups")
    return groups, cg, og


@PROPS
@given(data=st.data())
def test_property_conv2d(data):
    _, nhwc, main, unbatched, n, inp = _setup(data)
    win = data.draw(windows(strings=True))
    groups, cg, og = _conv_channels(data)
    c, c_out = cg * groups, og * groups
    h, w = draw_hw(data, win)
    kh, kw = win["kernel"]
    x = inp.array(image_shape(n, c, h, w, nhwc, unbatched), draw_dtype(data, main, "x"), "x")
    weight = inp.array(wshape(c_out, cg, kh, kw, nhwc), draw_dtype(data, main, "w"), "weight")
    bias = None
    if data.draw(st.booleans(), label="bias?"):
        bias = inp.array((c_out,), draw_dtype(data, main, "b"), "bias")
    expected = ref.conv2d(from_layout(x, nhwc, unbatched), w_nchw(weight, nhwc),
                          None if bias is None else f64(bias), **ref_kw(win, groups))
    expected = to_layout(expected, nhwc, unbatched)
    dtype = compute_dtype(*[a.dtype for a in (x, weight, bias) if a is not None])
    guarded = maybe_out(data, expected.shape, dtype)
    result = fi.conv2d(x, weight, bias, **lib_kw(data, win, groups),
                       layout="NHWC" if nhwc else "NCHW",
                       out=None if guarded is None else guarded.out)
    check_result(result, expected, dtype, guarded, inp)


@PROPS
@given(data=st.data())
def test_property_conv_transpose2d(data):
    _, nhwc, main, unbatched, n, inp = _setup(data)
    kernel = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    dilation = (data.draw(st.sampled_from([1, 1, 2])), data.draw(st.sampled_from([1, 1, 3])))
    out_pad = tuple(data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    h, w = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    padding = []
    for size, s, k, d, op in zip((h, w), stride, kernel, dilation, out_pad):
        full = (size - 1) * s + d * (k - 1) + op + 1   # output size with padding 0
        padding.append(data.draw(st.integers(0, min(3, (full - 1) // 2))))
    groups = data.draw(st.integers(1, 3), label="groups")
    ig = data.draw(st.integers(1, 3), label="C_in/groups")
    og = data.draw(st.sampled_from([0, 1, 1, 2, 3]), label="C_out/groups")
    c_in, c_out = ig * groups, og * groups
    kh, kw = kernel
    x = inp.array(image_shape(n, c_in, h, w, nhwc, unbatched), draw_dtype(data, main, "x"), "x")
    weight = inp.array(wshape(c_in, og, kh, kw, nhwc), draw_dtype(data, main, "w"), "weight")
    bias = None
    if data.draw(st.booleans(), label="bias?"):
        bias = inp.array((c_out,), draw_dtype(data, main, "b"), "bias")
    expected = ref.conv_transpose2d(
        from_layout(x, nhwc, unbatched), w_nchw(weight, nhwc),
        None if bias is None else f64(bias), stride=stride, padding=tuple(padding),
        output_padding=out_pad, groups=groups, dilation=dilation)
    expected = to_layout(expected, nhwc, unbatched)
    dtype = compute_dtype(*[a.dtype for a in (x, weight, bias) if a is not None])
    guarded = maybe_out(data, expected.shape, dtype)
    result = fi.conv_transpose2d(
        x, weight, bias, stride=fmt_pair(data, stride, "stride"),
        padding=fmt_pair(data, tuple(padding), "padding"),
        output_padding=fmt_pair(data, out_pad, "output_padding"),
        groups=groups, dilation=fmt_pair(data, dilation, "dilation"),
        layout="NHWC" if nhwc else "NCHW", out=None if guarded is None else guarded.out)
    check_result(result, expected, dtype, guarded, inp)


@PROPS
@given(data=st.data())
def test_property_conv2d_input(data):
    _, nhwc, main, unbatched, n, inp = _setup(data)
    win = data.draw(windows(strings=True))
    groups, cg, og = _conv_channels(data)
    c, c_out = cg * groups, og * groups
    h, w = draw_hw(data, win)
    kh, kw = win["kernel"]
    ho, wo = ref.out_hw(h, w, win["kernel"], win["stride"], win["pads"], win["dilation"])
    weight = inp.array(wshape(c_out, cg, kh, kw, nhwc), draw_dtype(data, main, "w"), "weight")
    go = inp.array(image_shape(n, c_out, ho, wo, nhwc, unbatched),
                   draw_dtype(data, main, "go"), "grad_output")
    expected = ref.conv2d_input_grad((n, c, h, w), w_nchw(weight, nhwc),
                                     from_layout(go, nhwc, unbatched), **ref_kw(win, groups))
    expected = to_layout(expected, nhwc, unbatched)
    dtype = compute_dtype(weight.dtype, go.dtype)
    guarded = maybe_out(data, expected.shape, dtype)
    size = image_shape(n, c, h, w, nhwc, unbatched)
    size = data.draw(st.sampled_from([tuple(size), list(size)]), label="input_size")
    result = grad.conv2d_input(size, weight, go, **lib_kw(data, win, groups),
                               layout="NHWC" if nhwc else "NCHW",
                               out=None if guarded is None else guarded.out)
    check_result(result, expected, dtype, guarded, inp)


@PROPS
@given(data=st.data())
def test_property_conv2d_weight(data):
    _, nhwc, main, unbatched, n, inp = _setup(data)
    win = data.draw(windows(strings=True))
    groups, cg, og = _conv_channels(data)
    c, c_out = cg * groups, og * groups
    h, w = draw_hw(data, win)
    kh, kw = win["kernel"]
    ho, wo = ref.out_hw(h, w, win["kernel"], win["stride"], win["pads"], win["dilation"])
    x = inp.array(image_shape(n, c, h, w, nhwc, unbatched), draw_dtype(data, main, "x"), "x")
    go = inp.array(image_shape(n, c_out, ho, wo, nhwc, unbatched),
                   draw_dtype(data, main, "go"), "grad_output")
    expected = ref.conv2d_weight_grad(from_layout(x, nhwc, unbatched), (c_out, cg, kh, kw),
                                      from_layout(go, nhwc, unbatched), **ref_kw(win, groups))
    if nhwc:
        expected = np.moveaxis(expected, 1, 3)
    dtype = compute_dtype(x.dtype, go.dtype)
    guarded = maybe_out(data, expected.shape, dtype)
    size = wshape(c_out, cg, kh, kw, nhwc)
    size = data.draw(st.sampled_from([tuple(size), list(size)]), label="weight_size")
    result = grad.conv2d_weight(x, size, go, **lib_kw(data, win, groups),
                                layout="NHWC" if nhwc else "NCHW",
                                out=None if guarded is None else guarded.out)
    check_result(result, expected, dtype, guarded, inp)
