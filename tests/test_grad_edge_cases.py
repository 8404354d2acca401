"""Gradients of conv2d at the edges of their arguments: the forms of
input_size and weight_size, dtype promotion, NaN in grad_output or the input,
empty sizes, zero-size images with padding, and over-padded windows (the
weight gradient's memory safety, in a fresh interpreter).
"""
import numpy as np
import pytest

import fastim2col as F
import reference as R
from conftest import LAYOUTS, as64, assert_close, img_from, img_to, rand, run_isolated, weight_to

conv2d_input, conv2d_weight = F.grad.conv2d_input, F.grad.conv2d_weight


# --------------------------------------------------------------------------- argument forms

def test_input_size_forms(rng):
    w, g = rand(rng, (3, 2, 2, 2)), rand(rng, (1, 3, 4, 3))
    expected = R.conv2d_input_grad((1, 2, 5, 4), w, g)
    for size in [(1, 2, 5, 4), [1, 2, 5, 4], tuple(np.array([1, 2, 5, 4]))]:
        assert_close(conv2d_input(size, w, g), expected, np.float64)
    assert_close(conv2d_input((2, 5, 4), w, g[0]), expected[0], np.float64)   # unbatched
    x = rand(rng, (2, 5, 4))
    assert_close(conv2d_weight(x, [3, 2, 2, 2], g[0]),
                 R.conv2d_weight_grad(x[None], (3, 2, 2, 2), g), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_promotion(rng, layout):
    x = rng.integers(-3, 4, (2, 3, 5, 5))
    w = rng.integers(-3, 4, (2, 3, 3, 3)).astype(np.float32)
    g32 = rand(rng, (2, 2, 3, 3), np.float32)
    kw = dict(layout=layout)
    gx = conv2d_input(img_to(x, layout).shape, weight_to(w, layout), img_to(g32, layout), **kw)
    assert_close(gx, img_to(R.conv2d_input_grad(x.shape, w, g32), layout), np.float32)
    gw = conv2d_weight(img_to(x, layout), weight_to(w, layout).shape,
                       img_to(g32.astype(np.float16), layout), **kw)
    assert_close(gw, weight_to(R.conv2d_weight_grad(as64(x), w.shape, g32.astype(np.float16)),
                               layout), np.float64)   # int64 input + float16 -> float64
    gw = conv2d_weight(img_to(x.astype(np.float16), layout), weight_to(w, layout).shape,
                       img_to(g32, layout), **kw)
    assert_close(gw, weight_to(R.conv2d_weight_grad(as64(x), w.shape, g32), layout),
                 np.float32)


# --------------------------------------------------------------------------- NaN / empty

@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_in_grad_output(conv_path, rng, layout):
    kwargs = dict(stride=2, padding=1, groups=2)
    w = np.abs(rand(rng, (4, 1, 3, 3))) + 0.5
    g = rand(rng, (2, 4, 10, 10))
    g[1, 3, 4, 6] = np.nan
    expected = R.conv2d_input_grad((2, 2, 20, 20), w, g, **kwargs)
    mask = R.conv2d_input_grad((2, 2, 20, 20), np.ones(w.shape), np.isnan(g).astype(float),
                               **kwargs) > 0
    assert 0 < mask.sum() < mask.size / 10
    np.testing.assert_array_equal(np.isnan(expected), mask)
    gx = conv2d_input(img_to(np.zeros((2, 2, 20, 20)), layout).shape, weight_to(w, layout),
                      img_to(g, layout), **kwargs, layout=layout)
    assert_close(gx, img_to(expected, layout), np.float64)
    np.testing.assert_array_equal(np.isnan(img_from(gx, layout)), mask)
    # The weight gradient of a NaN input is NaN exactly where the NaN is read.
    x = rand(rng, (2, 2, 20, 20))
    x[0, 1, 7, 7] = np.nan
    g = rand(rng, (2, 4, 10, 10))
    gw = conv2d_weight(img_to(x, layout), weight_to(w, layout).shape, img_to(g, layout),
                       **kwargs, layout=layout)
    expected = R.conv2d_weight_grad(x, w.shape, g, **kwargs)
    assert 0 < np.isnan(expected).sum() < expected.size
    assert_close(gw, weight_to(expected, layout), np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((0, 3, 5, 5), (4, 3, 3, 3), 1),    # batch 0
    ((2, 0, 5, 5), (4, 0, 3, 3), 1),    # no input channels
    ((2, 4, 5, 5), (0, 2, 3, 3), 2),    # no output channels
])
def test_empty(rng, layout, x_shape, w_shape, groups):
    x = img_to(rand(rng, x_shape), layout)
    w = weight_to(rand(rng, w_shape), layout)
    g = img_to(rand(rng, (x_shape[0], w_shape[0], 5, 5)), layout)
    gx = conv2d_input(x.shape, w, g, padding=1, groups=groups, layout=layout)
    assert_close(gx, np.zeros(x.shape), np.float64, tol=0)
    gw = conv2d_weight(x, w.shape, g, padding=1, groups=groups, layout=layout)
    assert_close(gw, np.zeros(w.shape), np.float64, tol=0)


# --------------------------------------------------------------------------- over-padding

OVER_PADDED_SWEEP = """
import contextlib
import numpy as np, fastim2col as F, fastim2col._plan as P, reference as R
split = contextlib.ExitStack()
split.enter_context(P.tuned(MIN_FLOPS_PER_THREAD=1, MIN_BYTES_PER_THREAD=1))   # even small calls
rng = np.random.default_rng(0)
# Tiles of output positions end at many columns of a row, some inside the
# left padding (see test_conv2d.test_over_padded_memory_safety).
cases = [((1, 256, 28, 17), (2, 256, 1, 1), 3, 2)]
cases += [((n, 600, 10, w), (2, 600, k, k), p, t) for n in (1, 2) for k in (1, 2)
          for p in (k + 2, k + 5) for w in range(3, 20, 2) for t in (1, 3)]
bad = []
for x_shape, w_shape, p, t in cases:
    F.set_num_threads(t)
    x = rng.standard_normal(x_shape)
    y_shape = R.conv2d(x[:1, :1], np.zeros((1, 1) + w_shape[2:]), padding=p).shape
    g = rng.standard_normal((x_shape[0], w_shape[0]) + y_shape[2:])
    expected = R.conv2d_weight_grad(x, w_shape, g, padding=p)
    for _ in range(3):
        gw = F.grad.conv2d_weight(x, w_shape, g, padding=p)
    if not np.allclose(gw, expected, rtol=1e-10, atol=1e-9):
        bad.append((x_shape, w_shape, p, t))
assert not bad, bad
print("checked", len(cases))
"""


def test_weight_grad_over_padded_memory_safety():
    """As test_conv2d.test_over_padded_memory_safety, for conv2d_weight."""
    assert "checked" in run_isolated(OVER_PADDED_SWEEP)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape", [(2, 3, 0, 4), (2, 3, 4, 0)])
def test_zero_size_image_with_padding(rng, layout, x_shape):
    w = rand(rng, (2, 3, 1, 2))
    g = rand(rng, (2, 2, x_shape[2] + 2, x_shape[3] + 3))
    x = np.zeros(x_shape)
    kw = dict(padding=(1, 2), layout=layout)
    gx = conv2d_input(img_to(x, layout).shape, weight_to(w, layout), img_to(g, layout), **kw)
    assert gx.shape == img_to(x, layout).shape
    gw = conv2d_weight(img_to(x, layout), weight_to(w, layout).shape, img_to(g, layout), **kw)
    assert_close(gw, weight_to(R.conv2d_weight_grad(x, w.shape, g, padding=(1, 2)), layout),
                 np.float64, tol=0)
