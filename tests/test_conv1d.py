"""1-d convolution (conv1d, conv_transpose1d, grad.conv1d_input/weight) and 1-d
im2col/col2im, against independent references: zero padding by np.pad,
windows by sliding_window_view, sums by einsum, and scatter-add loops for the
adjoints. Layouts NCL and NLC, both dtypes, strides, dilations, groups,
'same'/'valid' padding, unbatched inputs, out=, strided views."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import fastim2col
from fastim2col import grad

RNG = np.random.default_rng(1234)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def out_len(length, k, s, p_total, d):
    return (length + p_total - d * (k - 1) - 1) // s + 1


def pads(padding, k, d, length):
    """(left, right) zero padding of torch's conv1d for this padding."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = d * (k - 1)
        return total // 2, total - total // 2
    return padding, padding


def windows(x, k, s, d, left, right):
    """(N, C, Lo, k) windows of zero-padded x (N, C, L)."""
    xp = np.pad(x, ((0, 0), (0, 0), (left, right)))
    span = d * (k - 1) + 1
    return sliding_window_view(xp, span, axis=2)[:, :, ::s, ::d]


def ref_conv1d(x, w, bias, s, padding, d, groups):
    """x (N, C, L), w (C_out, C/groups, k) -> (N, C_out, Lo), in float64."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, length = x.shape
    c_out, cg, k = w.shape
    left, right = pads(padding, k, d, length)
    win = windows(x, k, s, d, left, right)            # (N, C, Lo, k)
    og = c_out // groups
    out = np.concatenate([
        np.einsum("nclk,ock->nol", win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
        for g in range(groups)], axis=1)
    if bias is not None:
        out += bias[None, :, None]
    return out


def ref_conv1d_input(x_shape, w, go, s, padding, d, groups):
    """The adjoint of ref_conv1d in x: scatter-add loops."""
    n, c, length = x_shape
    c_out, cg, k = w.shape
    og = c_out // groups
    left, _ = pads(padding, k, d, length)
    gx = np.zeros(x_shape)
    for o in range(c_out):
        g = o // og
        for t in range(go.shape[2]):
            for j in range(k):
                i = t * s + j * d - left
                if 0 <= i < length:
                    gx[:, g * cg:(g + 1) * cg, i] += go[:, o, t, None] * w[o, :, j]
    return gx


def ref_conv1d_weight(x, w_shape, go, s, padding, d, groups):
    c_out, cg, k = w_shape
    og = c_out // groups
    left, right = pads(padding, k, d, x.shape[2])
    win = windows(x.astype(np.float64), k, s, d, left, right)
    return np.concatenate([
        np.einsum("nclk,nol->ock", win[:, g * cg:(g + 1) * cg],
                  go[:, g * og:(g + 1) * og].astype(np.float64))
        for g in range(groups)], axis=0)


def ncl(a, nlc):
    """An NCL array (or weight (C_out, C_g, k)) in the layout asked for."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if nlc else a


def back(a, nlc):
    return np.moveaxis(a, -1, 1) if nlc else a


CASES = [
    # (N, C, L, C_out, k, stride, padding, dilation, groups)
    (2, 3, 17, 4, 3, 1, 1, 1, 1),
    (1, 4, 16, 6, 2, 1, 0, 4, 2),       # WaveNet-style dilated k=2
    (3, 2, 31, 5, 7, 2, 3, 1, 1),       # ECG k=7 stride 2
    (2, 6, 12, 6, 9, 1, 4, 1, 6),       # depthwise k=9
    (1, 8, 10, 4, 1, 1, 0, 1, 1),       # pointwise
    (2, 4, 15, 8, 3, 3, 2, 2, 2),
    (1, 3, 9, 2, 3, 1, "same", 2, 1),
    (2, 3, 11, 4, 4, 1, "same", 1, 1),  # even kernel: the odd pad at the right
    (2, 2, 8, 3, 5, 2, "valid", 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCL", "NLC"])
@pytest.mark.parametrize("case", CASES)
def test_conv1d_and_gradients_match_the_reference(case, layout, dtype):
    n, c, length, c_out, k, s, p, d, groups = case
    nlc = layout == "NLC"
    x = RNG.standard_normal((n, c, length)).astype(dtype)
    w = RNG.standard_normal((c_out, c // groups, k)).astype(dtype)
    bias = RNG.standard_normal(c_out).astype(dtype)
    ref = ref_conv1d(x, w, bias, s, p, d, groups)
    y = fastim2col.conv1d(ncl(x, nlc), ncl(w, nlc), bias, s, p, d, groups, layout=layout)
    assert y.dtype == dtype and y.shape == ncl(ref, nlc).shape
    np.testing.assert_allclose(back(y, nlc), ref, **TOL[dtype])

    go = RNG.standard_normal(ref.shape).astype(dtype)
    gx = grad.conv1d_input(ncl(x, nlc).shape, ncl(w, nlc), ncl(go, nlc), s, p, d, groups,
                           layout=layout)
    np.testing.assert_allclose(back(gx, nlc),
                               ref_conv1d_input(x.shape, w.astype(np.float64),
                                                go.astype(np.float64), s, p, d, groups),
                               **TOL[dtype])
    gw = grad.conv1d_weight(ncl(x, nlc), ncl(w, nlc).shape, ncl(go, nlc), s, p, d, groups,
                            layout=layout)
    np.testing.assert_allclose(back(gw, nlc), ref_conv1d_weight(x, w.shape, go, s, p, d, groups),
                               **TOL[dtype])


@pytest.mark.parametrize("layout", ["NCL", "NLC"])
@pytest.mark.parametrize("case", [c for c in CASES if not isinstance(c[6], str)])
def test_conv_transpose1d_is_the_input_gradient_plus_bias(case, layout):
    n, c, length, c_out, k, s, p, d, groups = case
    nlc = layout == "NLC"
    # conv_transpose1d(y, w) with w (C, C_out/groups, k) read as a conv1d weight
    # (C_out... ) is the adjoint of conv1d(., w): check against the scatter loops.
    w = RNG.standard_normal((c_out, c // groups, k))   # conv1d weight: C -> C_out
    lo = out_len(length, k, s, 2 * p, d)
    y = RNG.standard_normal((n, c_out, lo))
    bias = RNG.standard_normal(c)
    op = (length + 2 * p - d * (k - 1) - 1) % s   # the output_padding giving back length
    ref = ref_conv1d_input((n, c, length), w, y, s, p, d, groups) + bias[None, :, None]
    got = fastim2col.conv_transpose1d(ncl(y, nlc), ncl(w, nlc), bias, s, p, op, groups, d,
                                      layout=layout)
    np.testing.assert_allclose(back(got, nlc), ref, rtol=1e-12, atol=1e-12)
    by_size = fastim2col.conv_transpose1d(ncl(y, nlc), ncl(w, nlc), bias, s, p, groups=groups,
                                          dilation=d, output_size=(length,), layout=layout)
    np.testing.assert_array_equal(by_size, got)


@pytest.mark.parametrize("layout", ["NCL", "NLC"])
@pytest.mark.parametrize("k, s, p, d", [(3, 1, 1, 1), (4, 2, 0, 1), (2, 1, 3, 3), (5, 3, 2, 2)])
def test_im2col_and_col2im_1d_match_the_reference(layout, k, s, p, d):
    nlc = layout == "NLC"
    x = RNG.standard_normal((2, 3, 14))
    win = windows(x, k, s, d, p, p)                        # (N, C, Lo, k)
    lo = win.shape[2]
    # NCL: rows (c, j), columns positions; NLC: rows positions, columns (j, c)
    ref = (win.transpose(0, 2, 3, 1).reshape(2, lo, k * 3) if nlc
           else win.transpose(0, 1, 3, 2).reshape(2, 3 * k, lo))
    cols = fastim2col.im2col(ncl(x, nlc), (k,), s, p, d, layout=layout)
    np.testing.assert_array_equal(cols, ref)
    # col2im: the adjoint, <im2col(x), c> == <x, col2im(c)>, and its scatter loops
    c = RNG.standard_normal(cols.shape)
    folded = fastim2col.col2im(c, (14,), (k,), s, p, d, layout=layout)
    c_ncl = c.reshape(2, lo, k, 3).transpose(0, 3, 2, 1) if nlc else c.reshape(2, 3, k, lo)
    expect = np.zeros((2, 3, 14))
    for t in range(lo):
        for j in range(k):
            i = t * s + j * d - p
            if 0 <= i < 14:
                expect[:, :, i] += c_ncl[:, :, j, t]
    np.testing.assert_allclose(back(folded, nlc), expect, rtol=1e-12, atol=1e-12)


def test_unbatched_out_and_strided_views():
    x = RNG.standard_normal((4, 40))[:, ::2]            # (C, L) unbatched, a strided view
    w = RNG.standard_normal((6, 4, 3))
    ref = ref_conv1d(np.ascontiguousarray(x)[None], w, None, 1, 1, 1, 1)[0]
    out = np.empty((6, 20))
    got = fastim2col.conv1d(x, w, padding=(1,), out=out)
    assert got is out
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    x_nlc = RNG.standard_normal((2, 20, 4)).transpose(0, 2, 1)[:, :, ::-1].transpose(0, 2, 1)
    ref = ref_conv1d(np.moveaxis(x_nlc, -1, 1), w, None, 2, 0, 1, 1)
    np.testing.assert_allclose(
        np.moveaxis(fastim2col.conv1d(x_nlc, np.moveaxis(w, 1, -1), stride=2, layout="NLC"),
                    -1, 1), ref, rtol=1e-12, atol=1e-12)
    gw_out = np.empty((6, 4, 3))
    go = RNG.standard_normal((6, 20))
    assert grad.conv1d_weight(x, (6, 4, 3), go, padding=1, out=gw_out) is gw_out
    np.testing.assert_allclose(
        gw_out, ref_conv1d_weight(np.ascontiguousarray(x)[None], (6, 4, 3), go[None], 1, 1, 1, 1),
        rtol=1e-12, atol=1e-12)


def test_explain_and_plan_name_the_1d_call():
    x = np.zeros((1, 8, 100), np.float32)
    w = np.zeros((16, 8, 5), np.float32)
    plan = fastim2col.explain(fastim2col.conv1d, x, w, padding="same")
    assert plan.op == "conv1d" and plan.kernel in fastim2col.kernels()
    assert str(plan).startswith("conv1d: ")
    plan = fastim2col.explain(grad.conv1d_weight, x, w.shape, np.zeros((1, 16, 96), np.float32))
    assert plan.op == "conv1d_weight"


def test_one_element_tuples_stand_for_both_dimensions_in_2d():
    x = RNG.standard_normal((1, 2, 9, 9))
    w = RNG.standard_normal((3, 2, 3, 3))
    np.testing.assert_array_equal(fastim2col.conv2d(x, w, stride=(2,), padding=[1]),
                                  fastim2col.conv2d(x, w, stride=2, padding=1))


def test_conv_transpose2d_output_size():
    x = RNG.standard_normal((1, 4, 5, 6))
    w = RNG.standard_normal((4, 2, 3, 3))
    for size in [(9, 11), (10, 12), (1, 2, 10, 11)]:
        got = fastim2col.conv_transpose2d(x, w, stride=2, padding=1, output_size=size)
        op = (size[-2] - 9, size[-1] - 11)
        np.testing.assert_array_equal(
            got, fastim2col.conv_transpose2d(x, w, stride=2, padding=1, output_padding=op))
    with pytest.raises(ValueError, match="output_size"):
        fastim2col.conv_transpose2d(x, w, stride=2, padding=1, output_size=(12, 11))
    with pytest.raises(ValueError, match="not both"):
        fastim2col.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1,
                                    output_size=(10, 12))
    with pytest.raises(TypeError, match="output_size"):
        fastim2col.conv_transpose2d(x, w, stride=2, output_size=10)


@pytest.mark.parametrize("call, match", [
    (lambda: fastim2col.conv1d(np.zeros((1, 2, 3, 8)), np.zeros((1, 2, 3))), "x must be 3-d or 2-d"),
    (lambda: fastim2col.conv1d(np.zeros((1, 2, 8)), np.zeros((1, 2, 3, 3))), "weight must be 3-d"),
    (lambda: fastim2col.conv1d(np.zeros((1, 2, 8)), np.zeros((1, 2, 3)), layout="NCHW"),
     "layout must be 'NCL' or 'NLC'"),
    (lambda: fastim2col.conv1d(np.zeros((1, 2, 8)), np.zeros((1, 2, 3)), stride=(1, 2)),
     "stride must be an int or a one-element tuple"),
    (lambda: fastim2col.im2col(np.zeros((1, 2, 8)), (3,), layout="NHWC"),
     "layout must be 'NCL' or 'NLC'"),
    (lambda: fastim2col.im2col(np.zeros((1, 2, 8, 8, 8)), (3, 3, 3, 3)), "1, 2 or 3 ints"),
    (lambda: fastim2col.conv_transpose1d(np.zeros((1, 2, 8)), np.zeros((2, 1, 3)),
                                         output_size=(30,)), "output_size"),
])
def test_bad_1d_arguments_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
