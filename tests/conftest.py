"""Shared helpers for the fastim2col test suite.

Everything is checked against tests/reference.py (NCHW, float64, written from
the definitions). NHWC is tested by converting inputs from NCHW with the
helpers below and converting the reference's result the same way.
"""
import contextlib
import dataclasses
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st

import fastim2col
import reference as R
from fastim2col import _execute, _explain, _plan
from fastim2col._execute import recording  # noqa: F401  (for the tests)

settings.register_profile(
    "fastim2col", max_examples=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", parent=settings.get_profile("fastim2col"),
                          max_examples=2000)
# HYPOTHESIS_PROFILE=fuzz for a long bug hunt; the default keeps the suite fast.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastim2col"))

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


# --------------------------------------------------------------------------- arrays

def rand(rng, shape, dtype=np.float64):
    """Standard normal values; float32 inputs are exactly representable."""
    return rng.standard_normal(shape).astype(dtype)


def as64(a):
    """The exact float64 values of an input (the reference's operand)."""
    return np.asarray(a, dtype=np.float64)


def assert_close(actual, expected, dtype, tol=None):
    """actual: a fastim2col result in `dtype`, C-contiguous; expected: float64."""
    dtype = np.dtype(dtype)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.flags.c_contiguous
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = TOL[dtype] if tol is None else tol
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


STRIDE_KINDS = ("C", "F", "step", "neg", "readonly", "channels_last", "unaligned",
                "broadcast_batch")


def restride(a, kind):
    """An array with a's values (same shape, dtype) but another memory layout."""
    a = np.asarray(a)
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "step":   # every other element of a bigger array, on each axis
        fill = np.nan if a.dtype.kind == "f" else 0   # stray reads would show
        big = np.full(tuple(2 * s for s in a.shape), fill, a.dtype)
        sl = (slice(None, None, 2),) * a.ndim
        big[sl] = a
        return big[sl]
    if kind == "neg":    # negative strides on every axis
        flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return flipped[(slice(None, None, -1),) * a.ndim]
    if kind == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if kind == "channels_last":   # axis 1 stored last in memory
        if a.ndim < 3:
            return np.asfortranarray(a)
        order = (0,) + tuple(range(2, a.ndim)) + (1,)
        back = np.argsort(order)
        return np.ascontiguousarray(a.transpose(order)).transpose(back)
    if kind == "unaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        r = buf[1:].view(a.dtype).reshape(a.shape) if a.size else a.copy()
        r[...] = a
        return r
    if kind == "broadcast_batch":   # stride 0 on axis 0 when all batch items agree
        if a.ndim == 0 or a.shape[0] == 0 or not np.array_equal(a, a[:1].repeat(a.shape[0], 0)):
            return a.copy()
        r = np.broadcast_to(a[:1], a.shape)
        return r
    raise ValueError(kind)


def make_values(rng, shape, dtype, kind):
    """Random NCHW values; all batch items equal for the broadcast_batch kind
    (so that restride can hand the library a stride-0 batch axis)."""
    if kind == "broadcast_batch" and len(shape) == 4 and shape[0] > 1:
        return np.repeat(rand(rng, (1,) + tuple(shape[1:]), dtype), shape[0], axis=0)
    return rand(rng, shape, dtype)


# --------------------------------------------------------------------------- layouts

def img_to(a, layout):
    """NCHW (or unbatched CHW) image -> layout."""
    return R.to_nhwc(a) if layout == "NHWC" else a


def img_from(a, layout):
    return R.to_nchw(a) if layout == "NHWC" else a


def weight_to(w, layout):
    """(O, C, kh, kw) -> (O, kh, kw, C) for NHWC (conv2d and conv_transpose2d)."""
    return R.weight_to_nhwc(w) if layout == "NHWC" else w


def cols_to(cols, c, kernel, layout):
    """NCHW columns (N, C*kh*kw, L) -> the layout's columns."""
    return R.cols_to_nhwc(cols, c, kernel) if layout == "NHWC" else cols


# --------------------------------------------------------------------------- threads

@pytest.fixture
def restore_threads():
    """Tests that change the thread count get the default back afterwards."""
    try:
        yield
    finally:
        fastim2col.set_num_threads(None)


# the thresholds that let the planner hand even tiny calls to several threads
SMALL_WORK = dict(MIN_FLOPS_PER_THREAD=1, MIN_BYTES_PER_THREAD=1)


def split_small_work():
    """Let the planner hand even tiny calls to several threads (it normally
    keeps calls below a minimum of work per thread on one thread), so that
    small test shapes exercise the multi-threaded work splits: a ``with``
    block (fastim2col._plan.tuned, context-local)."""
    return _plan.tuned(**SMALL_WORK)


def run_with_params(func, *args, params, **kwargs):
    """func(*args, **kwargs) run with the Plan it would run (the kernel: the
    planner's or use_kernel's) but for ``params``: a test's own split, for
    splits the planner never makes (fastim2col._execute.run takes the plan)."""
    call = _explain._CALLS[func](*args, **kwargs)
    plan = _execute.plan(call)
    return _execute.run(call, dataclasses.replace(plan, params={**plan.params, **params}))


@pytest.fixture
def recorded():
    """The list of Plans the test's calls execute, in order
    (fastim2col._execute.recording)."""
    with recording() as plans:
        yield plans


@pytest.fixture
def small_work():
    """The test runs with split_small_work()'s thresholds."""
    with split_small_work():
        yield


@pytest.fixture
def avx512_rules():
    """The test plans by the AVX-512 machine's rules, whatever this CPU is
    (below AVX-512 ungrouped layers leave the direct kernels sooner:
    _plan.conv2d.use_direct)."""
    with _plan.tuned(AVX2_DIRECT_RULE=False):
        yield


@pytest.fixture(params=range(fastim2col._conv.force_isa(-1) + 1), ids=lambda level: f"isa{level}")
def conv_isa(request):
    """Run the test with _conv's vector kernels (the thin GEMM, the
    element-by-element input gradient) at each ISA level the CPU runs, 0
    (baseline) up: the planner still picks the paths it picks at the best
    level. Each extension module holds its own level (_direct.force_isa
    does not reach these)."""
    assert fastim2col._conv.force_isa(request.param) == request.param
    yield request.param
    fastim2col._conv.force_isa(-1)


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def kernel_threads(request, small_work, restore_threads):
    """Run the test with 1, then 3 kernel threads, small work split too."""
    fastim2col.set_num_threads(request.param)
    return request.param


@pytest.fixture(params=["auto", "gemm", "gemm-channels", "gemm-thin", "direct", "direct-1row",
                        "taps", "few"])
def conv_path(request):
    """The kernels NCHW conv2d and its gradients use, forced through
    fastim2col.use_kernel(..., strict=False) (each call the kernel cannot run
    gets the planner's choice): the planner's choice, the blocked GEMM always (gemm-channels: with the weight gradient split by
    input channels whatever the shape, into many small chunks, images batched
    per GEMM, GEMMs in both orientations), or the direct kernels always (with
    the planner's bands of output rows, or bands of one row). gemm-channels
    also runs every NCHW input gradient's GEMMs transposed (the planner does
    so only in float64, for some shapes). The input gradient's GEMMs are
    BLAS's on the gemm paths, the thin kernel's on gemm-thin (the planner's
    choice for float32 input gradients of few positions, NCHW conv2d and
    NHWC weight gradients, and for NCHW weight gradients split by input
    channels with many outputs), both dtypes, every tile size (its other
    orientation for NCHW input gradients: test_thin_positions_paths).
    NHWC calls follow the same forcing where their kernels take NHWC (the
    direct kernels read strided NCHW views of it); the NHWC depthwise kernel
    is chosen apart. NHWC input gradients run tap by tap (grad_input_taps)
    on taps, whatever their channels, in bands of a few positions, images
    small enough to go several to a unit, each tap's weights copied
    (read in place: test_taps_paths); never on the gemm and direct paths. So do NHWC weight
    gradients whose input has contiguous channels (grad_weight_taps), in
    calls of a few positions and blocks of at most 5 output channels. NHWC
    input gradients of at most FEW_MAX_CHANNELS channels a group run element
    by element (grad_input_few) on few, whatever their output channels, in
    bands of one row; never on the other forced paths."""
    # the kernel: forced with use_kernel, falling back to the planner's choice
    # where it cannot run a call; the thresholds: small (fastim2col._plan.tuned),
    # so that small test shapes reach the kernels' multi-band, multi-block and
    # multi-image splits
    kernel = {"gemm": "gemm", "gemm-channels": "gemm", "gemm-thin": "thin_gemm",
              "direct": "direct", "direct-1row": "direct", "taps": "taps",
              "few": "elementwise"}.get(request.param)
    thresholds = {
        "few": dict(SMALL_WORK, FEW_BANDS_PER_THREAD=10 ** 6),
        # each tap's weights copied, rows block + 3 apart (read in place: test_taps_paths)
        "taps": dict(SMALL_WORK, TAPS_MAX_POSITIONS=20, TAPS_MIN_POSITIONS=1,
                     TAPS_SET_POSITIONS=40, TAPS_COPY_WEIGHTS=True, TAPS_COPY_PAD=3,
                     TAPS_WEIGHT_TERMS=7, TAPS_WEIGHT_MAX_OUT_BLOCK=5,
                     TAPS_WEIGHT_MIN_OUT_BLOCK=1),
        "gemm-channels": dict(MIN_CHUNK_COLUMNS=1, MIN_UNEVEN_CHUNK=1, GRAD_WEIGHT_PART_BYTES=1,
                              MIN_IMAGE_TILE=40,   # 1 to n images a tile
                              # both GEMM orientations: transposed for groups of up to 4
                              # outputs; every NCHW input gradient's transposed
                              TRANSPOSED_GEMM_OUTPUTS=4, TRANSPOSED_INPUT_GEMMS=True),
        "direct-1row": dict(DIRECT_BAND_BYTES=0),
    }.get(request.param, {})
    with contextlib.ExitStack() as stack:
        stack.enter_context(_plan.tuned(**thresholds))
        if kernel is not None:
            stack.enter_context(fastim2col.use_kernel(kernel, strict=False))
        yield request.param


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# --------------------------------------------------------------------------- strategies

def _pair_or_int(draw, values):
    a, b = draw(values), draw(values)
    return draw(st.sampled_from([a, (a, b), [a, b]])) if a == b else (a, b)


@st.composite
def windows(draw, allow_strings=True, max_kernel=4, max_stride=3, max_dilation=3):
    """Window parameters: (kernel, stride, padding, dilation) as pairs, plus the
    padding argument as passed (int, pair, 'valid', 'same')."""
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    options = ["int", "pair"]
    if allow_strings:
        options.append("valid")
        if stride == (1, 1):
            options.append("same")
    kind = draw(st.sampled_from(options))
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    else:
        padding = kind
    return kernel, stride, padding, dilation


def image_size_for(draw, kernel, dilation, pads, extra=6):
    """(H, W) big enough that the padded image holds one window."""
    hw = []
    for k, d, p in zip(kernel, dilation, (pads[0] + pads[1], pads[2] + pads[3])):
        need = max(1, d * (k - 1) + 1 - p)
        hw.append(draw(st.integers(need, need + extra)))
    return tuple(hw)


def arg(value, draw):
    """A pair parameter passed as an int when both entries agree, or as a pair."""
    if value[0] == value[1]:
        return draw(st.sampled_from([value[0], tuple(value)]))
    return tuple(value)


@st.composite
def conv_cases(draw, max_groups=3):
    """A conv2d configuration, NCHW shapes; layout/batching/dtype drawn too."""
    kernel, stride, padding, dilation = draw(windows())
    groups = draw(st.integers(1, max_groups))
    cg, og, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = R.pads_of(padding, kernel, dilation)
    h, w = image_size_for(draw, kernel, dilation, pads)
    return dict(
        x_shape=(n, cg * groups, h, w), w_shape=(og * groups, cg) + kernel,
        stride=arg(stride, draw), padding=padding, dilation=arg(dilation, draw),
        groups=groups, bias=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
        unbatched=draw(st.booleans()) and n == 1,
        stride_kind=draw(st.sampled_from(STRIDE_KINDS)))


def conv_ref_kwargs(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


@st.composite
def transpose_cases(draw, max_groups=3):
    """A conv_transpose2d configuration: NCHW x (N, C_in, H, W), weight
    (C_in, C_out/groups, kh, kw)."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    padding = []
    for size, s, k, d, op in zip((h, w), stride, kernel, dilation, out_pad):
        full = (size - 1) * s + d * (k - 1) + op + 1   # output size with padding 0
        padding.append(draw(st.integers(0, min(3, (full - 1) // 2))))
    groups = draw(st.integers(1, max_groups))
    ig, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    return dict(
        x_shape=(n, ig * groups, h, w), w_shape=(ig * groups, og) + kernel,
        stride=arg(stride, draw), padding=arg(tuple(padding), draw),
        output_padding=arg(out_pad, draw), dilation=arg(dilation, draw), groups=groups,
        bias=draw(st.booleans()), layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from(DTYPES)), unbatched=draw(st.booleans()) and n == 1,
        stride_kind=draw(st.sampled_from(STRIDE_KINDS)))


def transpose_ref_kwargs(case):
    return dict(stride=case["stride"], padding=case["padding"],
                output_padding=case["output_padding"], groups=case["groups"],
                dilation=case["dilation"])


# Hand-picked larger shapes that make the planner split work several ways:
# several position tiles, finer tiles for few images, output-channel blocks,
# the direct 1x1 path, per-thread weight-gradient sums, many grad_input bands.
PLAN_CASES = [
    # x_shape (NCHW), w_shape (O, C/g, kh, kw), stride, padding, dilation, groups
    pytest.param((2, 16, 40, 40), (8, 16, 3, 3), 1, 1, 1, 1, id="multi-tile"),
    pytest.param((1, 3, 24, 24), (4, 3, 3, 3), 1, 0, 1, 1, id="finer-tiles"),
    pytest.param((1, 4, 8, 8), (12, 4, 3, 3), 1, 1, 1, 1, id="channel-blocks"),
    pytest.param((2, 8, 12, 10), (6, 8, 1, 1), 1, 0, 1, 1, id="direct-1x1"),
    pytest.param((2, 8, 12, 10), (6, 4, 1, 1), 1, 0, 1, 2, id="direct-1x1-groups"),
    pytest.param((3, 6, 30, 17), (6, 1, 5, 3), 2, (2, 1), (1, 2), 6, id="depthwise"),
    pytest.param((2, 4, 33, 21), (8, 1, 3, 3), 1, "same", 2, 4, id="channel-multiplier"),
    pytest.param((1, 40, 36, 36), (5, 40, 4, 2), (3, 1), 1, 1, 1, id="wide-window"),
    pytest.param((4, 2, 9, 64), (4, 1, 2, 5), 1, "same", (3, 1), 2, id="same-even"),
]


# --------------------------------------------------------------------------- conv inputs

def conv_inputs(case, rng, transpose=False):
    """Random inputs for a conv2d (or conv_transpose2d) case.

    Returns (x, w, b, lib): x, w, b hold the NCHW values in case["dtype"] (b
    may be None), lib the same values as passed to fastim2col: layout
    converted, unbatched if asked, restrided with case["stride_kind"].
    """
    dtype, layout, kind = case["dtype"], case["layout"], case["stride_kind"]
    x = make_values(rng, case["x_shape"], dtype, kind)
    w = rand(rng, case["w_shape"], dtype)
    c_out = case["w_shape"][1] * case["groups"] if transpose else case["w_shape"][0]
    b = rand(rng, (c_out,), dtype) if case["bias"] else None
    x_l = img_to(x, layout)
    if case["unbatched"]:
        x_l = x_l[0]
    lib = dict(x=restride(x_l, kind), weight=restride(weight_to(w, layout), kind),
               bias=None if b is None else restride(b, kind))
    return x, w, b, lib


def expected_layout(expected, case):
    """A reference NCHW result in the case's layout and batching."""
    e = img_to(expected, case["layout"])
    return e[0] if case["unbatched"] else e


# --------------------------------------------------------------------------- isolation

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_MALLOC_DEBUG = next((p for p in ("/lib/x86_64-linux-gnu/libc_malloc_debug.so.0",
                                  "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0",
                                  "/lib64/libc_malloc_debug.so.0") if os.path.exists(p)), None)


def run_isolated(code, timeout=300):
    """Run code in a fresh interpreter (cwd tests/, so `import reference`
    works) with glibc's heap checks on where available: a heap overflow
    then fails one test instead of aborting the whole session. Asserts a
    clean exit and returns stdout."""
    env = dict(os.environ, MALLOC_CHECK_="3")
    # (PYTHONSAFEPATH=1, as in the wheel tests, keeps the cwd off sys.path.)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    if _MALLOC_DEBUG:
        env["LD_PRELOAD"] = ":".join(filter(None, [env.get("LD_PRELOAD"), _MALLOC_DEBUG]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
        f"stderr: {proc.stderr[-3000:]}")
    return proc.stdout
