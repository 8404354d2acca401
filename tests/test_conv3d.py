"""3-d convolution (conv3d, conv_transpose3d, grad.conv3d_input/weight) and 3-d
im2col/col2im, against independent references: zero padding by np.pad,
windows by sliding_window_view, sums by einsum, scatter-add loops for the
adjoints. Layouts NCDHW and NDHWC, both dtypes, strides, dilations, groups
(depthwise too), 'same'/'valid', unbatched inputs, out=, strided views,
the thread counts' determinism."""
import itertools

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import fastim2col
from fastim2col import grad

RNG = np.random.default_rng(4321)
TOL = {np.float32: dict(rtol=3e-5, atol=3e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


def pads(padding, k, d):
    """((front, back), (top, bottom), (left, right)) zero padding of torch's conv3d."""
    if padding == "valid":
        return ((0, 0),) * 3
    if padding == "same":
        return tuple((di * (ki - 1) // 2, di * (ki - 1) - di * (ki - 1) // 2)
                     for ki, di in zip(k, d))
    return tuple((p, p) for p in padding)


def windows(x, k, s, d, padding):
    """(N, C, Do, Ho, Wo, kd, kh, kw) windows of zero-padded x (N, C, D, H, W)."""
    xp = np.pad(x, ((0, 0), (0, 0)) + pads(padding, k, d))
    span = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    win = sliding_window_view(xp, span, axis=(2, 3, 4))
    return win[:, :, ::s[0], ::s[1], ::s[2], ::d[0], ::d[1], ::d[2]]


def ref_conv3d(x, w, bias, s, padding, d, groups):
    x, w = x.astype(np.float64), w.astype(np.float64)
    c_out, cg = w.shape[:2]
    og = c_out // groups
    win = windows(x, w.shape[2:], s, d, padding)
    out = np.concatenate([
        np.einsum("ncdhwxyz,ocxyz->nodhw", win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
        for g in range(groups)], axis=1)
    if bias is not None:
        out += bias[None, :, None, None, None]
    return out


def ref_conv3d_input(x_shape, w, go, s, padding, d, groups):
    """Scatter-add loops: each output position adds its window's weights times
    grad_output into the input positions it read."""
    n, c, depth, height, width = x_shape
    c_out, cg, kd, kh, kw = w.shape
    og = c_out // groups
    (pd, _), (ph, _), (pw, _) = pads(padding, (kd, kh, kw), d)
    gx = np.zeros(x_shape)
    go, w = go.astype(np.float64), w.astype(np.float64)
    for od, oh, ow in itertools.product(*map(range, go.shape[2:])):
        for a, b, e in itertools.product(range(kd), range(kh), range(kw)):
            i, j, k = od * s[0] + a * d[0] - pd, oh * s[1] + b * d[1] - ph, ow * s[2] + e * d[2] - pw
            if 0 <= i < depth and 0 <= j < height and 0 <= k < width:
                for g in range(groups):
                    gx[:, g * cg:(g + 1) * cg, i, j, k] += \
                        go[:, g * og:(g + 1) * og, od, oh, ow] @ w[g * og:(g + 1) * og, :, a, b, e]
    return gx


def ref_conv3d_weight(x, w_shape, go, s, padding, d, groups):
    c_out, cg = w_shape[:2]
    og = c_out // groups
    win = windows(x.astype(np.float64), w_shape[2:], s, d, padding)
    go = go.astype(np.float64)
    return np.concatenate([
        np.einsum("ncdhwxyz,nodhw->ocxyz", win[:, g * cg:(g + 1) * cg], go[:, g * og:(g + 1) * og])
        for g in range(groups)], axis=0)


def to_layout(a, last):
    """An NCDHW array (or a (C_out, C_g, kd, kh, kw) weight) in the layout asked for."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if last else a


def back(a, last):
    return np.moveaxis(a, -1, 1) if last else a


CASES = [
    # (N, C, (D, H, W), C_out, kernel, stride, padding, dilation, groups)
    (2, 3, (5, 6, 7), 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),    # C3D / U-Net style
    (1, 4, (7, 8, 6), 4, (3, 2, 3), (2, 1, 2), (1, 0, 1), (1, 2, 1), 2),
    (2, 4, (4, 5, 5), 6, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1),    # I3D 1x1x1
    (1, 4, (8, 7, 7), 5, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 1),    # R3D stride 2
    (2, 6, (5, 5, 6), 6, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 6),    # X3D depthwise
    (1, 3, (9, 5, 5), 3, (3, 1, 3), (1, 1, 1), (2, 0, 1), (2, 1, 1), 1),
    (1, 2, (3, 6, 6), 3, (1, 3, 3), (1, 2, 1), (0, 1, 1), (1, 1, 2), 1),    # 2-d taps, depth 1
    (1, 2, (5, 5, 5), 3, (2, 3, 4), (1, 1, 1), "same", (2, 1, 1), 1),       # even kernels
    (2, 2, (4, 6, 5), 2, (2, 2, 2), (1, 2, 1), "valid", (1, 1, 1), 2),
    # depth 1 throughout: a plane's geometry in 5-d arrays (the image kernels
    # must not take it)
    (2, 3, (1, 5, 6), 4, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1),
    (1, 4, (1, 4, 4), 4, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 4),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("case", CASES)
def test_conv3d_and_gradients_match_the_reference(case, layout, dtype):
    n, c, size, c_out, k, s, p, d, groups = case
    last = layout == "NDHWC"
    x = RNG.standard_normal((n, c) + size).astype(dtype)
    w = RNG.standard_normal((c_out, c // groups) + k).astype(dtype)
    bias = RNG.standard_normal(c_out).astype(dtype)
    ref = ref_conv3d(x, w, bias, s, p, d, groups)
    y = fastim2col.conv3d(to_layout(x, last), to_layout(w, last), bias, s, p, d, groups,
                          layout=layout)
    assert y.dtype == dtype and y.shape == to_layout(ref, last).shape
    np.testing.assert_allclose(back(y, last), ref, **TOL[dtype])

    go = RNG.standard_normal(ref.shape).astype(dtype)
    gx = grad.conv3d_input(to_layout(x, last).shape, to_layout(w, last), to_layout(go, last),
                           s, p, d, groups, layout=layout)
    np.testing.assert_allclose(back(gx, last), ref_conv3d_input(x.shape, w, go, s, p, d, groups),
                               **TOL[dtype])
    gw = grad.conv3d_weight(to_layout(x, last), to_layout(w, last).shape, to_layout(go, last),
                            s, p, d, groups, layout=layout)
    np.testing.assert_allclose(back(gw, last), ref_conv3d_weight(x, w.shape, go, s, p, d, groups),
                               **TOL[dtype])


@pytest.mark.parametrize("kernel", ["gemm", "thin_gemm"])
@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
def test_forced_gemm_kernels_on_volumes(kernel, layout):
    """Both GEMM kernels on every op they take, in float32 (thin_gemm: where it
    runs), against the reference."""
    last = layout == "NDHWC"
    n, c, size, c_out, k, s, p, d, groups = CASES[0]
    x = RNG.standard_normal((n, c) + size).astype(np.float32)
    w = RNG.standard_normal((c_out, c) + k).astype(np.float32)
    go = RNG.standard_normal((n, c_out) + size).astype(np.float32)
    xl, wl, gol = to_layout(x, last), to_layout(w, last), to_layout(go, last)
    checks = [
        (lambda: fastim2col.conv3d(xl, wl, None, s, p, d, layout=layout),
         ref_conv3d(x, w, None, s, p, d, 1)),
        (lambda: grad.conv3d_input(xl.shape, wl, gol, s, p, d, layout=layout),
         ref_conv3d_input(x.shape, w, go, s, p, d, 1)),
        (lambda: grad.conv3d_weight(xl, wl.shape, gol, s, p, d, layout=layout),
         ref_conv3d_weight(x, w.shape, go, s, p, d, 1)),
    ]
    with fastim2col.use_kernel(kernel, strict=False):
        for run, ref in checks:
            np.testing.assert_allclose(back(run(), last), ref, **TOL[np.float32])


@pytest.mark.parametrize("kernel", ["direct", "depthwise", "taps", "elementwise"])
def test_image_only_kernels_refuse_volumes(kernel):
    x = np.zeros((1, 4, 4, 4, 2))
    w = np.zeros((2, 3, 3, 3, 2))
    go = np.zeros((1, 2, 2, 2, 2))
    calls = [lambda: fastim2col.conv3d(x, w, layout="NDHWC"),
             lambda: grad.conv3d_input(x.shape, w, go, layout="NDHWC"),
             lambda: grad.conv3d_weight(x, w.shape, go, layout="NDHWC")]
    refused = 0
    for call in calls:
        with fastim2col.use_kernel(kernel), pytest.raises(ValueError, match="use_kernel") as info:
            call()
        refused += "not volumes" in str(info.value)
    assert refused >= 1   # (the others: the op is not the kernel's at all)


@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("case", [c for c in CASES if not isinstance(c[6], str)])
def test_conv_transpose3d_is_the_input_gradient_plus_bias(case, layout):
    n, c, size, c_out, k, s, p, d, groups = case
    last = layout == "NDHWC"
    w = RNG.standard_normal((c_out, c // groups) + k)     # the conv3d weight: C -> C_out
    out_sizes = [(i + 2 * pi - di * (ki - 1) - 1) // si + 1
                 for i, pi, di, ki, si in zip(size, p, d, k, s)]
    y = RNG.standard_normal((n, c_out, *out_sizes))
    bias = RNG.standard_normal(c)
    output_padding = tuple((i + 2 * pi - di * (ki - 1) - 1) % si
                           for i, pi, di, ki, si in zip(size, p, d, k, s))
    ref = ref_conv3d_input((n, c) + size, w, y, s, p, d, groups) + bias[:, None, None, None]
    got = fastim2col.conv_transpose3d(to_layout(y, last), to_layout(w, last), bias, s, p,
                                      output_padding, groups, d, layout=layout)
    np.testing.assert_allclose(back(got, last), ref, rtol=1e-11, atol=1e-11)
    by_size = fastim2col.conv_transpose3d(to_layout(y, last), to_layout(w, last), bias, s, p,
                                          groups=groups, dilation=d, output_size=size,
                                          layout=layout)
    np.testing.assert_array_equal(by_size, got)


@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("k, s, p, d", [((3, 3, 3), 1, 1, 1), ((2, 3, 2), (2, 1, 2), 0, 1),
                                        ((3, 2, 2), 1, (2, 1, 0), (2, 1, 1))])
def test_im2col_and_col2im_3d_match_the_reference(layout, k, s, p, d):
    last = layout == "NDHWC"
    s3 = s if isinstance(s, tuple) else (s,) * 3
    p3 = p if isinstance(p, tuple) else (p,) * 3
    d3 = d if isinstance(d, tuple) else (d,) * 3
    x = RNG.standard_normal((2, 3, 5, 6, 7))
    win = windows(x, k, s3, d3, p3)                       # (N, C, Do, Ho, Wo, kd, kh, kw)
    n_pos = int(np.prod(win.shape[2:5]))
    taps = int(np.prod(k))
    ref = (win.transpose(0, 2, 3, 4, 5, 6, 7, 1).reshape(2, n_pos, taps * 3) if last
           else win.transpose(0, 1, 5, 6, 7, 2, 3, 4).reshape(2, 3 * taps, n_pos))
    cols = fastim2col.im2col(to_layout(x, last), k, s, p, d, layout=layout)
    np.testing.assert_array_equal(cols, ref)
    # col2im is its adjoint: <im2col(x), c> == <x, col2im(c)> for every x, so
    # col2im(c) is the scatter of c by the windows
    c = RNG.standard_normal(cols.shape)
    folded = back(fastim2col.col2im(c, (5, 6, 7), k, s, p, d, layout=layout), last)
    c_win = (c.reshape((2,) + win.shape[2:5] + tuple(k) + (3,)).transpose(0, 7, 1, 2, 3, 4, 5, 6)
             if last else c.reshape((2, 3) + tuple(k) + win.shape[2:5]).transpose(
                 0, 1, 5, 6, 7, 2, 3, 4))
    expect = np.zeros((2, 3, 5, 6, 7))
    (pd, _), (ph, _), (pw, _) = pads(p3, k, d3)
    for od, oh, ow in itertools.product(*map(range, win.shape[2:5])):
        for a, b, e in itertools.product(*map(range, k)):
            i = od * s3[0] + a * d3[0] - pd
            j = oh * s3[1] + b * d3[1] - ph
            m = ow * s3[2] + e * d3[2] - pw
            if 0 <= i < 5 and 0 <= j < 6 and 0 <= m < 7:
                expect[:, :, i, j, m] += c_win[:, :, od, oh, ow, a, b, e]
    np.testing.assert_allclose(folded, expect, rtol=1e-12, atol=1e-12)


def test_unbatched_out_strided_views_and_threads():
    x = RNG.standard_normal((3, 10, 12, 14))[:, ::2, ::-2, 1::2]   # (C, D, H, W) unbatched view
    w = RNG.standard_normal((4, 3, 3, 3, 3))
    ref = ref_conv3d(np.ascontiguousarray(x)[None], w, None, (1, 1, 1), (1, 1, 1), (1, 1, 1),
                     1)[0]
    out = np.empty(ref.shape)
    assert fastim2col.conv3d(x, w, padding=1, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-11)
    go = RNG.standard_normal(ref.shape)
    results = []
    before = fastim2col.get_num_threads()
    try:
        for threads in (1, 2, 3, 1):
            fastim2col.set_num_threads(threads)
            results.append((grad.conv3d_input(x.shape, w, go, padding=1),
                            grad.conv3d_weight(x, w.shape, go, padding=1)))
    finally:
        fastim2col.set_num_threads(before)
    np.testing.assert_allclose(results[0][0], ref_conv3d_input(
        (1,) + x.shape, w, go[None], (1, 1, 1), (1, 1, 1), (1, 1, 1), 1)[0],
        rtol=1e-11, atol=1e-11)
    for a, b in zip(results[0], results[3]):   # the same thread count: the same bits
        np.testing.assert_array_equal(a, b)


def test_explain_names_the_3d_call():
    x = np.zeros((1, 8, 8, 16, 16), np.float32)
    w = np.zeros((16, 8, 3, 3, 3), np.float32)
    plan = fastim2col.explain(fastim2col.conv3d, x, w, padding=1)
    assert plan.op == "conv3d" and plan.kernel in ("gemm", "thin_gemm")
    assert str(plan).startswith("conv3d: ")


@pytest.mark.parametrize("call, match", [
    (lambda: fastim2col.conv3d(np.zeros((2, 4, 4)), np.zeros((1, 2, 3, 3, 3))),
     "x must be 5-d \\(batched\\) or 4-d"),
    (lambda: fastim2col.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((1, 2, 3, 3))),
     "weight must be 5-d"),
    (lambda: fastim2col.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((1, 2, 3, 3, 3)),
                               layout="NCHW"), "layout must be 'NCDHW' or 'NDHWC'"),
    (lambda: fastim2col.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((1, 2, 3, 3, 3)),
                               stride=(1, 2)), "stride"),
    (lambda: fastim2col.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((1, 2, 5, 3, 3))),
     "larger than the padded input depth"),
    (lambda: fastim2col.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((1, 2, 3, 3, 3)),
                               stride=2, padding="same"), "same"),
    (lambda: grad.conv3d_input((1, 2, 4, 4, 4), np.zeros((1, 2, 3, 3, 3)),
                               np.zeros((1, 1, 3, 2, 2))), "grad_output must have shape"),
    (lambda: fastim2col.conv_transpose3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((2, 1, 3, 3, 3)),
                                         output_size=(20, 6, 6)), "output_size"),
    (lambda: fastim2col.col2im(np.zeros((1, 54, 9)), (4, 4, 4), (3, 3, 3)), "positions"),
])
def test_bad_3d_arguments_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
