"""Hardening (issue #7): huge sizes.

* 32/64-bit overflow of sizes and indices and the 32-bit BLAS range, with
  stride-0 inputs (no memory): a ValueError that names the problem, raised
  before anything big is allocated.
* MemoryError rather than a crash when memory runs out (an address-space
  limit, RLIMIT_AS, makes "out of memory" deterministic and harmless), for
  results and for a kernel's scratch buffer; the library works afterwards.
* Padding, dilation and stride near 2**31, and element / image offsets past
  32 bits in lazily allocated zero pages (address space only): the right
  answer.

Linux-only parts (/proc, RLIMIT_AS) skip elsewhere.
"""
from __future__ import annotations

import contextlib
import gc
import math

import numpy as np
import pytest

import fastim2col as fi
from fastim2col import grad
import reference as ref
import _hardening_helpers
from _hardening_helpers import LAYOUTS, MiB, address_space_limit, int_values, needs_linux

# The autouse fixture of every hardening file: a hang fails the run (all
# stacks dumped); the kernel thread count and planner minima come back.
_watchdog = _hardening_helpers._watchdog

INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- huge sizes

def zeros_like_huge(shape, dtype=np.float32):
    """A stride-0 array of any logical shape that takes no memory (all ones)."""
    return np.broadcast_to(np.ones((), dtype), shape)


Z = zeros_like_huge
_X = np.ones((1, 1, 5, 5), np.float32)
_W = np.ones((1, 1, 3, 3), np.float32)
_GO = np.ones((1, 1, 3, 3), np.float32)
_COLS = np.ones((1, 9, 9), np.float32)


def _refused_cases():
    """Calls that must raise ValueError, with a regex the message must match."""
    cases = []
    for v in (2**31, 2**40, 2**62, 2**64):
        for what in ("padding", "stride", "dilation"):
            kw = {what: v}
            cases += [
                (f"im2col-{what}-{v}", lambda kw=kw: fi.im2col(_X, 3, **kw), what),
                (f"col2im-{what}-{v}", lambda kw=kw: fi.col2im(_COLS, (5, 5), 3, **kw), what),
                (f"conv2d-{what}-{v}", lambda kw=kw: fi.conv2d(_X, _W, **kw), what),
                (f"conv_transpose2d-{what}-{v}",
                 lambda kw=kw: fi.conv_transpose2d(_GO, _W, **kw), what),
                (f"conv2d_input-{what}-{v}",
                 lambda kw=kw: grad.conv2d_input(_X.shape, _W, _GO, **kw), what),
                (f"conv2d_weight-{what}-{v}",
                 lambda kw=kw: grad.conv2d_weight(_X, _W.shape, _GO, **kw), what),
            ]
        cases += [
            (f"im2col-kernel-{v}", lambda v=v: fi.im2col(_X, v), "kernel_size"),
            (f"col2im-output_size-{v}", lambda v=v: fi.col2im(_COLS, v, 3), "output_size"),
            (f"col2im-kernel-{v}", lambda v=v: fi.col2im(_COLS, (5, 5), (v, 1)), "kernel_size"),
            (f"conv_transpose2d-output_padding-{v}",
             lambda v=v: fi.conv_transpose2d(_GO, _W, stride=3, output_padding=v),
             "output_padding"),
            (f"conv2d_weight-kernel-{v}",
             lambda v=v: grad.conv2d_weight(_X, (1, 1, v, 1), _GO), "kernel_size"),
            (f"conv2d-groups-{v}", lambda v=v: fi.conv2d(_X, _W, groups=v), "groups"),
        ]
    blas = "32-bit BLAS"
    big = 2**31   # one past the BLAS int range
    cases += [
        # sizes whose unrolled matrix or result overflows int64 (or intp bytes)
        ("im2col-unrolled-2**80", lambda: fi.im2col(Z((1, 2**20, 2**20, 2**20)), 3, padding=1),
         "too large"),
        ("im2col-unrolled-2**80-nhwc",
         lambda: fi.im2col(Z((1, 2**20, 2**20, 2**20)), 3, padding=1, layout="NHWC"),
         "too large"),
        ("conv2d-result-2**64",
         lambda: fi.conv2d(Z((2**40, 1, 1, 1)), Z((2**24, 1, 1, 1))), "too large"),
        ("conv2d_input-result-2**70",
         lambda: grad.conv2d_input((2**70, 1, 1, 1), _W[:, :, :1, :1], Z((2**60, 1, 1, 1))),
         "grad_output"),
        ("conv2d_input-size-2**62-positions",
         lambda: grad.conv2d_input((1, 1, 2**62, 1), _W[:, :, :1, :1],
                                   Z((1, 1, 2**62 // (2**31 - 1) + 1, 1)), stride=(2**31 - 1, 1)),
         blas),
        ("col2im-L-mismatch-2**62",
         lambda: fi.col2im(Z((1, 1, 4)), (INT32_MAX, INT32_MAX), 1), "positions"),
        # BLAS sizes and leading dimensions beyond 2**31 - 1
        ("conv2d-positions", lambda: fi.conv2d(Z((1, 1, big, 1)), _W[:, :, :1, :1]), blas),
        ("conv2d-positions-nhwc",
         lambda: fi.conv2d(Z((1, big, 1, 1)), _W[:, :, :1, :1], layout="NHWC"), blas),
        ("conv2d-positions-2d",
         lambda: fi.conv2d(Z((1, 1, 2**16, 2**16)), _W, padding=1), blas),
        ("conv2d-out-channels", lambda: fi.conv2d(_X, Z((big, 1, 1, 1))), blas),
        ("conv2d-window", lambda: fi.conv2d(Z((1, big, 1, 1)), Z((1, big, 1, 1))), blas),
        ("conv2d-window-kernel",
         lambda: fi.conv2d(Z((1, 2**16, 2**8, 2**8)), Z((1, 2**16, 2**8, 2**8))), blas),
        ("conv_transpose2d-positions",
         lambda: fi.conv_transpose2d(Z((1, 1, big, 1)), _W[:, :, :1, :1]), blas),
        ("conv_transpose2d-positions-stride",
         lambda: fi.conv_transpose2d(_GO, _W, stride=INT32_MAX), blas),
        ("conv_transpose2d-in-channels",
         lambda: fi.conv_transpose2d(Z((1, big, 1, 1)), Z((big, 1, 1, 1))), blas),
        ("conv_transpose2d-window",
         lambda: fi.conv_transpose2d(_GO[:, :, :1, :1], Z((1, big, 1, 1))), blas),
        ("conv2d_input-positions",
         lambda: grad.conv2d_input((1, 1, big, 1), _W[:, :, :1, :1], Z((1, 1, big, 1))), blas),
        ("conv2d_input-out-channels",
         lambda: grad.conv2d_input((1, 1, 1, 1), Z((big, 1, 1, 1)), Z((1, big, 1, 1))), blas),
        ("conv2d_input-window",
         lambda: grad.conv2d_input((1, big, 1, 1), Z((1, big, 1, 1)), Z((1, 1, 1, 1))), blas),
        ("conv2d_weight-positions",
         lambda: grad.conv2d_weight(Z((1, 1, big, 1)), (1, 1, 1, 1), Z((1, 1, big, 1))), blas),
        ("conv2d_weight-out-channels",
         lambda: grad.conv2d_weight(_X[:, :, :1, :1], (big, 1, 1, 1), Z((1, big, 1, 1))), blas),
        ("conv2d_weight-window",
         lambda: grad.conv2d_weight(Z((1, big, 1, 1)), (1, big, 1, 1), Z((1, 1, 1, 1))), blas),
    ]
    return cases


REFUSED = _refused_cases()


@needs_linux
@pytest.mark.parametrize("name,call,match", REFUSED, ids=[c[0] for c in REFUSED])
def test_huge_sizes_are_refused(name, call, match):
    """Overflowing sizes, parameters and BLAS dimensions: a ValueError that
    names the problem, raised before anything big is allocated (the address
    space is capped, so a big allocation would show as MemoryError)."""
    with address_space_limit(), pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- out of memory

def _memory_error_cases():
    """Calls whose sizes pass every overflow check but need >= 1 TiB."""
    t = 2**20
    return [
        ("im2col-1TiB", lambda: fi.im2col(Z((2**18, 1, 2**10, 2**10)), 1)),
        ("im2col-2**32-positions-144GiB",
         lambda: fi.im2col(Z((1, 1, 2**16, 2**16)), 3, padding=1)),
        ("im2col-1TiB-nhwc", lambda: fi.im2col(Z((2**18, 2**10, 2**10, 1)), 1, layout="NHWC")),
        ("col2im-1TiB", lambda: fi.col2im(Z((1, 1, 2**38)), (2**20, 2**18), 1)),
        ("col2im-8EiB", lambda: fi.col2im(Z((1, 1, INT32_MAX * 2**30)), (INT32_MAX, 2**30), 1)),
        ("conv2d-1TiB", lambda: fi.conv2d(Z((2**18, 1, 2**10, 2**10)), _W[:, :, :1, :1])),
        ("conv2d-1TiB-nhwc",
         lambda: fi.conv2d(Z((2**18, 2**10, 2**10, 1)), _W[:, :, :1, :1], layout="NHWC")),
        ("conv_transpose2d-4TiB",
         lambda: fi.conv_transpose2d(np.ones((1, 1, 2**10, 2**10), np.float32),
                                     Z((1, t, 1, 1)))),
        ("conv2d_input-4TiB",
         lambda: grad.conv2d_input((1, t, 2**10, 2**10), Z((1, t, 1, 1)),
                                   np.ones((1, 1, 2**10, 2**10), np.float32))),
        ("conv2d_input-grad-output-copy-4EiB",
         lambda: grad.conv2d_input((2**60, 1, 1, 1), _W[:, :, :1, :1], Z((2**60, 1, 1, 1)))),
        ("conv2d_weight-4TiB",
         lambda: grad.conv2d_weight(Z((1, t, 1, 1)), (t, t, 1, 1), Z((1, t, 1, 1)))),
    ]


MEMORY_ERRORS = _memory_error_cases()


@needs_linux
@pytest.mark.parametrize("name,call", MEMORY_ERRORS, ids=[c[0] for c in MEMORY_ERRORS])
def test_unallocatable_results_raise_memory_error(name, call):
    with address_space_limit():
        with pytest.raises(MemoryError):
            call()
    fi.conv2d(_X, _W)   # and the library still works afterwards


@needs_linux
def test_kernel_scratch_allocation_failure_raises_memory_error():
    """The weight gradient's per-thread sums (calloc inside the kernel)
    cannot be allocated: MemoryError, no crash, and the library still works.
    (Single-threaded builds take another path and must just be right.)"""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 128, 9, 9))
    go = rng.standard_normal((4, 128, 1, 1))
    w_shape = (128, 128, 9, 9)
    expected = ref.conv2d_weight_grad(x, w_shape, go)
    fi.conv2d(x[:, :2], np.ones((1, 2, 9, 9)))   # thread pools exist before the cap
    # ... and OpenBLAS's buffers in every OpenMP thread, which it allocates on a
    # thread's first GEMM and retries forever under the cap (a forward pass
    # through BLAS, large enough for all threads, its tiles smaller than the
    # sums the kernel must fail to allocate)
    with fi.use_kernel("gemm"):
        fi.conv2d(np.ones((2, 64, 32, 32)), np.ones((64, 64, 3, 3)))
    out_bytes = math.prod(w_shape) * 8
    with address_space_limit(headroom=out_bytes + 12 * MiB):
        try:
            result = grad.conv2d_weight(x, w_shape, go)
        except MemoryError:
            result = None
    if result is not None:
        np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(grad.conv2d_weight(x, w_shape, go), expected,
                               rtol=1e-10, atol=1e-9)


# --------------------------------------------------------------------------- huge parameters

D = INT32_MAX          # the largest dilation / stride allowed
P = 2**30              # with D and a 2-tap kernel: every tap in the padding


@pytest.mark.parametrize("layout", LAYOUTS)
def test_huge_padding_dilation_stride_compute_correctly(layout):
    """Parameters near 2**31 whose index products exceed 32 bits: right
    answers (where all taps fall in the padding the result is the bias or 0;
    huge strides are checked against the reference)."""
    nhwc = layout == "NHWC"
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((4, 3, 2, 2))
    b = rng.standard_normal(4)
    wt = rng.standard_normal((3, 2, 2, 2))
    bt = rng.standard_normal(2)

    def L(a):      # image to layout
        return ref.to_nhwc(a) if nhwc else a

    def LW(a):     # weight to layout
        return ref.weight_to_nhwc(a) if nhwc else a

    kw = dict(padding=P, dilation=D, layout=layout)
    # conv2d: output 5x6, all taps in the padding -> the bias
    got = fi.conv2d(L(x), LW(w), b, **kw)
    np.testing.assert_array_equal(got, L(np.broadcast_to(b[:, None, None], (2, 4, 5, 6))))
    cols = fi.im2col(L(x), 2, **kw)
    np.testing.assert_array_equal(cols, np.zeros((2, 30, 12) if nhwc else (2, 12, 30)))
    back = fi.col2im(np.ones_like(cols), (4, 5), 2, **kw)
    np.testing.assert_array_equal(back, L(np.zeros((2, 3, 4, 5))))
    go = rng.standard_normal((2, 4, 5, 6))
    gx = grad.conv2d_input(L(x).shape, LW(w), L(go), **kw)
    np.testing.assert_array_equal(gx, L(np.zeros_like(x)))
    gw = grad.conv2d_weight(L(x), LW(w).shape, L(go), **kw)
    np.testing.assert_array_equal(gw, np.zeros(LW(w).shape))
    # conv_transpose2d: padding 2**30 - 1 and dilation D give a 5x6 output
    # that every tap misses -> the bias
    got = fi.conv_transpose2d(L(x), LW(wt), bt, padding=P - 1, dilation=D, layout=layout)
    np.testing.assert_array_equal(got, L(np.broadcast_to(bt[:, None, None], (2, 2, 5, 6))))

    # stride D: one output position per image
    expect = ref.conv2d(x, w, b, stride=D)
    np.testing.assert_allclose(fi.conv2d(L(x), LW(w), b, stride=D, layout=layout), L(expect),
                               rtol=1e-12, atol=1e-12)
    expect_cols = ref.im2col(x, 2, stride=D)
    got_cols = fi.im2col(L(x), 2, stride=D, layout=layout)
    np.testing.assert_array_equal(
        got_cols, ref.cols_to_nhwc(expect_cols, 3, (2, 2)) if nhwc else expect_cols)
    go1 = rng.standard_normal((2, 4, 1, 1))
    np.testing.assert_allclose(
        grad.conv2d_input(L(x).shape, LW(w), L(go1), stride=D, layout=layout),
        # (the reference's scratch scales with the stride: any stride >= the
        # image size has the same single window)
        L(ref.conv2d_input_grad(x.shape, w, go1, stride=(4, 5))), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        grad.conv2d_weight(L(x), LW(w).shape, L(go1), stride=D, layout=layout),
        LW(ref.conv2d_weight_grad(x, w.shape, go1, stride=D)), rtol=1e-12, atol=1e-12)
    c1 = rng.standard_normal((2, 12, 1))
    got = fi.col2im(ref.cols_to_nhwc(c1, 3, (2, 2)) if nhwc else c1, (4, 5), 2, stride=D,
                    layout=layout)
    np.testing.assert_allclose(got, L(ref.col2im(c1, (4, 5), 2, stride=(4, 5))),
                               rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def sparse_buffer():
    """8 GiB of float32 zeros that cost no memory: calloc maps zero pages
    lazily, and the tests touch a handful of them."""
    try:
        buf = np.zeros(2**31 + 2, np.float32)
    except MemoryError:
        pytest.skip("cannot reserve 8 GiB of address space here")
    yield buf
    del buf
    gc.collect()


@contextlib.contextmanager
def _touched(buf, indices, values):
    try:
        for i, v in zip(indices, values):
            buf[i] = v
        yield
    finally:
        for i in indices:
            buf[i] = 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flip", [False, True], ids=["forward", "negative-stride"])
def test_element_offsets_beyond_2_31(sparse_buffer, layout, flip):
    """A real (not stride-0) image of 2**31 + 2 rows: a 2-tap kernel with
    dilation 2**31 - 1 reads rows 0 and 2**31 - 1 -- element offsets past the
    32-bit range, byte offsets past 8 GiB, forwards and backwards."""
    nhwc = layout == "NHWC"
    rows = sparse_buffer.size
    x = sparse_buffer.reshape((1, rows, 1, 1) if nhwc else (1, 1, rows, 1))
    if flip:
        x = x[:, ::-1] if nhwc else x[:, :, ::-1]
    # buffer index of logical row r
    index = (lambda r: rows - 1 - r) if flip else (lambda r: r)
    a, b = 1.5, -2.25
    kw = dict(stride=(D, 1), dilation=(D, 1), layout=layout)
    w = np.array([3.0, 5.0], np.float32).reshape((1, 2, 1, 1) if nhwc else (1, 1, 2, 1))
    with _touched(sparse_buffer, [index(0), index(D)], [a, b]):
        np.testing.assert_array_equal(fi.conv2d(x, w, **kw).ravel(), [3 * a + 5 * b])
        np.testing.assert_array_equal(fi.im2col(x, (2, 1), **kw).ravel(), [a, b])
        go = np.full((1, 1, 1, 1), 2.0, np.float32)
        try:
            gw = grad.conv2d_weight(x, w.shape, go, **kw)
        except ValueError as exc:   # refuses H*W > 2**31 - 1 (over-cautious, but clear)
            assert "BLAS" in str(exc)
        else:
            np.testing.assert_array_equal(gw.ravel(), [2 * a, 2 * b])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_image_offsets_beyond_4_gib(sparse_buffer, layout):
    """Two real images of 2**30 + 1 rows each: image 1 starts 4 GiB in; a
    stride of 2**30 - 1 makes each image's two windows 4 GiB apart."""
    nhwc = layout == "NHWC"
    rows = (sparse_buffer.size) // 2
    x = sparse_buffer.reshape((2, rows, 1, 1) if nhwc else (2, 1, rows, 1))
    s = rows - 2
    used = [0, 1, s, s + 1]                     # rows the windows read
    rng = np.random.default_rng(17)
    vals = int_values(rng, (2, 4), np.float32)
    index = [img * rows + r for img in range(2) for r in used]
    compact = vals.reshape(2, 1, 4, 1).astype(np.float64)
    w = int_values(rng, (3, 1, 2, 1), np.float32)
    go = int_values(rng, (2, 3, 2, 1), np.float32)
    L = ref.to_nhwc if nhwc else (lambda a: a)
    LW = ref.weight_to_nhwc if nhwc else (lambda a: a)
    kw = dict(stride=(s, 1), layout=layout)
    with _touched(sparse_buffer, index, vals.ravel()):
        np.testing.assert_array_equal(fi.conv2d(x, LW(w), **kw),
                                      L(ref.conv2d(compact, w, stride=(2, 1))))
        cols = ref.im2col(compact, (2, 1), stride=(2, 1))
        np.testing.assert_array_equal(fi.im2col(x, (2, 1), **kw),
                                      ref.cols_to_nhwc(cols, 1, (2, 1)) if nhwc else cols)
        expect = ref.conv2d_weight_grad(compact, w.shape, go, stride=(2, 1))
        np.testing.assert_array_equal(grad.conv2d_weight(x, LW(w).shape, L(go), **kw),
                                      LW(expect))
