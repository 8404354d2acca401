"""Every bad argument raises ValueError / TypeError naming the argument;
sizes that overflow raise instead of crashing."""
import numpy as np
import pytest

import fastim2col as F
from fastim2col.grad import conv2d_input, conv2d_weight

X = np.zeros((2, 4, 6, 6))           # NCHW
W = np.zeros((6, 2, 3, 3))           # groups=2
G = np.zeros((2, 6, 4, 4))           # conv2d(X, W, groups=2) output
COLS = np.zeros((2, 36, 16))         # im2col(X, 3)
WT = np.zeros((4, 3, 3, 3))          # conv_transpose2d weight (C_in=4, C_out/g=3)


def im2col(**kw):
    return F.im2col(**{"x": X, "kernel_size": 3, **kw})


def col2im(**kw):
    return F.col2im(**{"cols": COLS, "output_size": (6, 6), "kernel_size": 3, **kw})


def conv2d(**kw):
    return F.conv2d(**{"x": X, "weight": W, "groups": 2, **kw})


def conv_t(**kw):
    return F.conv_transpose2d(**{"x": X, "weight": WT, **kw})


def grad_x(**kw):
    return conv2d_input(**{"input_size": X.shape, "weight": W, "grad_output": G, "groups": 2,
                           **kw})


def grad_w(**kw):
    return conv2d_weight(**{"input": X, "weight_size": W.shape, "grad_output": G, "groups": 2,
                            **kw})


ALL = {"im2col": im2col, "col2im": col2im, "conv2d": conv2d, "conv_transpose2d": conv_t,
       "conv2d_input": grad_x, "conv2d_weight": grad_w}

# (function, kwargs, exception, match); each message must name the argument.
BAD = [
    # window parameters, for every function
    *[(f, {"padding": -1}, ValueError, "padding") for f in ALL],
    *[(f, {"padding": (0, -2)}, ValueError, "padding") for f in ALL],
    *[(f, {"stride": 0}, ValueError, "stride") for f in ALL],
    *[(f, {"stride": (1, -1)}, ValueError, "stride") for f in ALL],
    *[(f, {"dilation": 0}, ValueError, "dilation") for f in ALL],
    *[(f, {"dilation": -2}, ValueError, "dilation") for f in ALL],
    *[(f, {"stride": 1.0}, TypeError, "stride") for f in ALL],
    *[(f, {"stride": 1.5}, TypeError, "stride") for f in ALL],
    *[(f, {"stride": True}, TypeError, "stride") for f in ALL],
    *[(f, {"stride": np.bool_(True)}, TypeError, "stride") for f in ALL],
    *[(f, {"stride": (1, 2, 3)}, TypeError, "stride") for f in ALL],
    *[(f, {"stride": "1"}, TypeError, "stride") for f in ALL],
    *[(f, {"stride": None}, TypeError, "stride") for f in ALL],
    *[(f, {"dilation": (1.0, 1)}, TypeError, "dilation") for f in ALL],
    *[(f, {"padding": 1.0}, TypeError, "padding") for f in ALL],
    *[(f, {"padding": (1, False)}, TypeError, "padding") for f in ALL],
    *[(f, {"stride": 2**31}, ValueError, "stride") for f in ALL],
    *[(f, {"layout": "nchw"}, ValueError, "layout") for f in ALL],
    *[(f, {"layout": "CHW"}, ValueError, "layout") for f in ALL],
    # (im2col/col2im take layout=None: the channels-first layout of their dimensionality)
    *[(f, {"layout": None}, ValueError, "layout") for f in ALL if f not in ("im2col", "col2im")],
    *[(f, {"out": [0.0]}, TypeError, "out") for f in ALL],
    ("im2col", {"kernel_size": 0}, ValueError, "kernel_size"),
    ("im2col", {"kernel_size": (3, -1)}, ValueError, "kernel_size"),
    ("im2col", {"kernel_size": 2.0}, TypeError, "kernel_size"),
    ("im2col", {"padding": "same"}, TypeError, "padding"),
    ("conv_transpose2d", {"padding": "same"}, TypeError, "padding"),
    ("conv2d", {"padding": "full"}, ValueError, "padding"),
    ("conv2d_input", {"padding": "SAME"}, ValueError, "padding"),
    # 'same' with stride > 1
    ("conv2d", {"padding": "same", "stride": 2}, ValueError, "same"),
    ("conv2d", {"padding": "same", "stride": (1, 2)}, ValueError, "same"),
    ("conv2d_input", {"padding": "same", "stride": 2}, ValueError, "same"),
    ("conv2d_weight", {"padding": "same", "stride": 2}, ValueError, "same"),
    # kernel larger than the padded input
    ("im2col", {"kernel_size": 7}, ValueError, "kernel_size"),
    ("im2col", {"kernel_size": (3, 8), "padding": (0, 0)}, ValueError, "kernel_size"),
    ("im2col", {"dilation": 3}, ValueError, "kernel_size"),
    ("conv2d", {"weight": np.zeros((6, 2, 7, 3))}, ValueError, "kernel_size"),
    ("conv2d", {"dilation": (1, 4)}, ValueError, "kernel_size"),
    ("conv2d_input", {"dilation": (3, 1)}, ValueError, "kernel_size"),
    ("conv2d_weight", {"weight_size": (6, 2, 1, 9)}, ValueError, "kernel_size"),
    # ranks
    ("im2col", {"x": np.zeros((6, 6))}, ValueError, "x"),
    ("im2col", {"x": np.zeros((1, 2, 4, 6, 6))}, ValueError, "x"),
    ("col2im", {"cols": np.zeros(16)}, ValueError, "cols"),
    ("col2im", {"cols": np.zeros((1, 2, 36, 16))}, ValueError, "cols"),
    ("conv2d", {"x": np.zeros((6, 6))}, ValueError, "x"),
    ("conv2d", {"weight": np.zeros((6, 2, 3))}, ValueError, "weight"),
    ("conv2d", {"weight": np.zeros((1, 6, 2, 3, 3))}, ValueError, "weight"),
    ("conv_transpose2d", {"x": np.zeros((1, 1, 4, 6, 6))}, ValueError, "x"),
    ("conv_transpose2d", {"weight": np.zeros((4, 9))}, ValueError, "weight"),
    ("conv2d_input", {"weight": np.zeros((6, 2, 3))}, ValueError, "weight"),
    ("conv2d_input", {"grad_output": G[0]}, ValueError, "grad_output"),
    ("conv2d_weight", {"input": np.zeros((6, 6))}, ValueError, "input"),
    ("conv2d_weight", {"grad_output": G[0]}, ValueError, "grad_output"),
    # channels and groups
    ("conv2d", {"weight": np.zeros((6, 3, 3, 3))}, ValueError, "weight"),
    ("conv2d", {"groups": 1}, ValueError, "weight"),
    ("conv2d", {"groups": 3}, ValueError, "groups"),
    ("conv2d", {"weight": np.zeros((5, 2, 3, 3))}, ValueError, "groups"),
    ("conv2d", {"groups": 0}, ValueError, "groups"),
    ("conv2d", {"groups": -2}, ValueError, "groups"),
    ("conv2d", {"groups": 2.0}, TypeError, "groups"),
    ("conv2d", {"groups": True}, TypeError, "groups"),
    ("conv2d", {"groups": None}, TypeError, "groups"),
    ("conv_transpose2d", {"weight": np.zeros((3, 3, 3, 3))}, ValueError, "weight"),
    ("conv_transpose2d", {"groups": 3}, ValueError, "groups"),
    ("conv_transpose2d", {"groups": 0}, ValueError, "groups"),
    ("conv_transpose2d", {"groups": 1.5}, TypeError, "groups"),
    ("conv2d_input", {"groups": 3}, ValueError, "groups"),
    ("conv2d_input", {"groups": 1}, ValueError, "weight"),
    ("conv2d_input", {"input_size": (2, 6, 6, 6)}, ValueError, "weight"),
    ("conv2d_weight", {"groups": 4}, ValueError, "groups"),
    ("conv2d_weight", {"weight_size": (6, 4, 3, 3)}, ValueError, "weight"),
    # bias
    ("conv2d", {"bias": np.zeros(5)}, ValueError, "bias"),
    ("conv2d", {"bias": np.zeros(7)}, ValueError, "bias"),
    ("conv2d", {"bias": np.zeros((6, 1))}, ValueError, "bias"),
    ("conv2d", {"bias": np.float64(1.0)}, ValueError, "bias"),
    ("conv2d", {"bias": np.array(["a"] * 6)}, TypeError, "bias"),
    ("conv2d", {"bias": np.zeros(6, complex)}, TypeError, "bias"),
    ("conv_transpose2d", {"bias": np.zeros(4)}, ValueError, "bias"),
    ("conv_transpose2d", {"bias": np.zeros(3), "groups": 2}, ValueError, "bias"),
    # non-numeric arrays
    *[(f, {k: np.full(v.shape, "a")}, TypeError, k) for f, k, v in [
        ("im2col", "x", X), ("col2im", "cols", COLS), ("conv2d", "x", X),
        ("conv2d", "weight", W), ("conv_transpose2d", "x", X),
        ("conv_transpose2d", "weight", WT), ("conv2d_input", "weight", W),
        ("conv2d_input", "grad_output", G), ("conv2d_weight", "input", X),
        ("conv2d_weight", "grad_output", G)]],
    *[(f, {k: v.astype(object)}, TypeError, k) for f, k, v in [
        ("im2col", "x", X), ("col2im", "cols", COLS), ("conv2d", "weight", W),
        ("conv_transpose2d", "weight", WT), ("conv2d_input", "grad_output", G),
        ("conv2d_weight", "input", X)]],
    *[(f, {k: v.astype(complex)}, TypeError, k) for f, k, v in [
        ("im2col", "x", X), ("col2im", "cols", COLS), ("conv2d", "x", X),
        ("conv2d", "weight", W), ("conv_transpose2d", "x", X),
        ("conv2d_input", "weight", W), ("conv2d_weight", "grad_output", G)]],
    ("im2col", {"x": X.astype("datetime64[s]")}, TypeError, "x"),
    ("conv2d", {"x": "abc"}, TypeError, "x"),
    ("conv2d", {"x": [[[1.0], [1.0, 2.0]]]}, TypeError, "x"),
    ("conv2d", {"weight": None}, TypeError, "weight"),
    # col2im shapes
    ("col2im", {"cols": np.zeros((2, 35, 16))}, ValueError, "cols"),
    ("col2im", {"cols": np.zeros((2, 16, 35)), "layout": "NHWC"}, ValueError, "cols"),
    ("col2im", {"cols": np.zeros((2, 36, 15))}, ValueError, "cols"),
    ("col2im", {"cols": np.zeros((2, 36, 16)), "stride": 2}, ValueError, "cols"),
    ("col2im", {"cols": np.zeros((2, 36, 16)), "layout": "NHWC"}, ValueError, "cols"),
    ("col2im", {"output_size": (0, 6)}, ValueError, "output_size"),
    ("col2im", {"output_size": (6, 6, 1)}, TypeError, "output_size"),
    ("col2im", {"output_size": 6.0}, TypeError, "output_size"),
    ("col2im", {"output_size": (2, 2)}, ValueError, "kernel_size"),
    # conv_transpose2d output_padding and output size
    ("conv_transpose2d", {"output_padding": 1}, ValueError, "output_padding"),
    ("conv_transpose2d", {"output_padding": (0, 2), "stride": 2}, ValueError,
     "output_padding"),
    ("conv_transpose2d", {"output_padding": 2, "stride": 2, "dilation": 2}, ValueError,
     "output_padding"),
    ("conv_transpose2d", {"output_padding": -1}, ValueError, "output_padding"),
    ("conv_transpose2d", {"output_padding": 0.5}, TypeError, "output_padding"),
    ("conv_transpose2d", {"padding": 4}, ValueError, "padding"),
    ("conv_transpose2d", {"padding": (0, 5)}, ValueError, "padding"),
    # gradient shapes
    ("conv2d_input", {"input_size": np.array(X.shape)}, TypeError, "input_size"),
    ("conv2d_input", {"input_size": (4, 6, 6, 2, 1)}, TypeError, "input_size"),
    ("conv2d_input", {"input_size": (6, 6)}, TypeError, "input_size"),
    ("conv2d_input", {"input_size": (2, 4, 6.0, 6)}, TypeError, "input_size"),
    ("conv2d_input", {"input_size": (2, 4, True, 6)}, TypeError, "input_size"),
    ("conv2d_input", {"input_size": (2, 4, -6, 6)}, ValueError, "input_size"),
    ("conv2d_input", {"input_size": 6}, TypeError, "input_size"),
    ("conv2d_input", {"input_size": (2, 4, 7, 6)}, ValueError, "grad_output"),
    ("conv2d_input", {"input_size": (4, 6, 6)}, ValueError, "grad_output"),
    ("conv2d_input", {"grad_output": np.zeros((2, 6, 4, 5))}, ValueError, "grad_output"),
    ("conv2d_input", {"grad_output": np.zeros((1, 6, 4, 4))}, ValueError, "grad_output"),
    ("conv2d_input", {"grad_output": np.zeros((2, 4, 4, 6)), "layout": "NHWC"}, ValueError,
     "grad_output"),
    ("conv2d_weight", {"weight_size": (6, 2, 3)}, TypeError, "weight_size"),
    ("conv2d_weight", {"weight_size": np.array(W.shape)}, TypeError, "weight_size"),
    ("conv2d_weight", {"weight_size": (6, 2, 3, -3)}, ValueError, "weight_size"),
    ("conv2d_weight", {"weight_size": (6, 2, 3, 3.0)}, TypeError, "weight_size"),
    ("conv2d_weight", {"weight_size": (6, 2, 2, 3)}, ValueError, "grad_output"),
    ("conv2d_weight", {"weight_size": (12, 2, 3, 3)}, ValueError, "grad_output"),
    ("conv2d_weight", {"grad_output": np.zeros((2, 6, 4, 3))}, ValueError, "grad_output"),
    ("conv2d_weight", {"grad_output": np.zeros((3, 6, 4, 4))}, ValueError, "grad_output"),
    ("conv2d_weight", {"input": X[0]}, ValueError, "grad_output"),
]


def bad_id(p):
    return "-".join(f"{k}={type(v).__name__ if isinstance(v, np.ndarray) else v!r}"
                    for k, v in p.items())


@pytest.mark.parametrize("name, kwargs, exc, match",
                         [pytest.param(*b, id=f"{b[0]}-{bad_id(b[1])}") for b in BAD])
def test_bad_argument(name, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        ALL[name](**kwargs)
    assert "keyword argument" not in str(info.value)   # a typo in this table


# --------------------------------------------------------------------------- out=

def results():
    """(name, call, result shape) for each function with the default arguments."""
    return [("im2col", im2col, (2, 36, 16)), ("col2im", col2im, X.shape),
            ("conv2d", conv2d, G.shape), ("conv_transpose2d", conv_t, (2, 3, 8, 8)),
            ("conv2d_input", grad_x, X.shape), ("conv2d_weight", grad_w, W.shape)]


def fortran(shape):
    return np.zeros(shape[::-1]).T


def read_only(shape):
    a = np.zeros(shape)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("name, call, shape", results(), ids=[r[0] for r in results()])
@pytest.mark.parametrize("make_out, match", [
    (lambda s: np.zeros(s[:-1] + (s[-1] + 1,)), "shape"),
    (lambda s: np.zeros(s[1:]), "shape"),
    (lambda s: np.zeros((1,) + s), "shape"),
    (lambda s: np.zeros(s, np.float32), "dtype"),
    (lambda s: np.zeros(s, np.int64), "dtype"),
    (lambda s: np.zeros(s, np.float16), "dtype"),
    (fortran, "C-contiguous"),
    (lambda s: np.zeros(s[:-1] + (2 * s[-1],))[..., ::2], "C-contiguous"),
    (read_only, "writeable"),
], ids=["longer", "fewer-dims", "more-dims", "float32", "int64", "float16", "fortran", "step",
        "read-only"])
def test_bad_out(name, call, shape, make_out, match):
    out = make_out(shape)
    with pytest.raises(ValueError, match=match):
        call(out=out)
    with pytest.raises(ValueError, match="out"):
        call(out=out)


def test_bad_out_unbatched():
    x = X[0]
    with pytest.raises(ValueError, match="out"):
        F.im2col(x, 3, out=np.zeros((2, 36, 16)))        # the batched shape
    with pytest.raises(ValueError, match="out"):
        F.conv2d(x, W, groups=2, out=np.zeros((1, 6, 4, 4)))
    with pytest.raises(TypeError, match="out"):
        F.conv2d(x, W, groups=2, out=np.zeros((6, 4, 4)).tolist())


def overlapping(shape, other):
    """An array of `shape` whose memory overlaps other (C-contiguous)."""
    size = int(np.prod(shape))
    buf = np.zeros(size + other.size)
    host = buf[size // 2: size // 2 + other.size].reshape(other.shape)
    host[...] = other
    return buf[:size].reshape(shape), host


def test_out_overlapping_inputs():
    out, x = overlapping((2, 36, 16), X)
    with pytest.raises(ValueError, match="overlap"):
        F.im2col(x, 3, out=out)
    out, cols = overlapping(X.shape, COLS)
    with pytest.raises(ValueError, match="overlap"):
        F.col2im(cols, (6, 6), 3, out=out)
    x = np.zeros((2, 6, 4, 4))
    with pytest.raises(ValueError, match="overlap"):   # out is the input itself
        F.conv2d(x, np.zeros((6, 3, 3, 3)), padding=1, groups=2, out=x)
    out, w = overlapping(G.shape, W)
    with pytest.raises(ValueError, match="overlap"):
        F.conv2d(X, w, groups=2, out=out)
    out, b = overlapping(G.shape, np.zeros(6))
    with pytest.raises(ValueError, match="overlap"):
        F.conv2d(X, W, b, groups=2, out=out)
    out, x = overlapping((2, 3, 8, 8), X)
    with pytest.raises(ValueError, match="overlap"):
        F.conv_transpose2d(x, WT, out=out)
    out, w = overlapping((2, 3, 8, 8), WT)
    with pytest.raises(ValueError, match="overlap"):
        F.conv_transpose2d(X, w, out=out)
    out, g = overlapping(X.shape, G)
    with pytest.raises(ValueError, match="overlap"):
        conv2d_input(X.shape, W, g, groups=2, out=out)
    out, w = overlapping(X.shape, W)
    with pytest.raises(ValueError, match="overlap"):
        conv2d_input(X.shape, w, G, groups=2, out=out)
    out, x = overlapping(W.shape, X)
    with pytest.raises(ValueError, match="overlap"):
        conv2d_weight(x, W.shape, G, groups=2, out=out)
    out, g = overlapping(W.shape, G)
    with pytest.raises(ValueError, match="overlap"):
        conv2d_weight(X, W.shape, g, groups=2, out=out)


# --------------------------------------------------------------------------- overflow

TINY = np.zeros((1, 1, 1, 1))
HUGE = np.broadcast_to(np.zeros(1), (1, 1, 2**20, 2**20))   # 8 TiB, no memory


@pytest.mark.parametrize("call", [
    lambda: F.im2col(TINY, 1, padding=2**30),
    lambda: F.im2col(TINY, 1, padding=2**31 - 1),
    lambda: F.im2col(TINY, 1, padding=2**28),
    lambda: F.col2im(np.zeros((1, 1, 1)), (2**31 - 1, 2**31 - 1), 1),
    lambda: F.conv2d(TINY, TINY, padding=2**30),
    lambda: F.conv2d(TINY, TINY, padding=(2**31 - 1, 0)),
    lambda: F.conv2d(HUGE, TINY),
    lambda: F.conv2d(HUGE.reshape(1, 2**20, 2**20, 1), TINY, layout="NHWC"),
    lambda: F.conv_transpose2d(np.zeros((1, 1, 2, 2)), TINY, stride=2**30),
    lambda: F.conv_transpose2d(HUGE, TINY),
    lambda: conv2d_input(HUGE.shape, TINY, HUGE),
    lambda: conv2d_input((1, 1, 1, 1), TINY, TINY, padding=2**30),
    lambda: conv2d_weight(HUGE, TINY.shape, HUGE),
    lambda: conv2d_weight(TINY, TINY.shape, TINY, padding=2**30),
], ids=lambda f: "")
def test_overflowing_sizes_raise(call):
    """Never a crash nor an attempt to compute: ValueError (or MemoryError)."""
    with pytest.raises((ValueError, MemoryError)):
        call()


def test_set_num_threads_errors(restore_threads):
    with pytest.raises(ValueError, match="n must"):
        F.set_num_threads(0)
    with pytest.raises(ValueError, match="n must"):
        F.set_num_threads(-3)
    with pytest.raises(TypeError, match="n must"):
        F.set_num_threads(1.5)
    with pytest.raises(TypeError, match="n must"):
        F.set_num_threads("2")


@pytest.mark.parametrize("name, param, value", [(f, "stride", 1) for f in ALL] + [
    ("conv2d", "padding", 0), ("conv2d", "dilation", 1)])
def test_zero_d_integer_array_parameter(name, param, value):
    """A 0-d integer array (np.asarray(1)) as a window parameter is either
    taken like the int, or refused naming the parameter; never a bare
    'len() of unsized object'."""
    try:
        got = ALL[name](**{param: np.asarray(value)})
    except (TypeError, ValueError) as exc:
        assert param in str(exc), f"{type(exc).__name__}: {exc}"
        return
    np.testing.assert_array_equal(got, ALL[name](**{param: value}))
