"""Hardening (issue #7): the kernels stay inside their arrays in the corners
that random search reaches too rarely.

* Every 1-D window of a tiny image, over-padded ones included (kernel
  columns wholly in the padding), through all six functions with ``out=``
  inside a NaN-guarded buffer, on 1 and 2 threads: the right values and
  nothing written outside ``out``.
* Misaligned but C-contiguous inputs and ``out=`` arrays: the right result,
  or a ValueError about alignment for ``out=``; never a misaligned access.

Under the sanitizer build (tools/sanitize.sh) these also check the kernels'
scratch buffers and every access's alignment.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastim2col as fi
from fastim2col import grad
import reference as ref
import _hardening_helpers
from _hardening_helpers import Guarded, int_values, split_tiny_calls

# The autouse fixture of every hardening file: a hang fails the run (all
# stacks dumped); the kernel thread count and planner minima come back.
_watchdog = _hardening_helpers._watchdog


# --------------------------------------------------------------------------- over-padded windows

def _sweep_geometries():
    """Every 1-D (along W) window of a tiny image: kernel 1..4, dilation
    1..4, stride 1..2, padding 0 .. the kernel's whole span + 1, width 0..3:
    the over-padded corner (kernel columns wholly in the padding, one or two
    output positions) that random search reaches too rarely."""
    for k, d, s in itertools.product(range(1, 5), range(1, 5), range(1, 3)):
        span = d * (k - 1) + 1
        for p in range(span + 2):
            for w in range(4):
                if (w + 2 * p - span) // s + 1 >= 1:
                    yield k, d, s, p, w


@pytest.mark.parametrize("threads", [1, 2])
def test_over_padded_sweep_all_functions(threads):
    """All six functions on every geometry of _sweep_geometries(), out= in
    a NaN-guarded buffer: right values and nothing written outside out (the
    sanitizer build also sees the kernels' scratch buffers). threads=2 lets
    these tiny calls split across threads."""
    fi.set_num_threads(threads)
    if threads > 1:
        split_tiny_calls()
    rng = np.random.default_rng(37)
    n, c, c_out = 1, 2, 2
    for k, d, s, p, w in _sweep_geometries():
        kw = dict(stride=(1, s), padding=(0, p), dilation=(1, d))
        x = int_values(rng, (n, c, 1, w), np.float64)
        wt = int_values(rng, (c_out, c, 1, k), np.float64)
        y = ref.conv2d(x, wt, **kw)
        go = int_values(rng, y.shape, np.float64)
        cols = ref.im2col(x, (1, k), **kw)
        cases = [
            ("im2col", cols, lambda o: fi.im2col(x, (1, k), **kw, out=o)),
            ("col2im", ref.col2im(cols, (1, w), (1, k), **kw),
             lambda o: fi.col2im(cols, (1, w), (1, k), **kw, out=o)) if w else None,
            ("conv2d", y, lambda o: fi.conv2d(x, wt, **kw, out=o)),
            ("conv2d_input", ref.conv2d_input_grad(x.shape, wt, go, **kw),
             lambda o: grad.conv2d_input(x.shape, wt, go, **kw, out=o)),
            ("conv2d_weight", ref.conv2d_weight_grad(x, wt.shape, go, **kw),
             lambda o: grad.conv2d_weight(x, wt.shape, go, **kw, out=o)),
        ]
        # conv_transpose2d: the transpose of this window (input = y's size)
        if d * (k - 1) + 1 - 2 * p + (y.shape[3] - 1) * s >= 1:
            tk = dict(stride=(1, s), padding=(0, p), dilation=(1, d))
            cases.append(("conv_transpose2d",
                          ref.conv_transpose2d(go, wt.transpose(1, 0, 2, 3).copy(), **tk),
                          lambda o: fi.conv_transpose2d(go, wt.transpose(1, 0, 2, 3).copy(),
                                                        **tk, out=o)))
        for case in filter(None, cases):
            name, expected, call = case
            guarded = Guarded(expected.shape, np.float64)
            try:
                call(guarded.out)
                guarded.check()
                np.testing.assert_array_equal(guarded.out, expected)
            except AssertionError as exc:
                raise AssertionError(f"{name}, kernel {k} dilation {d} stride {s} padding {p} "
                                     f"width {w}, {threads} thread(s): {exc}") from None


# --------------------------------------------------------------------------- unaligned data

def _unaligned_copy(a):
    """A C-contiguous copy of ``a`` whose data pointer is 1 byte off alignment."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    u = raw[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned and u.flags.c_contiguous
    return u


def _unaligned_cases():
    """name -> (call(u_in, u_out), expected): u_in / u_out make inputs /
    out= arrays misaligned (or leave them as they are)."""
    rng = np.random.default_rng(7)
    x = int_values(rng, (2, 3, 7, 6), np.float32)
    w = int_values(rng, (4, 3, 3, 2), np.float32)
    b = int_values(rng, (4,), np.float32)
    go = ref.conv2d(x, w, padding=1).astype(np.float32)
    cols = ref.im2col(x, 3, padding=1).astype(np.float32)
    wt = int_values(rng, (3, 2, 3, 3), np.float32)
    w1 = np.ascontiguousarray(w[:, :, :1, :1])
    go1 = ref.conv2d(x, w1).astype(np.float32)
    xh, wh, goh = ref.to_nhwc(x), ref.weight_to_nhwc(w), ref.to_nhwc(go)
    return {
        "im2col": (lambda u, uo: fi.im2col(u(x), 3, padding=1, out=uo(np.zeros_like(cols))),
                   ref.im2col(x, 3, padding=1)),
        "col2im": (lambda u, uo: fi.col2im(u(cols), (7, 6), 3, padding=1,
                                           out=uo(np.zeros_like(x))),
                   ref.col2im(cols, (7, 6), 3, padding=1)),
        "conv2d": (lambda u, uo: fi.conv2d(u(x), u(w), u(b), padding=1,
                                           out=uo(np.zeros_like(go))),
                   ref.conv2d(x, w, b, padding=1)),
        "conv2d-nhwc": (lambda u, uo: fi.conv2d(u(xh), u(wh), u(b), padding=1, layout="NHWC",
                                                out=uo(np.zeros(goh.shape, goh.dtype))),
                        ref.to_nhwc(ref.conv2d(x, w, b, padding=1))),
        "conv2d-1x1": (lambda u, uo: fi.conv2d(u(x), u(w1), out=uo(np.zeros_like(go1))),
                       ref.conv2d(x, w1)),
        "conv_transpose2d": (lambda u, uo: fi.conv_transpose2d(u(x), u(wt), u(b[:2]), stride=2),
                             ref.conv_transpose2d(x, wt, b[:2], stride=2)),
        "conv2d_input": (lambda u, uo: grad.conv2d_input(x.shape, u(w), u(go), padding=1,
                                                         out=uo(np.zeros_like(x))),
                         ref.conv2d_input_grad(x.shape, w, go, padding=1)),
        "conv2d_weight": (lambda u, uo: grad.conv2d_weight(u(x), w.shape, u(go), padding=1,
                                                           out=uo(np.zeros_like(w))),
                          ref.conv2d_weight_grad(x, w.shape, go, padding=1)),
    }


UNALIGNED = _unaligned_cases()


@pytest.mark.parametrize("name", sorted(UNALIGNED))
def test_unaligned_contiguous_arrays(name):
    """Misaligned but C-contiguous inputs and out= arrays (np.frombuffer at
    an odd offset, a packed file, ...): the right result, or a ValueError
    about alignment for out= -- never a misaligned access in the kernels (the
    sanitizer build reports those as undefined behaviour)."""
    call, expected = UNALIGNED[name]
    same = lambda a: a   # noqa: E731
    try:
        result = call(_unaligned_copy, _unaligned_copy)
    except ValueError as exc:
        assert "align" in str(exc), exc
        result = call(_unaligned_copy, same)
    np.testing.assert_array_equal(result, expected.astype(np.float32))
