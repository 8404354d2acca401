"""padding_mode="reflect" | "replicate" | "circular" (torch's names) for
conv1d/2d/3d, their gradients, im2col and col2im, against independent
references: np.pad with the matching mode, then an unpadded convolution by
loops over the taps (einsum over channels); the gradients' reference folds
the padded gradient back through np.pad's own index map (np.add.at)."""
import itertools

import numpy as np
import pytest

import fastim2col
from fastim2col import grad
from fastim2col._plan import tuned

RNG = np.random.default_rng(77)
NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
TOL = {np.float32: dict(rtol=3e-5, atol=3e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


def taps_of(kernel):
    return itertools.product(*map(range, kernel))


def window_slice(tap, out_sizes, stride, dilation):
    """The padded input's positions that tap reads for every output position."""
    return tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                 for t, o, s, d in zip(tap, out_sizes, stride, dilation))


def out_sizes_of(padded, kernel, stride, dilation):
    return tuple((p - d * (k - 1) - 1) // s + 1
                 for p, k, s, d in zip(padded, kernel, stride, dilation))


def ref_conv(xp, w, stride, dilation, groups):
    """Unpadded convolution of the already padded xp (N, C, *S), float64."""
    n, c = xp.shape[:2]
    c_out, cg = w.shape[:2]
    og = c_out // groups
    outs = out_sizes_of(xp.shape[2:], w.shape[2:], stride, dilation)
    out = np.zeros((n, c_out) + outs)
    for tap in taps_of(w.shape[2:]):
        sl = window_slice(tap, outs, stride, dilation)
        for g in range(groups):
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + sl]
            out[:, g * og:(g + 1) * og] += np.einsum(
                "nc...,oc->no...", patch, w[(slice(g * og, (g + 1) * og), slice(None)) + tap])
    return out


def ref_conv_input(xp_shape, w, go, stride, dilation, groups):
    c_out, cg = w.shape[:2]
    og = c_out // groups
    gxp = np.zeros(xp_shape)
    for tap in taps_of(w.shape[2:]):
        sl = window_slice(tap, go.shape[2:], stride, dilation)
        for g in range(groups):
            gxp[(slice(None), slice(g * cg, (g + 1) * cg)) + sl] += np.einsum(
                "no...,oc->nc...", go[:, g * og:(g + 1) * og],
                w[(slice(g * og, (g + 1) * og), slice(None)) + tap])
    return gxp


def ref_conv_weight(xp, w_shape, go, stride, dilation, groups):
    c_out, cg = w_shape[:2]
    og = c_out // groups
    gw = np.zeros(w_shape)
    for tap in taps_of(w_shape[2:]):
        sl = window_slice(tap, go.shape[2:], stride, dilation)
        for g in range(groups):
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + sl]
            gw[(slice(g * og, (g + 1) * og), slice(None)) + tap] = np.einsum(
                "ncp,nop->oc", patch.reshape(patch.shape[0], cg, -1),
                go[:, g * og:(g + 1) * og].reshape(go.shape[0], og, -1))
    return gw


def pad(x, pads, mode):
    return np.pad(x, ((0, 0), (0, 0)) + tuple(pads), mode=NP_MODES[mode])


def pad_adjoint(gxp, sizes, pads, mode):
    """The gradient of pad(): each padded element's gradient added into the
    input element np.pad copied it from (np.pad of the index ranges says which)."""
    out = gxp
    for axis, (size, (before, after)) in enumerate(zip(sizes, pads), start=2):
        index = np.pad(np.arange(size), (before, after), mode=NP_MODES[mode])
        moved = np.moveaxis(out, axis, 0)
        folded = np.zeros((size,) + moved.shape[1:])
        np.add.at(folded, index, moved)
        out = np.moveaxis(folded, 0, axis)
    return out


def last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


LAYOUTS = {1: ("NCL", "NLC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
CONV = {1: (fastim2col.conv1d, grad.conv1d_input, grad.conv1d_weight),
        2: (fastim2col.conv2d, grad.conv2d_input, grad.conv2d_weight),
        3: (fastim2col.conv3d, grad.conv3d_input, grad.conv3d_weight)}
CASES = [
    # (sizes, C, C_out, kernel, stride, padding, dilation, groups)
    ((11,), 3, 4, (3,), (1,), (1,), (1,), 1),
    ((12,), 4, 4, (5,), (2,), (4,), (2,), 2),
    ((7, 8), 3, 4, (3, 3), (2, 1), (2, 1), (1, 2), 1),
    ((6, 6), 4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 4),
    ((5, 9), 2, 3, (2, 4), (1, 1), (1, 3), (2, 1), 1),
    ((4, 5, 6), 2, 3, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((5, 4, 6), 2, 2, (3, 2, 3), (2, 1, 2), (2, 1, 1), (1, 2, 1), 2),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", list(NP_MODES))
@pytest.mark.parametrize("case", CASES)
def test_conv_and_gradients_with_padding_modes(case, mode, channels_last, dtype):
    sizes, c, c_out, kernel, stride, padding, dilation, groups = case
    nd = len(sizes)
    if mode == "reflect" and any(p >= s for p, s in zip(padding, sizes)):
        pytest.skip("reflect needs padding < size")
    layout = LAYOUTS[nd][channels_last]
    conv, conv_input, conv_weight = CONV[nd]
    pads = tuple((p, p) for p in padding)
    x = RNG.standard_normal((2, c) + sizes).astype(dtype)
    w = RNG.standard_normal((c_out, c // groups) + kernel).astype(dtype)
    xp = pad(x.astype(np.float64), pads, mode)
    ref = ref_conv(xp, w.astype(np.float64), stride, dilation, groups)
    go = RNG.standard_normal(ref.shape).astype(dtype)

    def arr(a):
        return last(a) if channels_last else a

    def back(a):
        return np.moveaxis(a, -1, 1) if channels_last else a

    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
              padding_mode=mode, layout=layout)
    np.testing.assert_allclose(back(conv(arr(x), arr(w), **kw)), ref, **TOL[dtype])
    gx = conv_input(arr(x).shape, arr(w), arr(go), **kw)
    want = pad_adjoint(ref_conv_input(xp.shape, w.astype(np.float64), go.astype(np.float64),
                                      stride, dilation, groups), sizes, pads, mode)
    np.testing.assert_allclose(back(gx), want, **TOL[dtype])
    gw = conv_weight(arr(x), arr(w).shape, arr(go), **kw)
    np.testing.assert_allclose(back(gw), ref_conv_weight(xp, w.shape, go.astype(np.float64),
                                                         stride, dilation, groups),
                               **TOL[dtype])


@pytest.mark.parametrize("mode", list(NP_MODES))
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_im2col_col2im_with_padding_modes(mode, nd, channels_last):
    sizes = (9, 7, 6)[:nd]
    kernel, stride, padding, dilation = (3, 2, 3)[:nd], (1, 2, 1)[:nd], (2, 1, 1)[:nd], \
        (1, 1, 2)[:nd]
    pads = tuple((p, p) for p in padding)
    x = RNG.standard_normal((2, 3) + sizes)
    xp = pad(x, pads, mode)
    outs = out_sizes_of(xp.shape[2:], kernel, stride, dilation)
    # the reference unroll: rows (c, taps), columns positions (channels first)
    rows = [xp[(slice(None), slice(c, c + 1)) + window_slice(tap, outs, stride, dilation)]
            .reshape(2, -1) for c in range(3) for tap in taps_of(kernel)]
    ref = np.stack(rows, axis=1)                         # (N, C*taps, L)
    layout = LAYOUTS[nd][channels_last]
    xin = last(x) if channels_last else x
    cols = fastim2col.im2col(xin, kernel, stride, padding, dilation, padding_mode=mode,
                             layout=layout)
    if channels_last:   # (N, L, taps*C), columns (taps, c)
        taps = int(np.prod(kernel))
        cols = cols.reshape(2, -1, taps, 3).transpose(0, 3, 2, 1).reshape(2, 3 * taps, -1)
    np.testing.assert_array_equal(cols, ref)
    # col2im is its adjoint: <ref_im2col(z), c> == <z, col2im(c)> for every z
    c_in = RNG.standard_normal(ref.shape)
    c_arg = c_in
    if channels_last:
        taps = int(np.prod(kernel))
        c_arg = c_in.reshape(2, 3, taps, -1).transpose(0, 3, 2, 1).reshape(2, -1, taps * 3)
    folded = fastim2col.col2im(np.ascontiguousarray(c_arg), sizes, kernel, stride, padding,
                               dilation, padding_mode=mode, layout=layout)
    folded = np.moveaxis(folded, -1, 1) if channels_last else folded
    for _ in range(2):
        z = RNG.standard_normal(x.shape)
        zp = pad(z, pads, mode)
        unrolled = np.stack([zp[(slice(None), slice(c, c + 1))
                                + window_slice(tap, outs, stride, dilation)].reshape(2, -1)
                             for c in range(3) for tap in taps_of(kernel)], axis=1)
        np.testing.assert_allclose((unrolled * c_in).sum(), (z * folded).sum(), rtol=1e-10)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_padding_modes_in_many_tiles_and_threads(mode, layout, restore_threads):
    """Small tiles (many per image) on 1-3 threads: a wrapped border's gradient
    lands at the image's other end; every thread count gives the reference,
    and the same bits twice."""
    x = RNG.standard_normal((2, 4, 20, 13))
    w = RNG.standard_normal((6, 4, 3, 3))
    pads = ((2, 2), (1, 1))
    xp = pad(x, pads, mode)
    go = RNG.standard_normal(ref_conv(xp, w, (1, 1), (1, 1), 1).shape)
    want_gx = pad_adjoint(ref_conv_input(xp.shape, w, go, (1, 1), (1, 1), 1), (20, 13), pads,
                          mode)
    want_gw = ref_conv_weight(xp, w.shape, go, (1, 1), (1, 1), 1)
    nhwc = layout == "NHWC"
    xl, wl, gol = (last(a) if nhwc else a for a in (x, w, go))
    kw = dict(padding=(2, 1), padding_mode=mode, layout=layout)
    with tuned(TILE_BYTES=64, MIN_GEMM_TILE=1, MIN_FLOPS_PER_THREAD=1, MIN_BYTES_PER_THREAD=1):
        plan = fastim2col.explain(grad.conv2d_input, xl.shape, wl, gol, **kw)
        assert plan.params["split"][0] < 20 * 13   # several tiles an image
        for threads in (1, 2, 3):
            fastim2col.set_num_threads(threads)
            gx = grad.conv2d_input(xl.shape, wl, gol, **kw)
            np.testing.assert_allclose(np.moveaxis(gx, -1, 1) if nhwc else gx, want_gx,
                                       rtol=1e-11, atol=1e-11)
            np.testing.assert_array_equal(gx, grad.conv2d_input(xl.shape, wl, gol, **kw))
            gw = grad.conv2d_weight(xl, wl.shape, gol, **kw)
            np.testing.assert_allclose(np.moveaxis(gw, -1, 1) if nhwc else gw, want_gw,
                                       rtol=1e-11, atol=1e-11)


def test_padding_modes_run_the_gemm_kernels():
    x = np.zeros((1, 8, 16, 16), np.float32)
    w = np.zeros((8, 8, 3, 3), np.float32)
    assert fastim2col.explain(fastim2col.conv2d, x, w, padding=1).kernel == "direct"
    plan = fastim2col.explain(fastim2col.conv2d, x, w, padding=1, padding_mode="reflect")
    assert plan.kernel in ("gemm", "thin_gemm")
    with fastim2col.use_kernel("direct"), pytest.raises(ValueError, match="zero padding only"):
        fastim2col.conv2d(x, w, padding=1, padding_mode="reflect")
    # no padding read: any mode is the zero-padding call
    assert fastim2col.explain(fastim2col.conv2d, x, w, padding_mode="circular").kernel == \
        "direct"


@pytest.mark.parametrize("call, match", [
    (lambda: fastim2col.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), padding=1,
                               padding_mode="mirror"), "padding_mode must be one of"),
    (lambda: fastim2col.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 5, 5)), padding=4,
                               padding_mode="reflect"), "smaller than the input height"),
    (lambda: fastim2col.conv1d(np.zeros((1, 1, 3)), np.zeros((1, 1, 9)), padding=4,
                               padding_mode="circular"), "at most the input width"),
    (lambda: fastim2col.conv_transpose2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)),
                                         padding_mode="reflect"), "padding_mode must be 'zeros'"),
    (lambda: fastim2col.conv_transpose1d(np.zeros((1, 1, 4)), np.zeros((1, 1, 3)),
                                         padding_mode="circular"), "padding_mode"),
])
def test_bad_padding_modes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
