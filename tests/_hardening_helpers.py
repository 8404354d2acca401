"""What the tests/test_hardening_*.py files share (the hardening tests of
issue #7, split by concern): Linux-only switches, hypothesis settings, the
autouse watchdog each file installs, an address-space cap that makes "out of
memory" safe to test, small-integer arrays, NaN-guarded ``out=`` buffers and
a valid call of every public function.

Not a test module and not conftest.py: the test files import it by name
(tests/ is on sys.path, as for ``reference``).
"""
from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastim2col as fi
from fastim2col import _plan, grad
import reference as ref
from conftest import SMALL_WORK

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

LINUX = sys.platform.startswith("linux")
LAYOUTS = ("NCHW", "NHWC")
MiB, GiB = 1 << 20, 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# FASTIM2COL_HARDENING_EXAMPLES=2000 for a deeper (slower) search.
EXAMPLES = int(os.environ.get("FASTIM2COL_HARDENING_EXAMPLES", 60))
PROPS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))
needs_linux = pytest.mark.skipif(not (LINUX and resource is not None),
                                 reason="needs /proc and RLIMIT_AS (Linux)")


# The planner's thresholds tuned for the rest of a test (split_tiny_calls),
# undone by _watchdog after it.
_TUNING = contextlib.ExitStack()


def split_tiny_calls(on: bool = True) -> None:
    """For the rest of the test, let tiny calls use several threads (the
    planner normally keeps calls under a few MFLOP on one thread), or (on
    False) not: the default thresholds again."""
    values = SMALL_WORK if on else {name: getattr(_plan.DEFAULTS, name) for name in SMALL_WORK}
    _TUNING.enter_context(_plan.tuned(**values))


@pytest.fixture(autouse=True)
def _watchdog():
    """A hang fails the run (all stacks dumped) instead of blocking it; the
    default kernel thread count and planner thresholds are back after every
    test."""
    faulthandler.dump_traceback_later(int(os.environ.get("FASTIM2COL_WATCHDOG_S", 600)),
                                      exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        fi.set_num_threads(None)
        _TUNING.close()


# --------------------------------------------------------------------------- memory tools

def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * PAGE


@contextlib.contextmanager
def address_space_limit(headroom=2 * GiB):
    """Cap this process's address space at its current size + headroom: any
    bigger allocation fails at once (MemoryError) instead of being granted
    and touched (overcommit), so "out of memory" paths are safe to test."""
    if not (LINUX and resource is not None):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_bytes() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --------------------------------------------------------------------------- arrays

def int_values(rng, shape, dtype):
    """Small integers: every sum the tests make is exact in float32."""
    dtype = np.dtype(dtype)
    v = rng.integers(-4, 5, size=shape)
    if dtype.kind == "b":
        return v > 0
    if dtype.kind == "u":
        v = np.abs(v)
    return v.astype(dtype)


class Guarded:
    """An ``out=`` array inside a NaN-filled buffer: the result must fill
    all of it and nothing around it."""
    GUARD = 37

    def __init__(self, shape, dtype):
        size = math.prod(shape)
        self.flat = np.full(size + 2 * self.GUARD, np.nan, dtype)
        self.out = self.flat[self.GUARD:self.GUARD + size].reshape(shape)

    def check(self):
        g = self.GUARD
        assert np.isnan(self.flat[:g]).all() and np.isnan(self.flat[-g:]).all(), \
            "fastim2col wrote outside out="


# --------------------------------------------------------------------------- calls

def _valid_calls():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 3))
    go = ref.conv2d(x, w, padding=1, groups=2)
    cols = ref.im2col(x, 3, padding=1)
    return {
        "im2col": (fi.im2col, dict(x=x, kernel_size=3, stride=1, padding=1, dilation=1,
                                   layout="NCHW", out=None)),
        "col2im": (fi.col2im, dict(cols=cols, output_size=(6, 5), kernel_size=3, stride=1,
                                   padding=1, dilation=1, layout="NCHW", out=None)),
        "conv2d": (fi.conv2d, dict(x=x, weight=w, bias=np.ones(6), stride=1, padding=1,
                                   dilation=1, groups=2, layout="NCHW", out=None)),
        "conv_transpose2d": (fi.conv_transpose2d, dict(
            x=go, weight=w, bias=np.ones(4), stride=2, padding=1, output_padding=1,
            groups=2, dilation=1, layout="NCHW", out=None)),
        "conv2d_input": (grad.conv2d_input, dict(
            input_size=x.shape, weight=w, grad_output=go, stride=1, padding=1, dilation=1,
            groups=2, layout="NCHW", out=None)),
        "conv2d_weight": (grad.conv2d_weight, dict(
            input=x, weight_size=w.shape, grad_output=go, stride=1, padding=1, dilation=1,
            groups=2, layout="NCHW", out=None)),
    }
