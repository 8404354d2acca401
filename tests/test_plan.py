"""The plan of a call: fastim2col.explain, kernels(), use_kernel, the
planner's choices as Plan values, FASTIM2COL_VERBOSE, the machine record.

Every kernel is forced with use_kernel over shape classes (both layouts and
dtypes, groups, depthwise, strides, dilations, padding, 1x1, few channels)
and checked against the independent reference (tests/reference.py) wherever
it accepts the call; where it does not, use_kernel must say why.
"""
import dataclasses
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastim2col
import reference as R
from conftest import LAYOUTS, TESTS_DIR, assert_close, img_to, rand, weight_to
from fastim2col import grad

# (x NCHW, weight (O, C/g, kh, kw), stride, padding, dilation, groups)
SHAPE_CLASSES = {
    "3x3": ((2, 8, 9, 10), (6, 8, 3, 3), 1, 1, 1, 1),
    "1x1": ((2, 8, 7, 7), (12, 8, 1, 1), 1, 0, 1, 1),
    "strided-dilated": ((1, 6, 11, 9), (4, 6, 3, 2), (2, 1), (1, 0), (1, 2), 1),
    "grouped": ((2, 8, 8, 8), (8, 4, 3, 3), 1, 1, 1, 2),
    "depthwise": ((2, 8, 8, 8), (16, 1, 3, 3), 1, 1, 1, 8),
    "few-channels": ((1, 3, 10, 10), (16, 3, 3, 3), 1, 1, 1, 1),
    "stem-like": ((1, 3, 16, 16), (8, 3, 7, 7), 2, 3, 1, 1),
    "wide-padding": ((1, 4, 5, 6), (5, 4, 2, 3), 1, (3, 2), 1, 1),
    "many-channels": ((1, 32, 10, 10), (8, 32, 3, 3), 1, 1, 1, 1),
}
CONV_OPS = ("conv2d", "conv2d_input", "conv2d_weight", "conv_transpose2d")
FORCEABLE = [k for k in fastim2col.kernels() if k != "fill"]


def _img(a, layout):
    return np.ascontiguousarray(img_to(a, layout))


def _weight(w, layout):
    return np.ascontiguousarray(weight_to(w, layout))


def _call(op, rng, case, layout, dtype):
    """(func, args, kwargs, expected NCHW float64 result) of one op on a case
    (C-contiguous arrays in the layout)."""
    x_shape, w_shape, stride, padding, dilation, groups = case
    x = rand(rng, x_shape, dtype)
    w = rand(rng, w_shape, dtype)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    y = R.conv2d(x.astype(np.float64), w.astype(np.float64), None, stride, padding, dilation,
                 groups)
    g = rand(rng, y.shape, dtype)
    if op == "conv2d":
        b = rand(rng, (w_shape[0],), dtype)
        expected = R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                            stride, padding, dilation, groups)
        return fastim2col.conv2d, (_img(x, layout), _weight(w, layout), b), kw, expected
    if op == "conv2d_input":
        expected = R.conv2d_input_grad(x_shape, w.astype(np.float64), g.astype(np.float64),
                                       stride, padding, dilation, groups)
        size = img_to(np.empty(x_shape), layout).shape
        return grad.conv2d_input, (size, _weight(w, layout), _img(g, layout)), kw, expected
    if op == "conv2d_weight":
        expected = R.conv2d_weight_grad(x.astype(np.float64), w_shape, g.astype(np.float64),
                                        stride, padding, dilation, groups)
        size = weight_to(np.empty(w_shape), layout).shape
        return grad.conv2d_weight, (_img(x, layout), size, _img(g, layout)), kw, expected
    # conv_transpose2d of g with the forward conv's weight ((C_in, C_out/g, kh, kw)
    # there is (O, C/g, kh, kw) here): the input gradient above, plus a bias;
    # output_padding recovers the rows and columns a strided conv dropped
    wt = w
    b = rand(rng, (x_shape[1],), dtype)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    kh, kw_ = w_shape[2:]
    rows = (y.shape[2] - 1) * sh - 2 * ph + dh * (kh - 1) + 1
    cols = (y.shape[3] - 1) * sw - 2 * pw + dw * (kw_ - 1) + 1
    output_padding = (x_shape[2] - rows, x_shape[3] - cols)
    assert 0 <= output_padding[0] < max(sh, dh) and 0 <= output_padding[1] < max(sw, dw)
    expected = R.conv_transpose2d(g.astype(np.float64), wt.astype(np.float64),
                                  b.astype(np.float64), stride, padding, output_padding, groups,
                                  dilation)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation, layout=layout)
    return fastim2col.conv_transpose2d, (_img(g, layout), _weight(wt, layout), b), kw, \
        expected


def _to_layout(expected, op, layout):
    if op == "conv2d_weight":
        return weight_to(expected, layout)
    return img_to(expected, layout)


# the kernels each op must reach over the shape classes, per layout
EXPECTED = {
    ("conv2d", "NCHW"): {"direct", "gemm", "thin_gemm"},
    ("conv2d", "NHWC"): {"direct", "depthwise", "gemm"},
    ("conv2d_input", "NCHW"): {"direct", "gemm", "thin_gemm"},
    ("conv2d_input", "NHWC"): {"taps", "elementwise", "direct", "gemm", "thin_gemm"},
    ("conv2d_weight", "NCHW"): {"direct", "gemm", "thin_gemm"},
    ("conv2d_weight", "NHWC"): {"direct", "taps", "gemm", "thin_gemm"},
}
EXPECTED.update({("conv_transpose2d", layout): EXPECTED[("conv2d_input", layout)]
                 for layout in LAYOUTS})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", CONV_OPS)
def test_forced_kernel(op, layout, dtype, rng, small_work, restore_threads):
    """Every kernel, forced on every shape class: the reference's result
    where it accepts the call, a ValueError that names it where not; and
    each kernel of the op accepts some class (none goes unchecked)."""
    fastim2col.set_num_threads(3)
    reached = set()
    for case, shapes in SHAPE_CLASSES.items():
        func, args, kwargs, expected = _call(op, rng, shapes, layout, dtype)
        for kernel in FORCEABLE:
            with fastim2col.use_kernel(kernel):
                try:
                    plan = fastim2col.explain(func, *args, **kwargs)
                except ValueError as exc:
                    assert f"use_kernel({kernel!r})" in str(exc)
                    with pytest.raises(ValueError, match=r"use_kernel\("):
                        func(*args, **kwargs)
                    continue
                got = func(*args, **kwargs)
            assert plan.kernel == kernel, (case, plan, kernel)
            try:
                assert_close(got, _to_layout(expected, op, layout), dtype)
            except AssertionError as exc:
                raise AssertionError(f"{case}, {kernel}: {exc}") from None
            reached.add(kernel)
    missing = EXPECTED[(op, layout)] - reached
    assert not missing, missing


def test_im2col_col2im_kernels(rng):
    x = rand(rng, (2, 3, 6, 5))
    with fastim2col.use_kernel("unroll"):
        cols = fastim2col.im2col(x, 3, padding=1)
        assert fastim2col.explain(fastim2col.im2col, x, 3, padding=1).kernel == "unroll"
    np.testing.assert_allclose(cols, R.im2col(x, 3, 1, 1, 1), rtol=1e-12)
    with fastim2col.use_kernel("fold"):
        back = fastim2col.col2im(cols, (6, 5), 3, padding=1)
    np.testing.assert_allclose(back, R.col2im(cols, (6, 5), 3, 1, 1, 1), rtol=1e-12)
    for kernel, func, args in (("gemm", fastim2col.im2col, (x, 3)),
                               ("unroll", fastim2col.col2im, (cols, (6, 5), 3, 1, 1)),
                               ("fold", fastim2col.conv2d, (x, np.ones((2, 3, 3, 3))))):
        with fastim2col.use_kernel(kernel):
            with pytest.raises(ValueError, match=f"use_kernel\\('{kernel}'\\).*it runs"):
                func(*args)


def test_kernels_lists_the_table():
    names = fastim2col.kernels()
    assert isinstance(names, tuple) and len(set(names)) == len(names)
    assert set(names) == {"unroll", "fold", "gemm", "thin_gemm", "direct", "depthwise", "taps",
                          "elementwise", "fill"}


@pytest.mark.parametrize("name", ["nope", "", None, 3, "fill", "GEMM"])
def test_use_kernel_refuses_unknown_names(name):
    with pytest.raises(ValueError, match="use_kernel: name must be one of"):
        with fastim2col.use_kernel(name):
            pass


def test_use_kernel_nests_and_restores(rng):
    x, w = rand(rng, (1, 4, 8, 8)), rand(rng, (4, 4, 3, 3))
    auto = fastim2col.explain(fastim2col.conv2d, x, w).kernel
    with fastim2col.use_kernel("gemm"):
        with fastim2col.use_kernel("direct"):
            assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == "direct"
        assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == "gemm"
    assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == auto
    with pytest.raises(RuntimeError):
        with fastim2col.use_kernel("gemm"):
            raise RuntimeError
    assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == auto


def test_use_kernel_not_strict_falls_back_to_the_planner(rng):
    """strict=False: a call the kernel runs gets it; a call it cannot run
    gets exactly the plan it has unforced, and the right result."""
    x, w = rand(rng, (1, 4, 8, 8)), rand(rng, (6, 4, 3, 3))
    g = rand(rng, (1, 6, 8, 8))
    auto = fastim2col.explain(fastim2col.conv2d, x, w, padding=1)
    with fastim2col.use_kernel("taps", strict=False):
        assert fastim2col.explain(fastim2col.conv2d, x, w, padding=1) == auto
        got = fastim2col.conv2d(x, w, padding=1)
        nhwc = fastim2col.explain(grad.conv2d_input, (1, 8, 8, 4), _weight(w, "NHWC"),
                                  _img(g, "NHWC"), padding=1, layout="NHWC")
    assert nhwc.kernel == "taps"
    assert_close(got, R.conv2d(x, w, None, 1, 1, 1, 1), np.float64)
    with fastim2col.use_kernel("taps"):
        with pytest.raises(ValueError, match="it runs NHWC input and weight gradients"):
            fastim2col.conv2d(x, w, padding=1)


def test_use_kernel_is_context_local(rng):
    """Another thread plans as usual while this one forces a kernel."""
    x, w = rand(rng, (1, 4, 8, 8)), rand(rng, (4, 4, 3, 3))
    auto = fastim2col.explain(fastim2col.conv2d, x, w).kernel
    forced = "gemm" if auto != "gemm" else "direct"
    seen = []
    go_on = threading.Event()

    def other():
        go_on.wait(10)
        seen.append(fastim2col.explain(fastim2col.conv2d, x, w).kernel)

    t = threading.Thread(target=other)
    t.start()
    with fastim2col.use_kernel(forced):
        go_on.set()
        t.join(10)
        assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == forced
    assert seen == [auto]


def test_explain_does_not_compute(rng):
    """explain validates as the call does, but runs no kernel and writes
    nothing (out= stays as it was)."""
    x, w = rand(rng, (2, 4, 8, 8)), rand(rng, (6, 4, 3, 3))
    out = np.full((2, 6, 8, 8), np.nan)
    plan = fastim2col.explain(fastim2col.conv2d, x, w, padding=1, out=out)
    assert np.isnan(out).all()
    assert isinstance(plan, fastim2col.Plan)
    assert plan.op == "conv2d" and plan.kernel in fastim2col.kernels()
    assert 1 <= plan.threads <= fastim2col.get_num_threads()
    assert plan.scratch_bytes >= 0 and plan.reason
    text = str(plan)
    assert "\n" not in text and plan.kernel in text and "conv2d" in text
    # the same validation errors as the call itself
    with pytest.raises(ValueError, match="out must have shape"):
        fastim2col.explain(fastim2col.conv2d, x, w, out=out)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        fastim2col.explain(fastim2col.conv2d, x, w, groups=3)
    with pytest.raises(TypeError, match="explain: func must be one of"):
        fastim2col.explain(np.dot, x, w)


def test_plans_of_typical_layers():
    """The planner's choices on layers whose kernel is settled (see
    docs/design.md): asserted on the Plan values."""
    f32 = np.float32
    x = np.zeros((1, 64, 56, 56), f32)
    plan = fastim2col.explain(fastim2col.conv2d, x, np.zeros((64, 64, 3, 3), f32), padding=1)
    if fastim2col._machine.machine().isa_level >= 2:
        assert plan.kernel == "direct" and len(plan.params["split"]) == 3
    else:   # below AVX-512, GEMM from 17 input channels on
        assert plan.kernel in ("gemm", "thin_gemm") and plan.params["in_place"] is False
    plan = fastim2col.explain(fastim2col.conv2d, x[:, :16], np.zeros((64, 16, 3, 3), f32),
                              padding=1)
    assert plan.kernel == "direct" and len(plan.params["split"]) == 3
    plan = fastim2col.explain(fastim2col.conv2d, x, np.zeros((256, 64, 1, 1), f32))
    assert plan.kernel in ("gemm", "thin_gemm") and plan.params["in_place"] is True
    xh = np.zeros((1, 56, 56, 32), f32)
    plan = fastim2col.explain(fastim2col.conv2d, xh, np.zeros((32, 3, 3, 1), f32), padding=1,
                              groups=32, layout="NHWC")
    assert plan.kernel == "depthwise"
    empty = fastim2col.explain(fastim2col.conv2d, np.zeros((0, 3, 8, 8)), np.ones((4, 3, 3, 3)))
    assert empty.kernel == "fill" and empty.threads == 1
    no_channels = fastim2col.explain(fastim2col.conv2d, np.zeros((1, 0, 8, 8)),
                                     np.ones((4, 0, 3, 3)), np.ones(4))
    assert no_channels.kernel == "fill"
    plan = fastim2col.explain(fastim2col.im2col, x, 3, padding=1)
    assert plan.kernel == "unroll" and plan.params["tile"] >= 1
    plan = fastim2col.explain(grad.conv2d_weight, np.zeros((1, 3, 224, 224), f32),
                              (64, 3, 7, 7), np.zeros((1, 64, 112, 112), f32), stride=2,
                              padding=3)
    assert plan.kernel == "direct" and plan.fallback is not None
    assert plan.fallback.kernel in ("gemm", "thin_gemm", "taps")
    assert "non-finite input" in str(plan)


def test_forced_gemm_keeps_blas_blocks(restore_threads):
    """The split follows the forced kernel: a weight gradient forced onto
    BLAS gets two blocks of output channels a thread (one a thread changed
    bits under concurrent calls), the thin GEMM one."""
    fastim2col.set_num_threads(2)
    x = np.zeros((1, 14, 14, 256), np.float32)
    g = np.zeros((1, 14, 14, 256), np.float32)
    blocks = {}
    for kernel in ("gemm", "thin_gemm"):
        with fastim2col.use_kernel(kernel):
            plan = fastim2col.explain(grad.conv2d_weight, x, (256, 3, 3, 256), g, padding=1,
                                      layout="NHWC")
        assert plan.kernel == kernel and plan.params["per_thread_sums"] is False
        blocks[kernel] = -(-256 // plan.params["split"][1])
    assert blocks == {"gemm": 4, "thin_gemm": 2}


def test_direct_weight_gradient_falls_back_on_nan(rng):
    """The direct weight gradient declines an input holding NaN; its plan's
    fallback then runs, and NaN propagates as in the reference."""
    x, g = rand(rng, (1, 3, 12, 12)), rand(rng, (1, 16, 12, 12))
    x[0, 1, 5, 5] = np.nan
    with fastim2col.use_kernel("direct"):
        plan = fastim2col.explain(grad.conv2d_weight, x, (16, 3, 3, 3), g, padding=1)
        got = grad.conv2d_weight(x, (16, 3, 3, 3), g, padding=1)
    assert plan.kernel == "direct" and plan.fallback is not None
    expected = R.conv2d_weight_grad(x, (16, 3, 3, 3), g, padding=1)
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(np.nan_to_num(got), np.nan_to_num(expected), np.float64)


def test_forced_kernel_scratch_and_threads_are_reported(rng):
    x, w = rand(rng, (1, 16, 20, 20), np.float32), rand(rng, (16, 16, 3, 3), np.float32)
    for kernel in ("direct", "gemm", "thin_gemm"):
        with fastim2col.use_kernel(kernel):
            plan = fastim2col.explain(fastim2col.conv2d, x, w, padding=1)
        assert plan.kernel == kernel and plan.scratch_bytes > 0, plan


VERBOSE_SCRIPT = """
import numpy as np, fastim2col
x = np.ones((1, 3, 8, 8), np.float32)
fastim2col.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding=1)
fastim2col.grad.conv2d_weight(x, (4, 3, 3, 3), np.ones((1, 4, 8, 8), np.float32), padding=1)
fastim2col.im2col(x, 2)
"""


@pytest.mark.parametrize("value", ["1", "0", None])
def test_verbose_prints_one_line_per_call(value):
    env = dict(os.environ)
    env.pop("FASTIM2COL_VERBOSE", None)
    if value is not None:
        env["FASTIM2COL_VERBOSE"] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", VERBOSE_SCRIPT], cwd=TESTS_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fastim2col: ")]
    if value != "1":
        assert lines == []
        return
    assert len(lines) == 3, proc.stderr
    first, second, third = lines
    assert first.startswith("fastim2col: conv2d x=(1, 3, 8, 8) weight=(4, 3, 3, 3)")
    assert "float32 NCHW" in first and " ms" in first
    assert fastim2col.explain(fastim2col.conv2d, np.ones((1, 3, 8, 8), np.float32),
                              np.ones((4, 3, 3, 3), np.float32), padding=1).kernel in first
    assert second.startswith("fastim2col: conv2d_weight") and third.startswith(
        "fastim2col: im2col") and "unroll" in third


def test_machine_record_is_read_once():
    from fastim2col._machine import machine
    m = machine()
    assert m is machine()
    assert m.isa_level == fastim2col._direct.best_isa_level()
    assert m.vector_elements(4) == fastim2col._direct.vector_elements(4)
    assert m.vector_elements(8) == fastim2col._direct.vector_elements(8)
    assert m.cache_line in (32, 64, 128, 256) and m.cpus >= 1
    assert m.l2_bytes >= 0 and m.l1d_bytes >= 0


def test_nhwc_forced_depthwise_roundtrip(rng):
    """Depthwise forced on NCHW is refused (it runs NHWC only) and the
    NHWC call matches the reference (a multiplier of 2)."""
    x, w = rand(rng, (1, 4, 6, 6)), rand(rng, (8, 1, 3, 3))
    with fastim2col.use_kernel("depthwise"):
        with pytest.raises(ValueError, match="NHWC depthwise"):
            fastim2col.conv2d(x, w, padding=1, groups=4)
        got = fastim2col.conv2d(img_to(x, "NHWC"), weight_to(w, "NHWC"), padding=1, groups=4,
                                layout="NHWC")
    assert_close(got, img_to(R.conv2d(x, w, None, 1, 1, 1, 4), "NHWC"), np.float64)


def test_tuned_thresholds_are_context_local():
    """_plan.tuned(NAME=value) changes the planner's thresholds inside its
    ``with`` block only: nested blocks apply on top, the defaults come back
    on leaving (also through an exception), other threads keep the defaults,
    and a name that is no threshold raises TypeError."""
    from fastim2col import _plan
    x, w = np.zeros((1, 4, 8, 8), np.float32), np.zeros((4, 4, 3, 3), np.float32)
    assert _plan.current() is _plan.DEFAULTS
    assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == "direct"
    with _plan.tuned(DIRECT_MAX_BAND_BYTES=0) as record:
        assert record.DIRECT_MAX_BAND_BYTES == 0 and _plan.current() is record
        assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == "gemm"
        with _plan.tuned(TILE_BYTES=7):
            assert (_plan.current().TILE_BYTES, _plan.current().DIRECT_MAX_BAND_BYTES) == (7, 0)
        assert _plan.current().TILE_BYTES == _plan.DEFAULTS.TILE_BYTES
        seen = []
        worker = threading.Thread(
            target=lambda: seen.append(fastim2col.explain(fastim2col.conv2d, x, w).kernel))
        worker.start()
        worker.join()
        assert seen == ["direct"]
    assert fastim2col.explain(fastim2col.conv2d, x, w).kernel == "direct"
    with pytest.raises(RuntimeError):
        with _plan.tuned(DIRECT_MAX_BAND_BYTES=0):
            raise RuntimeError
    assert _plan.current() is _plan.DEFAULTS
    with pytest.raises(TypeError, match="NO_SUCH_THRESHOLD"):
        with _plan.tuned(NO_SUCH_THRESHOLD=1):
            pass
    with pytest.raises(dataclasses.FrozenInstanceError):
        _plan.DEFAULTS.TILE_BYTES = 1   # frozen: tuned() is the only way


def test_recording_collects_executed_plans(rng):
    """_execute.recording() lists the Plans the calls in its block ran (not
    those only explained), in order, the direct weight gradient's fallback
    after its plan when a non-finite input sends it there; nothing outside."""
    from fastim2col import _execute
    x, w = rand(rng, (2, 12, 16, 16), np.float32), rand(rng, (8, 12, 3, 3), np.float32)
    g = fastim2col.conv2d(x, w, padding=1)
    with _execute.recording() as plans:
        fastim2col.explain(fastim2col.conv2d, x, w, padding=1)
        fastim2col.conv2d(x, w, padding=1)
        with fastim2col.use_kernel("gemm"):
            fastim2col.conv2d(x, w, padding=1)
        x[0, 0, 3, 3] = np.inf
        with fastim2col.use_kernel("direct"):
            grad.conv2d_weight(x, w.shape, g, padding=1)
    assert [(p.op, p.kernel) for p in plans] == [
        ("conv2d", "direct"), ("conv2d", "gemm"), ("conv2d_weight", "direct"),
        ("conv2d_weight", plans[2].fallback.kernel)]
    assert plans[3] is plans[2].fallback
    fastim2col.conv2d(x, w, padding=1)
    assert len(plans) == 4
