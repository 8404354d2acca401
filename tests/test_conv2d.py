"""conv2d against the reference over the parameter space, both layouts and
dtypes, any strides, out=, dtype promotion, NaN/inf and empty sizes."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastim2col as F
import reference as R
from conftest import (DTYPES, LAYOUTS, PLAN_CASES, STRIDE_KINDS, as64, assert_close,
                      conv_cases, conv_inputs, conv_ref_kwargs, expected_layout, img_from, img_to,
                      rand, run_isolated, weight_to)


def check_conv2d(case, rng, out=False):
    x, w, b, lib = conv_inputs(case, rng)
    kwargs = conv_ref_kwargs(case)
    expected = expected_layout(R.conv2d(as64(x), as64(w), None if b is None else as64(b),
                                        **kwargs), case)
    if out:
        buf = np.full(expected.shape, np.nan, case["dtype"])
        got = F.conv2d(lib["x"], lib["weight"], lib["bias"], **kwargs, layout=case["layout"],
                       out=buf)
        assert got is buf
    else:
        got = F.conv2d(lib["x"], lib["weight"], lib["bias"], **kwargs, layout=case["layout"])
    assert_close(got, expected, case["dtype"])


@given(conv_cases(), st.integers(0, 2**32 - 1), st.booleans())
def test_matches_reference(kernel_threads, conv_path, case, seed, out):
    check_conv2d(case, np.random.default_rng(seed), out=out)


def plan_case(x_shape, w_shape, stride, padding, dilation, groups, layout, dtype,
              bias=True, unbatched=False, stride_kind="C"):
    return dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=bias, layout=layout, dtype=dtype,
                unbatched=unbatched, stride_kind=stride_kind)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", PLAN_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_plan_cases(kernel_threads, conv_path, rng, x_shape, w_shape, stride, padding, dilation, groups,
                    layout, dtype):
    """Shapes large enough for several tiles / blocks / the direct path."""
    check_conv2d(plan_case(x_shape, w_shape, stride, padding, dilation, groups, layout, dtype),
                 rng)


@pytest.mark.parametrize("stride_kind", STRIDE_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", [(1, 1), (3, 2)])
@pytest.mark.parametrize("w_channels, groups", [((6, 2), 2), ((8, 1), 4)],
                         ids=["grouped", "depthwise"])
def test_any_strides(conv_path, rng, stride_kind, layout, kernel, w_channels, groups):
    """Fortran order, step slices, negative strides, read-only, channels-last
    memory, unaligned data, stride-0 batch: all give the same result. The
    1x1 kernel exercises the direct (no unroll) path's stride checks."""
    case = plan_case((3, 4, 9, 8), w_channels + kernel, (1, 2), (0, 1), 1, groups, layout,
                     np.float64, stride_kind=stride_kind)
    check_conv2d(case, rng)
    case.update(unbatched=True, x_shape=(1, 4, 9, 8))
    check_conv2d(case, rng)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [slice(1, 5), slice(0, 8, 2), slice(6, 2, -1)],
                         ids=["slice", "step", "reversed"])
@pytest.mark.parametrize("groups", [1, 2])
def test_direct_path_with_channel_views(rng, layout, channels, groups):
    """1x1 convolution and its weight gradient on a channel view of a bigger
    array (the direct path may read it in place, with a larger leading
    dimension, or must not)."""
    big = rand(rng, (2, 8, 6, 5))
    w = rand(rng, (6, 4 // groups, 1, 1))
    g = rand(rng, (2, 6, 6, 5))
    x = big[:, channels]
    x_l = np.moveaxis(big, 1, -1)[..., channels] if layout == "NHWC" else x
    got = F.conv2d(x_l, weight_to(w, layout), groups=groups, layout=layout)
    assert_close(got, img_to(R.conv2d(x, w, groups=groups), layout), np.float64)
    gw = F.grad.conv2d_weight(x_l, weight_to(w, layout).shape, img_to(g, layout),
                              groups=groups, layout=layout)
    assert_close(gw, weight_to(R.conv2d_weight_grad(x, w.shape, g, groups=groups), layout),
                 np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel, dilation", [((2, 2), 1), ((4, 3), 1), ((2, 3), (2, 3)),
                                              ((1, 4), 1)])
def test_same_padding_is_asymmetric(rng, layout, kernel, dilation):
    """'same' keeps H x W; an odd total padding puts the extra row / column at
    the bottom / right (as torch does). Checked against explicit np.pad."""
    x = rand(rng, (2, 3, 7, 8))
    w = rand(rng, (4, 3) + kernel)
    d = (dilation, dilation) if np.isscalar(dilation) else dilation
    th, tw = d[0] * (kernel[0] - 1), d[1] * (kernel[1] - 1)
    padded = np.pad(x, ((0, 0), (0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2)))
    expected = img_to(R.conv2d(padded, w, dilation=dilation), layout)
    got = F.conv2d(img_to(x, layout), weight_to(w, layout), padding="same", dilation=dilation,
                   layout=layout)
    assert got.shape == img_to(np.zeros((2, 4, 7, 8)), layout).shape
    assert_close(got, expected, np.float64)
    valid = F.conv2d(img_to(x, layout), weight_to(w, layout), padding="valid",
                     dilation=dilation, layout=layout)
    assert_close(valid, img_to(R.conv2d(x, w, dilation=dilation), layout), np.float64)


def test_padding_forms_agree(rng):
    x, w = rand(rng, (1, 2, 6, 5)), rand(rng, (3, 2, 3, 2))
    expected = R.conv2d(x, w, stride=(2, 1), padding=(1, 2))
    for padding in [(1, 2), [1, 2], np.array([1, 2])]:
        assert_close(F.conv2d(x, w, stride=[2, 1], padding=padding), expected, np.float64)
    assert_close(F.conv2d(x, w, padding=np.int64(1)), R.conv2d(x, w, padding=1), np.float64)


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("x_dtype, w_dtype, b_dtype, result", [
    (np.float32, np.float32, np.float32, np.float32),
    (np.float32, np.float32, None, np.float32),
    (np.float64, np.float64, np.float64, np.float64),
    (np.float32, np.float64, None, np.float64),
    (np.float64, np.float32, np.float32, np.float64),
    (np.float32, np.float32, np.float64, np.float64),
    (np.float16, np.float16, None, np.float32),
    (np.float16, np.float32, np.float16, np.float32),
    (np.int64, np.int64, np.int64, np.float64),
    (np.int32, np.int16, None, np.float64),
    (np.uint8, np.uint8, None, np.float64),
    (np.bool_, np.bool_, None, np.float64),
    (np.int64, np.float32, None, np.float64),
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_promotion(rng, x_dtype, w_dtype, b_dtype, result, layout):
    def values(shape, dtype):
        if dtype is np.bool_:
            return rng.integers(0, 2, shape).astype(bool)
        if np.issubdtype(dtype, np.integer):
            return rng.integers(0, 5, shape).astype(dtype)
        return rand(rng, shape, dtype)
    x, w = values((2, 3, 6, 5), x_dtype), values((4, 3, 2, 3), w_dtype)
    b = None if b_dtype is None else values((4,), b_dtype)
    expected = img_to(R.conv2d(as64(x), as64(w), None if b is None else as64(b), padding=1),
                      layout)
    got = F.conv2d(img_to(x, layout), weight_to(w, layout), b, padding=1, layout=layout)
    assert_close(got, expected, result)


def test_list_inputs():
    x = [[[1, 2, 3], [4, 5, 6]]]          # (C=1, H=2, W=3) unbatched
    w = [[[[1, -1]]]]                     # (1, 1, 1, 2)
    got = F.conv2d(x, w, bias=[0.5])
    assert_close(got, R.conv2d(np.array(x, float)[None], np.array(w, float),
                               np.array([0.5]))[0], np.float64)


# --------------------------------------------------------------------------- NaN / inf

def window_mask(mask, w_shape, **kwargs):
    """Outputs whose windows (of their own group) contain a True of mask."""
    return R.conv2d(mask.astype(float), np.ones(w_shape), **kwargs) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w_shape, groups", [((6, 2, 3, 2), 2), ((8, 1, 3, 2), 4)],
                         ids=["grouped", "depthwise"])
def test_nonfinite_propagates(conv_path, rng, layout, value, dtype, w_shape, groups):
    kwargs = dict(stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=groups)
    x = rand(rng, (2, 4, 30, 31), dtype)
    w = np.abs(rand(rng, w_shape, dtype)) + 0.5   # positive: no inf - inf
    x[1, 3, 13, 17] = value
    x[0, 0, 0, 0] = value
    mask = window_mask(~np.isfinite(x), w.shape, **kwargs)
    assert 0 < mask.sum() < mask.size / 10
    got = F.conv2d(img_to(x, layout), weight_to(w, layout), **kwargs, layout=layout)
    assert_close(got, img_to(R.conv2d(as64(x), as64(w), **kwargs), layout), dtype)
    got = img_from(got, layout)
    np.testing.assert_array_equal(~np.isfinite(got), mask)
    if not np.isnan(value):
        np.testing.assert_array_equal(got[mask], value)


# --------------------------------------------------------------------------- empty sizes

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((0, 3, 5, 5), (4, 3, 3, 3), 1),     # batch 0
    ((2, 0, 5, 5), (4, 0, 3, 3), 1),     # no input channels
    ((2, 0, 5, 5), (4, 0, 3, 3), 2),     # no input channels, grouped
    ((2, 3, 5, 5), (0, 3, 3, 3), 1),     # no output channels
    ((0, 0, 5, 5), (0, 0, 3, 3), 1),
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_empty(rng, layout, dtype, x_shape, w_shape, groups, with_bias):
    x = np.zeros(x_shape, dtype)
    w = np.zeros(w_shape, dtype)
    b = rand(rng, (w_shape[0],), dtype) if with_bias else None
    expected = np.zeros((x_shape[0], w_shape[0], 5, 5))   # x is zero: only the bias
    if b is not None:
        expected += as64(b)[:, None, None]
    expected = img_to(expected, layout)
    got = F.conv2d(img_to(x, layout), weight_to(w, layout), b, padding=1, groups=groups,
                   layout=layout)
    assert_close(got, expected, dtype)


# --------------------------------------------------------------------------- out=

@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_unbatched(rng, layout):
    x, w, b = rand(rng, (3, 6, 5)), rand(rng, (2, 3, 2, 2)), rand(rng, (2,))
    expected = img_to(R.conv2d(x[None], w, b, padding=(0, 1)), layout)[0]
    out = np.full(expected.shape, np.nan)
    got = F.conv2d(img_to(x, layout), weight_to(w, layout), b, padding=(0, 1), layout=layout,
                   out=out)
    assert got is out
    assert_close(out, expected, np.float64)


# --------------------------------------------------------------------------- over-padding

OVER_PADDED_SWEEP = """
import contextlib
import numpy as np, fastim2col as F, fastim2col._plan as P, reference as R
split = contextlib.ExitStack()
split.enter_context(P.tuned(MIN_FLOPS_PER_THREAD=1, MIN_BYTES_PER_THREAD=1))   # even small calls
rng = np.random.default_rng(0)
# Tiles of output positions end at many columns of a row, some inside the
# left padding, and for padding > kernel reach some kernel columns never
# reach the image.
cases = [((1, 3, 20, 6), (2, 3, 1, 1), 4, 3)]
cases += [((1, c, 24, w), (2, c, k, k), p, t) for c in (3, 64) for k in (1, 3)
          for p in (k + 1, k + 3) for w in range(2, 21, 2) for t in (1, 2, 3)]
bad = []
for x_shape, w_shape, p, t in cases:
    F.set_num_threads(t)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    for layout in ("NCHW", "NHWC"):
        xl = np.moveaxis(x, 1, -1) if layout == "NHWC" else x
        wl = np.moveaxis(w, 1, -1) if layout == "NHWC" else w
        for _ in range(3):
            y = F.conv2d(xl, wl, padding=p, layout=layout)
        y = np.moveaxis(y, -1, 1) if layout == "NHWC" else y
        if not np.allclose(y, R.conv2d(x, w, padding=p), rtol=1e-10, atol=1e-10):
            bad.append((x_shape, w_shape, p, t, layout))
assert not bad, bad
print("checked", len(cases))
"""


def test_over_padded_memory_safety():
    """Padding wider than the kernel's reach, with tiles that end inside a
    row's left padding: no write outside the tile buffers (a fresh process
    with glibc heap checks) and correct values."""
    assert "checked" in run_isolated(OVER_PADDED_SWEEP)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape", [(2, 3, 0, 4), (2, 3, 4, 0)])
@pytest.mark.parametrize("w_shape, groups", [((2, 3, 1, 2), 1), ((6, 1, 1, 2), 3)])
def test_zero_size_image_with_padding(rng, layout, x_shape, w_shape, groups):
    """H or W of 0, padded enough for windows: outputs see only padding."""
    b = rand(rng, (w_shape[0],))
    expected = img_to(R.conv2d(np.zeros(x_shape), np.ones(w_shape), b, padding=(1, 2),
                               groups=groups), layout)
    got = F.conv2d(img_to(np.zeros(x_shape), layout), weight_to(np.ones(w_shape), layout), b,
                   padding=(1, 2), groups=groups, layout=layout)
    assert_close(got, expected, np.float64)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_1x1_one_image_split_for_threads(rng, small_work, recorded, restore_threads, layout,
                                        dtype):
    """A 1x1 conv2d of one image on 3 threads: one tile of positions a
    thread (NHWC; NCHW float32), else blocks of output channels (NCHW
    float64); with a bias, against the reference."""
    F.set_num_threads(3)
    x, w = rand(rng, (1, 8, 20, 20), dtype), rand(rng, (64, 8, 1, 1), dtype)
    b = rand(rng, (64,), dtype)
    expected = R.conv2d(as64(x), as64(w), as64(b))
    if layout == "NHWC":
        got = np.ascontiguousarray(
            R.to_nchw(F.conv2d(np.ascontiguousarray(R.to_nhwc(x)), R.weight_to_nhwc(w), b,
                                layout="NHWC")))
    else:
        got = F.conv2d(x, w, b)
    assert_close(got, expected, dtype)
    plan, = recorded
    tile, block = plan.params["split"]
    if layout == "NHWC" or dtype == np.float32:
        assert (tile, block) == (-(-20 * 20 // 3), 64)
    else:
        assert (tile, block) == (20 * 20, 22)
