"""im2col / col2im against the reference, their adjointness, out=, dtypes,
empty sizes and the worked example of the README."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastim2col as F
import reference as R
from conftest import (DTYPES, LAYOUTS, STRIDE_KINDS, arg, as64, assert_close, cols_to, img_to,
                      image_size_for, make_values, rand, recording, restride, run_with_params, windows)


@st.composite
def unroll_cases(draw):
    kernel, stride, padding, dilation = draw(windows(allow_strings=False))
    pads = R.pads_of(padding, kernel, dilation)
    h, w = image_size_for(draw, kernel, dilation, pads)
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return dict(shape=(n, c, h, w), kernel=kernel,
                kwargs=dict(kernel_size=arg(kernel, draw), stride=arg(stride, draw),
                            padding=padding, dilation=arg(dilation, draw)),
                layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
                unbatched=draw(st.booleans()) and n == 1,
                stride_kind=draw(st.sampled_from(STRIDE_KINDS)),
                seed=draw(st.integers(0, 2**32 - 1)))


def ref_kwargs(kwargs):
    return dict(kernel=kwargs["kernel_size"], stride=kwargs["stride"],
                padding=kwargs["padding"], dilation=kwargs["dilation"])


def lib_image(x, case):
    a = img_to(x, case["layout"])
    return restride(a[0] if case["unbatched"] else a, case["stride_kind"])


# --------------------------------------------------------------------------- reference

@given(unroll_cases())
def test_im2col_matches_reference(kernel_threads, case):
    rng = np.random.default_rng(case["seed"])
    x = make_values(rng, case["shape"], case["dtype"], case["stride_kind"])
    expected = R.im2col(as64(x), **ref_kwargs(case["kwargs"]))
    expected = cols_to(expected, case["shape"][1], case["kernel"], case["layout"])
    if case["unbatched"]:
        expected = expected[0]
    got = F.im2col(lib_image(x, case), **case["kwargs"], layout=case["layout"])
    assert_close(got, expected, case["dtype"], tol=0)   # a pure copy: exact


@given(unroll_cases())
def test_col2im_matches_reference(kernel_threads, case):
    rng = np.random.default_rng(case["seed"])
    n, c, h, w = case["shape"]
    kh, kw = case["kernel"]
    L = R.im2col(np.zeros((1, 1, h, w)), **ref_kwargs(case["kwargs"])).shape[-1]
    cols = rand(rng, (n, c * kh * kw, L), case["dtype"])
    expected = R.col2im(as64(cols), (h, w), **ref_kwargs(case["kwargs"]))
    lib_cols = cols_to(cols, c, case["kernel"], case["layout"])
    expected = img_to(expected, case["layout"])
    if case["unbatched"]:
        lib_cols, expected = lib_cols[0], expected[0]
    lib_cols = restride(lib_cols, case["stride_kind"])
    got = F.col2im(lib_cols, (h, w), **case["kwargs"], layout=case["layout"])
    assert_close(got, expected, case["dtype"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_col2im_stride2_kernel_rows(rng, layout):
    """Stride 2 along the width, every kernel width, padding and small width,
    odd and even. NCHW: fold adds taps j, j + 1 together where both are
    valid, j + 1 alone on the left, j alone on the right (src/_unroll.pxd
    fold_nchw). NHWC: a kernel row inside the image is one run of all its
    taps' channels, one at the edges tap by tap (fold_nhwc)."""
    for kw in range(1, 8):
        for pad in range(0, min(kw, 4)):
            for w in range(max(1, kw - 2 * pad), 13):
                wo = (w + 2 * pad - kw) // 2 + 1
                cols = rand(rng, (2, 3 * 2 * kw, 4 * wo), np.float32)
                expected = R.col2im(as64(cols), (3, w), kernel=(2, kw), stride=(1, 2),
                                    padding=(1, pad))
                got = F.col2im(cols_to(cols, 3, (2, kw), layout), (3, w), (2, kw),
                               stride=(1, 2), padding=(1, pad), layout=layout)
                assert_close(got, img_to(expected, layout), np.float32)


@given(unroll_cases())
def test_adjoint_identity(kernel_threads, case):
    """<im2col(x), c> == <x, col2im(c)> in float64, both layouts."""
    rng = np.random.default_rng(case["seed"])
    layout = case["layout"]
    x = lib_image(rand(rng, case["shape"]), case)
    cols_x = F.im2col(x, **case["kwargs"], layout=layout)
    c = rand(rng, cols_x.shape)
    img_c = F.col2im(c, (case["shape"][2], case["shape"][3]), **case["kwargs"], layout=layout)
    assert img_c.shape == x.shape
    lhs, rhs = np.vdot(cols_x, c), np.vdot(x, img_c)
    bound = np.vdot(np.abs(cols_x), np.abs(c)) + 1.0
    assert abs(lhs - rhs) <= 1e-12 * bound, (lhs, rhs)


# --------------------------------------------------------------------------- worked example

def test_worked_example():
    """C=3 input of 3x3, one 3x2x2 kernel: the unrolled input is 12 x 4, the
    flattened kernel 1 x 12, their product reshaped to 2x2 is the convolution."""
    x = np.arange(27, dtype=float).reshape(3, 3, 3)
    weight = np.arange(12.0).reshape(1, 3, 2, 2)
    cols = F.im2col(x, 2)
    assert cols.shape == (12, 4)
    # By hand: row (c, i, j), column (oh, ow) holds x[c, oh + i, ow + j].
    hand_cols = np.empty((12, 4))
    hand_conv = np.zeros((2, 2))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                for oh in range(2):
                    for ow in range(2):
                        hand_cols[(c * 2 + i) * 2 + j, oh * 2 + ow] = x[c, oh + i, ow + j]
                        hand_conv[oh, ow] += x[c, oh + i, ow + j] * weight[0, c, i, j]
    np.testing.assert_array_equal(cols, hand_cols)
    np.testing.assert_array_equal(cols[:4], [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7],
                                             [4, 5, 7, 8]])
    product = weight.reshape(1, 12) @ cols
    assert product.shape == (1, 4)
    conv = F.conv2d(x, weight)
    assert conv.shape == (1, 2, 2)
    np.testing.assert_array_equal(product.reshape(2, 2), conv[0])
    np.testing.assert_array_equal(conv[0], hand_conv)
    np.testing.assert_array_equal(conv[0], [[1035.0, 1101.0], [1233.0, 1299.0]])
    # The same in NHWC: (L, kh*kw*C) columns, (i, j, c) order.
    cols_nhwc = F.im2col(np.moveaxis(x, 0, -1), 2, layout="NHWC")
    assert cols_nhwc.shape == (4, 12)
    np.testing.assert_array_equal(
        cols_nhwc, hand_cols.reshape(3, 2, 2, 4).transpose(3, 1, 2, 0).reshape(4, 12))


# --------------------------------------------------------------------------- out=

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_out(rng, layout, dtype, unbatched):
    x = rand(rng, (2, 3, 7, 6), dtype)
    kw = dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    ref_kw = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    cols_ref = cols_to(R.im2col(as64(x), **ref_kw), 3, (3, 2), layout)
    x_l = img_to(x, layout)
    if unbatched:
        x_l, cols_ref = x_l[0], cols_ref[0]
    out = np.full(cols_ref.shape, np.nan, dtype)
    res = F.im2col(x_l, **kw, layout=layout, out=out)
    assert res is out
    assert_close(out, cols_ref, dtype, tol=0)

    cols_nchw = rand(rng, (2,) + R.im2col(x, **ref_kw).shape[1:], dtype)
    cols = cols_to(cols_nchw, 3, (3, 2), layout)
    img_ref = img_to(R.col2im(as64(cols_nchw), (7, 6), **ref_kw), layout)
    if unbatched:
        cols, img_ref = cols[0], img_ref[0]
    out = np.full(img_ref.shape, np.nan, dtype)   # must be overwritten, not added to
    res = F.col2im(cols, (7, 6), **kw, layout=layout, out=out)
    assert res is out
    assert_close(out, img_ref, dtype)


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("in_dtype, result_dtype", [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32),
    (np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64),
    (np.bool_, np.float64),
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes(rng, in_dtype, result_dtype, layout):
    x = (rng.integers(0, 3, (2, 3, 5, 4)) > 0) if in_dtype is np.bool_ else \
        rng.integers(0, 100, (2, 3, 5, 4)).astype(in_dtype)
    cols = F.im2col(img_to(x, layout), (2, 3), padding=1, layout=layout)
    expected = cols_to(R.im2col(as64(x), (2, 3), padding=1), 3, (2, 3), layout)
    assert_close(cols, expected, result_dtype, tol=0)
    back = F.col2im(cols.astype(in_dtype), (5, 4), (2, 3), padding=1, layout=layout)
    expected_back = img_to(R.col2im(as64(R.im2col(as64(x), (2, 3), padding=1)), (5, 4),
                                    (2, 3), padding=1), layout)
    assert_close(back, expected_back, result_dtype)


# --------------------------------------------------------------------------- empty sizes

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5), (0, 0, 4, 4)])
def test_empty(layout, shape):
    x = np.zeros(shape)
    cols = F.im2col(img_to(x, layout), 3, padding=1, layout=layout)
    n, c, h, w = shape
    assert cols.shape == ((n, h * w, 9 * c) if layout == "NHWC" else (n, 9 * c, h * w))
    assert cols.dtype == np.float64
    img = F.col2im(cols, (h, w), 3, padding=1, layout=layout)
    assert img.shape == img_to(x, layout).shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_height_with_padding(layout):
    """An image of height 0 padded to hold a window unrolls to zeros."""
    x = np.zeros((1, 2, 0, 3))
    cols = F.im2col(img_to(x, layout), 3, padding=2, layout=layout)
    expected = cols_to(R.im2col(x, 3, padding=2), 2, (3, 3), layout)
    assert_close(cols, expected, np.float64, tol=0)


# --------------------------------------------------------------------------- NaN / inf

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", [None, 3])
def test_kernel_column_wholly_in_padding(kernel_threads, rng, dtype, tile):
    """A 2x2 input, kernel 2, dilation 6, padding 3: kernel column 0 reads
    only padding, its first valid output column (3) lies past the 2-wide
    output. Whole-row tiles (the default) and tiles ending mid-row (3
    positions) give the reference's columns, and col2im its adjoint."""
    x = rng.standard_normal((2, 3, 2, 2)).astype(dtype)
    kwargs = dict(stride=1, padding=3, dilation=6)
    with recording() as plans:
        cols = run_with_params(F.im2col, x, 2, **kwargs,
                               params={} if tile is None else {"tile": tile})
    assert tile is None or plans[0].params["tile"] == tile
    assert_close(cols, R.im2col(as64(x), 2, **kwargs), dtype)
    back = F.col2im(cols, (2, 2), 2, **kwargs)
    assert_close(back, R.col2im(as64(cols), (2, 2), 2, **kwargs), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_col2im_nonfinite_propagates(rng, layout, value):
    kw = dict(kernel=(3, 2), stride=(1, 2), padding=1, dilation=(2, 1))
    L = R.im2col(np.zeros((1, 1, 9, 8)), **kw).shape[-1]
    cols = rand(rng, (2, 2 * 6, L))
    cols[1, 7, L // 2] = value
    expected = R.col2im(cols, (9, 8), **kw)
    got = F.col2im(cols_to(cols, 2, (3, 2), layout), (9, 8), (3, 2), stride=(1, 2), padding=1,
                   dilation=(2, 1), layout=layout)
    expected = img_to(expected, layout)
    bad = ~np.isfinite(expected)
    assert 0 < bad.sum() < bad.size
    np.testing.assert_array_equal(~np.isfinite(got), bad)
    assert_close(got, expected, np.float64)


# --------------------------------------------------------------------------- over-padding

OVER_PADDED = [(h, w, k, p, s, d) for h in (1, 3, 6) for w in (2, 3, 6) for k in (1, 3)
               for p in (2, 3, 4) for s in (1, 2) for d in (1, 3)
               if min(h + 2, w + 2 * p) >= d * (k - 1) + 1]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_im2col_kernel_columns_in_padding(n_threads, restore_threads, small_work):
    """Padding wider than the kernel's reach: whole kernel columns, or their
    part in a work unit's tile, lie in the padding. Each must be zeros there
    and leave every other element alone."""
    F.set_num_threads(n_threads)
    rng = np.random.default_rng(n_threads)
    failures = []
    for h, w, k, p, s, d in OVER_PADDED:
        for c in (1, 3):
            x = rand(rng, (1, c, h, w))
            expected = R.im2col(x, k, stride=s, padding=(1, p), dilation=d)
            out = np.full(expected.shape, np.nan)
            F.im2col(x, k, stride=s, padding=(1, p), dilation=d, out=out)
            if not np.array_equal(out, expected):
                failures.append(dict(shape=x.shape, kernel_size=k, stride=s, padding=(1, p),
                                     dilation=d))
    assert not failures, f"{len(failures)} wrong, e.g. {failures[:3]}"


def test_im2col_kernel_column_beyond_the_output():
    """Minimal case of the above: x is 1x2, kernel (1, 3) with dilation 3 and
    padding 3: tap j=0 never sees the image, tap j=1 sees x[0] and x[1]."""
    x = np.array([[[[1.0, 2.0]]]])
    for n_threads in (1, 2, 3):
        F.set_num_threads(n_threads)
        try:
            got = F.im2col(x, (1, 3), padding=(0, 3), dilation=(1, 3))
        finally:
            F.set_num_threads(None)
        expected = R.im2col(x, (1, 3), padding=(0, 3), dilation=(1, 3))
        np.testing.assert_array_equal(expected[0], [[0, 0], [1, 2], [0, 0]])
        np.testing.assert_array_equal(got, expected, err_msg=f"{n_threads} threads")


# (shape, kernel, stride, padding, dilation, view): geometries with as many
# outputs as inputs in a row at unit column stride, or input rows out_w apart
ONE_RUN = [((2, 3, 5, 6), 3, 1, 1, 1, False),
           ((1, 2, 6, 7), (3, 5), 1, (1, 2), 1, False),
           ((1, 2, 7, 7), 3, 1, 2, 2, False),
           ((1, 2, 5, 4), 1, (2, 1), (0, 2), 1, False),    # out_w = 8 = 2 rows of 4
           ((1, 3, 4, 5), 3, 1, (2, 1), 1, False),         # taps with rows in the padding
           ((1, 2, 1, 6), 3, 1, (3, 1), (3, 1), False),    # taps with no valid row
           ((2, 2, 4, 5), (1, 3), 1, (0, 2), 1, True)]     # a view: rows w + 2 apart


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows_per_tile", [1, 2, None])
def test_im2col_one_run_per_tap(rng, small_work, restore_threads, dtype, rows_per_tile):
    """Whole-row tiles whose taps copy as one run of x (src/_unroll.pxd
    unroll_run): every element the reference's, the padding zeros written
    over a NaN-filled out=, on 1 to 3 threads, in tiles of 1, 2 and all
    output rows."""
    for shape, k, s, p, d, view in ONE_RUN:
        x = rand(rng, shape, dtype)
        if view:   # rows as far apart as the output's (w + 2 = out_w)
            big = rand(rng, shape[:3] + (shape[3] + 2,), dtype)
            big[..., 1:-1] = x
            x = big[..., 1:-1]
        expected = R.im2col(as64(x), k, stride=s, padding=p, dilation=d)
        out_w = F._args.window(shape[2:], k, s, p, d, allow_strings=False).out_w
        # None: the planner's tiles
        params = {} if rows_per_tile is None else {"tile": rows_per_tile * out_w}
        for n_threads in (1, 2, 3):
            F.set_num_threads(n_threads)
            out = np.full(expected.shape, np.nan, dtype)
            run_with_params(F.im2col, x, k, stride=s, padding=p, dilation=d, out=out,
                            params=params)
            assert_close(out, expected, dtype)
