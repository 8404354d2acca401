"""The input gradient's element-by-element kernel for layers of few channels a
group (the stem; src/_conv.pyx grad_input_few): every band and thread count
on every ISA level against the reference, the planner's rule and bands, the
weights' cache-line aligned copy, and the kernel entry's argument checks.
"""
import numpy as np
import pytest

import fastim2col as F
import reference as R
from conftest import as64, assert_close, img_to, rand, run_with_params, weight_to
from _grad_helpers import _thread_counts

conv2d_input, conv2d_weight = F.grad.conv2d_input, F.grad.conv2d_weight

# (batch, channels, outputs, height, width, kernel, stride, padding,
# dilation, groups): the stem's geometry, strides 1-3 (unequal too), padding
# past the kernel, dilation, 1x1 stride 2, groups, an image narrower than
# the stride; outputs a multiple of the vector or not (the last og % DVEC
# channels one at a time), 2 vectors and more (one position's even and odd
# sums); blocks and half blocks of every channel count with whole vectors
_FEW_CASES = [(1, 3, 64, 23, 21, 7, 2, 3, 1, 1), (2, 1, 16, 9, 12, 3, 1, 1, 1, 1),
              (2, 4, 40, 11, 10, 3, (2, 3), (0, 2), 1, 1), (1, 2, 21, 13, 9, 5, 3, 4, 1, 1),
              (1, 6, 48, 14, 12, (4, 3), 1, 2, (1, 3), 2), (3, 3, 33, 8, 7, 1, 2, 1, 1, 1),
              (1, 4, 96, 6, 17, 3, 1, 0, 2, 4), (1, 2, 16, 7, 2, 3, 3, 1, 1, 1),
              (1, 2, 32, 5, 24, 3, 1, 1, 1, 1), (1, 1, 32, 5, 14, 3, 1, 1, 1, 1),
              (1, 4, 32, 5, 17, 3, 1, 1, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_channel_paths(rng, small_work, recorded, restore_threads, conv_isa, dtype):
    """NHWC input gradients of at most FEW_MAX_CHANNELS channels a group,
    element by element (src/_conv.pyx grad_input_few; forced with use_kernel, both dtypes,
    every ISA level this CPU runs: conv_isa): bands of 1, 2 or all rows, positions in
    blocks, half blocks and single edge columns, grad_output's rows copied
    per band or read in place; conv_transpose2d's bias;
    `out=` pre-filled with NaN; against the reference, and with the same bits
    for every band and thread count (each element is one unit's sum)."""
    from fastim2col import _args, _conv
    calls = recorded   # the plans run
    with F.use_kernel("elementwise"):   # every call: element by element
        for n, c, o, h, w_, k, s, p, d, groups in _FEW_CASES:
            k, s, p, d = (v if isinstance(v, tuple) else (v, v) for v in (k, s, p, d))
            x_shape = (n, c, h, w_)
            w = rand(rng, (o, c // groups) + k, dtype)
            g = rand(rng, R.conv2d(np.zeros(x_shape), np.zeros(w.shape), stride=s,
                                   padding=p, dilation=d, groups=groups).shape, dtype)
            b = rand(rng, (c,), dtype)
            expected = img_to(R.conv2d_input_grad(x_shape, as64(w), as64(g), s, p, d,
                                                  groups), "NHWC")
            results = []
            for band in (None, 1, 2, 1000):   # None: the planner's bands
                params = {} if band is None else {"band": band}
                for _ in _thread_counts(calls):
                    got = run_with_params(conv2d_input, expected.shape, weight_to(w, "NHWC"),
                                          img_to(g, "NHWC"), s, p, d, groups, layout="NHWC",
                                          out=np.full(expected.shape, np.nan, dtype),
                                          params=params)
                    assert calls[-1].kernel == "elementwise"
                    assert band is None or calls[-1].params["band"] == band
                    assert_close(got, expected, dtype)
                    results.append(got)
            # grad_output's rows copied to a buffer on cache lines or read in
            # place (the call above copies where NumPy's array starts off a line)
            wt = np.ascontiguousarray(weight_to(w, "NHWC").reshape(
                groups, o // groups, -1, c // groups).transpose(0, 2, 3, 1))
            win = _args.window((h, w_), k, s, p, d, allow_strings=False)
            for band in (1, 3, 1000):
                for copy in (False, True):
                    got = np.full(expected.shape, np.nan, dtype)
                    _conv.elementwise_grad_input(np.ascontiguousarray(img_to(g, "NHWC")), wt,
                                                 None, got, shape=(n, c, o, groups),
                                                 geom=tuple(win), band=band, copy_rows=copy,
                                                 n_threads=2)
                    results.append(got)
            assert all(np.array_equal(results[0], r) for r in results[1:])
            # conv_transpose2d maps g back to x's channels, plus a bias
            got = F.conv_transpose2d(img_to(g, "NHWC"), weight_to(w, "NHWC"), b, s, p,
                                     output_padding=tuple(
                                         (x_shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1)
                                         % s[i] for i in (0, 1)),
                                     groups=groups, dilation=d, layout="NHWC")
            assert calls[-1].kernel == "elementwise"
            assert_close(got, expected + b, dtype)


def test_few_channel_plan():
    """Which input gradients go element by element: NHWC, at most
    FEW_MAX_CHANNELS channels a group, output channels a multiple of the
    widest vector, not 1x1 stride 1 (nothing to fold), AVX-512 (AVX2: stride
    1 only); bands so that each thread gets FEW_BANDS_PER_THREAD units, each
    copying at most FEW_COPY_BYTES of grad_output rows."""
    from fastim2col import _args, _conv, _plan
    assert _plan.FEW_MAX_CHANNELS == _conv.FEW_CHANNELS
    stem = _args.window((224, 224), (7, 7), 2, 3, 1, allow_strings=False)
    same = _args.window((32, 32), (3, 3), 1, 1, 1, allow_strings=False)
    assert _plan.use_few_channels(True, 3, 64, False, stem, 16, 2)
    assert _plan.use_few_channels(True, 1, 32, False, same, 16, 1)
    assert not _plan.use_few_channels(True, 3, 64, False, stem, 16, 1)   # AVX2, stride 2
    assert not _plan.use_few_channels(False, 3, 64, False, stem, 16, 2)   # NCHW
    assert not _plan.use_few_channels(True, _plan.FEW_MAX_CHANNELS + 1, 64, False, stem, 16, 2)
    assert not _plan.use_few_channels(True, 3, 40, False, stem, 16, 2)
    assert not _plan.use_few_channels(True, 3, 64, True, same, 16, 2)
    assert not _plan.use_few_channels(True, 3, 64, False, same, 16, 0)
    for n_images, groups, og, size, threads, itemsize in [
            (1, 1, 64, 224, 2, 4), (8, 1, 64, 224, 2, 4), (1, 2, 16, 5, 16, 4),
            (3, 1, 64, 224, 16, 8), (64, 1, 32, 32, 2, 4), (1, 1, 4096, 512, 2, 8)]:
        win = _args.window((size, size), (7, 7), 2, 3, 1, allow_strings=False)
        band = _plan.grad_input_few(n_images, groups, og, win, itemsize, threads)
        units = n_images * groups * -(-size // band)
        assert 1 <= band <= size
        copied = ((band - 1 + 6) // 2 + 1) * win.out_w * og * itemsize   # rows a band reaches
        assert band == 1 or copied <= _plan.DEFAULTS.FEW_COPY_BYTES
        assert units >= min(_plan.DEFAULTS.FEW_BANDS_PER_THREAD * threads,
                            n_images * groups * size)


def test_line_aligned_copy(rng):
    """The weights' copy for the element-by-element kernel starts on a cache
    line, whatever the source's layout, and holds its values."""
    from fastim2col import _args
    for shape, dtype in [((3, 7, 5), np.float32), ((2, 9, 3, 8), np.float64),
                         ((0, 4), np.float32)]:
        src = rand(rng, shape, dtype)
        for view in (src, src.T, src[..., ::-1]):
            got = _args.line_aligned_copy(view)
            assert got.ctypes.data % _args.CACHE_LINE == 0 or got.size == 0
            assert got.flags.c_contiguous and got.dtype == dtype
            np.testing.assert_array_equal(got, view)


def test_few_channel_kernel_arguments(rng):
    """The element-by-element kernel's entry refuses what it cannot run."""
    from fastim2col import _args, _conv
    win = tuple(_args.window((8, 8), (3, 3), 1, 1, 1, allow_strings=False))
    go = np.zeros((1, 8, 8, 16))
    for c, wt_shape, band in [(5, (1, 9, 5, 16), 2), (3, (1, 9, 3, 16), 0),
                              (3, (1, 9, 3, 8), 2), (0, (1, 9, 0, 16), 2)]:
        gx = np.zeros((1, 8, 8, c))
        with pytest.raises(ValueError, match="elementwise_grad_input"):
            _conv.elementwise_grad_input(go, np.zeros(wt_shape), None, gx, shape=(1, c, 16, 1),
                                         geom=win, band=band, copy_rows=True, n_threads=1)
