"""Hardening (issue #7): garbage arguments.

* Random garbage (hypothesis) for one or two arguments of every public
  function: ValueError or TypeError with a message, never another
  exception, a crash or a hang (MemoryError only where a huge size was
  passed: the address space is capped).
* Thread counts past a C int, or absurdly high: refused or harmless.
* ``out=`` of the wrong shape, dtype, order, writability or type, or
  aliasing an input: ValueError or TypeError naming ``out``.

Linux-only parts (RLIMIT_AS) skip elsewhere.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastim2col as fi
from fastim2col import grad
import reference as ref
import _hardening_helpers
from _hardening_helpers import EXAMPLES, PROPS, _valid_calls, address_space_limit, needs_linux

# The autouse fixture of every hardening file: a hang fails the run (all
# stacks dumped); the kernel thread count and planner minima come back.
_watchdog = _hardening_helpers._watchdog


# --------------------------------------------------------------------------- garbage arguments

HUGE_INTS = [2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**100]


@st.composite
def garbage_arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=5)))
    dtype = draw(st.sampled_from(["f4", "f8", "i4", "u8", "?", "f2", ">f8", "c16", "O",
                                  "U2", "S1", "M8[s]", "m8[s]", "V3", "g"]))
    return np.zeros(shape, dtype)


_atoms = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 4), st.sampled_from(HUGE_INTS),
    st.sampled_from([-v for v in HUGE_INTS]),
    st.floats(allow_nan=True, allow_infinity=True), st.complex_numbers(allow_nan=True),
    st.text(max_size=5), st.binary(max_size=4),
    st.sampled_from(["same", "valid", "SAME", "NCHW", "NHWC", "nchw", "", "full"]),
    st.sampled_from([np.int64(3), np.uint64(2**63), np.int8(-1), np.float32(1.0),
                     np.bool_(True), np.str_("NCHW"), Fraction(3, 2), Decimal("2"),
                     Decimal("NaN"), Ellipsis, slice(None), object(), {}, {1: 2},
                     frozenset(), range(3), np.array(3), np.array([1, 2]),
                     np.array([[1, 2]]), np.array(2.5), np.array([1.0, 2.0]),
                     np.array([1, 2**70], dtype=object), [1, [2]], np.float64("nan")]),
    garbage_arrays(),
)
garbage = st.recursive(
    _atoms, lambda kids: st.one_of(st.lists(kids, max_size=5), st.tuples(kids, kids),
                                   st.lists(kids, max_size=5).map(tuple)),
    max_leaves=8)


def _has_huge_int(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return abs(int(value)) >= 2**20
    if isinstance(value, np.ndarray):
        return value.dtype == object and any(_has_huge_int(v) for v in value.ravel())
    if isinstance(value, (list, tuple)):
        return any(_has_huge_int(v) for v in value)
    return False


VALID_CALLS = _valid_calls()


@needs_linux
@settings(PROPS, max_examples=EXAMPLES * 6)
@given(name=st.sampled_from(sorted(VALID_CALLS)), data=st.data())
def test_garbage_arguments_raise_value_or_type_error(name, data):
    fn, kwargs = VALID_CALLS[name]
    kwargs = dict(kwargs)
    keys = data.draw(st.lists(st.sampled_from(sorted(kwargs)), min_size=1, max_size=2,
                              unique=True), label="corrupted")
    for key in keys:
        kwargs[key] = data.draw(garbage, label=key)
    with address_space_limit():
        try:
            result = fn(**kwargs)
        except (ValueError, TypeError) as exc:
            assert str(exc), "an error without a message"
            return
        except MemoryError:
            assert any(_has_huge_int(kwargs[k]) for k in keys), \
                "MemoryError without any huge size in the arguments"
            return
    assert isinstance(result, np.ndarray)   # the garbage happened to be valid


def test_invalid_thread_count_is_refused_or_harmless():
    """set_num_threads(2**31) must be refused, or later calls must still work
    (they must not die with OverflowError in the kernel's C int)."""
    x = np.ones((1, 1, 4, 4))
    try:
        try:
            fi.set_num_threads(2**31)
        except (ValueError, TypeError):
            return
        result = fi.conv2d(x, np.ones((1, 1, 3, 3)))
        np.testing.assert_array_equal(result, np.full((1, 1, 2, 2), 9.0))
    finally:
        fi.set_num_threads(None)


@needs_linux
def test_absurd_thread_count_does_not_kill_the_process():
    """set_num_threads(10**6): refused, or clamped -- not a libgomp abort
    ("Thread creation failed") or a segfault on the next big call (run in a
    child process)."""
    code = textwrap.dedent("""
        import numpy as np, fastim2col as fi
        try:
            fi.set_num_threads(10**6)
        except (ValueError, TypeError):
            raise SystemExit(0)                  # refused
        if fi.get_num_threads() <= 4096:
            raise SystemExit(0)                  # clamped
        # 2e11 FLOPs: enough work for the planner to use ~50,000 threads.
        # (stride-0 input: no memory; the weight is 400 KB, the result 4 MB)
        x = np.broadcast_to(np.float32(1), (1, 1, 1099, 1999))
        w = np.ones((1, 1, 100, 1000), np.float32)
        try:
            r = fi.conv2d(x, w)
            assert r.shape == (1, 1, 1000, 1000) and (r == 1e5).all()
        except (ValueError, RuntimeError, MemoryError):
            pass
    """)
    env = dict(os.environ)
    env.pop("FASTIM2COL_WATCHDOG_S", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


# --------------------------------------------------------------------------- out= errors

def _out_error_cases():
    """(name, call) pairs whose out= must be refused with ValueError/TypeError."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((2, 2, 1, 1))
    go = ref.conv2d(x, w)
    cols = ref.im2col(x, 1)
    f_order = np.asfortranarray(np.zeros((1, 2, 5, 5)))
    ro = np.zeros((1, 2, 5, 5))
    ro.flags.writeable = False
    wbuf = np.zeros(54)
    wbuf[:4] = w.ravel()
    return [
        ("conv2d-shape", lambda: fi.conv2d(x, w, out=np.zeros((1, 2, 5, 4)))),
        ("conv2d-dtype", lambda: fi.conv2d(x, w, out=np.zeros((1, 2, 5, 5), np.float32))),
        ("conv2d-fortran", lambda: fi.conv2d(x, w, out=f_order)),
        ("conv2d-readonly", lambda: fi.conv2d(x, w, out=ro)),
        ("conv2d-list", lambda: fi.conv2d(x, w, out=[[0.0]])),
        ("conv2d-aliases-x", lambda: fi.conv2d(x, w, out=x)),
        ("conv2d-aliases-weight", lambda: fi.conv2d(x, wbuf[:4].reshape(w.shape),
                                                   out=wbuf[2:52].reshape(1, 2, 5, 5))),
        ("im2col-shape", lambda: fi.im2col(x, 1, out=np.zeros((1, 2, 24)))),
        ("im2col-aliases", lambda: fi.im2col(x, 1, out=x.reshape(1, 2, 25))),
        ("col2im-dtype", lambda: fi.col2im(cols, (5, 5), 1, out=np.zeros((1, 2, 5, 5), "f4"))),
        ("col2im-aliases", lambda: fi.col2im(cols, (5, 5), 1, out=cols.reshape(1, 2, 5, 5))),
        ("conv_transpose2d-shape", lambda: fi.conv_transpose2d(go, w, out=np.zeros((2, 5, 5)))),
        ("conv_transpose2d-aliases", lambda: fi.conv_transpose2d(go, w, out=go)),
        ("conv2d_input-aliases", lambda: grad.conv2d_input(x.shape, w, go, out=go)),
        ("conv2d_input-readonly", lambda: grad.conv2d_input(x.shape, w, go, out=ro)),
        ("conv2d_weight-aliases", lambda: grad.conv2d_weight(x, w.shape, go,
                                                             out=x.reshape(-1)[:4].reshape(w.shape))),
        ("conv2d_weight-shape", lambda: grad.conv2d_weight(x, w.shape, go, out=np.zeros(4))),
    ]


@pytest.mark.parametrize("name,call", _out_error_cases(), ids=[c[0] for c in _out_error_cases()])
def test_out_errors(name, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert "out" in str(info.value)
