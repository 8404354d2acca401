"""Gradients of conv2d against the mathematics: finite differences (input,
weight and bias gradients), the reference over the parameter space
(hypothesis, the planner's cases, any strides, out=) on every kernel path,
and adjointness.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastim2col as F
import reference as R
from conftest import (LAYOUTS, PLAN_CASES, STRIDE_KINDS, as64, assert_close, conv_cases,
                      conv_inputs, conv_ref_kwargs, expected_layout, img_to, rand, restride,
                      weight_to)

conv2d_input, conv2d_weight = F.grad.conv2d_input, F.grad.conv2d_weight


def grad_case_inputs(case, rng):
    """(x, w, g, lib) with g a random grad_output; lib also holds g as passed."""
    x, w, _, lib = conv_inputs(case, rng)
    shape = R.conv2d(np.zeros((1,) + case["x_shape"][1:]), np.zeros(case["w_shape"]),
                     **conv_ref_kwargs(case)).shape[1:]
    g = rand(rng, (case["x_shape"][0],) + shape, case["dtype"])
    lib["g"] = restride(expected_layout(g, case), case["stride_kind"])
    lib["input_size"] = lib["x"].shape
    lib["weight_size"] = lib["weight"].shape
    return x, w, g, lib


def check_grads(case, rng, out=False):
    x, w, g, lib = grad_case_inputs(case, rng)
    kwargs = conv_ref_kwargs(case)
    layout = case["layout"]
    exp_x = expected_layout(R.conv2d_input_grad(x.shape, as64(w), as64(g), **kwargs), case)
    exp_w = weight_to(R.conv2d_weight_grad(as64(x), w.shape, as64(g), **kwargs), layout)
    outs = {}
    if out:
        outs = dict(x=np.full(exp_x.shape, np.nan, case["dtype"]),
                    w=np.full(exp_w.shape, np.nan, case["dtype"]))
    gx = conv2d_input(lib["input_size"], lib["weight"], lib["g"], **kwargs, layout=layout,
                      out=outs.get("x"))
    gw = conv2d_weight(lib["x"], lib["weight_size"], lib["g"], **kwargs, layout=layout,
                       out=outs.get("w"))
    if out:
        assert gx is outs["x"] and gw is outs["w"]
    assert_close(gx, exp_x, case["dtype"])
    assert_close(gw, exp_w, case["dtype"])


# --------------------------------------------------------------------------- finite differences

FD_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    dict(padding="same", dilation=(1, 2)),
    dict(groups=2),
]


def central_difference(f, a, eps=1e-6):
    grad = np.empty_like(a)
    for i in np.ndindex(a.shape):
        orig = a[i]
        a[i] = orig + eps
        hi = f()
        a[i] = orig - eps
        lo = f()
        a[i] = orig
        grad[i] = (hi - lo) / (2 * eps)
    return grad


@pytest.mark.parametrize("kwargs", FD_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_finite_differences(conv_path, rng, kwargs, layout):
    """d/dx, d/dw and d/db of sum(conv2d(x, w, b) * g), in float64."""
    groups = kwargs.get("groups", 1)
    x = img_to(rand(rng, (2, 2, 5, 4)), layout).copy()
    w = weight_to(rand(rng, (2, 2 // groups, 3, 2)), layout).copy()
    b = rand(rng, (2,))
    y = F.conv2d(x, w, b, **kwargs, layout=layout)
    g = rand(rng, y.shape)

    def f():
        return float(np.sum(F.conv2d(x, w, b, **kwargs, layout=layout) * g))

    tol = dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(conv2d_input(x.shape, w, g, **kwargs, layout=layout),
                               central_difference(f, x), **tol)
    np.testing.assert_allclose(conv2d_weight(x, w.shape, g, **kwargs, layout=layout),
                               central_difference(f, w), **tol)
    # The bias gradient (no function: documented as a sum of grad_output).
    axes = (0, 1, 2) if layout == "NHWC" else (0, 2, 3)
    np.testing.assert_allclose(g.sum(axis=axes), central_difference(f, b), **tol)


# --------------------------------------------------------------------------- reference

@given(conv_cases(), st.integers(0, 2**32 - 1), st.booleans())
def test_matches_reference(conv_path, kernel_threads, case, seed, out):
    check_grads(case, np.random.default_rng(seed), out=out)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", PLAN_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_cases(conv_path, kernel_threads, rng, x_shape, w_shape, stride, padding, dilation, groups,
                    layout, dtype):
    case = dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=False, layout=layout, dtype=dtype,
                unbatched=False, stride_kind="C")
    check_grads(case, rng)


@pytest.mark.parametrize("stride_kind", STRIDE_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", [(1, 1), (2, 3)])
def test_any_strides(conv_path, rng, stride_kind, layout, kernel):
    case = dict(x_shape=(3, 4, 7, 6), w_shape=(6, 2) + kernel, stride=1, padding=0,
                dilation=1, groups=2, bias=False, layout=layout, dtype=np.float64,
                unbatched=False, stride_kind=stride_kind)
    check_grads(case, rng)
    case.update(x_shape=(1, 4, 7, 6), unbatched=True)
    check_grads(case, rng, out=True)


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_adjointness(conv_path, kernel_threads, case, seed):
    """<conv2d(x, w), g> == <x, conv2d_input(g)> == <w, conv2d_weight(x, g)>."""
    case = dict(case, dtype=np.float64, bias=False)
    x, w, g, lib = grad_case_inputs(case, np.random.default_rng(seed))
    kwargs = dict(conv_ref_kwargs(case), layout=case["layout"])
    y = F.conv2d(lib["x"], lib["weight"], **kwargs)
    inner = np.vdot(y, lib["g"])
    gx = conv2d_input(lib["input_size"], lib["weight"], lib["g"], **kwargs)
    gw = conv2d_weight(lib["x"], lib["weight_size"], lib["g"], **kwargs)
    bound = 1e-12 * (np.vdot(np.abs(y), np.abs(lib["g"])) + 1) * np.prod(case["w_shape"][1:])
    assert abs(np.vdot(lib["x"], gx) - inner) <= bound
    assert abs(np.vdot(lib["weight"], gw) - inner) <= bound
