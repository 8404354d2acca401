"""Execution: a Plan run by its kernel's compiled entry, from one table.

EXECUTORS maps (operation, kernel) to a function that hands the Call's
operands and the Plan's numbers to one compiled entry, by keyword. Nothing
here decides: every choice was made by fastim2col._planner.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import sys
import time
from typing import Callable, Iterator, Optional

import numpy as np

from . import _args, _conv, _depthwise, _direct, _im2col
from ._calls import Call
from ._kernels import KernelRefused, Plan, forced_strictly, unforced
from ._planner import PLANNERS
from ._threads import blas_single_threaded

# FASTIM2COL_VERBOSE, read once at import (reading the environment costs
# microseconds a call)
VERBOSE = os.environ.get("FASTIM2COL_VERBOSE", "") not in ("", "0")

_INPUT_GRADIENT_OPS = ("conv2d_input", "conv_transpose2d")


def _shape(call: Call) -> tuple[int, int, int, int]:
    """(N, C, rows, groups): the compiled entries' shape record."""
    return (call.n, call.channels, call.rows, call.groups)


def _nchw_view(a: np.ndarray, nhwc: bool) -> np.ndarray:
    """The direct kernels read NCHW: NHWC arrays go in as transposed views."""
    return a.transpose(0, 3, 1, 2) if nhwc else a


def _fill(call: Call, plan: Plan, res: np.ndarray) -> None:
    if call.bias is None or call.op not in ("conv2d", "conv_transpose2d"):
        res.fill(0)
    else:
        res[...] = call.bias if call.nhwc else call.bias.reshape((-1,) + (1,) * (res.ndim - 2))


def _unroll(call: Call, plan: Plan, res: np.ndarray) -> None:
    _im2col.im2col(call.x, res, geom=tuple(call.win), nhwc=call.nhwc,
                   tile=plan.params["tile"], n_threads=plan.threads)


def _fold(call: Call, plan: Plan, res: np.ndarray) -> None:
    _im2col.col2im(call.x, res, geom=tuple(call.win), nhwc=call.nhwc,
                   rows_per_band=plan.params["rows_per_band"], n_threads=plan.threads)


def _direct_forward(call: Call, plan: Plan, res: np.ndarray) -> None:
    _direct.direct_forward(_nchw_view(call.x, call.nhwc), call.w, call.bias, res,
                           groups=call.groups, geom=tuple(call.win),
                           split=plan.params["split"], n_threads=plan.threads, nhwc=call.nhwc)


def _depthwise_forward(call: Call, plan: Plan, res: np.ndarray) -> None:
    _depthwise.depthwise_forward(call.x, call.w.T.copy(), call.bias, res,
                                 multiplier=plan.params["multiplier"], geom=tuple(call.win),
                                 n_threads=plan.threads)


def _gemm_forward(call: Call, plan: Plan, res: np.ndarray) -> None:
    with blas_single_threaded:
        _conv.gemm_forward(call.x, call.w, call.bias, res, shape=_shape(call),
                           geom=tuple(call.win), nhwc=call.nhwc, n_threads=plan.threads,
                           **plan.params)


def _direct_input_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    _direct.direct_forward(_nchw_view(call.grad, call.nhwc), call.w, call.bias, res,
                           groups=call.groups, geom=plan.params["geom"],
                           split=plan.params["split"], n_threads=plan.threads,
                           flip_weights=True, nhwc=call.nhwc)


def _taps_input_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    _conv.taps_grad_input(call.grad, call.w, call.bias, res, shape=_shape(call),
                          geom=tuple(call.win), n_threads=plan.threads, **plan.params)


def _elementwise_input_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    groups, cg, og = call.groups, call.cg, call.og
    # the weights as (groups, taps, cg, og), each tap's columns contiguous,
    # starting on a cache line (the kernel reads them in vectors)
    w_taps = _args.line_aligned_copy(call.w.reshape(groups, og, -1, cg).transpose(0, 2, 3, 1))
    _conv.elementwise_grad_input(call.grad, w_taps, call.bias, res, shape=_shape(call),
                                 geom=tuple(call.win), n_threads=plan.threads, **plan.params)


def flipped_weights(call: Call) -> np.ndarray:
    """conv2d's weights (rows C_out, cg x taps) as those of the conv2d of
    grad_output that a stride-1 input gradient is: rows C_in, og x taps,
    each window flipped in space."""
    # (a flip of both axes reverses the row-major taps: one strided copy)
    w = call.w.reshape(call.groups, call.og, call.cg, -1)[:, :, :, ::-1]
    return np.ascontiguousarray(w.transpose(0, 2, 1, 3)).reshape(call.channels, -1)


def _gemm_input_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    if "flipped" in plan.params:
        params = dict(plan.params)
        flipped = params.pop("flipped")
        with blas_single_threaded:
            _conv.gemm_forward(call.grad, flipped_weights(call), call.bias, res,
                               shape=(call.n, call.rows, call.channels, call.groups),
                               geom=flipped, nhwc=False, n_threads=plan.threads, **params)
        return
    with blas_single_threaded:
        _conv.gemm_grad_input(call.grad, call.w, call.bias, res, shape=_shape(call),
                              geom=tuple(call.win), nhwc=call.nhwc, n_threads=plan.threads,
                              **plan.params)


def _direct_weight_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    """NHWC goes in as transposed views, the gradient through an NCHW-ordered
    copy of the (small) weights. The kernel declines an input holding NaN or
    infinity (its dropped lanes multiply by zero): the fallback plan then."""
    x, go, nhwc = call.x, call.grad, call.nhwc
    c_out, cg, win = call.rows, call.cg, call.win
    dw = np.empty((c_out, cg, win.kernel_h, win.kernel_w), res.dtype) if nhwc else res
    done = _direct.direct_weight(_nchw_view(x, nhwc), _nchw_view(go, nhwc),
                                 dw.reshape(c_out, -1), groups=call.groups, geom=tuple(win),
                                 split=plan.params["split"], n_threads=plan.threads)
    if not done:
        assert plan.fallback is not None
        _record(plan.fallback)
        EXECUTORS[(call.op, plan.fallback.kernel)](call, plan.fallback, res)
    elif nhwc:
        res[...] = dw.transpose(0, 2, 3, 1)


def _taps_weight_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    _conv.taps_grad_weight(call.x, call.grad, res.reshape(call.rows, -1), shape=_shape(call),
                           geom=tuple(call.win), n_threads=plan.threads, **plan.params)


def _gemm_weight_gradient(call: Call, plan: Plan, res: np.ndarray) -> None:
    params = dict(plan.params)
    gw = res.reshape(call.rows, -1)
    with blas_single_threaded:
        if params.pop("by_channels", False):
            _conv.gemm_grad_weight_by_channels(call.x, call.grad, gw, shape=_shape(call),
                                               geom=tuple(call.win), n_threads=plan.threads,
                                               **params)
        else:
            _conv.gemm_grad_weight(call.x, call.grad, gw, shape=_shape(call),
                                   geom=tuple(call.win), nhwc=call.nhwc,
                                   n_threads=plan.threads, **params)


Executor = Callable[[Call, Plan, np.ndarray], None]
EXECUTORS: dict[tuple[str, str], Executor] = {
    ("im2col", "unroll"): _unroll,
    ("col2im", "fold"): _fold,
    ("conv2d", "direct"): _direct_forward,
    ("conv2d", "depthwise"): _depthwise_forward,
    ("conv2d", "gemm"): _gemm_forward,
    ("conv2d", "thin_gemm"): _gemm_forward,
    ("conv2d_weight", "direct"): _direct_weight_gradient,
    ("conv2d_weight", "taps"): _taps_weight_gradient,
    ("conv2d_weight", "gemm"): _gemm_weight_gradient,
    ("conv2d_weight", "thin_gemm"): _gemm_weight_gradient,
}
for _op in ("im2col", "col2im", "conv2d", "conv2d_weight") + _INPUT_GRADIENT_OPS:
    EXECUTORS[(_op, "fill")] = _fill
for _op in _INPUT_GRADIENT_OPS:
    EXECUTORS[(_op, "direct")] = _direct_input_gradient
    EXECUTORS[(_op, "taps")] = _taps_input_gradient
    EXECUTORS[(_op, "elementwise")] = _elementwise_input_gradient
    EXECUTORS[(_op, "gemm")] = _gemm_input_gradient
    EXECUTORS[(_op, "thin_gemm")] = _gemm_input_gradient


# The list that recording() collects executed plans in, or None (not recording).
_recorded: contextvars.ContextVar[Optional[list[Plan]]] = contextvars.ContextVar(
    "fastim2col_recorded_plans", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[Plan]]:
    """A list of the Plans the calls inside the ``with`` block execute, in
    order (context-local, as use_kernel): each call's plan, and after it its
    fallback plan where the kernel declined at run time. For tests: what ran,
    as values, instead of wrapping the planner's functions."""
    plans: list[Plan] = []
    token = _recorded.set(plans)
    try:
        yield plans
    finally:
        _recorded.reset(token)


def _record(the_plan: Plan) -> None:
    plans = _recorded.get()
    if plans is not None:
        plans.append(the_plan)


def plan(call: Call) -> Plan:
    try:
        the_plan = PLANNERS[call.op](call)
    except KernelRefused:
        if forced_strictly():
            raise
        with unforced():
            the_plan = PLANNERS[call.op](call)
    if call.name and call.name != call.op:   # a 1-d call: its plan says so
        the_plan = dataclasses.replace(the_plan, op=call.name)
    return the_plan


def run(call: Call, the_plan: Optional[Plan] = None) -> np.ndarray:
    """Plan the call (or take the_plan: a test's own split for a kernel),
    allocate its result (or take out=), execute, return."""
    if the_plan is None:
        the_plan = plan(call)
    plans = _recorded.get()
    if plans is not None:
        plans.append(the_plan)
    res = call.batched_out
    if res is None:
        res = np.empty(call.shape, call.dtype)
    verbose = VERBOSE
    start = time.perf_counter() if verbose else 0.0
    EXECUTORS[(call.op, the_plan.kernel)](call, the_plan, res)
    if verbose:
        ms = (time.perf_counter() - start) * 1e3
        print(f"fastim2col: {call.describe()} | {the_plan} | {ms:.3f} ms", file=sys.stderr)
    if call.out is not None:
        return call.out
    return call.public_result(res)
