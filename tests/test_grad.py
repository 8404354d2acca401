"""Gradients of conv2d: finite differences, the reference over the parameter
space, adjointness, any strides, out=, NaN and empty sizes."""
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastim2col as F
import reference as R
from conftest import (LAYOUTS, PLAN_CASES, STRIDE_KINDS, as64, assert_close, conv_cases,
                      conv_inputs, conv_ref_kwargs, expected_layout, img_from, img_to, rand,
                      restride, run_isolated, weight_to)

conv2d_input, conv2d_weight = F.grad.conv2d_input, F.grad.conv2d_weight


def grad_case_inputs(case, rng):
    """(x, w, g, lib) with g a random grad_output; lib also holds g as passed."""
    x, w, _, lib = conv_inputs(case, rng)
    shape = R.conv2d(np.zeros((1,) + case["x_shape"][1:]), np.zeros(case["w_shape"]),
                     **conv_ref_kwargs(case)).shape[1:]
    g = rand(rng, (case["x_shape"][0],) + shape, case["dtype"])
    lib["g"] = restride(expected_layout(g, case), case["stride_kind"])
    lib["input_size"] = lib["x"].shape
    lib["weight_size"] = lib["weight"].shape
    return x, w, g, lib


def check_grads(case, rng, out=False):
    x, w, g, lib = grad_case_inputs(case, rng)
    kwargs = conv_ref_kwargs(case)
    layout = case["layout"]
    exp_x = expected_layout(R.conv2d_input_grad(x.shape, as64(w), as64(g), **kwargs), case)
    exp_w = weight_to(R.conv2d_weight_grad(as64(x), w.shape, as64(g), **kwargs), layout)
    outs = {}
    if out:
        outs = dict(x=np.full(exp_x.shape, np.nan, case["dtype"]),
                    w=np.full(exp_w.shape, np.nan, case["dtype"]))
    gx = conv2d_input(lib["input_size"], lib["weight"], lib["g"], **kwargs, layout=layout,
                      out=outs.get("x"))
    gw = conv2d_weight(lib["x"], lib["weight_size"], lib["g"], **kwargs, layout=layout,
                       out=outs.get("w"))
    if out:
        assert gx is outs["x"] and gw is outs["w"]
    assert_close(gx, exp_x, case["dtype"])
    assert_close(gw, exp_w, case["dtype"])


# --------------------------------------------------------------------------- finite differences

FD_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    dict(padding="same", dilation=(1, 2)),
    dict(groups=2),
]


def central_difference(f, a, eps=1e-6):
    grad = np.empty_like(a)
    for i in np.ndindex(a.shape):
        orig = a[i]
        a[i] = orig + eps
        hi = f()
        a[i] = orig - eps
        lo = f()
        a[i] = orig
        grad[i] = (hi - lo) / (2 * eps)
    return grad


@pytest.mark.parametrize("kwargs", FD_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_finite_differences(conv_path, rng, kwargs, layout):
    """d/dx, d/dw and d/db of sum(conv2d(x, w, b) * g), in float64."""
    groups = kwargs.get("groups", 1)
    x = img_to(rand(rng, (2, 2, 5, 4)), layout).copy()
    w = weight_to(rand(rng, (2, 2 // groups, 3, 2)), layout).copy()
    b = rand(rng, (2,))
    y = F.conv2d(x, w, b, **kwargs, layout=layout)
    g = rand(rng, y.shape)

    def f():
        return float(np.sum(F.conv2d(x, w, b, **kwargs, layout=layout) * g))

    tol = dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(conv2d_input(x.shape, w, g, **kwargs, layout=layout),
                               central_difference(f, x), **tol)
    np.testing.assert_allclose(conv2d_weight(x, w.shape, g, **kwargs, layout=layout),
                               central_difference(f, w), **tol)
    # The bias gradient (no function: documented as a sum of grad_output).
    axes = (0, 1, 2) if layout == "NHWC" else (0, 2, 3)
    np.testing.assert_allclose(g.sum(axis=axes), central_difference(f, b), **tol)


# --------------------------------------------------------------------------- reference

@given(conv_cases(), st.integers(0, 2**32 - 1), st.booleans())
def test_matches_reference(conv_path, kernel_threads, case, seed, out):
    check_grads(case, np.random.default_rng(seed), out=out)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", PLAN_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_cases(conv_path, kernel_threads, rng, x_shape, w_shape, stride, padding, dilation, groups,
                    layout, dtype):
    case = dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=False, layout=layout, dtype=dtype,
                unbatched=False, stride_kind="C")
    check_grads(case, rng)


@pytest.mark.parametrize("stride_kind", STRIDE_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", [(1, 1), (2, 3)])
def test_any_strides(conv_path, rng, stride_kind, layout, kernel):
    case = dict(x_shape=(3, 4, 7, 6), w_shape=(6, 2) + kernel, stride=1, padding=0,
                dilation=1, groups=2, bias=False, layout=layout, dtype=np.float64,
                unbatched=False, stride_kind=stride_kind)
    check_grads(case, rng)
    case.update(x_shape=(1, 4, 7, 6), unbatched=True)
    check_grads(case, rng, out=True)


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_adjointness(conv_path, kernel_threads, case, seed):
    """<conv2d(x, w), g> == <x, conv2d_input(g)> == <w, conv2d_weight(x, g)>."""
    case = dict(case, dtype=np.float64, bias=False)
    x, w, g, lib = grad_case_inputs(case, np.random.default_rng(seed))
    kwargs = dict(conv_ref_kwargs(case), layout=case["layout"])
    y = F.conv2d(lib["x"], lib["weight"], **kwargs)
    inner = np.vdot(y, lib["g"])
    gx = conv2d_input(lib["input_size"], lib["weight"], lib["g"], **kwargs)
    gw = conv2d_weight(lib["x"], lib["weight_size"], lib["g"], **kwargs)
    bound = 1e-12 * (np.vdot(np.abs(y), np.abs(lib["g"])) + 1) * np.prod(case["w_shape"][1:])
    assert abs(np.vdot(lib["x"], gx) - inner) <= bound
    assert abs(np.vdot(lib["weight"], gw) - inner) <= bound


# --------------------------------------------------------------------------- argument forms

def test_input_size_forms(rng):
    w, g = rand(rng, (3, 2, 2, 2)), rand(rng, (1, 3, 4, 3))
    expected = R.conv2d_input_grad((1, 2, 5, 4), w, g)
    for size in [(1, 2, 5, 4), [1, 2, 5, 4], tuple(np.array([1, 2, 5, 4]))]:
        assert_close(conv2d_input(size, w, g), expected, np.float64)
    assert_close(conv2d_input((2, 5, 4), w, g[0]), expected[0], np.float64)   # unbatched
    x = rand(rng, (2, 5, 4))
    assert_close(conv2d_weight(x, [3, 2, 2, 2], g[0]),
                 R.conv2d_weight_grad(x[None], (3, 2, 2, 2), g), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_promotion(rng, layout):
    x = rng.integers(-3, 4, (2, 3, 5, 5))
    w = rng.integers(-3, 4, (2, 3, 3, 3)).astype(np.float32)
    g32 = rand(rng, (2, 2, 3, 3), np.float32)
    kw = dict(layout=layout)
    gx = conv2d_input(img_to(x, layout).shape, weight_to(w, layout), img_to(g32, layout), **kw)
    assert_close(gx, img_to(R.conv2d_input_grad(x.shape, w, g32), layout), np.float32)
    gw = conv2d_weight(img_to(x, layout), weight_to(w, layout).shape,
                       img_to(g32.astype(np.float16), layout), **kw)
    assert_close(gw, weight_to(R.conv2d_weight_grad(as64(x), w.shape, g32.astype(np.float16)),
                               layout), np.float64)   # int64 input + float16 -> float64
    gw = conv2d_weight(img_to(x.astype(np.float16), layout), weight_to(w, layout).shape,
                       img_to(g32, layout), **kw)
    assert_close(gw, weight_to(R.conv2d_weight_grad(as64(x), w.shape, g32), layout),
                 np.float32)


# --------------------------------------------------------------------------- NaN / empty

@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_in_grad_output(conv_path, rng, layout):
    kwargs = dict(stride=2, padding=1, groups=2)
    w = np.abs(rand(rng, (4, 1, 3, 3))) + 0.5
    g = rand(rng, (2, 4, 10, 10))
    g[1, 3, 4, 6] = np.nan
    expected = R.conv2d_input_grad((2, 2, 20, 20), w, g, **kwargs)
    mask = R.conv2d_input_grad((2, 2, 20, 20), np.ones(w.shape), np.isnan(g).astype(float),
                               **kwargs) > 0
    assert 0 < mask.sum() < mask.size / 10
    np.testing.assert_array_equal(np.isnan(expected), mask)
    gx = conv2d_input(img_to(np.zeros((2, 2, 20, 20)), layout).shape, weight_to(w, layout),
                      img_to(g, layout), **kwargs, layout=layout)
    assert_close(gx, img_to(expected, layout), np.float64)
    np.testing.assert_array_equal(np.isnan(img_from(gx, layout)), mask)
    # The weight gradient of a NaN input is NaN exactly where the NaN is read.
    x = rand(rng, (2, 2, 20, 20))
    x[0, 1, 7, 7] = np.nan
    g = rand(rng, (2, 4, 10, 10))
    gw = conv2d_weight(img_to(x, layout), weight_to(w, layout).shape, img_to(g, layout),
                       **kwargs, layout=layout)
    expected = R.conv2d_weight_grad(x, w.shape, g, **kwargs)
    assert 0 < np.isnan(expected).sum() < expected.size
    assert_close(gw, weight_to(expected, layout), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((0, 3, 5, 5), (4, 3, 3, 3), 1),    # batch 0
    ((2, 0, 5, 5), (4, 0, 3, 3), 1),    # no input channels
    ((2, 4, 5, 5), (0, 2, 3, 3), 2),    # no output channels
])
def test_empty(rng, layout, x_shape, w_shape, groups):
    x = img_to(rand(rng, x_shape), layout)
    w = weight_to(rand(rng, w_shape), layout)
    g = img_to(rand(rng, (x_shape[0], w_shape[0], 5, 5)), layout)
    gx = conv2d_input(x.shape, w, g, padding=1, groups=groups, layout=layout)
    assert_close(gx, np.zeros(x.shape), np.float64, tol=0)
    gw = conv2d_weight(x, w.shape, g, padding=1, groups=groups, layout=layout)
    assert_close(gw, np.zeros(w.shape), np.float64, tol=0)


# --------------------------------------------------------------------------- over-padding

OVER_PADDED_SWEEP = """
import numpy as np, fastim2col as F, fastim2col._plan as P, reference as R
P.MIN_FLOPS_PER_THREAD = P.MIN_BYTES_PER_THREAD = 1   # split even small calls
rng = np.random.default_rng(0)
# Tiles of output positions end at many columns of a row, some inside the
# left padding (see test_conv2d.test_over_padded_memory_safety).
cases = [((1, 256, 28, 17), (2, 256, 1, 1), 3, 2)]
cases += [((n, 600, 10, w), (2, 600, k, k), p, t) for n in (1, 2) for k in (1, 2)
          for p in (k + 2, k + 5) for w in range(3, 20, 2) for t in (1, 3)]
bad = []
for x_shape, w_shape, p, t in cases:
    F.set_num_threads(t)
    x = rng.standard_normal(x_shape)
    y_shape = R.conv2d(x[:1, :1], np.zeros((1, 1) + w_shape[2:]), padding=p).shape
    g = rng.standard_normal((x_shape[0], w_shape[0]) + y_shape[2:])
    expected = R.conv2d_weight_grad(x, w_shape, g, padding=p)
    for _ in range(3):
        gw = F.grad.conv2d_weight(x, w_shape, g, padding=p)
    if not np.allclose(gw, expected, rtol=1e-10, atol=1e-9):
        bad.append((x_shape, w_shape, p, t))
assert not bad, bad
print("checked", len(cases))
"""


def test_weight_grad_over_padded_memory_safety():
    """As test_conv2d.test_over_padded_memory_safety, for conv2d_weight."""
    assert "checked" in run_isolated(OVER_PADDED_SWEEP)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape", [(2, 3, 0, 4), (2, 3, 4, 0)])
def test_zero_size_image_with_padding(rng, layout, x_shape):
    w = rand(rng, (2, 3, 1, 2))
    g = rand(rng, (2, 2, x_shape[2] + 2, x_shape[3] + 3))
    x = np.zeros(x_shape)
    kw = dict(padding=(1, 2), layout=layout)
    gx = conv2d_input(img_to(x, layout).shape, weight_to(w, layout), img_to(g, layout), **kw)
    assert gx.shape == img_to(x, layout).shape
    gw = conv2d_weight(img_to(x, layout), weight_to(w, layout).shape, img_to(g, layout), **kw)
    assert_close(gw, weight_to(R.conv2d_weight_grad(x, w.shape, g, padding=(1, 2)), layout),
                 np.float64, tol=0)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_channel_split_plan(n_threads, dtype):
    """The channel split of the weight gradient: units a multiple of the threads, a unit's part of gw within budget where it runs
    several GEMMs, wide chunks; not for the stem's 3 channels."""
    from fastim2col import _plan
    item = np.dtype(dtype).itemsize
    for c, size in [(64, 56), (128, 28), (256, 14), (512, 7)]:
        for n in (1, 2 * n_threads - 1, 2 * n_threads):
            plan = _plan.grad_weight_channels(n, 1, c, c, 9, size * size, item, n_threads,
                                              False)
            if -(-c // n_threads) * 9 < _plan.MIN_CHUNK_COLUMNS:
                assert plan is None   # chunks too narrow
                continue
            tile, chunk, per_tile, transposed = plan
            assert transposed == (per_tile == 1 and c <= _plan.TRANSPOSED_GEMM_OUTPUTS)
            n_chunks = -(-c // chunk)
            assert n_chunks % n_threads == 0 or n_chunks == c
            assert chunk * 9 >= _plan.MIN_CHUNK_COLUMNS
            n_gemms = -(-n // per_tile) * (1 if per_tile > 1 else -(-size * size // tile))
            assert n_gemms == 1 or c * chunk * 9 * item <= _plan.GRAD_WEIGHT_PART_BYTES
            assert 1 <= per_tile <= n and (per_tile == 1 or tile == per_tile * size * size)
    assert _plan.grad_weight_channels(1, 1, 64, 3, 49, 112 * 112, 4, 2, False) is None


@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
def test_weight_gradient_direct_plan(n_threads):
    """1x1 stride-1 weight gradients (nothing unrolled) that do not split by
    channels: whole images, cut so that the units are a multiple of the
    threads, into per-thread sums wherever there are units for every thread."""
    from fastim2col import _plan
    for n, n_pos in [(1, 3136), (2, 3136), (3, 784), (8, 3136), (1, 100)]:
        tile, block, sums = _plan.grad_weight(n, 1, 256, 64, n_pos, 4, n_threads, 256, True)
        units = n * -(-n_pos // tile)
        assert tile == n_pos or tile >= _plan.MIN_GEMM_TILE
        if n_pos // _plan.MIN_GEMM_TILE >= n_threads:   # no tile floor in the way
            assert units % n_threads == 0
        assert sums == (n_threads > 1 and units >= n_threads)
        assert block == 256 or not sums


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_input_gradient_tiles_ending_mid_row(rng, monkeypatch, restore_threads, dtype,
                                             transposed):
    """The fold's general loop (tiles that start or end inside an output
    row; the planner's tiles are whole rows, which take a rectangle per tap):
    forced on one thread (bands of partial rows may share input rows, so
    only one thread may run them), both layouts of the GEMM result."""
    from fastim2col import _plan
    F.set_num_threads(1)
    monkeypatch.setattr(_plan, "use_direct", lambda *a: False)
    monkeypatch.setattr(_plan, "grad_input", lambda *a: (a[4].out_w + 3, a[2]))
    monkeypatch.setattr(_plan, "grad_input_transposed", lambda *a: transposed)
    for x_shape, w_shape, s, p, d in [((2, 5, 13, 11), (4, 5, 3, 3), 1, 1, 1),
                                      ((1, 3, 17, 15), (6, 3, 3, 2), 2, 2, 2)]:
        w = rng.standard_normal(w_shape).astype(dtype)
        y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=s, padding=p,
                           dilation=d).shape
        g = rng.standard_normal(y_shape).astype(dtype)
        got = conv2d_input(x_shape, w, g, s, p, d)
        assert_close(got, R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p, d), dtype)


class _Call(NamedTuple):
    args: tuple
    kwargs: dict
    name: str


def _log_kernel_calls(monkeypatch, *names):
    """A list that collects each call of the kernel entries _conv.<name> (its
    name, positional and keyword arguments); the calls go through."""
    from fastim2col import _conv
    calls = []
    for name in names:
        real = getattr(_conv, name)
        monkeypatch.setattr(_conv, name, lambda *a, _real=real, _name=name, **k: (
            calls.append(_Call(a, k, _name)) or _real(*a, **k)))
    return calls


def _thin_input_gradients(monkeypatch):
    """For the thin GEMM's input-gradient tests: the GEMM kernels always (not
    the direct ones), work split among threads even when small, tiles of a
    few output rows (several an image); returns the list that collects the
    arguments of each gemm_grad_input kernel call."""
    from conftest import split_small_work
    from fastim2col import _plan
    calls = _log_kernel_calls(monkeypatch, "gemm_grad_input")
    monkeypatch.setattr(_plan, "use_direct", lambda *a: False)
    monkeypatch.setattr(_plan, "use_taps", lambda *a: False)
    split_small_work(monkeypatch)
    monkeypatch.setattr(_plan, "TILE_BYTES", 1)
    monkeypatch.setattr(_plan, "MIN_GEMM_TILE", 1)
    return calls


def _input_gradient_case(rng, dtype, x_shape, w_shape, stride, padding, groups, dilation=1):
    """(w, g, bias, output_padding, the input gradient, conv_transpose2d(g, w,
    bias) reaching x's size) for x's shape (NCHW), from the reference;
    conv_transpose2d's weight is w (it maps g's channels back to x's)."""
    w = rand(rng, w_shape, dtype)
    y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=stride, padding=padding,
                       dilation=dilation, groups=groups).shape
    g = rand(rng, y_shape, dtype)
    b = rand(rng, x_shape[1], dtype)
    op = tuple((x_shape[i] + 2 * padding - dilation * (w_shape[i] - 1) - 1) % stride
               for i in (2, 3))
    expected = R.conv2d_input_grad(x_shape, as64(w), as64(g), stride, padding, dilation, groups)
    expected_t = R.conv_transpose2d(as64(g), as64(w), as64(b), stride, padding,
                                    output_padding=op, groups=groups, dilation=dilation)
    return w, g, b, op, expected, expected_t


def _thread_counts(calls):
    """1, then 3 kernel threads, the log of kernel calls cleared before each."""
    for threads in (1, 3):
        F.set_num_threads(threads)
        calls.clear()
        yield threads


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_gemm_paths(rng, monkeypatch, restore_threads, conv_isa, dtype, layout):
    """Input gradients whose GEMMs run in the thin kernel (forced, both
    dtypes), through every kernel path: tiles of output rows folded back,
    whole images a unit, 1x1 with nothing to fold, groups, and
    conv_transpose2d's bias on each; against the reference, and with the
    same bits on 1 and 3 threads (each sum runs over grad_output's channels
    in order, however the work is split)."""
    from fastim2col import _plan
    calls = _thin_input_gradients(monkeypatch)
    monkeypatch.setattr(_plan, "use_thin_gemm", lambda *a: True)
    monkeypatch.setattr(_plan, "use_thin_positions", lambda *a: False)
    # (batch, channels, outputs, size, kernel, stride, padding, groups): the
    # second runs whole images a unit, the third and fourth are 1x1, the last
    # has more positions than a tile
    cases = [(1, 24, 8, 9, 3, 2, 1, 1), (4, 32, 40, 8, 3, 2, 1, 1), (2, 40, 16, 4, 1, 1, 0, 1),
             (3, 12, 20, 5, 1, 1, 0, 2), (2, 6, 10, 17, 3, 1, 1, 2), (1, 5, 7, 40, 3, 1, 0, 1)]
    images = tiles = 0
    for n, c, o, size, k, s, p, groups in cases:
        x_shape = (n, c, size, size)
        w, g, b, op, expected, expected_t = _input_gradient_case(
            rng, dtype, x_shape, (o, c // groups, k, k), s, p, groups)
        got = {}
        for threads in _thread_counts(calls):
            got[threads] = conv2d_input(img_to(np.empty(x_shape), layout).shape,
                                        weight_to(w, layout), img_to(g, layout), s, p,
                                        groups=groups, layout=layout)
            assert calls[-1].kwargs["thin"] is True
            images += calls[-1].kwargs["images_per_tile"] > 1
            tiles += calls[-1].kwargs["split"][0] < g.shape[2] * g.shape[3]
            assert_close(got[threads], img_to(expected, layout), dtype)
            got_t = F.conv_transpose2d(img_to(g, layout), weight_to(w, layout), b, s, p,
                                       output_padding=op, groups=groups, layout=layout)
            assert_close(got_t, img_to(expected_t, layout), dtype)
        assert np.array_equal(got[1], got[3])
    assert images and tiles   # whole images a unit, and images cut into tiles


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_positions_paths(rng, monkeypatch, restore_threads, conv_isa, dtype):
    """NCHW input gradients by the thin kernel over grad_output's rows
    (forced, both dtypes): 1x1 straight into the result (one and several
    tiles of positions, blocks of input channels; the same bits on 1 and 3
    threads), tiles folded back, whole images a unit, groups, and
    conv_transpose2d's bias on each; against the reference."""
    from fastim2col import _direct, _plan
    calls = _thin_input_gradients(monkeypatch)
    monkeypatch.setattr(_plan, "use_thin_positions", lambda *a: True)
    monkeypatch.setattr(_plan, "use_thin_gemm", lambda *a: False)
    seen = set()
    # (batch, channels, outputs, height, width, kernel, stride, padding, groups)
    for n, c, o, h, w_, k, s, p, groups in [
            (1, 40, 16, 9, 11, 1, 1, 0, 1), (2, 7, 33, 5, 13, 1, 1, 0, 1),
            (1, 12, 20, 16, 16, 1, 1, 0, 2), (3, 3, 5, 1, 50, 1, 1, 0, 1),
            (2, 6, 10, 15, 12, 3, 2, 1, 1), (1, 8, 6, 20, 9, 3, 1, 1, 2),
            (4, 8, 40, 4, 4, 3, 2, 1, 1), (2, 10, 12, 14, 14, 1, 2, 0, 1),
            (1, 3, 8, 64, 60, 7, 2, 3, 1),   # the stem's shape, smaller: even bands
            (3, 9, 130, 23, 25, 1, 1, 0, 1)]:   # passes that sweep past the prefetch bound
        x_shape = (n, c, h, w_)
        w, g, b, op, expected, expected_t = _input_gradient_case(
            rng, dtype, x_shape, (o, c // groups, k, k), s, p, groups)
        got = {}
        for threads in _thread_counts(calls):
            got[threads] = conv2d_input(x_shape, w, g, s, p, groups=groups)
            assert calls[-1].kwargs["thin_positions"] is True
            kwargs = calls[-1].kwargs
            (tile, block), direct, per_tile = (kwargs["split"], kwargs["in_place"],
                                               kwargs["images_per_tile"])
            if direct:
                seen.add("1x1 tiles" if tile < h * w_ else "1x1 whole images")
                seen.add("1x1 channel blocks" if block < c // groups else "1x1 all channels")
                # a pass of the kernel sweeps grad_output's rows of the tile's
                # positions, THIN_TERMS channels (its w, read in place)
                sweep = tile * min(o // groups, _direct.THIN_TERMS) * np.dtype(dtype).itemsize
                if sweep > _direct.THIN_PREFETCH_BYTES:
                    seen.add("prefetched sweeps")
            elif per_tile > 1:
                seen.add("image sets")
            elif tile < g.shape[2] * g.shape[3]:
                seen.add("folded tiles")
            assert_close(got[threads], expected, dtype)
            got_t = F.conv_transpose2d(g, w, b, s, p, output_padding=op, groups=groups)
            assert_close(got_t, expected_t, dtype)
        if k == 1 and s == 1:
            assert np.array_equal(got[1], got[3])
    assert seen == {"1x1 tiles", "1x1 whole images", "1x1 channel blocks", "1x1 all channels",
                    "image sets", "folded tiles", "prefetched sweeps"}, seen


# The tap-by-tap kernels' cases: (batch, channels, outputs, height, width,
# kernel, stride, padding, dilation, groups): 3x3 stride 1 and 2, dilation 2
# with groups, 1x1 stride 2.
_TAPS_CASES = [(1, 40, 16, 9, 11, 3, 1, 1, 1, 1), (3, 24, 26, 7, 6, 3, 2, 1, 1, 1),
               (2, 16, 12, 10, 9, 3, 1, 2, 2, 2), (2, 33, 8, 8, 8, 1, 2, 0, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_taps_paths(rng, monkeypatch, restore_threads, conv_isa, dtype):
    """NHWC input gradients tap by tap (src/_conv.pyx grad_input_taps; forced,
    both dtypes): bands of rows, blocks of channels (whole register blocks
    or not), sets of images (the last one short, and sets cut into bands),
    each tap's weights copied or read in place; strides, dilation, padding,
    1x1 stride 2, groups, and conv_transpose2d's bias; against the
    reference, and with the same bits for every split and thread count
    (each element is summed by one unit, taps and then channels in order)."""
    from conftest import split_small_work
    from fastim2col import _plan
    calls = _log_kernel_calls(monkeypatch, "taps_grad_input", "gemm_grad_input")
    monkeypatch.setattr(_plan, "use_taps", lambda nhwc, cg, direct, isa: nhwc and not direct)
    split_small_work(monkeypatch)
    planned = _plan.grad_input_taps
    # (rows a band, channels a block, images a set, the weights' copy's
    # leading dimension or 0)
    splits = [None, (1, 16, 1, 0), (2, 7, 1, 9), (100, 100, 2, 120), (3, 32, 3, 0)]
    for n, c, o, h, w_, k, s, p, d, groups in _TAPS_CASES + [(1, 3, 8, 20, 18, 7, 2, 3, 1, 1)]:
        x_shape = (n, c, h, w_)
        w, g, b, op, expected, expected_t = _input_gradient_case(
            rng, dtype, x_shape, (o, c // groups, k, k), s, p, groups, d)
        results = []
        for split in splits:
            monkeypatch.setattr(_plan, "grad_input_taps",
                                planned if split is None else lambda *a, split=split: split)
            for _ in _thread_counts(calls):
                got = conv2d_input(img_to(np.empty(x_shape), "NHWC").shape,
                                   weight_to(w, "NHWC"), img_to(g, "NHWC"), s, p, d, groups,
                                   layout="NHWC")
                assert calls[-1].name == "taps_grad_input"
                assert_close(got, img_to(expected, "NHWC"), dtype)
                results.append(got)
                got_t = F.conv_transpose2d(img_to(g, "NHWC"), weight_to(w, "NHWC"), b, s, p,
                                           output_padding=op, groups=groups, dilation=d,
                                           layout="NHWC")
                assert_close(got_t, img_to(expected_t, "NHWC"), dtype)
        assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_taps_paths(rng, monkeypatch, restore_threads, conv_isa, dtype):
    """NHWC weight gradients tap by tap (src/_conv.pyx grad_weight_taps;
    forced, both dtypes): blocks of output channels (whole register tiles or
    not), of taps (all, a kernel row, one), calls of several images (the last
    set short) or bands of rows; strides, dilation, padding that leaves a tap
    no input at all, 1x1 stride 2, groups, channels past a register block, an
    input viewed with padded rows and images; against the reference, and with
    the same bits for every split and thread count (each element is summed by
    one unit, positions in order). An input whose channels are not
    contiguous (an NCHW array's NHWC view) goes the other way."""
    from fastim2col import _plan
    calls = _log_kernel_calls(monkeypatch, "taps_grad_weight", "gemm_grad_weight",
                              "gemm_grad_weight_by_channels")
    monkeypatch.setattr(_plan, "TAPS_WEIGHT_MIN_CHANNELS", 1)
    planned = _plan.grad_weight_taps
    # (output channels a unit, taps a unit, images a call, output rows a call)
    splits = [None, (5, 1, 1, 2), (12, 3, 2, 100), (24, 100, 3, 100), (7, 2, 1, 1)]
    for n, c, o, h, w_, k, s, p, d, groups in _TAPS_CASES + [(3, 36, 13, 2, 3, 3, 1, 3, 3, 1)]:
        x = rand(rng, (n, c, h, w_), dtype)
        w_shape = (o, c // groups, k, k)
        y_shape = R.conv2d(np.zeros(x.shape), np.zeros(w_shape), stride=s, padding=p,
                           dilation=d, groups=groups).shape
        g = rand(rng, y_shape, dtype)
        expected = weight_to(R.conv2d_weight_grad(as64(x), w_shape, as64(g), s, p, d, groups),
                             "NHWC")
        x_nhwc = np.ascontiguousarray(img_to(x, "NHWC"))
        padded = np.zeros((n + 1, h, w_ + 2, c), dtype)   # rows and images apart
        padded[1:, :, 1:-1] = x_nhwc
        results = []
        for split in splits:
            monkeypatch.setattr(_plan, "grad_weight_taps",
                                planned if split is None else lambda *a, split=split: split)
            for _ in _thread_counts(calls):
                for x_in in (x_nhwc, padded[1:, :, 1:-1]):
                    got = conv2d_weight(x_in, expected.shape, img_to(g, "NHWC"), s, p, d,
                                        groups, layout="NHWC",
                                        out=np.full(expected.shape, np.nan, dtype))
                    assert calls[-1].name == "taps_grad_weight"
                    assert_close(got, expected, dtype)
                    results.append(got)
        assert all(np.array_equal(results[0], r) for r in results[1:])
        got = conv2d_weight(img_to(x, "NHWC"), expected.shape, img_to(g, "NHWC"), s, p, d, groups,
                            layout="NHWC")
        assert calls[-1].name != "taps_grad_weight"
        assert_close(got, expected, dtype)


# (batch, channels, outputs, height, width, kernel, stride, padding,
# dilation, groups): the stem's geometry, strides 1-3 (unequal too), padding
# past the kernel, dilation, 1x1 stride 2, groups, an image narrower than
# the stride; outputs a multiple of the vector or not (the last og % DVEC
# channels one at a time), 2 vectors and more (one position's even and odd
# sums); blocks and half blocks of every channel count with whole vectors
_FEW_CASES = [(1, 3, 64, 23, 21, 7, 2, 3, 1, 1), (2, 1, 16, 9, 12, 3, 1, 1, 1, 1),
              (2, 4, 40, 11, 10, 3, (2, 3), (0, 2), 1, 1), (1, 2, 21, 13, 9, 5, 3, 4, 1, 1),
              (1, 6, 48, 14, 12, (4, 3), 1, 2, (1, 3), 2), (3, 3, 33, 8, 7, 1, 2, 1, 1, 1),
              (1, 4, 96, 6, 17, 3, 1, 0, 2, 4), (1, 2, 16, 7, 2, 3, 3, 1, 1, 1),
              (1, 2, 32, 5, 24, 3, 1, 1, 1, 1), (1, 1, 32, 5, 14, 3, 1, 1, 1, 1),
              (1, 4, 32, 5, 17, 3, 1, 1, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_channel_paths(rng, monkeypatch, restore_threads, conv_isa, dtype):
    """NHWC input gradients of at most FEW_MAX_CHANNELS channels a group,
    element by element (src/_conv.pyx grad_input_few; forced, both dtypes,
    every ISA level this CPU runs: conv_isa): bands of 1, 2 or all rows, positions in
    blocks, half blocks and single edge columns, grad_output's rows copied
    per band or read in place; conv_transpose2d's bias;
    `out=` pre-filled with NaN; against the reference, and with the same bits
    for every band and thread count (each element is one unit's sum)."""
    from conftest import split_small_work
    from fastim2col import _args, _conv, _plan
    calls = _log_kernel_calls(monkeypatch, "elementwise_grad_input", "gemm_grad_input",
                              "taps_grad_input")
    split_small_work(monkeypatch)
    monkeypatch.setattr(_plan, "use_few_channels", lambda nhwc, cg, og, direct, *a: (
        nhwc and not direct and cg <= _plan.FEW_MAX_CHANNELS))
    planned = _plan.grad_input_few
    for n, c, o, h, w_, k, s, p, d, groups in _FEW_CASES:
        k, s, p, d = (v if isinstance(v, tuple) else (v, v) for v in (k, s, p, d))
        x_shape = (n, c, h, w_)
        w = rand(rng, (o, c // groups) + k, dtype)
        g = rand(rng, R.conv2d(np.zeros(x_shape), np.zeros(w.shape), stride=s,
                               padding=p, dilation=d, groups=groups).shape, dtype)
        b = rand(rng, (c,), dtype)
        expected = img_to(R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p, d,
                                              groups), "NHWC")
        results = []
        for band in (None, 1, 2, 1000):
            monkeypatch.setattr(_plan, "grad_input_few",
                                planned if band is None else lambda *a, band=band: band)
            for _ in _thread_counts(calls):
                got = conv2d_input(expected.shape, weight_to(w, "NHWC"),
                                   img_to(g, "NHWC"), s, p, d, groups, layout="NHWC",
                                   out=np.full(expected.shape, np.nan, dtype))
                assert calls[-1].name == "elementwise_grad_input"
                assert_close(got, expected, dtype)
                results.append(got)
        # grad_output's rows copied to a buffer on cache lines or read in
        # place (the call above copies where NumPy's array starts off a line)
        wt = np.ascontiguousarray(weight_to(w, "NHWC").reshape(
            groups, o // groups, -1, c // groups).transpose(0, 2, 3, 1))
        win = _args.window((h, w_), k, s, p, d, allow_strings=False)
        for band in (1, 3, 1000):
            for copy in (False, True):
                got = np.full(expected.shape, np.nan, dtype)
                _conv.elementwise_grad_input(np.ascontiguousarray(img_to(g, "NHWC")), wt,
                                             None, got, shape=(n, c, o, groups),
                                             geom=tuple(win), band=band, copy_rows=copy,
                                             n_threads=2)
                results.append(got)
        assert all(np.array_equal(results[0], r) for r in results[1:])
        # conv_transpose2d maps g back to x's channels, plus a bias
        got = F.conv_transpose2d(img_to(g, "NHWC"), weight_to(w, "NHWC"), b, s, p,
                                 output_padding=tuple(
                                     (x_shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1)
                                     % s[i] for i in (0, 1)),
                                 groups=groups, dilation=d, layout="NHWC")
        assert calls[-1].name == "elementwise_grad_input"
        assert_close(got, expected + b, dtype)


def test_few_channel_plan(monkeypatch):
    """Which input gradients go element by element: NHWC, at most
    FEW_MAX_CHANNELS channels a group, output channels a multiple of the
    widest vector, not 1x1 stride 1 (nothing to fold), AVX-512 (AVX2: stride
    1 only); bands so that each thread gets FEW_BANDS_PER_THREAD units, each
    copying at most FEW_COPY_BYTES of grad_output rows."""
    from fastim2col import _args, _conv, _plan
    assert _plan.FEW_MAX_CHANNELS == _conv.FEW_CHANNELS
    stem = _args.window((224, 224), (7, 7), 2, 3, 1, allow_strings=False)
    same = _args.window((32, 32), (3, 3), 1, 1, 1, allow_strings=False)
    assert _plan.use_few_channels(True, 3, 64, False, stem, 16, 2)
    assert _plan.use_few_channels(True, 1, 32, False, same, 16, 1)
    assert not _plan.use_few_channels(True, 3, 64, False, stem, 16, 1)   # AVX2, stride 2
    assert not _plan.use_few_channels(False, 3, 64, False, stem, 16, 2)   # NCHW
    assert not _plan.use_few_channels(True, _plan.FEW_MAX_CHANNELS + 1, 64, False, stem, 16, 2)
    assert not _plan.use_few_channels(True, 3, 40, False, stem, 16, 2)
    assert not _plan.use_few_channels(True, 3, 64, True, same, 16, 2)
    assert not _plan.use_few_channels(True, 3, 64, False, same, 16, 0)
    for n_images, groups, og, size, threads, itemsize in [
            (1, 1, 64, 224, 2, 4), (8, 1, 64, 224, 2, 4), (1, 2, 16, 5, 16, 4),
            (3, 1, 64, 224, 16, 8), (64, 1, 32, 32, 2, 4), (1, 1, 4096, 512, 2, 8)]:
        win = _args.window((size, size), (7, 7), 2, 3, 1, allow_strings=False)
        band = _plan.grad_input_few(n_images, groups, og, win, itemsize, threads)
        units = n_images * groups * -(-size // band)
        assert 1 <= band <= size
        copied = ((band - 1 + 6) // 2 + 1) * win.out_w * og * itemsize   # rows a band reaches
        assert band == 1 or copied <= _plan.FEW_COPY_BYTES
        assert units >= min(_plan.FEW_BANDS_PER_THREAD * threads, n_images * groups * size)


def test_line_aligned_copy(rng):
    """The weights' copy for the element-by-element kernel starts on a cache
    line, whatever the source's layout, and holds its values."""
    from fastim2col import _args
    for shape, dtype in [((3, 7, 5), np.float32), ((2, 9, 3, 8), np.float64),
                         ((0, 4), np.float32)]:
        src = rand(rng, shape, dtype)
        for view in (src, src.T, src[..., ::-1]):
            got = _args.line_aligned_copy(view)
            assert got.ctypes.data % _args.CACHE_LINE == 0 or got.size == 0
            assert got.flags.c_contiguous and got.dtype == dtype
            np.testing.assert_array_equal(got, view)


def test_few_channel_kernel_arguments(rng):
    """The element-by-element kernel's entry refuses what it cannot run."""
    from fastim2col import _args, _conv
    win = tuple(_args.window((8, 8), (3, 3), 1, 1, 1, allow_strings=False))
    go = np.zeros((1, 8, 8, 16))
    for c, wt_shape, band in [(5, (1, 9, 5, 16), 2), (3, (1, 9, 3, 16), 0),
                              (3, (1, 9, 3, 8), 2), (0, (1, 9, 0, 16), 2)]:
        gx = np.zeros((1, 8, 8, c))
        with pytest.raises(ValueError, match="elementwise_grad_input"):
            _conv.elementwise_grad_input(go, np.zeros(wt_shape), None, gx, shape=(1, c, 16, 1),
                                         geom=win, band=band, copy_rows=True, n_threads=1)


def test_weight_taps_plan():
    """The planner's split of the tap-by-tap weight gradient: units (taps,
    output channels) a multiple of the threads where they can be, all taps a
    unit where that allows, output blocks of at most TAPS_WEIGHT_MAX_OUT_BLOCK
    and at least TAPS_WEIGHT_MIN_OUT_BLOCK where there are enough channels;
    calls of at least TAPS_WEIGHT_TERMS positions (images several to a call,
    or bands of one image's rows), no more than the batch."""
    from fastim2col import _plan
    for size, og, n_images, threads in [(28, 128, 1, 2), (14, 256, 1, 2), (14, 256, 8, 2),
                                        (7, 512, 1, 2), (7, 512, 8, 2), (7, 512, 3, 3),
                                        (28, 128, 1, 16), (7, 512, 8, 16), (56, 64, 2, 1),
                                        (7, 48, 1, 16)]:
        out_block, tap_block, per_call, band = _plan.grad_weight_taps(n_images, 1, og, 3, 9,
                                                                       size, size, threads)
        units = -(-og // out_block) * -(-9 // tap_block)
        if og >= threads * _plan.TAPS_WEIGHT_MIN_OUT_BLOCK:
            assert units % threads == 0 and tap_block == 9
            assert _plan.TAPS_WEIGHT_MIN_OUT_BLOCK <= out_block <= _plan.TAPS_WEIGHT_MAX_OUT_BLOCK
        else:   # (7, 48, 1, 16): 2 blocks of outputs, taps in kernel rows or alone
            assert tap_block < 9 and units > 2
        if size * size >= _plan.TAPS_WEIGHT_TERMS:
            assert per_call == 1 and band * size >= _plan.TAPS_WEIGHT_TERMS
            assert (band - 1) * size < _plan.TAPS_WEIGHT_TERMS
        else:
            assert band == size and per_call == min(n_images,
                                                    -(-_plan.TAPS_WEIGHT_TERMS // size ** 2))


def test_taps_plan():
    """The planner's units for the tap-by-tap input gradient: bands of even
    height within TAPS_MAX_POSITIONS, images below TAPS_SET_POSITIONS
    several to a set, a unit count that is a multiple of the threads or at
    least two a thread (finer bands while they keep TAPS_MIN_POSITIONS, then
    blocks of whole register blocks of channels); the weights copied only
    where their rows' stride crowds the L1's sets and the copy fits
    TAPS_MAX_COPY_BYTES."""
    from fastim2col import _args, _plan
    vector = 16
    for size, c, n_images, threads in [(56, 64, 1, 2), (28, 128, 1, 2), (14, 256, 1, 2),
                                       (14, 256, 8, 2), (7, 512, 1, 2), (7, 512, 8, 2),
                                       (7, 512, 3, 2), (56, 64, 1, 16), (14, 256, 1, 16),
                                       (28, 128, 1, 3), (5, 48, 1, 1)]:
        win = _args.window((size, size), (3, 3), 1, 1, 1, allow_strings=False)
        rows, block, per_set, _ = _plan.grad_input_taps(n_images, 1, c, c, 9 * c, win, 4,
                                                        threads, vector)
        bands = -(-size // rows)
        assert rows == -(-size // bands)   # even: no band taller than it must be
        assert per_set * rows * size <= max(_plan.TAPS_MAX_POSITIONS, size)
        assert per_set == 1 or (rows == size and size * size < _plan.TAPS_SET_POSITIONS)
        assert block == c or block % (2 * vector) == 0
        units = -(-n_images // per_set) * bands * -(-c // block)
        assert units % threads == 0 or units >= 2 * threads
        if rows < size and block < c:   # blocks only once bands are as thin as allowed
            assert (rows - 1) * size < _plan.TAPS_MIN_POSITIONS
    # the copy: rows 9 * 256 floats apart fall on 4 of 64 sets, 9 * 64 on 16
    win = _args.window((14, 14), (3, 3), 1, 1, 1, allow_strings=False)
    assert _plan.grad_input_taps(8, 1, 256, 256, 9 * 256, win, 4, 2, vector)[3] == 256 + 16
    assert _plan.grad_input_taps(8, 1, 64, 64, 9 * 64, win, 4, 2, vector)[3] == 0
    assert _plan.grad_input_taps(8, 1, 256, 1024, 9 * 256, win, 4, 2, vector)[3] == 0   # 1 MiB


def test_thin_fold_bands():
    """The planner's bands for input gradients folded from thin-GEMM tiles
    of few-channel layers (the stem): even heights, never below the fold's
    phase-safe minimum, at least THIN_FOLD_BANDS_PER_THREAD a thread and
    phase for one image; more channels, or not thin, keep the old bands."""
    from fastim2col import _args, _plan
    win = _args.window((224, 224), (7, 7), 2, 3, 1, allow_strings=False)
    kg = 3 * 49
    old = _plan.grad_input(1, 1, 3, kg, win, 4, 2, False, False)
    for n_images, threads in [(1, 2), (1, 3), (8, 2), (1, 16)]:
        tile, block = _plan.grad_input(n_images, 1, 3, kg, win, 4, threads, False, False, True)
        rows = tile // win.out_w
        bands = -(-win.out_h // rows)
        assert tile % win.out_w == 0 and block <= 3
        assert rows >= _plan.band_rows(7, 2, 1) and tile >= _plan.THIN_FOLD_MIN_POSITIONS
        assert rows == -(-win.out_h // bands)   # even: no band taller than it must be
        floor = max(_plan.band_rows(7, 2, 1), -(-_plan.THIN_FOLD_MIN_POSITIONS // win.out_w))
        if n_images == 1 and rows > floor:   # (16 threads: held at the floor)
            assert bands >= 2 * _plan.THIN_FOLD_BANDS_PER_THREAD * threads
    assert old == _plan.grad_input(1, 1, 3, kg, win, 4, 2, False, False, False)
    assert _plan.grad_input(1, 1, 16, 16 * 49, win, 4, 2, False, False, True) == \
        _plan.grad_input(1, 1, 16, 16 * 49, win, 4, 2, False, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_weight_paths(rng, monkeypatch, restore_threads, conv_isa, dtype):
    """NHWC weight gradients by the thin kernel (forced, both dtypes): blocks
    of output channels each summing every image and tile (one block a thread
    where the planner allows it), per-thread sums, groups, 1x1 read in place;
    against the reference. Each weight's sum runs over the positions in
    order, whatever the tiles: blocks give the same bits on 1 and 3 threads."""
    from conftest import split_small_work
    from fastim2col import _plan
    calls = _log_kernel_calls(monkeypatch, "gemm_grad_weight")
    monkeypatch.setattr(_plan, "use_direct_weight", lambda *a: False)
    monkeypatch.setattr(_plan, "use_thin_weight", lambda tile, itemsize, isa_level: isa_level >= 0)
    monkeypatch.setattr(_plan, "grad_weight_images", lambda *a: None)
    split_small_work(monkeypatch)
    plans = set()
    # (batch, channels, outputs, size, kernel, stride, padding, groups)
    for n, c, o, size, k, s, p, groups in [(1, 5, 13, 11, 3, 1, 1, 1), (3, 8, 6, 9, 3, 2, 1, 1),
                                           (2, 6, 10, 8, 3, 1, 0, 2), (2, 7, 9, 10, 1, 1, 0, 1),
                                           (1, 4, 40, 30, 2, 1, 0, 1), (8, 3, 5, 12, 3, 1, 1, 1)]:
        x = rand(rng, (n, c, size, size), dtype)
        w_shape = (o, c // groups, k, k)
        y_shape = R.conv2d(np.zeros(x.shape), np.zeros(w_shape), stride=s, padding=p,
                           groups=groups).shape
        g = rand(rng, y_shape, dtype)
        expected = R.conv2d_weight_grad(as64(x), w_shape, as64(g), s, p, groups=groups)
        got = {}
        for threads in _thread_counts(calls):
            got[threads] = conv2d_weight(R.to_nhwc(x), weight_to(np.zeros(w_shape), "NHWC").shape,
                                         R.to_nhwc(g), s, p, groups=groups, layout="NHWC")
            assert calls[-1].kwargs["thin"] is True
            sums = calls[-1].kwargs["per_thread_sums"]
            plans.add(sums)
            assert_close(got[threads], weight_to(expected, "NHWC"), dtype)
        if not sums:
            assert np.array_equal(got[1], got[3])
    assert plans == {False, True}   # blocks and per-thread sums


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_gradient_transposed_plan(rng, kernel_threads, monkeypatch, dtype):
    """NCHW input gradients whose GEMMs run transposed (float64, rows of a
    unit at least twice its positions) and those that do not, through every
    kernel path that has the choice (unrolled tiles, whole images a unit,
    1x1 with nothing to fold, and conv_transpose2d's bias on each), checked
    against the reference; float32 transposed too, forced. BLAS GEMMs
    only: the thin kernel's tiles are always transposed (test_thin_gemm_paths)."""
    from fastim2col import _plan
    calls = _log_kernel_calls(monkeypatch, "gemm_grad_input")
    monkeypatch.setattr(_plan, "use_thin_gemm", lambda *a: False)
    monkeypatch.setattr(_plan, "use_thin_positions", lambda *a: False)
    item = np.dtype(dtype).itemsize
    rule = _plan.grad_input_transposed
    # (batch, channels, outputs, size, kernel, stride, padding): stride 2 keeps
    # 3x3 layers off the direct kernels; batch 4 of 3x3 at 4 px runs whole
    # images a unit; the last has positions enough not to transpose.
    cases = [(1, 24, 8, 9, 3, 2, 1), (4, 128, 40, 8, 3, 2, 1), (2, 40, 16, 4, 1, 1, 0),
             (1, 4, 8, 24, 1, 1, 0)]
    for force in (None, True):
        if force:
            monkeypatch.setattr(_plan, "grad_input_transposed", lambda *a: True)
        chosen = []
        for n, c, o, size, k, s, p in cases:
            x_shape, w_shape = (n, c, size, size), (o, c, k, k)
            w = rng.standard_normal(w_shape).astype(dtype)
            y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=s, padding=p).shape
            g = rng.standard_normal(y_shape).astype(dtype)
            calls.clear()
            got = conv2d_input(x_shape, w, g, s, p)
            assert_close(got, R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p), dtype)
            kwargs = calls[-1].kwargs
            (tile, block), per_tile, transposed = (kwargs["split"], kwargs["images_per_tile"],
                                                   kwargs["transposed"])
            assert transposed == (force or (item == 8 and 2 * tile <= block * k * k))
            chosen.append(transposed)
            b = rng.standard_normal(c).astype(dtype)   # the adjoint, with a bias
            calls.clear()
            got = F.conv_transpose2d(g, w, b, s, p, output_padding=(size + 2 * p - k) % s)
            assert_close(got, R.conv_transpose2d(as64(g), as64(w), as64(b), s, p,
                                                 output_padding=(size + 2 * p - k) % s), dtype)
            assert calls[-1].kwargs["transposed"] == transposed
            if force is None and (n, size) == (4, 8):
                assert per_tile > 1   # the whole-images kernel ran
        if not force:   # the rule took both sides in float64 (the last case: not)
            assert (any(chosen) and not chosen[-1]) if item == 8 else not any(chosen)
    assert rule(10, 20, 8) and not rule(11, 20, 8) and not rule(10, 20, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_images", [1, 3])
@pytest.mark.parametrize("c_out", [12, 72])
def test_weight_gradient_direct_sums(rng, kernel_threads, monkeypatch, dtype, n_images, c_out):
    """The 1x1 weight gradient in tiles of images into per-thread sums, GEMMs
    in both orientations (float64 with more outputs than inputs over whole
    images transposed, float32 with more than TRANSPOSED_GEMM_OUTPUTS not),
    against the reference."""
    from fastim2col import _plan, grad
    seen = []
    plan = _plan.grad_weight
    monkeypatch.setattr(_plan, "grad_weight", lambda *a: seen.append(plan(*a)) or seen[-1])
    monkeypatch.setattr(_plan, "TRANSPOSED_GEMM_OUTPUTS", 8)
    x = rng.standard_normal((n_images, 8, 20, 20)).astype(dtype)
    g = rng.standard_normal((n_images, c_out, 20, 20)).astype(dtype)
    got = grad.conv2d_weight(x, (c_out, 8, 1, 1), g)
    assert_close(got, R.conv2d_weight_grad(as64(x), (c_out, 8, 1, 1), as64(g)), dtype)
    tile, _, sums = seen[-1]
    assert sums == (kernel_threads > 1)
    if kernel_threads > 1 and n_images == 1:
        assert tile < 400   # the one image cut into a tile per thread
    if kernel_threads == 3 and n_images == 3:
        assert tile == 400  # a whole image a unit
    assert _plan.transposed_sums(c_out, 8, np.dtype(dtype).itemsize, tile == 400) == \
        (dtype == np.float64 and c_out > 8 and tile == 400)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_weight_gradient_ungrouped_plan(rng, kernel_threads, monkeypatch, dtype):
    """Ungrouped layers over 14x14 or more positions with few outputs get
    the direct weight gradient: with 16 input channels or more, up to 64
    outputs in float64, 32 in float32; with fewer input channels, up to 64
    in both; over 28x28 or more positions, up to 128 (1x1 kernels never);
    more outputs or fewer positions, the GEMM path. Each checked against
    the reference."""
    from fastim2col import _plan, _direct, grad
    item = np.dtype(dtype).itemsize
    used = []
    real = _direct.direct_weight
    monkeypatch.setattr(_direct, "direct_weight",
                        lambda *a, **k: used.append(True) or real(*a, **k))
    outputs = 64 if dtype == np.float64 else 32
    few_outputs = _plan.DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS
    need = _plan.DIRECT_WEIGHT_MIN_CHANNELS
    wide = _plan.DIRECT_WEIGHT_WIDE_OUTPUTS
    # (input channels, size, outputs, kernel, direct?)
    for c, size, c_out, k, expect in [
            (need, 14, outputs, 3, True), (need, 14, outputs + 8, 3, False),
            (need - 1, 14, few_outputs, 3, True), (need - 1, 14, few_outputs + 8, 3, False),
            (3, 14, 16, 3, True), (3, 14, 16, 1, False), (need, 13, 16, 3, False),
            (3, 13, 16, 3, False), (need + 8, 20, 16, 3, True),
            (need, 28, wide, 3, True), (need, 27, outputs + 8, 3, False),
            (need, 28, wide + 8, 3, False), (need - 1, 28, wide, 3, True),
            (need, 28, wide, 1, False)]:
        used.clear()
        x = rng.standard_normal((2, c, size, size)).astype(dtype)
        g = rng.standard_normal((2, c_out, size, size)).astype(dtype)
        got = grad.conv2d_weight(x, (c_out, c, k, k), g, padding=k // 2)
        assert_close(got, R.conv2d_weight_grad(as64(x), (c_out, c, k, k), as64(g),
                                               padding=k // 2), dtype)
        assert bool(used) == expect, (c, size, c_out, k)
        win = F._args.window((size, size), k, 1, k // 2, 1, allow_strings=False)
        assert _plan.use_direct_weight(1, c, c_out, win, item) == expect


@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
def test_direct_weight_split_plan(n_threads):
    """The direct weight gradient's units: two per thread where the shape
    has them, input channels in chunks of >= DIRECT_WEIGHT_MIN_CHUNK before
    output channels are blocked, blocks of >= DIRECT_WEIGHT_MIN_BLOCK."""
    from fastim2col import _plan
    for groups, cg, og in [(1, 64, 64), (1, 256, 32), (1, 16, 16), (1, 3, 8), (32, 4, 4),
                           (144, 1, 1), (2, 32, 64)]:
        win = F._args.window((56, 56), 3, 1, 1, 1, allow_strings=False)
        band, chunk, block = _plan.direct_weight_split(groups, cg, og, win, 8, n_threads, 8)
        n_chunks, n_blocks = -(-cg // chunk), -(-og // block)
        units = groups * n_chunks * n_blocks
        assert units >= min(2 * n_threads, groups * cg * n_blocks)
        widest = max(-(-cg // _plan.DIRECT_WEIGHT_CHANNELS), cg // _plan.DIRECT_WEIGHT_MIN_CHUNK)
        if n_blocks > 1:   # only once chunks of the minimum width are too few
            assert block >= min(og, _plan.DIRECT_WEIGHT_MIN_BLOCK)
            assert groups * widest < 2 * n_threads
        if groups == 1 and cg >= 2 * n_threads * _plan.DIRECT_WEIGHT_MIN_CHUNK:
            assert n_blocks == 1 and chunk >= _plan.DIRECT_WEIGHT_MIN_CHUNK
        assert band >= 1


def test_direct_weight_gradient_blocks_same_bits(rng, monkeypatch, restore_threads):
    """Split by input x output channels (16 threads on 64 channels), the
    direct weight gradient gives the reference's values and the same bits as
    one thread."""
    from fastim2col import _plan, grad
    monkeypatch.setattr(_plan, "use_direct_weight", lambda *args: True)
    monkeypatch.setattr(_plan, "MIN_FLOPS_PER_THREAD", 1)
    splits = []
    real = _plan.direct_weight_split
    monkeypatch.setattr(_plan, "direct_weight_split",
                        lambda *a: splits.append(real(*a)) or splits[-1])
    x = rng.standard_normal((2, 64, 20, 20))
    g = rng.standard_normal((2, 64, 20, 20))
    got = {}
    for n_threads in (1, 16):
        F.set_num_threads(n_threads)
        got[n_threads] = grad.conv2d_weight(x, (64, 64, 3, 3), g, padding=1)
    _, chunk, block = splits[-1]
    assert block < 64 and chunk >= _plan.DIRECT_WEIGHT_MIN_CHUNK
    assert_close(got[16], R.conv2d_weight_grad(x, (64, 64, 3, 3), g, padding=1), np.float64)
    assert np.array_equal(got[1], got[16])


@pytest.mark.parametrize("thin", [False, True], ids=["blas", "thin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 1, 1), (3, 2, 1), (2, 1, 2), (1, 1, 1),
                                                     (1, 1, 2)])
def test_nhwc_input_gradient_split_for_threads(rng, monkeypatch, restore_threads, dtype, kernel,
                                              stride, groups, thin):
    """NHWC input gradients of one image on 3 threads: blocks of input
    channels (one GEMM per tap, each a slice of the tap's weight columns;
    uneven blocks) or, 1x1, tiles of positions; conv2d_input and
    conv_transpose2d with its bias, against the reference; the GEMMs BLAS's
    or the thin kernel's."""
    from conftest import split_small_work
    from fastim2col import _plan
    split_small_work(monkeypatch)
    monkeypatch.setattr(_plan, "NHWC_MIN_BLOCK", 3)
    monkeypatch.setattr(_plan, "use_direct", lambda *a: False)
    monkeypatch.setattr(_plan, "use_thin_gemm", lambda *a: thin)
    splits = []
    real = _plan.grad_input
    monkeypatch.setattr(_plan, "grad_input", lambda *a: splits.append(real(*a)) or splits[-1])
    F.set_num_threads(3)
    c, c_out, size = 10 * groups, 7 * groups, 13
    pad = 0 if kernel == 1 else 1    # 1x1 unpadded: no fold, the GEMM writes the result
    x_shape = (1, c, size, size - 2)
    w = rand(rng, (c_out, c // groups, kernel, kernel), dtype)
    y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w.shape), stride=stride, padding=pad,
                       groups=groups).shape
    g = rand(rng, y_shape, dtype)
    got = conv2d_input((1, size, size - 2, c), R.weight_to_nhwc(w), R.to_nhwc(g), stride, pad,
                       groups=groups, layout="NHWC")
    expected = R.conv2d_input_grad(x_shape, as64(w), as64(g), stride, pad, groups=groups)
    assert_close(got, R.to_nhwc(expected), dtype)
    tile, block = splits[-1]
    if kernel == 1 and stride == 1:
        assert tile < size * (size - 2) or block < c // groups   # split for the threads
    else:
        assert block < c // groups
    # conv_transpose2d: the input gradient of a conv2d with c_out -> c, plus a bias
    wt = rand(rng, (c, c_out // groups, kernel, kernel), dtype)
    xt = rand(rng, y_shape[:1] + (c,) + y_shape[2:], dtype)
    bias = rand(rng, (c_out,), dtype)
    got = F.conv_transpose2d(R.to_nhwc(xt), R.weight_to_nhwc(wt), bias, stride, pad,
                             groups=groups, layout="NHWC")
    expected = R.conv_transpose2d(as64(xt), as64(wt), as64(bias), stride, pad, groups=groups)
    assert_close(got, R.to_nhwc(expected), dtype)


@pytest.mark.parametrize("extra, direct", [(0, True), (8, False)])
def test_nhwc_direct_input_gradient_channels(rng, monkeypatch, extra, direct):
    """NHWC stride-1 input gradients run in the direct kernels with at most
    NHWC_DIRECT_INPUT_CHANNELS channels of grad_output, else GEMM + fold;
    both against the reference."""
    from fastim2col import _direct, _plan
    channels = _plan.NHWC_DIRECT_INPUT_CHANNELS + extra
    c = _plan.FEW_MAX_CHANNELS + 1   # (fewer go element by element: test_few_channel_*)
    used = []
    real = _direct.direct_forward
    monkeypatch.setattr(_direct, "direct_forward", lambda *a, **k: used.append(1) or real(*a, **k))
    x_shape, w = (1, c, 20, 20), rand(rng, (channels, c, 3, 3))
    g = rand(rng, (1, channels, 20, 20))
    got = conv2d_input((1, 20, 20, c), R.weight_to_nhwc(w), R.to_nhwc(g), padding=1,
                       layout="NHWC")
    assert_close(got, R.to_nhwc(R.conv2d_input_grad(x_shape, w, g, padding=1)), np.float64)
    assert bool(used) == direct


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 3])
def test_nhwc_direct_weight_gradient(rng, monkeypatch, restore_threads, dtype, threads):
    """NHWC weight gradients in the direct kernels (input and grad_output
    read as strided NCHW views, the result through an NCHW-ordered copy):
    the planner's NHWC rule (ungrouped; with stride 1 at most
    NHWC_DIRECT_WEIGHT_OUTPUTS outputs and, in float32,
    NHWC_DIRECT_WEIGHT_F32_CHANNELS input channels), each call against the
    reference,
    and a non-finite input sent back to the GEMM path."""
    from conftest import split_small_work
    from fastim2col import _direct, _plan
    split_small_work(monkeypatch)
    F.set_num_threads(threads)
    used = []
    real = _direct.direct_weight
    monkeypatch.setattr(_direct, "direct_weight",
                        lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    limit = _plan.NHWC_DIRECT_WEIGHT_OUTPUTS
    channels = _plan.NHWC_DIRECT_WEIGHT_F32_CHANNELS
    # (x NCHW shape, weight shape, stride, padding, groups, direct?)
    for x_shape, w_shape, stride, padding, groups, direct in [
            ((2, 3, 33, 30), (limit + 8, 3, 7, 7), 2, 3, 1, True),
            ((1, 20, 16, 17), (limit, 20, 3, 3), 1, 1, 1, True),
            ((1, 20, 16, 17), (limit + 8, 20, 3, 3), 1, 1, 1, False),
            ((1, channels + 8, 16, 17), (limit, channels + 8, 3, 3), 1, 1, 1,
             dtype == np.float64),
            ((1, channels, 16, 17), (limit, channels, 3, 3), 1, 1, 1, True),
            ((1, 8, 16, 17), (16, 4, 3, 3), 1, 1, 2, False)]:
        used.clear()
        x = rand(rng, x_shape, dtype)
        y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=stride,
                           padding=padding, groups=groups).shape
        g = rand(rng, y_shape, dtype)
        x_nhwc = R.to_nhwc(x)      # a strided view
        got = conv2d_weight(x_nhwc, R.weight_to_nhwc(np.zeros(w_shape)).shape, R.to_nhwc(g),
                            stride, padding, groups=groups, layout="NHWC")
        expected = R.conv2d_weight_grad(as64(x), w_shape, as64(g), stride, padding,
                                        groups=groups)
        assert_close(np.ascontiguousarray(np.moveaxis(got, 3, 1)), expected, dtype)
        assert used == ([True] if direct else []), (x_shape, w_shape, stride)
        assert _plan.use_direct_weight(groups, x_shape[1] // groups, w_shape[0] // groups,
                                       F._args.window(x_shape[2:], w_shape[2:], stride, padding,
                                                      1, allow_strings=False),
                                       np.dtype(dtype).itemsize, True) == direct
    used.clear()      # an infinity in x: the direct kernels decline, GEMM path
    x_shape, w_shape = (2, 3, 33, 30), (limit + 8, 3, 7, 7)
    x = rand(rng, x_shape, dtype)
    x[1, 2, 10, 11] = np.inf
    g = rand(rng, R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=2, padding=3).shape,
             dtype)
    got = conv2d_weight(R.to_nhwc(x), R.weight_to_nhwc(np.zeros(w_shape)).shape, R.to_nhwc(g),
                        2, 3, layout="NHWC")
    expected = R.conv2d_weight_grad(as64(x), w_shape, as64(g), 2, 3)
    assert used == [False]
    assert np.array_equal(np.isfinite(np.moveaxis(got, 3, 1)), np.isfinite(expected))


# (x shape, weight shape, stride, padding, dilation): input gradients whose
# fold adds each tap's rows as one run of the image (src/_unroll.pxd
# fold_run: unit column stride, image rows out_w apart)
FOLD_RUNS = [((2, 3, 5, 6), (4, 3, 3, 3), 1, 1, 1),
             ((1, 2, 6, 7), (3, 2, 3, 5), 1, (1, 2), 1),
             ((1, 2, 7, 7), (2, 2, 3, 3), 1, 2, 2),
             ((1, 2, 5, 4), (3, 2, 1, 1), (2, 1), (0, 2), 1),    # image rows 2 output rows apart
             ((1, 3, 4, 5), (2, 3, 3, 3), 1, (2, 1), 1),         # taps with rows in the padding
             ((1, 2, 1, 6), (2, 2, 3, 3), 1, (3, 1), (3, 1)),    # taps with no valid row
             ((2, 2, 3, 2), (2, 2, 1, 3), 1, (0, 3), (1, 3))]    # taps with no valid column


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("image_sets", [False, True])
def test_input_gradient_fold_runs(rng, monkeypatch, restore_threads, dtype, image_sets):
    """NCHW input gradients through GEMM + fold where each tap's rows fold as
    one run: against the reference on 1-3 threads, in tiles of rows and in
    image sets; NaN in grad_output reaches only the elements the reference
    has NaN at (the tile's padding columns, set to -0.0 before the run, would
    carry it elsewhere); and image rows no tap reaches, which the runs cross,
    keep conv_transpose2d's bias of -0.0 (adding -0.0 keeps every value, -0.0
    included)."""
    from conftest import split_small_work
    from fastim2col import _plan
    split_small_work(monkeypatch)
    monkeypatch.setattr(_plan, "use_direct", lambda *a: False)
    monkeypatch.setattr(_plan, "use_few_channels", lambda *a: False)
    monkeypatch.setattr(_plan, "use_thin_gemm", lambda *a: False)
    monkeypatch.setattr(_plan, "use_thin_positions", lambda *a: False)
    monkeypatch.setattr(_plan, "grad_input_transposed", lambda *a: False)
    if image_sets:
        monkeypatch.setattr(_plan, "grad_input_images", lambda n, g, cg, *a: (n, cg))
    else:
        monkeypatch.setattr(_plan, "grad_input_images", lambda *a: None)
    for x_shape, w_shape, s, p, d in FOLD_RUNS:
        w = rand(rng, w_shape, dtype)
        y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=s, padding=p,
                           dilation=d).shape
        g = rand(rng, y_shape, dtype)
        g[0, 0, y_shape[2] // 2, 0] = np.nan
        expected = R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p, d)
        for n_threads in (1, 2, 3):
            F.set_num_threads(n_threads)
            got = conv2d_input(x_shape, w, g, s, p, d)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            assert_close(np.nan_to_num(got), np.nan_to_num(expected), dtype)
        if s == (2, 1):   # odd image rows: no tap reaches them, only the run's -0.0
            got = F.conv_transpose2d(g, w, np.full(x_shape[1], -0.0, dtype), s, p,
                                     dilation=d)
            assert got.shape[2:] == x_shape[2:]
            assert np.signbit(got[:, :, 1::2]).all() and not got[:, :, 1::2].any()
