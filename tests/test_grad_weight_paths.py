"""The weight gradient's kernel paths (conv2d_weight), each forced or chosen
and checked against the reference, and the planner rules that choose them:
GEMM (channel splits, per-thread sums, both GEMM orientations), the direct
kernels (NCHW and NHWC), tap by tap (NHWC) and the thin kernel (NHWC).
"""
import numpy as np
import pytest

import fastim2col as F
import reference as R
from conftest import as64, assert_close, img_to, rand, recording, run_with_params, weight_to
from _grad_helpers import _TAPS_CASES, _thread_counts
from fastim2col import _plan

conv2d_input, conv2d_weight = F.grad.conv2d_input, F.grad.conv2d_weight


# --------------------------------------------------------------------------- GEMM

@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_channel_split_plan(n_threads, dtype):
    """The channel split of the weight gradient: units a multiple of the threads, a unit's part of gw within budget where it runs
    several GEMMs, wide chunks; not for the stem's 3 channels."""
    item = np.dtype(dtype).itemsize
    for c, size in [(64, 56), (128, 28), (256, 14), (512, 7)]:
        for n in (1, 2 * n_threads - 1, 2 * n_threads):
            plan = _plan.grad_weight_channels(n, 1, c, c, 9, size * size, item, n_threads,
                                              False)
            if -(-c // n_threads) * 9 < _plan.DEFAULTS.MIN_CHUNK_COLUMNS:
                assert plan is None   # chunks too narrow
                continue
            tile, chunk, per_tile, transposed = plan
            assert transposed == (per_tile == 1 and c <= _plan.DEFAULTS.TRANSPOSED_GEMM_OUTPUTS)
            n_chunks = -(-c // chunk)
            assert n_chunks % n_threads == 0 or n_chunks == c
            assert chunk * 9 >= _plan.DEFAULTS.MIN_CHUNK_COLUMNS
            n_gemms = -(-n // per_tile) * (1 if per_tile > 1 else -(-size * size // tile))
            assert n_gemms == 1 or c * chunk * 9 * item <= _plan.DEFAULTS.GRAD_WEIGHT_PART_BYTES
            assert 1 <= per_tile <= n and (per_tile == 1 or tile == per_tile * size * size)
    assert _plan.grad_weight_channels(1, 1, 64, 3, 49, 112 * 112, 4, 2, False) is None


@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
def test_weight_gradient_direct_plan(n_threads):
    """1x1 stride-1 weight gradients (nothing unrolled) that do not split by
    channels: whole images, cut so that the units are a multiple of the
    threads, into per-thread sums wherever there are units for every thread."""
    for n, n_pos in [(1, 3136), (2, 3136), (3, 784), (8, 3136), (1, 100)]:
        tile, block, sums = _plan.grad_weight(n, 1, 256, 64, n_pos, 4, n_threads, 256, True)
        units = n * -(-n_pos // tile)
        assert tile == n_pos or tile >= _plan.DEFAULTS.MIN_GEMM_TILE
        if n_pos // _plan.DEFAULTS.MIN_GEMM_TILE >= n_threads:   # no tile floor in the way
            assert units % n_threads == 0
        assert sums == (n_threads > 1 and units >= n_threads)
        assert block == 256 or not sums


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_images", [1, 3])
@pytest.mark.parametrize("c_out", [12, 72])
def test_weight_gradient_direct_sums(rng, kernel_threads, dtype, n_images, c_out):
    """The 1x1 weight gradient in tiles of images into per-thread sums, GEMMs
    in both orientations (float64 with more outputs than inputs over whole
    images transposed, float32 with more than TRANSPOSED_GEMM_OUTPUTS not),
    against the reference."""
    from fastim2col import grad
    x = rng.standard_normal((n_images, 8, 20, 20)).astype(dtype)
    g = rng.standard_normal((n_images, c_out, 20, 20)).astype(dtype)
    # per-thread sums (not by channels: 8 of them split no wider than
    # MIN_CHUNK_COLUMNS); transposed for groups of up to 8 outputs
    with _plan.tuned(TRANSPOSED_GEMM_OUTPUTS=8), recording() as plans:
        got = grad.conv2d_weight(x, (c_out, 8, 1, 1), g)
        transposed = _plan.transposed_sums(c_out, 8, np.dtype(dtype).itemsize, True)
    assert_close(got, R.conv2d_weight_grad(as64(x), (c_out, 8, 1, 1), as64(g)), dtype)
    plan, = plans
    (tile, _), sums = plan.params["split"], plan.params["per_thread_sums"]
    assert sums == (kernel_threads > 1)
    if kernel_threads > 1 and n_images == 1:
        assert tile < 400   # the one image cut into a tile per thread
    if kernel_threads == 3 and n_images == 3:
        assert tile == 400  # a whole image a unit
    assert plan.params["transposed"] == (sums and (dtype == np.float64 and c_out > 8
                                                   and tile == 400))
    assert transposed == (dtype == np.float64 and c_out > 8)


# --------------------------------------------------------------------------- direct kernels

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_weight_gradient_ungrouped_plan(rng, avx512_rules, kernel_threads, dtype):
    """Ungrouped layers over 14x14 or more positions with few outputs get
    the direct weight gradient: with 16 input channels or more, up to 64
    outputs in float64, 32 in float32; with fewer input channels, up to 64
    in both; over 28x28 or more positions, up to 128 (1x1 kernels never);
    more outputs or fewer positions, the GEMM path. Each checked against
    the reference."""
    from fastim2col import grad
    item = np.dtype(dtype).itemsize
    outputs = 64 if dtype == np.float64 else 32
    few_outputs = _plan.DEFAULTS.DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS
    need = _plan.DEFAULTS.DIRECT_WEIGHT_MIN_CHANNELS
    wide = _plan.DEFAULTS.DIRECT_WEIGHT_WIDE_OUTPUTS
    # (input channels, size, outputs, kernel, direct?)
    for c, size, c_out, k, expect in [
            (need, 14, outputs, 3, True), (need, 14, outputs + 8, 3, False),
            (need - 1, 14, few_outputs, 3, True), (need - 1, 14, few_outputs + 8, 3, False),
            (3, 14, 16, 3, True), (3, 14, 16, 1, False), (need, 13, 16, 3, False),
            (3, 13, 16, 3, False), (need + 8, 20, 16, 3, True),
            (need, 28, wide, 3, True), (need, 27, outputs + 8, 3, False),
            (need, 28, wide + 8, 3, False), (need - 1, 28, wide, 3, True),
            (need, 28, wide, 1, False)]:
        x = rng.standard_normal((2, c, size, size)).astype(dtype)
        g = rng.standard_normal((2, c_out, size, size)).astype(dtype)
        with recording() as plans:
            got = grad.conv2d_weight(x, (c_out, c, k, k), g, padding=k // 2)
        assert_close(got, R.conv2d_weight_grad(as64(x), (c_out, c, k, k), as64(g),
                                               padding=k // 2), dtype)
        assert [p.kernel == "direct" for p in plans] == [expect], (c, size, c_out, k)
        win = F._args.window((size, size), k, 1, k // 2, 1, allow_strings=False)
        assert _plan.use_direct_weight(1, c, c_out, win, item) == expect


@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
def test_direct_weight_split_plan(n_threads):
    """The direct weight gradient's units: two per thread where the shape
    has them, input channels in chunks of >= DIRECT_WEIGHT_MIN_CHUNK before
    output channels are blocked, blocks of >= DIRECT_WEIGHT_MIN_BLOCK."""
    for groups, cg, og in [(1, 64, 64), (1, 256, 32), (1, 16, 16), (1, 3, 8), (32, 4, 4),
                           (144, 1, 1), (2, 32, 64)]:
        win = F._args.window((56, 56), 3, 1, 1, 1, allow_strings=False)
        band, chunk, block = _plan.direct_weight_split(groups, cg, og, win, 8, n_threads, 8)
        n_chunks, n_blocks = -(-cg // chunk), -(-og // block)
        units = groups * n_chunks * n_blocks
        assert units >= min(2 * n_threads, groups * cg * n_blocks)
        widest = max(-(-cg // _plan.DEFAULTS.DIRECT_WEIGHT_CHANNELS), cg // _plan.DEFAULTS.DIRECT_WEIGHT_MIN_CHUNK)
        if n_blocks > 1:   # only once chunks of the minimum width are too few
            assert block >= min(og, _plan.DEFAULTS.DIRECT_WEIGHT_MIN_BLOCK)
            assert groups * widest < 2 * n_threads
        if groups == 1 and cg >= 2 * n_threads * _plan.DEFAULTS.DIRECT_WEIGHT_MIN_CHUNK:
            assert n_blocks == 1 and chunk >= _plan.DEFAULTS.DIRECT_WEIGHT_MIN_CHUNK
        assert band >= 1


def test_direct_weight_gradient_blocks_same_bits(rng, restore_threads):
    """Split by input x output channels (16 threads on 64 channels), the
    direct weight gradient gives the reference's values and the same bits as
    one thread."""
    from fastim2col import grad
    x = rng.standard_normal((2, 64, 20, 20))
    g = rng.standard_normal((2, 64, 20, 20))
    got = {}
    for n_threads in (1, 16):
        F.set_num_threads(n_threads)
        with F.use_kernel("direct"), _plan.tuned(MIN_FLOPS_PER_THREAD=1), \
                recording() as plans:
            got[n_threads] = grad.conv2d_weight(x, (64, 64, 3, 3), g, padding=1)
        assert (plans[0].kernel, plans[0].threads) == ("direct", n_threads)
    _, chunk, block = plans[0].params["split"]
    assert block < 64 and chunk >= _plan.DEFAULTS.DIRECT_WEIGHT_MIN_CHUNK
    assert_close(got[16], R.conv2d_weight_grad(x, (64, 64, 3, 3), g, padding=1), np.float64)
    assert np.array_equal(got[1], got[16])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 3])
def test_nhwc_direct_weight_gradient(rng, avx512_rules, small_work, recorded, restore_threads, dtype,
                                     threads):
    """NHWC weight gradients in the direct kernels (input and grad_output
    read as strided NCHW views, the result through an NCHW-ordered copy):
    the planner's NHWC rule (ungrouped; with stride 1 at most
    NHWC_DIRECT_WEIGHT_OUTPUTS outputs and, in float32,
    NHWC_DIRECT_WEIGHT_F32_CHANNELS input channels), each call against the
    reference,
    and a non-finite input sent back to the GEMM path."""
    F.set_num_threads(threads)
    used = recorded   # the plans run (a fallback's after its direct plan)
    limit = _plan.DEFAULTS.NHWC_DIRECT_WEIGHT_OUTPUTS
    channels = _plan.DEFAULTS.NHWC_DIRECT_WEIGHT_F32_CHANNELS
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
        assert [p.kernel == "direct" for p in used] == [direct], (x_shape, w_shape, stride)
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
    assert [p.kernel for p in used] == ["direct", used[0].fallback.kernel]   # declined
    assert np.array_equal(np.isfinite(np.moveaxis(got, 3, 1)), np.isfinite(expected))


# --------------------------------------------------------------------------- tap by tap (NHWC)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_taps_paths(rng, recorded, restore_threads, conv_isa, dtype):
    """NHWC weight gradients tap by tap (src/_conv.pyx grad_weight_taps;
    forced, both dtypes): blocks of output channels (whole register tiles or
    not), of taps (all, a kernel row, one), calls of several images (the last
    set short) or bands of rows; strides, dilation, padding that leaves a tap
    no input at all, 1x1 stride 2, groups, channels past a register block, an
    input viewed with padded rows and images; against the reference, and with
    the same bits for every split and thread count (each element is summed by
    one unit, positions in order). An input whose channels are not
    contiguous (an NCHW array's NHWC view) goes the other way."""
    calls = recorded   # the plans run
    # None: the planner's split; else (output channels a unit, taps a unit, images a call, output rows a call)
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
            params = {} if split is None else {"split": (c // groups, split[0]),
                                               "taps_split": split[1:]}
            for _ in _thread_counts(calls):
                for x_in in (x_nhwc, padded[1:, :, 1:-1]):
                    # tap by tap by its threshold (TAPS_WEIGHT_MIN_CHANNELS), not forced
                    with _plan.tuned(TAPS_WEIGHT_MIN_CHANNELS=1):
                        got = run_with_params(conv2d_weight, x_in, expected.shape,
                                              img_to(g, "NHWC"), s, p, d, groups, layout="NHWC",
                                              out=np.full(expected.shape, np.nan, dtype),
                                              params=params)
                    assert calls[-1].kernel == "taps"
                    assert_close(got, expected, dtype)
                    results.append(got)
        assert all(np.array_equal(results[0], r) for r in results[1:])
        with _plan.tuned(TAPS_WEIGHT_MIN_CHANNELS=1):
            got = conv2d_weight(img_to(x, "NHWC"), expected.shape, img_to(g, "NHWC"), s, p, d,
                                groups, layout="NHWC")
        assert calls[-1].kernel != "taps"
        assert_close(got, expected, dtype)


def test_weight_taps_plan():
    """The planner's split of the tap-by-tap weight gradient: units (taps,
    output channels) a multiple of the threads where they can be, all taps a
    unit where that allows, output blocks of at most TAPS_WEIGHT_MAX_OUT_BLOCK
    and at least TAPS_WEIGHT_MIN_OUT_BLOCK where there are enough channels;
    calls of at least TAPS_WEIGHT_TERMS positions (images several to a call,
    or bands of one image's rows), no more than the batch."""
    for size, og, n_images, threads in [(28, 128, 1, 2), (14, 256, 1, 2), (14, 256, 8, 2),
                                        (7, 512, 1, 2), (7, 512, 8, 2), (7, 512, 3, 3),
                                        (28, 128, 1, 16), (7, 512, 8, 16), (56, 64, 2, 1),
                                        (7, 48, 1, 16)]:
        out_block, tap_block, per_call, band = _plan.grad_weight_taps(n_images, 1, og, 3, 9,
                                                                       size, size, threads)
        units = -(-og // out_block) * -(-9 // tap_block)
        if og >= threads * _plan.DEFAULTS.TAPS_WEIGHT_MIN_OUT_BLOCK:
            assert units % threads == 0 and tap_block == 9
            assert _plan.DEFAULTS.TAPS_WEIGHT_MIN_OUT_BLOCK <= out_block <= _plan.DEFAULTS.TAPS_WEIGHT_MAX_OUT_BLOCK
        else:   # (7, 48, 1, 16): 2 blocks of outputs, taps in kernel rows or alone
            assert tap_block < 9 and units > 2
        if size * size >= _plan.DEFAULTS.TAPS_WEIGHT_TERMS:
            assert per_call == 1 and band * size >= _plan.DEFAULTS.TAPS_WEIGHT_TERMS
            assert (band - 1) * size < _plan.DEFAULTS.TAPS_WEIGHT_TERMS
        else:
            assert band == size and per_call == min(n_images,
                                                    -(-_plan.DEFAULTS.TAPS_WEIGHT_TERMS // size ** 2))


# --------------------------------------------------------------------------- thin kernel (NHWC)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_weight_paths(rng, small_work, recorded, restore_threads, conv_isa, dtype):
    """NHWC weight gradients by the thin kernel (forced, both dtypes): blocks
    of output channels each summing every image and tile (one block a
    thread, as the thin kernel allows: the planner's split keeps two where
    its own rule would not pick the thin kernel), per-thread sums, groups,
    1x1 read in place; against the reference. Each weight's sum runs over
    the positions in order, whatever the tiles: blocks give the same bits on
    1 and 3 threads."""
    calls = recorded   # the plans run
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
            with F.use_kernel("thin_gemm"):
                got[threads] = conv2d_weight(R.to_nhwc(x),
                                             weight_to(np.zeros(w_shape), "NHWC").shape,
                                             R.to_nhwc(g), s, p, groups=groups, layout="NHWC")
            assert calls[-1].params["thin"] is True and calls[-1].params["images_per_tile"] == 1
            sums = calls[-1].params["per_thread_sums"]
            if not sums and threads > 1:   # one block a thread
                blocks = -(-(o // groups) // calls[-1].params["split"][1])
                assert blocks == min(o // groups, -(-threads // groups))
            plans.add(sums)
            assert_close(got[threads], weight_to(expected, "NHWC"), dtype)
        if not sums:
            assert np.array_equal(got[1], got[3])
    assert plans == {False, True}   # blocks and per-thread sums
