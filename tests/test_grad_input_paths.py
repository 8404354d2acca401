"""The input gradient's kernel paths (conv2d_input, and conv_transpose2d, which
runs the same kernels), each forced and checked against the reference, and
the planner rules that choose them: GEMM + fold (tiles ending mid-row,
transposed GEMMs, folds by runs), the thin GEMM kernels, tap by tap (NHWC),
NHWC splits for threads and the NHWC direct kernels. The element-by-element
kernel for few channels: tests/test_grad_few_channels.py.
"""
import numpy as np
import pytest

import fastim2col as F
import reference as R
from conftest import SMALL_WORK, LAYOUTS, as64, assert_close, img_to, rand, recording, \
    run_with_params, weight_to
from _grad_helpers import _TAPS_CASES, _thread_counts
from fastim2col import _plan

conv2d_input, conv2d_weight = F.grad.conv2d_input, F.grad.conv2d_weight


# --------------------------------------------------------------------------- GEMM + fold

@pytest.mark.parametrize("kernel", ["gemm", "thin_gemm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_input_gradient_tiles_ending_mid_row(rng, restore_threads, dtype, transposed, kernel):
    """The fold's general loop (tiles that start or end inside an output
    row; the planner's tiles are whole rows, which take a rectangle per tap):
    forced on one thread (bands of partial rows may share input rows, so
    only one thread may run them), both layouts of the GEMM result (BLAS's
    GEMMs; the thin kernel's tiles are always transposed)."""
    F.set_num_threads(1)
    for x_shape, w_shape, s, p, d in [((2, 5, 13, 11), (4, 5, 3, 3), 1, 1, 1),
                                      ((1, 3, 17, 15), (6, 3, 3, 2), 2, 2, 2)]:
        w = rng.standard_normal(w_shape).astype(dtype)
        y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=s, padding=p,
                           dilation=d).shape
        g = rng.standard_normal(y_shape).astype(dtype)
        with F.use_kernel(kernel), _plan.tuned(TRANSPOSED_INPUT_GEMMS=transposed), \
                recording() as plans:
            # tiles of a row and 3 positions, all input channels a unit
            got = run_with_params(conv2d_input, x_shape, w, g, s, p, d,
                                  params={"split": (y_shape[3] + 3, x_shape[1])})
        plan, = plans
        assert (plan.kernel, plan.params["thin"]) == (kernel, kernel == "thin_gemm")
        assert plan.params["split"][0] == y_shape[3] + 3   # tiles end mid-row
        assert plan.params["transposed"] == (transposed or kernel == "thin_gemm")
        assert_close(got, R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p, d), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_gradient_transposed_plan(rng, kernel_threads, dtype):
    """NCHW input gradients whose GEMMs run transposed (float64, rows of a
    unit at least twice its positions) and those that do not, through every
    kernel path that has the choice (unrolled tiles, whole images a unit,
    1x1 with nothing to fold, and conv_transpose2d's bias on each), checked
    against the reference; float32 transposed too, forced. BLAS GEMMs
    only: the thin kernel's tiles are always transposed (test_thin_gemm_paths)."""
    item = np.dtype(dtype).itemsize
    rule = _plan.grad_input_transposed   # (force: its override, TRANSPOSED_INPUT_GEMMS)
    # (batch, channels, outputs, size, kernel, stride, padding): stride 2 keeps
    # 3x3 layers off the direct kernels; batch 4 of 3x3 at 4 px runs whole
    # images a unit; the last has positions enough not to transpose.
    cases = [(1, 24, 8, 9, 3, 2, 1), (4, 128, 40, 8, 3, 2, 1), (2, 40, 16, 4, 1, 1, 0),
             (1, 4, 8, 24, 1, 1, 0)]
    with F.use_kernel("gemm"), recording() as calls:   # BLAS GEMMs (not the thin kernel)
        for force in (None, True):
            chosen = []
            for n, c, o, size, k, s, p in cases:
                x_shape, w_shape = (n, c, size, size), (o, c, k, k)
                w = rng.standard_normal(w_shape).astype(dtype)
                y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=s, padding=p).shape
                g = rng.standard_normal(y_shape).astype(dtype)
                calls.clear()
                with _plan.tuned(TRANSPOSED_INPUT_GEMMS=force):
                    got = conv2d_input(x_shape, w, g, s, p)
                assert_close(got, R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p), dtype)
                kwargs = calls[-1].params
                (tile, block), per_tile, transposed = (kwargs["split"], kwargs["images_per_tile"],
                                                       kwargs["transposed"])
                assert transposed == (force or (item == 8 and 2 * tile <= block * k * k))
                chosen.append(transposed)
                b = rng.standard_normal(c).astype(dtype)   # the adjoint, with a bias
                calls.clear()
                with _plan.tuned(TRANSPOSED_INPUT_GEMMS=force):
                    got = F.conv_transpose2d(g, w, b, s, p, output_padding=(size + 2 * p - k) % s)
                assert_close(got, R.conv_transpose2d(as64(g), as64(w), as64(b), s, p,
                                                     output_padding=(size + 2 * p - k) % s), dtype)
                assert calls[-1].params["transposed"] == transposed
                if force is None and (n, size) == (4, 8):
                    assert per_tile > 1   # the whole-images kernel ran
            if not force:   # the rule took both sides in float64 (the last case: not)
                assert (any(chosen) and not chosen[-1]) if item == 8 else not any(chosen)
    assert rule(10, 20, 8) and not rule(11, 20, 8) and not rule(10, 20, 4)
    with _plan.tuned(TRANSPOSED_INPUT_GEMMS=True):
        assert rule(11, 20, 4)


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
def test_input_gradient_fold_runs(rng, small_work, restore_threads, dtype, image_sets):
    """NCHW input gradients through GEMM + fold where each tap's rows fold as
    one run: against the reference on 1-3 threads, in tiles of rows and in
    image sets; NaN in grad_output reaches only the elements the reference
    has NaN at (the tile's padding columns, set to -0.0 before the run, would
    carry it elsewhere); and image rows no tap reaches, which the runs cross,
    keep conv_transpose2d's bias of -0.0 (adding -0.0 keeps every value, -0.0
    included)."""
    # BLAS GEMMs + fold, every call, not transposed; no image sets but those
    # the test asks for (all images one set, all input channels a unit)
    with F.use_kernel("gemm"), _plan.tuned(TRANSPOSED_INPUT_GEMMS=False, MULTI_TILE_BYTES=0), \
            recording() as plans:
        for x_shape, w_shape, s, p, d in FOLD_RUNS:
            w = rand(rng, w_shape, dtype)
            y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), stride=s, padding=p,
                               dilation=d).shape
            g = rand(rng, y_shape, dtype)
            g[0, 0, y_shape[2] // 2, 0] = np.nan
            expected = R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p, d)
            n_pos = y_shape[2] * y_shape[3]
            sets = {"images_per_tile": x_shape[0], "split": (x_shape[0] * n_pos, x_shape[1])}
            params = sets if image_sets else {}
            for n_threads in (1, 2, 3):
                F.set_num_threads(n_threads)
                got = run_with_params(conv2d_input, x_shape, w, g, s, p, d, params=params)
                assert (plans[-1].kernel, plans[-1].params["images_per_tile"],
                        plans[-1].params["transposed"]) == (
                    "gemm", x_shape[0] if image_sets else 1, False)
                np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
                assert_close(np.nan_to_num(got), np.nan_to_num(expected), dtype)
            if s == (2, 1):   # odd image rows: no tap reaches them, only the run's -0.0
                got = run_with_params(F.conv_transpose2d, g, w, np.full(x_shape[1], -0.0, dtype),
                                      s, p, dilation=d, params=params)
                assert got.shape[2:] == x_shape[2:]
                assert np.signbit(got[:, :, 1::2]).all() and not got[:, :, 1::2].any()


# --------------------------------------------------------------------------- thin GEMM kernels

@pytest.fixture
def thin_input_gradients():
    """For the thin GEMM's input-gradient tests: work split among threads
    even when small, tiles of a few output rows (several an image). (The
    tests choose the GEMM kernels themselves.)"""
    with _plan.tuned(**SMALL_WORK, TILE_BYTES=1, MIN_GEMM_TILE=1):
        yield


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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_gemm_paths(rng, thin_input_gradients, recorded, restore_threads, conv_isa, dtype,
                         layout):
    """Input gradients whose GEMMs run in the thin kernel (forced, both
    dtypes), through every kernel path: tiles of output rows folded back,
    whole images a unit, 1x1 with nothing to fold, groups, and
    conv_transpose2d's bias on each; against the reference, and with the
    same bits on 1 and 3 threads (each sum runs over grad_output's channels
    in order, however the work is split)."""
    # (batch, channels, outputs, size, kernel, stride, padding, groups): the
    # second runs whole images a unit, the third and fourth are 1x1, the last
    # has more positions than a tile
    cases = [(1, 24, 8, 9, 3, 2, 1, 1), (4, 32, 40, 8, 3, 2, 1, 1), (2, 40, 16, 4, 1, 1, 0, 1),
             (3, 12, 20, 5, 1, 1, 0, 2), (2, 6, 10, 17, 3, 1, 1, 2), (1, 5, 7, 40, 3, 1, 0, 1)]
    calls = recorded   # the plans run
    images = tiles = 0
    for n, c, o, size, k, s, p, groups in cases:
        x_shape = (n, c, size, size)
        w, g, b, op, expected, expected_t = _input_gradient_case(
            rng, dtype, x_shape, (o, c // groups, k, k), s, p, groups)
        got = {}
        for threads in _thread_counts(calls):
            with F.use_kernel("thin_gemm"):   # every call: thin GEMM tiles (calls: their plans)
                got[threads] = conv2d_input(img_to(np.empty(x_shape), layout).shape,
                                            weight_to(w, layout), img_to(g, layout), s, p,
                                            groups=groups, layout=layout)
                assert calls[-1].params["thin"] is True
                images += calls[-1].params["images_per_tile"] > 1
                tiles += calls[-1].params["split"][0] < g.shape[2] * g.shape[3]
                assert_close(got[threads], img_to(expected, layout), dtype)
                got_t = F.conv_transpose2d(img_to(g, layout), weight_to(w, layout), b, s, p,
                                           output_padding=op, groups=groups, layout=layout)
                assert calls[-1].params["thin"] is True
            assert_close(got_t, img_to(expected_t, layout), dtype)
        assert np.array_equal(got[1], got[3])
    assert images and tiles   # whole images a unit, and images cut into tiles


def _thin_positions_cases(rng, dtype, calls, seen):
    """test_thin_positions_paths' cases, the kernels' plans logged in calls,
    what they reached added to seen."""
    from fastim2col import _direct
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
            assert calls[-1].params["thin_positions"] is True
            kwargs = calls[-1].params
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_positions_paths(rng, thin_input_gradients, recorded, restore_threads, conv_isa,
                              dtype):
    """NCHW input gradients by the thin kernel over grad_output's rows
    (forced, both dtypes): 1x1 straight into the result (one and several
    tiles of positions, blocks of input channels; the same bits on 1 and 3
    threads), tiles folded back, whole images a unit, groups, and
    conv_transpose2d's bias on each; against the reference."""
    calls = recorded   # the plans run
    # No use_kernel: this orientation is a variant of "thin_gemm" that only
    # the planner picks (forcing "thin_gemm" runs the other one). So its
    # rule overridden on (float64 too), and the other orientation's off (no
    # tile within its positions); the direct kernels off by their threshold
    # (no flipped weights small enough).
    seen = set()
    with _plan.tuned(THIN_POSITIONS=True, THIN_MAX_POSITIONS=0, DIRECT_FLIPPED_WEIGHT_BYTES=0):
        _thin_positions_cases(rng, dtype, calls, seen)
    assert seen == {"1x1 tiles", "1x1 whole images", "1x1 channel blocks", "1x1 all channels",
                    "image sets", "folded tiles", "prefetched sweeps"}, seen


def test_thin_fold_bands():
    """The planner's bands for input gradients folded from thin-GEMM tiles
    of few-channel layers (the stem): even heights, never below the fold's
    phase-safe minimum, at least THIN_FOLD_BANDS_PER_THREAD a thread and
    phase for one image; more channels, or not thin, keep the old bands."""
    from fastim2col import _args
    win = _args.window((224, 224), (7, 7), 2, 3, 1, allow_strings=False)
    kg = 3 * 49
    old = _plan.grad_input(1, 1, 3, kg, win, 4, 2, False, False)
    for n_images, threads in [(1, 2), (1, 3), (8, 2), (1, 16)]:
        tile, block = _plan.grad_input(n_images, 1, 3, kg, win, 4, threads, False, False, True)
        rows = tile // win.out_w
        bands = -(-win.out_h // rows)
        assert tile % win.out_w == 0 and block <= 3
        assert rows >= _plan.band_rows(7, 2, 1) and tile >= _plan.DEFAULTS.THIN_FOLD_MIN_POSITIONS
        assert rows == -(-win.out_h // bands)   # even: no band taller than it must be
        floor = max(_plan.band_rows(7, 2, 1), -(-_plan.DEFAULTS.THIN_FOLD_MIN_POSITIONS // win.out_w))
        if n_images == 1 and rows > floor:   # (16 threads: held at the floor)
            assert bands >= 2 * _plan.DEFAULTS.THIN_FOLD_BANDS_PER_THREAD * threads
    assert old == _plan.grad_input(1, 1, 3, kg, win, 4, 2, False, False, False)
    assert _plan.grad_input(1, 1, 16, 16 * 49, win, 4, 2, False, False, True) == \
        _plan.grad_input(1, 1, 16, 16 * 49, win, 4, 2, False, False)


# --------------------------------------------------------------------------- tap by tap (NHWC)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_taps_paths(rng, small_work, recorded, restore_threads, conv_isa, dtype):
    """NHWC input gradients tap by tap (src/_conv.pyx grad_input_taps; forced,
    both dtypes): bands of rows, blocks of channels (whole register blocks
    or not), sets of images (the last one short, and sets cut into bands),
    each tap's weights copied or read in place; strides, dilation, padding,
    1x1 stride 2, groups, and conv_transpose2d's bias; against the
    reference, and with the same bits for every split and thread count
    (each element is summed by one unit, taps and then channels in order)."""
    calls = recorded   # the plans run
    # None: the planner's split; else (rows a band, channels a block, images a set, the weights' copy's
    # leading dimension or 0)
    splits = [None, (1, 16, 1, 0), (2, 7, 1, 9), (100, 100, 2, 120), (3, 32, 3, 0)]
    cases = _TAPS_CASES + [(1, 3, 8, 20, 18, 7, 2, 3, 1, 1)]
    with F.use_kernel("taps"):   # every call: tap by tap
        for n, c, o, h, w_, k, s, p, d, groups in cases:
            x_shape = (n, c, h, w_)
            w, g, b, op, expected, expected_t = _input_gradient_case(
                rng, dtype, x_shape, (o, c // groups, k, k), s, p, groups, d)
            results = []
            for split in splits:
                params = {} if split is None else {
                    "split": split[:2], "images_per_set": split[2], "weights_copy_ld": split[3]}
                for _ in _thread_counts(calls):
                    got = run_with_params(conv2d_input, img_to(np.empty(x_shape), "NHWC").shape,
                                          weight_to(w, "NHWC"), img_to(g, "NHWC"), s, p, d,
                                          groups, layout="NHWC", params=params)
                    assert calls[-1].kernel == "taps"
                    assert calls[-1].params["split"] == (split[:2] if split else
                                                         calls[-1].params["split"])
                    assert_close(got, img_to(expected, "NHWC"), dtype)
                    results.append(got)
                    got_t = run_with_params(F.conv_transpose2d, img_to(g, "NHWC"),
                                            weight_to(w, "NHWC"), b, s, p, output_padding=op,
                                            groups=groups, dilation=d, layout="NHWC",
                                            params=params)
                    assert calls[-1].kernel == "taps"
                    assert_close(got_t, img_to(expected_t, "NHWC"), dtype)
            assert all(np.array_equal(results[0], r) for r in results[1:])


def test_taps_plan():
    """The planner's units for the tap-by-tap input gradient: bands of even
    height within TAPS_MAX_POSITIONS, images below TAPS_SET_POSITIONS
    several to a set, a unit count that is a multiple of the threads or at
    least two a thread (finer bands while they keep TAPS_MIN_POSITIONS, then
    blocks of whole register blocks of channels); the weights copied only
    where their rows' stride crowds the L1's sets and the copy fits
    TAPS_MAX_COPY_BYTES."""
    from fastim2col import _args
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
        assert per_set * rows * size <= max(_plan.DEFAULTS.TAPS_MAX_POSITIONS, size)
        assert per_set == 1 or (rows == size and size * size < _plan.DEFAULTS.TAPS_SET_POSITIONS)
        assert block == c or block % (2 * vector) == 0
        units = -(-n_images // per_set) * bands * -(-c // block)
        assert units % threads == 0 or units >= 2 * threads
        if rows < size and block < c:   # blocks only once bands are as thin as allowed
            assert (rows - 1) * size < _plan.DEFAULTS.TAPS_MIN_POSITIONS
    # the copy: rows 9 * 256 floats apart fall on 4 of 64 sets, 9 * 64 on 16
    win = _args.window((14, 14), (3, 3), 1, 1, 1, allow_strings=False)
    assert _plan.grad_input_taps(8, 1, 256, 256, 9 * 256, win, 4, 2, vector)[3] == 256 + 16
    assert _plan.grad_input_taps(8, 1, 64, 64, 9 * 64, win, 4, 2, vector)[3] == 0
    assert _plan.grad_input_taps(8, 1, 256, 1024, 9 * 256, win, 4, 2, vector)[3] == 0   # 1 MiB


# --------------------------------------------------------------------------- NHWC: threads, direct

@pytest.mark.parametrize("thin", [False, True], ids=["blas", "thin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 1, 1), (3, 2, 1), (2, 1, 2), (1, 1, 1),
                                                     (1, 1, 2)])
def test_nhwc_input_gradient_split_for_threads(rng, restore_threads, dtype, kernel, stride,
                                              groups, thin):
    """NHWC input gradients of one image on 3 threads: blocks of input
    channels (one GEMM per tap, each a slice of the tap's weight columns;
    uneven blocks) or, 1x1, tiles of positions; conv2d_input and
    conv_transpose2d with its bias, against the reference; the GEMMs BLAS's
    or the thin kernel's."""
    F.set_num_threads(3)
    gemm = "thin_gemm" if thin else "gemm"
    c, c_out, size = 10 * groups, 7 * groups, 13
    pad = 0 if kernel == 1 else 1    # 1x1 unpadded: no fold, the GEMM writes the result
    x_shape = (1, c, size, size - 2)
    w = rand(rng, (c_out, c // groups, kernel, kernel), dtype)
    y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w.shape), stride=stride, padding=pad,
                       groups=groups).shape
    g = rand(rng, y_shape, dtype)
    args = ((1, size, size - 2, c), R.weight_to_nhwc(w), R.to_nhwc(g), stride, pad)
    # BLAS's GEMMs or the thin kernel's; blocks of at least 3 channels
    with F.use_kernel(gemm), _plan.tuned(**SMALL_WORK, NHWC_MIN_BLOCK=3), recording() as plans:
        got = conv2d_input(*args, groups=groups, layout="NHWC")
    plan, = plans
    assert (plan.kernel, plan.params["thin"], plan.threads) == (gemm, thin, 3)
    expected = R.conv2d_input_grad(x_shape, as64(w), as64(g), stride, pad, groups=groups)
    assert_close(got, R.to_nhwc(expected), dtype)
    tile, block = plan.params["split"]
    if kernel == 1 and stride == 1:
        assert tile < size * (size - 2) or block < c // groups   # split for the threads
    else:
        assert block < c // groups
    # conv_transpose2d: the input gradient of a conv2d with c_out -> c, plus a bias
    wt = rand(rng, (c, c_out // groups, kernel, kernel), dtype)
    xt = rand(rng, y_shape[:1] + (c,) + y_shape[2:], dtype)
    bias = rand(rng, (c_out,), dtype)
    args = (R.to_nhwc(xt), R.weight_to_nhwc(wt), bias, stride, pad)
    with F.use_kernel(gemm), _plan.tuned(**SMALL_WORK, NHWC_MIN_BLOCK=3), recording() as plans:
        got = F.conv_transpose2d(*args, groups=groups, layout="NHWC")
    assert plans[0].kernel == gemm
    expected = R.conv_transpose2d(as64(xt), as64(wt), as64(bias), stride, pad, groups=groups)
    assert_close(got, R.to_nhwc(expected), dtype)


@pytest.mark.parametrize("extra, direct", [(0, True), (8, False)])
def test_nhwc_direct_input_gradient_channels(rng, avx512_rules, extra, direct):
    """NHWC stride-1 input gradients run in the direct kernels with at most
    NHWC_DIRECT_INPUT_CHANNELS channels of grad_output, else GEMM + fold;
    both against the reference."""
    channels = _plan.DEFAULTS.NHWC_DIRECT_INPUT_CHANNELS + extra
    c = _plan.FEW_MAX_CHANNELS + 1   # (fewer go element by element: test_few_channel_*)
    x_shape, w = (1, c, 20, 20), rand(rng, (channels, c, 3, 3))
    g = rand(rng, (1, channels, 20, 20))
    with recording() as plans:
        got = conv2d_input((1, 20, 20, c), R.weight_to_nhwc(w), R.to_nhwc(g), padding=1,
                           layout="NHWC")
    assert_close(got, R.to_nhwc(R.conv2d_input_grad(x_shape, w, g, padding=1)), np.float64)
    assert (plans[0].kernel == "direct") == direct


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 3])
def test_flipped_forward_input_gradient(rng, restore_threads, dtype, threads):
    """Stride-1 NCHW input gradients run as the forward's unroll + GEMM of
    grad_output with flipped, transposed weights (forced on here: by default
    below AVX-512 on ungrouped layers): groups, dilations, paddings up to
    dilation * (kernel - 1), rectangular kernels, a strided grad_output view,
    conv_transpose2d at stride 1 with its bias, and conv1d's input gradient;
    each against the reference, and off again when the rule says no."""
    from fastim2col import grad
    F.set_num_threads(threads)
    # (the direct kernels, which take stride-1 input gradients first, kept out)
    on = dict(FLIPPED_FORWARD_INPUT=True, DIRECT_MAX_BAND_BYTES=0)
    off = dict(on, FLIPPED_FORWARD_INPUT=False)
    # (x shape, weight shape, padding, dilation, groups)
    cases = [((2, 12, 11, 13), (20, 12, 3, 3), 1, 1, 1),
             ((1, 6, 15, 9), (9, 2, 3, 5), (2, 0), (1, 2), 3),
             ((3, 8, 10, 10), (16, 4, 2, 2), 0, 1, 2),
             ((1, 5, 17, 12), (7, 5, 5, 3), (4, 2), 1, 1)]
    for x_shape, w_shape, padding, dilation, groups in cases:
        w = rand(rng, w_shape, dtype)
        y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), padding=padding,
                           dilation=dilation, groups=groups).shape
        g = rand(rng, y_shape[:3] + (2 * y_shape[3],), dtype)[..., ::2]   # strided view
        kw = dict(padding=padding, dilation=dilation, groups=groups)
        with _plan.tuned(**on), recording() as plans:
            got = grad.conv2d_input(x_shape, w, g, **kw)
        assert "flipped" in plans[0].params, plans[0]
        assert_close(got, R.conv2d_input_grad(x_shape, as64(w), as64(g), **kw), dtype)
        with _plan.tuned(**off), recording() as plans:
            grad.conv2d_input(x_shape, w, g, **kw)
        assert "flipped" not in plans[0].params
    # conv_transpose2d at stride 1 is the same computation, its bias the seed
    xt, wt, bias = rand(rng, (2, 6, 9, 8), dtype), rand(rng, (6, 4, 3, 3), dtype), \
        rand(rng, (8,), dtype)
    with _plan.tuned(**on), recording() as plans:
        got = F.conv_transpose2d(xt, wt, bias, padding=1, groups=2)
    assert "flipped" in plans[0].params
    assert_close(got, R.conv_transpose2d(as64(xt), as64(wt), as64(bias), 1, 1, groups=2), dtype)
    # conv1d: a 2-d call of unit height
    w1, g1 = rand(rng, (5, 3, 4), dtype), rand(rng, (2, 5, 20), dtype)
    with _plan.tuned(**on), recording() as plans:
        got = grad.conv1d_input((2, 3, 21), w1, g1, padding=1)
    assert "flipped" in plans[0].params
    expected = R.conv2d_input_grad((2, 3, 1, 21), as64(w1)[:, :, None], as64(g1)[:, :, None],
                                   padding=(0, 1))[:, :, 0]
    assert_close(got, expected, dtype)
