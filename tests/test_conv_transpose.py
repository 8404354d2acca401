"""conv_transpose2d against the reference: output_padding, groups, dilation,
both layouts and dtypes, bias, any strides, out=, NaN and empty sizes."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastim2col as F
import reference as R
from conftest import (DTYPES, LAYOUTS, STRIDE_KINDS, as64, assert_close, conv_inputs,
                      expected_layout, img_from, img_to, rand, run_isolated, transpose_cases,
                      transpose_ref_kwargs, weight_to)


def check_transpose(case, rng, out=False):
    x, w, b, lib = conv_inputs(case, rng, transpose=True)
    kwargs = transpose_ref_kwargs(case)
    expected = expected_layout(
        R.conv_transpose2d(as64(x), as64(w), None if b is None else as64(b), **kwargs), case)
    call = dict(**kwargs, layout=case["layout"])
    if out:
        call["out"] = np.full(expected.shape, np.nan, case["dtype"])
    got = F.conv_transpose2d(lib["x"], lib["weight"], lib["bias"], **call)
    if out:
        assert got is call["out"]
    assert_close(got, expected, case["dtype"])


@given(transpose_cases(), st.integers(0, 2**32 - 1), st.booleans())
def test_matches_reference(conv_path, kernel_threads, case, seed, out):
    check_transpose(case, np.random.default_rng(seed), out=out)


def case_of(x_shape, w_shape, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
            layout="NCHW", dtype=np.float64, bias=True, unbatched=False, stride_kind="C"):
    return dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding,
                output_padding=output_padding, groups=groups, dilation=dilation, bias=bias,
                layout=layout, dtype=dtype, unbatched=unbatched, stride_kind=stride_kind)


TRANSPOSE_CASES = [
    pytest.param(dict(x_shape=(2, 6, 5, 4), w_shape=(6, 2, 3, 3), stride=2, padding=1,
                      output_padding=1, groups=3), id="stride2-outpad1-groups"),
    pytest.param(dict(x_shape=(1, 3, 4, 5), w_shape=(3, 2, 1, 1), dilation=2,
                      output_padding=1), id="1x1-dilation-outpad"),
    pytest.param(dict(x_shape=(2, 4, 6, 6), w_shape=(4, 3, 1, 1)), id="direct-1x1"),
    pytest.param(dict(x_shape=(2, 4, 6, 6), w_shape=(4, 1, 1, 1), groups=4), id="direct-dw"),
    pytest.param(dict(x_shape=(2, 4, 7, 3), w_shape=(4, 1, 2, 4), stride=(3, 1),
                      padding=(0, 2), output_padding=(2, 0), dilation=(1, 2), groups=4),
                 id="depthwise-asym"),
    pytest.param(dict(x_shape=(1, 8, 5, 5), w_shape=(8, 2, 3, 3), stride=1, dilation=3,
                      output_padding=2, padding=2), id="outpad-below-dilation"),
    pytest.param(dict(x_shape=(2, 16, 20, 20), w_shape=(16, 8, 4, 4), stride=2, padding=1),
                 id="upsample-big"),
    pytest.param(dict(x_shape=(1, 32, 12, 24), w_shape=(32, 12, 3, 3), stride=(1, 2),
                      padding=1, output_padding=(0, 1), groups=2), id="many-channels"),
]


@pytest.mark.parametrize("params", TRANSPOSE_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_cases(conv_path, kernel_threads, rng, params, layout, dtype, bias):
    check_transpose(case_of(**params, layout=layout, dtype=dtype, bias=bias), rng)


@pytest.mark.parametrize("stride_kind", STRIDE_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_strides(conv_path, rng, stride_kind, layout):
    for kernel in [(1, 1), (3, 2)]:
        case = case_of((3, 4, 5, 6), (4, 3) + kernel, stride=(2, 1), output_padding=(1, 0),
                       groups=2, layout=layout, stride_kind=stride_kind)
        check_transpose(case, rng)
        case.update(x_shape=(1, 4, 5, 6), unbatched=True)
        check_transpose(case, rng, out=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_is_conv2d_input_gradient(conv_path, rng, layout):
    """conv_transpose2d(g, w) is the input gradient of conv2d for weight w."""
    x_shape, w = (2, 4, 9, 8), rand(rng, (6, 2, 3, 3))
    g = rand(rng, (2, 6, 5, 4))   # conv2d's output: 9x8 -> 5x4
    kwargs = dict(stride=2, padding=1, dilation=1, groups=2)
    expected = img_to(R.conv2d_input_grad(x_shape, w, g, **kwargs), layout)
    got = F.conv_transpose2d(img_to(g, layout), weight_to(w, layout), output_padding=(0, 1),
                             layout=layout, **kwargs)
    assert_close(got, expected, np.float64)


@pytest.mark.parametrize("dtypes, result", [
    ((np.float32, np.float32, np.float32), np.float32),
    ((np.float32, np.float64, None), np.float64),
    ((np.float16, np.float16, np.float16), np.float32),
    ((np.int32, np.int64, np.int8), np.float64),
    ((np.bool_, np.float32, None), np.float32),
])
def test_dtype_promotion(rng, dtypes, result):
    """bool + float32 promotes to float32 in NumPy: the result follows."""
    def values(shape, dt):
        if dt is None:
            return None
        return rng.integers(0, 3, shape).astype(dt)
    x, w, b = values((2, 4, 3, 3), dtypes[0]), values((4, 2, 2, 2), dtypes[1]), \
        values((2,), dtypes[2])
    got = F.conv_transpose2d(x, w, b, stride=2)
    expected = R.conv_transpose2d(as64(x), as64(w), None if b is None else as64(b), stride=2)
    assert_close(got, expected, result)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_propagates(conv_path, rng, layout):
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2))
    x = rand(rng, (2, 4, 9, 10))
    w = np.abs(rand(rng, (4, 3, 3, 2))) + 0.5
    x[1, 2, 4, 5] = np.nan
    expected = R.conv_transpose2d(x, w, **kwargs)
    mask = R.conv_transpose2d(np.isnan(x).astype(float), np.ones(w.shape), **kwargs) > 0
    assert 0 < mask.sum() < mask.size / 10
    np.testing.assert_array_equal(np.isnan(expected), mask)
    got = F.conv_transpose2d(img_to(x, layout), weight_to(w, layout), **kwargs, layout=layout)
    assert_close(got, img_to(expected, layout), np.float64)
    np.testing.assert_array_equal(np.isnan(img_from(got, layout)), mask)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((0, 4, 3, 3), (4, 2, 3, 3), 2),    # batch 0
    ((2, 0, 3, 3), (0, 2, 3, 3), 1),    # no input channels
    ((2, 4, 3, 3), (4, 0, 3, 3), 2),    # no output channels
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_empty(rng, layout, x_shape, w_shape, groups, with_bias):
    c_out = w_shape[1] * groups
    b = rand(rng, (c_out,)) if with_bias else None
    got = F.conv_transpose2d(img_to(np.zeros(x_shape), layout),
                             weight_to(np.zeros(w_shape), layout), b, stride=2, groups=groups,
                             layout=layout)
    expected = np.zeros((x_shape[0], c_out, 7, 7))
    if b is not None:
        expected += b[:, None, None]
    assert_close(got, img_to(expected, layout), np.float64)


ZERO_SIZE_IMAGES = """
import numpy as np, fastim2col as F, reference as R
bad = []
for shape in [(2, 3, 0, 4), (2, 3, 4, 0), (2, 3, 0, 0)]:
    for layout in ("NCHW", "NHWC"):
        print(shape, layout, flush=True)   # the last one printed is the one that crashed
        to = (lambda a: np.moveaxis(a, 1, -1)) if layout == "NHWC" else (lambda a: a)
        b = np.arange(2.0)
        # Nothing to scatter: the output (2 larger than x, kernel 3) is the bias.
        expected = np.zeros((2, 2, shape[2] + 2, shape[3] + 2)) + b[:, None, None]
        try:
            got = F.conv_transpose2d(to(np.zeros(shape)), to(np.ones((3, 2, 3, 3))), b,
                                     layout=layout)
        except ValueError:
            continue   # refusing an empty image is acceptable too
        except Exception as exc:
            bad.append((shape, layout, repr(exc)))
            continue
        if got.shape != to(expected).shape or not np.array_equal(got, to(expected)):
            bad.append((shape, layout, got.shape))
assert not bad, bad
print("checked")
"""


def test_zero_size_image():
    """An input of height or width 0: the bias-only result (or a ValueError),
    never another exception nor a crash (run in a fresh process)."""
    assert "checked" in run_isolated(ZERO_SIZE_IMAGES)
