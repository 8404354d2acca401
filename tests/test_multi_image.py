"""The multi-image tiling of conv2d, conv2d_input, conv2d_weight and
conv_transpose2d (small images with many channels: one tile holds several
whole images), checked against the independent reference. The planner is
asserted to pick that tiling for these shapes, so the paths stay exercised."""
import numpy as np
import pytest

import fastim2col as F
from fastim2col import _plan
import reference as R
from conftest import recording

# (N, C, H, W, C_out, kernel, stride, padding, groups): n_pos <= C_out/groups/2
CASES = [
    (5, 6, 3, 3, 24, 3, 1, 1, 1),
    (7, 4, 4, 3, 48, (2, 3), 2, (1, 1), 2),
    (4, 3, 2, 2, 16, 3, 1, 1, 1),
    (6, 8, 3, 2, 40, 1, 1, 1, 1),
]


@pytest.fixture
def small_work_split():
    """Let tiny calls use several threads (the planner would keep them on one)."""
    try:
        with _plan.tuned(MIN_FLOPS_PER_THREAD=1e-9):
            yield
    finally:
        F.set_num_threads(None)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 1, 1), (3, 2, 1), (2, 1, 2)])
def test_nhwc_input_gradient_image_sets(small_work_split, n_threads, kernel, stride, groups):
    """NHWC input gradients take several images a GEMM with output channels
    between half and twice the positions (NCHW does not); the result, and
    conv_transpose2d's with a bias, against the reference (BLAS's GEMMs
    forced: not the direct kernels, nor element by element for 4 channels a
    group)."""
    F.set_num_threads(n_threads)
    rng = np.random.default_rng(n_threads + 10 * kernel + stride)
    n, c, size = 5, 4 * groups, 7
    x_shape = (n, c, size, size + 1)
    out_h, out_w = R.conv2d(np.zeros(x_shape), np.zeros((1, c, kernel, kernel)), None, stride,
                            1).shape[-2:]
    c_out = out_h * out_w * groups   # as many output channels a group as positions
    wt = rng.standard_normal((c_out, c // groups, kernel, kernel))
    go = rng.standard_normal((n, c_out, out_h, out_w))
    gx = R.conv2d_input_grad(x_shape, wt, go, stride, 1, 1, groups)
    with F.use_kernel("gemm"), recording() as plans:
        got = F.grad.conv2d_input(R.to_nhwc(np.zeros(x_shape)).shape, R.weight_to_nhwc(wt),
                                  R.to_nhwc(go), stride, 1, 1, groups, layout="NHWC")
    np.testing.assert_allclose(got, R.to_nhwc(gx), rtol=1e-12, atol=1e-12)
    assert plans[0].kernel == "gemm" and plans[0].params["images_per_tile"] >= 2
    assert _plan.grad_input_images(n, groups, c // groups, c_out // groups,
                                   c // groups * kernel ** 2, out_h * out_w, 8, n_threads,
                                   False, False) is None   # NCHW: not here
    bt = rng.standard_normal(c)
    with F.use_kernel("gemm"):
        plan = F.explain(F.conv_transpose2d, R.to_nhwc(go), R.weight_to_nhwc(wt), bt, stride, 1,
                         0, groups, layout="NHWC")
        got = F.conv_transpose2d(R.to_nhwc(go), R.weight_to_nhwc(wt), bt, stride, 1, 0, groups,
                                 layout="NHWC")
    assert plan.kernel == "gemm" and plan.params["images_per_tile"] >= 2
    hh, ww = min(got.shape[1], size), min(got.shape[2], size + 1)
    np.testing.assert_allclose(got[:, :hh, :ww], R.to_nhwc(gx)[:, :hh, :ww] + bt,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_multi_image_tiles(case, n_threads, layout, small_work_split):
    n, c, h, w, c_out, k, s, p, g = case
    F.set_num_threads(n_threads)
    rng = np.random.default_rng(n * 10 + n_threads)
    kh, kw = (k, k) if np.isscalar(k) else k
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((c_out, c // g, kh, kw))
    b = rng.standard_normal(c_out)
    y = R.conv2d(x, wt, b, s, p, 1, g)
    go = rng.standard_normal(y.shape)
    n_pos = y.shape[2] * y.shape[3]
    og, kg = c_out // g, c // g * kh * kw
    assert _plan.forward_images(n, g, og, kg, n_pos, 8, n_threads, False) is not None
    assert _plan.grad_input_images(n, g, c // g, og, kg, n_pos, 8, n_threads,
                                   layout == "NHWC", False) is not None
    assert _plan.grad_weight_images(n, g, og, kg, n_pos, 8, n_threads, c_out, False) is not None

    gx = R.conv2d_input_grad(x.shape, wt, go, s, p, 1, g)
    gw = R.conv2d_weight_grad(x, wt.shape, go, s, p, 1, g)
    xv = x[:, :, ::-1][:, :, ::-1]               # a strided view with negative strides
    if layout == "NHWC":
        xl, wl, gol = R.to_nhwc(xv), R.weight_to_nhwc(wt), R.to_nhwc(go)
        y, gx, gw = R.to_nhwc(y), R.to_nhwc(gx), R.weight_to_nhwc(gw)
    else:
        xl, wl, gol = xv, wt, go
    np.testing.assert_allclose(F.conv2d(xl, wl, b, s, p, 1, g, layout=layout), y,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.grad.conv2d_input(xl.shape, wl, gol, s, p, 1, g, layout=layout),
                               gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.grad.conv2d_weight(xl, wl.shape, gol, s, p, 1, g,
                                                    layout=layout), gw, rtol=1e-12, atol=1e-12)
    # conv_transpose2d is the input gradient plus a bias, on x of shape go
    bt = rng.standard_normal(c)
    wt_t = np.ascontiguousarray(wl)   # as a transposed-conv weight: (C_in=c_out, ..., c/g)
    yt = F.conv_transpose2d(gol, wt_t, bt, s, p, 0, g, 1, layout=layout)
    expected = gx + (bt if layout == "NHWC" else bt[:, None, None])
    if yt.shape == expected.shape:
        np.testing.assert_allclose(yt, expected, rtol=1e-12, atol=1e-12)
    else:   # output size differs when stride leaves rows unreached: compare the overlap
        hh, ww = (expected.shape[1:3] if layout == "NHWC" else expected.shape[2:])
        sl = (slice(None), slice(0, hh), slice(0, ww)) if layout == "NHWC" else \
            (slice(None), slice(None), slice(0, hh), slice(0, ww))
        np.testing.assert_allclose(yt[sl], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_threads", [2, 3, 16])
def test_nchw_input_gradient_one_image_set(n_threads):
    """NCHW input gradients of small images put every image the scratch
    allows into one set and split the input channels among the threads
    (each thread then packs only its block's weights, once); NHWC, which
    runs one channel block, keeps a set of images per thread."""
    n, cg, og, n_pos = 8, 512, 512, 49
    for itemsize in (4, 8):
        plan = _plan.grad_input_images(n, 1, cg, og, 9 * cg, n_pos, itemsize, n_threads, False,
                                       False)
        budget = min(_plan.DEFAULTS.MULTI_TILE_BYTES, _plan.DEFAULTS.TILE_SCRATCH_BYTES // n_threads)
        fits = min(n, budget // ((9 * cg + og) * n_pos * itemsize))
        if fits < 2:
            assert plan is None
            continue
        per_tile, block = plan
        assert per_tile == fits
        units = -(-n // per_tile) * -(-cg // block)
        assert units >= n_threads
        nhwc = _plan.grad_input_images(n, 1, cg, og, 9 * cg, n_pos, itemsize, n_threads, True,
                                       False)
        assert nhwc is None or (nhwc[0] <= -(-n // n_threads) and nhwc[1] == cg)
