"""The direct conv2d kernels (src/_direct.pyx, NCHW): every instruction-set
instance the CPU runs, output widths around the vector sizes, bands, threads,
and the planner's choice between them and the blocked GEMM."""
import numpy as np
import pytest

import fastim2col as F
import reference as R
from conftest import as64, assert_close, rand, recording, run_with_params
from fastim2col import _args, _direct, _plan

ISA_LEVELS = list(range(_direct.force_isa(-1) + 1))   # 0 .. the CPU's best


@pytest.fixture(params=ISA_LEVELS, ids=lambda level: f"isa{level}")
def isa_level(request):
    assert _direct.force_isa(request.param) == request.param
    yield request.param
    _direct.force_isa(-1)


@pytest.fixture
def always_direct():
    """Every NCHW conv2d, weight gradient and stride-1 input gradient in the
    direct kernels, forced with use_kernel("direct", strict=False) (strided
    input gradients, which direct cannot run, get the planner's choice);
    yields the Plans run, in order (direct_kernels names their kernels)."""
    with F.use_kernel("direct", strict=False), recording() as plans:
        yield plans


def direct_kernels(plans):
    """The direct kernels that the recorded plans ran, in order: each a call
    of _direct.direct_forward (conv2d, input gradients) or direct_weight."""
    return ["direct_weight" if plan.op == "conv2d_weight" else "direct_forward"
            for plan in plans if plan.kernel == "direct"]


# (N, C, H, W), (O, C/g, kh, kw), stride, padding, dilation, groups: output
# widths 1..70 cross the 2, 4, 8 and 16-element vectors and their 4-vector
# spans; 1..9 outputs per group cross the 4-channel blocks.
SHAPES = [
    ((2, 3, 5, 1), (4, 3, 3, 1), 1, (1, 0), 1, 1),
    ((1, 2, 4, 7), (18, 1, 2, 2), 1, 0, 1, 2),
    ((2, 4, 6, 16), (6, 2, 3, 3), 1, 1, 1, 2),
    ((1, 6, 5, 17), (3, 2, 1, 3), (1, 2), (0, 2), 1, 3),
    ((1, 5, 7, 33), (5, 1, 3, 3), 1, 1, (1, 2), 5),
    ((2, 4, 9, 65), (8, 4, 3, 5), (2, 3), 2, 1, 1),
    ((1, 8, 6, 70), (16, 1, 5, 3), (1, 1), (2, 1), (1, 3), 8),
    ((3, 2, 12, 31), (7, 2, 4, 4), 3, 3, 2, 1),
    ((1, 3, 3, 129), (1, 3, 2, 7), (1, 2), (0, 3), (1, 1), 1),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_isa_matches_reference(isa_level, always_direct, rng, x_shape, w_shape, stride,
                                     padding, dilation, groups, dtype):
    x, w = rand(rng, x_shape, dtype), rand(rng, w_shape, dtype)
    b = rand(rng, (w_shape[0],), dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    for bias in (b, None):
        got = F.conv2d(x, w, bias, **kwargs)
        expected = R.conv2d(as64(x), as64(w), None if bias is None else as64(bias), **kwargs)
        assert_close(got, expected, dtype)
    g = rand(rng, got.shape, dtype)
    assert_close(F.grad.conv2d_weight(x, w.shape, g, **kwargs),
                 R.conv2d_weight_grad(as64(x), w.shape, as64(g), **kwargs), dtype)
    expected_input = R.conv2d_input_grad(x.shape, as64(w), as64(g), **kwargs)
    assert_close(F.grad.conv2d_input(x.shape, w, g, **kwargs), expected_input, dtype)
    assert direct_kernels(always_direct).count("direct_forward") >= 2
    assert direct_kernels(always_direct).count("direct_weight") == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partial_register_blocks(isa_level, always_direct, rng, dtype):
    """One output row of every width up to two register blocks and a
    vector: the grid (row_len = width + 1 here) ends in a whole block or in
    a partial one of 1, 2 or 3 vectors (src/_direct_impl.h channels()),
    for 1 to 7 output channels (every register block's channel count)."""
    vector = {0: 16, 1: 32, 2: 64}[isa_level] // np.dtype(dtype).itemsize
    for width in range(1, 8 * vector + 2):
        x = rand(rng, (1, 2, 1, width + 1), dtype)
        for c_out in range(1, 8):
            w = rand(rng, (c_out, 2, 1, 2), dtype)
            assert_close(F.conv2d(x, w), R.conv2d(as64(x), as64(w)), dtype)
    assert direct_kernels(always_direct).count("direct_forward") == 7 * (8 * vector + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_whatever_threads_and_bands(always_direct, rng, dtype, restore_threads):
    """Each output element is summed by one unit in one fixed order: the
    same bits with 1, 2 or 3 threads and with any band height."""
    x = rand(rng, (3, 8, 23, 37), dtype)
    w = rand(rng, (12, 2, 3, 3), dtype)
    b = rand(rng, (12,), dtype)
    results = []
    for band_bytes in (_plan.DEFAULTS.DIRECT_BAND_BYTES, 0):   # (0: bands of one row)
        for threads in (1, 2, 3):
            F.set_num_threads(threads)
            with _plan.tuned(DIRECT_BAND_BYTES=band_bytes):
                results.append(F.conv2d(x, w, b, padding=1, groups=4))
    for r in results[1:]:
        assert np.array_equal(r, results[0])
    assert direct_kernels(always_direct).count("direct_forward") == len(results)
    assert_close(results[0], R.conv2d(as64(x), as64(w), as64(b), padding=1, groups=4), dtype)
    g = rand(rng, results[0].shape, dtype)
    grads = []
    for band_bytes in (_plan.DEFAULTS.DIRECT_BAND_BYTES, 0):
        for threads in (1, 2, 3):
            F.set_num_threads(threads)
            with _plan.tuned(DIRECT_BAND_BYTES=band_bytes):
                grads.append(F.grad.conv2d_weight(x, w.shape, g, padding=1, groups=4))
    # the band height sets the order of each weight's sum: same bits per band
    for gw in grads[1:3]:
        assert np.array_equal(gw, grads[0])
    for gw in grads[4:]:
        assert np.array_equal(gw, grads[3])
    expected = R.conv2d_weight_grad(as64(x), w.shape, as64(g), padding=1, groups=4)
    for gw in (grads[0], grads[3]):
        assert_close(gw, expected, dtype)
    assert direct_kernels(always_direct).count("direct_weight") == len(grads)


def _static_run(n_units, n_threads, run):
    return range(n_units * run // n_threads, n_units * (run + 1) // n_threads)


@pytest.mark.parametrize("n_units", [0, 1, 5, 16, 37])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
@pytest.mark.parametrize("slow_run", [-1, 0])
def test_unit_claims_each_unit_once(n_units, n_threads, slow_run):
    """The forward kernels' unit scheduler hands out every unit exactly
    once: each run claims its static run from the front, and whatever of it
    other runs took came off its end."""
    claims = _direct.unit_claims(n_units, n_threads, slow_run, 0.0005)
    taken = claims[claims >= 0]
    assert sorted(taken.tolist()) == list(range(n_units))
    owner = {int(u): run for run in range(n_threads) for u in claims[run] if u >= 0}
    for run in range(n_threads):
        own = list(_static_run(n_units, n_threads, run))
        kept = [u for u in own if owner[u] == run]
        assert kept == own[:len(kept)]                 # a prefix, in order
        assert claims[run][:len(kept)].tolist() == kept  # claimed first
        assert all(owner[u] != run for u in own[len(kept):])


@pytest.mark.skipif(not F._openmp_info.OPENMP_ENABLED, reason="needs OpenMP threads")
def test_unit_claims_fast_runs_take_the_slow_runs_units():
    """A run that takes longer per unit (a slower core) leaves the end of
    its static run to the others, which take it from the back."""
    n_units, slow = 16, 0
    claims = _direct.unit_claims(n_units, 2, slow, 0.005)
    own = list(_static_run(n_units, 2, slow))
    slow_claims = [int(u) for u in claims[slow] if u >= 0]
    assert len(slow_claims) < len(own)
    stolen = [int(u) for u in claims[1] if u >= 0 and u in own]
    assert stolen and stolen == sorted(stolen, reverse=True)
    assert stolen[0] == own[-1]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_units_share_packed_bands(always_direct, small_work, rng, restore_threads,
                                         dtype, groups):
    """A thread's run of units, band by band, packs an input band once for
    the units of one chunk and a grad_output band once for those of one
    block: runs that cross chunks and blocks (3 chunks x 3 blocks a group,
    on 1 to 7 threads, bands of 3 rows) still give each unit its own bands,
    and the same bits whatever the threads."""
    # (rows a band, input channels a chunk, output channels a block)
    split = {"split": (3, 4, 4)}
    x = rand(rng, (2, 12 * groups, 10, 13), dtype)
    w_shape = (10 * groups, 12, 3, 3)
    g = rand(rng, (2, 10 * groups, 10, 13), dtype)
    expected = R.conv2d_weight_grad(as64(x), w_shape, as64(g), padding=1, groups=groups)
    results = []
    for threads in (1, 2, 4, 5, 7):
        F.set_num_threads(threads)
        results.append(run_with_params(F.grad.conv2d_weight, x, w_shape, g, padding=1,
                                       groups=groups, params=split))
        assert_close(results[-1], expected, dtype)
    for r in results[1:]:
        assert np.array_equal(r, results[0])
    assert direct_kernels(always_direct).count("direct_weight") == len(results)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_weight_gradient_with_nonfinite_input(always_direct, rng, value):
    """The direct weight gradient multiplies inputs in dropped lanes by zero;
    an infinity there would make a NaN out of nothing. Such inputs go to the
    GEMM path: weights whose true sum never meets the value stay finite."""
    x = rand(rng, (2, 4, 9, 11))
    x[1, 2, 4, -1] = value      # the last column: tap j = 0 never reads it
    w = rand(rng, (6, 2, 3, 3))
    g = rand(rng, (2, 6, 7, 9))
    got = F.grad.conv2d_weight(x, w.shape, g, groups=2)
    expected = R.conv2d_weight_grad(x, w.shape, g, groups=2)
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    assert np.isfinite(got[:, :, :, 0]).all()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert direct_kernels(always_direct) == ["direct_weight"]   # tried first, declined


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", [(0, 0, 0), (0, 1, 3), (1, 0, 8), (1, 3, 0), (1, 3, 8)])
def test_nonfinite_found_anywhere_in_the_band(always_direct, rng, dtype, where):
    """The finiteness check of each packed input band (vector sums, a scalar
    tail) finds an infinity at any place in it: first, middle and last rows,
    channels and images, both dtypes (float32 and float64 bands differ in
    length by lanes)."""
    n, c, r = where
    x = rand(rng, (2, 4, 9, 11), dtype)
    x[n, c, r, -1] = np.inf      # the last column: tap j = 0 never reads it
    w = rand(rng, (6, 2, 3, 3), dtype)
    g = rand(rng, (2, 6, 7, 9), dtype)
    got = F.grad.conv2d_weight(x, w.shape, g, groups=2)
    expected = R.conv2d_weight_grad(as64(x), w.shape, as64(g), groups=2)
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    assert np.isfinite(got[:, :, :, 0]).all()
    assert direct_kernels(always_direct) == ["direct_weight"]   # tried first, declined


@pytest.mark.parametrize("where", [(0, 0), (7, 4), (15, 8)])
def test_nonfinite_found_with_output_blocks(always_direct, small_work, rng, restore_threads,
                                            where):
    """Units split into blocks of output channels pack the same input band;
    only each chunk's first block checks it for non-finite values: an
    infinity still sends the call to the GEMM path (16 threads on 16 -> 16
    channels: 2 chunks x 4 blocks)."""
    F.set_num_threads(16)
    c, r = where
    x = rand(rng, (1, 16, 9, 11))
    x[0, c, r, -1] = np.inf      # the last column: tap j = 0 never reads it
    w = rand(rng, (16, 16, 3, 3))
    g = rand(rng, (1, 16, 7, 9))
    with recording() as plans:
        got = F.grad.conv2d_weight(x, w.shape, g)
    assert plans[0].kernel == "direct" and plans[1] is plans[0].fallback   # declined
    assert plans[0].params["split"][2] < 16   # output channels were split into blocks
    expected = R.conv2d_weight_grad(x, w.shape, g)
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    assert np.isfinite(got[:, :, :, 0]).all()


def test_band_too_large_falls_back_to_gemm(rng):
    """Where one output row's input band would exceed DIRECT_MAX_BAND_BYTES
    (huge dilations), the blocked GEMM computes the layer."""
    x, w = rand(rng, (1, 4, 40, 30)), rand(rng, (4, 1, 3, 3))
    with _plan.tuned(DIRECT_MAX_BAND_BYTES=1024), recording() as plans:
        got = F.conv2d(x, w, padding=1, dilation=(12, 1), groups=4)
    assert_close(got, R.conv2d(x, w, padding=1, dilation=(12, 1), groups=4), np.float64)
    assert [p.kernel for p in plans] == ["gemm"]
    with recording() as plans:   # within the default bound: direct
        F.conv2d(x, w, padding=1, dilation=(12, 1), groups=4)
    assert [p.kernel for p in plans] == ["direct"]


@pytest.mark.parametrize("x_shape, w_shape, groups, direct", [
    ((1, 144, 56, 56), (144, 1, 3, 3), 144, True),      # MobileNetV2 depthwise
    ((1, 128, 56, 56), (128, 4, 3, 3), 32, True),       # ResNeXt 32x4d
    ((1, 1024, 7, 7), (1024, 32, 3, 3), 32, True),      # ResNeXt, last stage
    ((1, 3, 224, 224), (64, 3, 7, 7), 1, True),         # ResNet stem
    ((1, 1, 8, 8), (16, 1, 3, 3), 1, True),             # a first layer
    ((1, 64, 56, 56), (64, 64, 3, 3), 1, True),         # ResNet 3x3
    ((1, 512, 7, 7), (512, 512, 3, 3), 1, True),
    ((1, 64, 56, 56), (256, 64, 1, 1), 1, False),       # 1x1: GEMM on the input itself
    ((1, 64, 28, 28), (32, 32, 1, 1), 2, False),
    ((1, 64, 56, 56), (128, 64, 1, 1), 1, False),       # 1x1 (stride 2 in ResNet)
    ((1, 8, 28, 28), (16, 1, 1, 1), 8, True),           # 1x1 depthwise: a scaling
])
def test_planner_choice(x_shape, w_shape, groups, direct):
    win = _args.window(x_shape[2:], w_shape[2:], 1, 1, 1, allow_strings=False)
    og = w_shape[0] // groups
    assert _plan.use_direct(groups, w_shape[1], og, win) is direct


@pytest.mark.parametrize("n_threads", [2, 3, 16])
@pytest.mark.parametrize("size, channels, n_images", [(28, 128, 1), (56, 64, 1), (14, 256, 1),
                                                      (28, 128, 8), (224, 64, 1), (29, 128, 1)])
def test_direct_split_bands(n_threads, size, channels, n_images):
    """The direct kernels' bands: of even height, cut for load balance down
    to about DIRECT_MIN_POSITIONS grid positions (the even split of that
    floor), and units enough for every thread."""
    win = _args.window((size, size), 3, 1, 1, 1, allow_strings=False)
    band, chunk, per_unit = _plan.direct_split(n_images, 1, channels, channels, win, 4,
                                               n_threads, 16)
    thinnest = min(size, -(-_plan.DEFAULTS.DIRECT_MIN_POSITIONS // (size + 2)))
    assert band >= -(-size // -(-size // thinnest))
    n_bands = -(-size // band)
    assert band * n_bands - size < n_bands   # even: heights differ by less than one a band
    units = -(-n_images // per_unit) * n_bands * -(-channels // chunk)
    assert units >= n_threads
    if (size, n_images, n_threads) == (28, 1, 2):
        assert band == 14   # the measured choice (7-row bands took 1.09-1.12x the time)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nhwc_wide_channels_leave_the_direct_kernels(rng, avx512_rules, dtype):
    """NHWC conv2d with more than NHWC_DIRECT_MAX_CHANNELS input channels a
    group runs unroll + GEMM (its band gathers lose there), up to that many
    the direct kernels, NCHW the direct kernels either way; each result
    against the reference."""
    limit = _plan.DEFAULTS.NHWC_DIRECT_MAX_CHANNELS
    win = _args.window((5, 5), 3, 1, 1, 1, allow_strings=False)
    assert _plan.use_direct(1, limit, 8, win, True, 4)
    assert not _plan.use_direct(1, limit + 1, 8, win, True, 4)
    assert _plan.use_direct(1, limit + 1, 8, win, False, 4)
    for c, direct in ((limit, True), (limit + 1, False)):
        x, w = rand(rng, (1, c, 5, 5), dtype), rand(rng, (4, c, 3, 3), dtype)
        with recording() as plans:
            got = F.conv2d(R.to_nhwc(x), R.weight_to_nhwc(w), padding=1, layout="NHWC")
        assert_close(got, R.to_nhwc(R.conv2d(as64(x), as64(w), padding=1)), dtype)
        assert (plans[0].kernel == "direct") == direct


def test_isa_names():
    names = {0: ("baseline (16-byte vectors)", "scalar"), 1: ("AVX2+FMA",), 2: ("AVX-512",)}
    try:
        for level in ISA_LEVELS:
            _direct.force_isa(level)
            assert _direct.isa() in names[level]
    finally:
        _direct.force_isa(-1)
    assert F.show_config("dicts")["build"]["direct_kernels_isa"] == _direct.isa()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_gemm_prefetched_sweeps(isa_level, rng, dtype):
    """The thin GEMM where its passes sweep more of w and of c than its
    prefetch bounds (it then prefetches each slice's successor, see
    THIN_PREFETCH_BYTES in src/_direct_kernels.h): rows not a multiple of
    its vectors, two passes over the terms (the second adds), w's and c's
    leading dimensions past the rows; c's other columns stay untouched."""
    item = np.dtype(dtype).itemsize
    n_terms, n_pos, n_rows = 130, 300, 1003
    assert n_rows * _direct.THIN_TERMS * item > _direct.THIN_PREFETCH_BYTES
    assert n_rows * n_pos * item > _direct.THIN_PREFETCH_C_BYTES
    w = rand(rng, (n_terms, n_rows + 7), dtype)
    g = rand(rng, (n_terms, n_pos + 2), dtype)[:, :n_pos]
    for add in (False, True):
        c = np.full((n_pos, n_rows + 5), np.nan, dtype)
        expected = np.einsum("or,op->pr", as64(w[:, :n_rows]), as64(g))
        if add:
            c[:, :n_rows] = rand(rng, (n_pos, n_rows), dtype)
            expected += c[:, :n_rows]
        _direct.thin_gemm(w, g, n_rows, c, add)
        assert_close(np.ascontiguousarray(c[:, :n_rows]), expected, dtype)
        assert np.isnan(c[:, n_rows:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_gemm_kernel(isa_level, rng, dtype):
    """The thin GEMM (src/_direct_impl.h thin_gemm), each ISA instance: rows
    around one and two vectors (whole blocks, a one-vector block, the scalar
    rest), positions around its register tile (6 or 12), terms around its
    packing pass (THIN_KC = 128), grad_output read positions- or
    terms-contiguous, w read rows- or (w_row) terms-contiguous, leading
    dimensions past the rows, the result written
    or added to; the columns past n_rows stay untouched. Then the same
    through offset tables (g_at, c_at: a gather and a scatter of positions):
    rows of c no position maps to stay untouched; and through term tables
    (w_terms, g_terms: the rows of both operands gathered)."""
    vector = {0: 16, 1: 32, 2: 64}[isa_level] // np.dtype(dtype).itemsize
    row_counts = sorted({1, vector - 1, vector, vector + 1, 2 * vector - 1, 2 * vector,
                         2 * vector + 1, 3 * vector + vector // 2 + 1, 5 * vector} - {0})
    for n_terms in (1, 5, 127, 128, 129, 300):
        for n_pos in (1, 5, 6, 7, 11, 12, 13, 25, 49):
            for n_rows in row_counts:
                w = rand(rng, (n_terms, n_rows + 3), dtype)
                if (n_terms + n_rows) % 3 == 0:   # w stored the other way round (w_row)
                    w = rand(rng, (n_rows + 3, n_terms + 2), dtype)[:, 1:-1].T
                if (n_terms + n_pos + n_rows) % 2:   # positions contiguous (NCHW)
                    g = rand(rng, (n_terms, n_pos + 2), dtype)[:, :n_pos]
                else:                               # terms contiguous (NHWC)
                    g = rand(rng, (n_pos, n_terms + 1), dtype)[:, :n_terms].T
                c = np.full((n_pos, n_rows + 5), np.nan, dtype)
                add = (n_terms + n_pos) % 2 == 1
                if add:
                    c[:, :n_rows] = rand(rng, (n_pos, n_rows), dtype)
                expected = np.einsum("or,op->pr", as64(w[:, :n_rows]), as64(g))
                if add:
                    expected += c[:, :n_rows]
                _direct.thin_gemm(w, g, n_rows, c, add)
                assert_close(np.ascontiguousarray(c[:, :n_rows]), expected, dtype)
                assert np.isnan(c[:, n_rows:]).all()
                # offset tables: g's columns gathered (some twice, some not),
                # c's rows scattered in another order, with rows of c unused
                g_at = rng.integers(0, n_pos, n_pos)
                c_at = rng.permutation(n_pos + 3)[:n_pos]
                c = np.full((n_pos + 3, n_rows + 5), np.nan, dtype)
                if add:
                    c[c_at, :n_rows] = rand(rng, (n_pos, n_rows), dtype)
                expected = np.einsum("or,op->pr", as64(w[:, :n_rows]), as64(g[:, g_at]))
                if add:
                    expected += c[c_at, :n_rows]
                _direct.thin_gemm(w, g, n_rows, c, add, g_at, c_at)
                assert_close(np.ascontiguousarray(c[c_at, :n_rows]), expected, dtype)
                unused = np.setdiff1d(np.arange(n_pos + 3), c_at)
                assert np.isnan(c[:, n_rows:]).all() and np.isnan(c[unused]).all()
                # term tables: w's and g's rows gathered (some twice, some
                # not, in another order), as many terms as before
                w_terms = rng.integers(0, n_terms, n_terms)
                g_terms = rng.integers(0, n_terms, n_terms)
                c = np.full((n_pos, n_rows + 5), np.nan, dtype)
                if add:
                    c[:, :n_rows] = rand(rng, (n_pos, n_rows), dtype)
                expected = np.einsum("or,op->pr", as64(w[w_terms, :n_rows]),
                                     as64(g[g_terms]))
                if add:
                    expected += c[:, :n_rows]
                _direct.thin_gemm(np.ascontiguousarray(w), g, n_rows, c, add, w_terms=w_terms,
                                  g_terms=g_terms)
                assert_close(np.ascontiguousarray(c[:, :n_rows]), expected, dtype)
                assert np.isnan(c[:, n_rows:]).all()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx2_rule_sends_wide_ungrouped_layers_to_gemm(rng, dtype, layout):
    """Below AVX-512 (the rule forced on here, whatever this CPU is) an
    ungrouped layer runs its forward, input and weight gradients in the
    direct kernels only in float32 NCHW with at most DIRECT_AVX2_MAX_CHANNELS
    channels (the input gradient: of grad_output, in either layout and
    dtype); grouped layers keep them. Every result against the reference."""
    from fastim2col import grad
    limit = _plan.DEFAULTS.DIRECT_AVX2_MAX_CHANNELS
    dense_ok = dtype == np.float32 and layout == "NCHW"
    # (input channels, output channels, groups, forward direct?, input direct?)
    for c, c_out, groups, forward, inputs in [
            (limit, 8, 1, dense_ok, True), (limit + 1, 8, 1, False, True),
            (8, limit + 1, 1, dense_ok, False), (16, 16, 4, layout == "NCHW", True)]:
        x, w = rand(rng, (2, c, 15, 15), dtype), rand(rng, (c_out, c // groups, 3, 3), dtype)
        g = rand(rng, (2, c_out, 15, 15), dtype)
        to = (lambda a: R.to_nhwc(a)) if layout == "NHWC" else (lambda a: a)
        wl = R.weight_to_nhwc(w) if layout == "NHWC" else w
        kw = dict(padding=1, groups=groups, layout=layout)
        with _plan.tuned(AVX2_DIRECT_RULE=True), recording() as plans:
            y = F.conv2d(to(x), wl, **kw)
            gx = grad.conv2d_input(to(x).shape, wl, to(g), **kw)
            gw = grad.conv2d_weight(to(x), wl.shape, to(g), **kw)
        assert_close(y, to(R.conv2d(as64(x), as64(w), padding=1, groups=groups)), dtype)
        assert_close(gx, to(R.conv2d_input_grad(x.shape, as64(w), as64(g), padding=1,
                                                groups=groups)), dtype)
        expected_w = R.conv2d_weight_grad(as64(x), w.shape, as64(g), padding=1, groups=groups)
        assert_close(gw, R.weight_to_nhwc(expected_w) if layout == "NHWC" else expected_w,
                     dtype)
        kinds = [p.kernel == "direct" for p in plans]
        case = (c, c_out, groups)
        assert kinds[0] == forward, case
        if groups == 1:
            assert kinds[1] == (inputs and (layout == "NCHW" or c_out <= 128)), case
            assert not kinds[2] or dense_ok, case   # the weight gradient follows the forward
