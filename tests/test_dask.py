"""fastim2col.dask: lazy dask versions of the convolutions and their gradients.

Every result is compared with the in-memory function on the whole array (the
same numbers to float64 rounding, for any chunking: uneven chunks, chunks
smaller than the window's halo, strides, dilations, padding, both layouts,
groups), and a few with tests/reference.py (independent NumPy definitions).
Most tests run on the synchronous scheduler; one module-scoped
distributed.LocalCluster (2 worker processes, 1 thread each) runs the rest and
the example against a real cluster.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

da = pytest.importorskip("dask.array", reason="fastim2col.dask needs the dask extra")
import dask  # noqa: E402

import fastim2col  # noqa: E402
import fastim2col.dask as fd  # noqa: E402
import reference as R  # noqa: E402
from fastim2col.dask import _geometry, _threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "dask_filter_bank.py")
HAS_CONV3D = hasattr(fastim2col, "conv3d")
TOL = 1e-10


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def nhwc(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def wt_nhwc(w):
    return np.ascontiguousarray(np.moveaxis(w, 1, -1))


def close(got, want, tol=TOL):
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# Chunkings of a (2, 4, 17, 14) image: whole, uneven, smaller than a 5x5
# window's halo (1 and 2 wide), batch split, channels split (merged inside).
CHUNKINGS = [(2, 4, 17, 14), (1, 4, (5, 9, 3), (6, 8)), (2, 4, 1, 2), (1, 3, 4, 3)]
WINDOWS = [  # stride, padding, dilation, groups, kernel
    (1, 0, 1, 1, (3, 3)),
    (1, "same", 1, 2, (5, 4)),
    (2, (2, 1), 1, 1, (5, 5)),
    ((3, 2), 3, (2, 1), 4, (3, 2)),
    (1, 9, 1, 1, (2, 3)),         # padding wider than the image: edge blocks all zeros
    (4, "valid", (1, 3), 2, (1, 3)),
]


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv2d_matches_in_memory_any_chunking(chunks, window, layout):
    stride, padding, dilation, groups, kernel = window
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 17, 14))
    w = rng.standard_normal((8, 4 // groups) + kernel)
    b = rng.standard_normal(8)
    if layout == "NHWC":
        x, w = nhwc(x), wt_nhwc(w)
        chunks = (chunks[0], chunks[2], chunks[3], chunks[1])
    args = (stride, padding, dilation, groups)
    lazy = fd.conv2d(da.from_array(x, chunks=chunks), w, b, *args, layout=layout)
    assert isinstance(lazy, da.Array)
    want = fastim2col.conv2d(x, w, b, *args, layout=layout)
    assert lazy.shape == want.shape and lazy.dtype == want.dtype
    close(lazy.compute(), want)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("window", WINDOWS)
def test_gradients_match_in_memory_any_chunking(chunks, window):
    stride, padding, dilation, groups, kernel = window
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 17, 14))
    w = rng.standard_normal((8, 4 // groups) + kernel)
    args = (stride, padding, dilation, groups)
    g = rng.standard_normal(fastim2col.conv2d(x, w, None, *args).shape)
    g_chunks = (1, 3, 1, 2) if chunks == (2, 4, 1, 2) else (chunks[0], 3, 4, 5)
    x_d, g_d = da.from_array(x, chunks=chunks), da.from_array(g, chunks=g_chunks)
    close(fd.grad.conv2d_input(x.shape, w, g_d, *args).compute(),
          fastim2col.grad.conv2d_input(x.shape, w, g, *args))
    close(fd.grad.conv2d_weight(x_d, w.shape, g_d, *args, split_every=2).compute(),
          fastim2col.grad.conv2d_weight(x, w.shape, g, *args), 1e-9)


@pytest.mark.parametrize("chunks", [(2, 3, 9, 11), (1, 3, (2, 5, 2), 3), (2, 1, 1, 1)])
@pytest.mark.parametrize("params", [
    dict(),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(3, 2), padding=(2, 0), dilation=(1, 2), groups=3),
    dict(stride=2, padding=1, output_size=(18, 22)),
    dict(stride=3, padding=0),   # outputs no input reaches between blocks
])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv_transpose2d_matches_in_memory(chunks, params, layout):
    rng = np.random.default_rng(2)
    groups = params.get("groups", 1)
    x = rng.standard_normal((2, 3, 9, 11))
    w = rng.standard_normal((3, 6 // groups, 3, 4))
    b = rng.standard_normal(6)
    if layout == "NHWC":
        x, w = nhwc(x), wt_nhwc(w)
        chunks = (chunks[0], chunks[2], chunks[3], chunks[1])
    want = fastim2col.conv_transpose2d(x, w, b, layout=layout, **params)
    got = fd.conv_transpose2d(da.from_array(x, chunks=chunks), w, b, layout=layout, **params)
    close(got.compute(), want)


@st.composite
def chunked_problems(draw):
    """A random 1-d/2-d problem and a random chunking of the input (any sizes)."""
    nd = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 4)) for _ in range(nd))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    sizes = tuple(draw(st.integers(max(1, s - 2 * p), 20)) for s, p in zip(span, padding))
    chunks = []
    for n in sizes:
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=4))) if n > 1 else []
        chunks.append(tuple(np.diff([0, *cuts, n]).tolist()))
    return nd, kernel, dilation, stride, padding, sizes, tuple(chunks)


@settings(max_examples=40, deadline=None)
@given(chunked_problems(), st.booleans())
def test_any_chunking_property(problem, transposed):
    nd, kernel, dilation, stride, padding, sizes, chunks = problem
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3) + sizes)
    x_d = da.from_array(x, chunks=(1, 3) + chunks)
    if transposed:
        padding = tuple(min(p, d * (k - 1)) for p, k, d in zip(padding, kernel, dilation))
        assume(all((n - 1) * s - 2 * p + d * (k - 1) + 1 >= 1
                   for n, s, p, d, k in zip(sizes, stride, padding, dilation, kernel)))
        w = rng.standard_normal((3, 2) + kernel)
        args = (None, stride, padding, 0, 1, dilation)
        fn, lazy = getattr(fastim2col, f"conv_transpose{nd}d"), getattr(fd, f"conv_transpose{nd}d")
    else:
        w = rng.standard_normal((2, 3) + kernel)
        args = (None, stride, padding, dilation)
        fn, lazy = getattr(fastim2col, f"conv{nd}d"), getattr(fd, f"conv{nd}d")
    close(lazy(x_d, w, *args).compute(), fn(x, w, *args))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("params", [
    dict(padding="same"),
    dict(padding=(3, 1), stride=(2, 3), dilation=(1, 2)),
    dict(padding=2, stride=1, dilation=2, groups=2),
])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_padding_modes(mode, params, layout):
    """Padding that reads the image (from the far side too, for circular),
    with chunks thinner than the padding: forward and both gradients."""
    rng = np.random.default_rng(11)
    groups = params.get("groups", 1)
    x = rng.standard_normal((2, 4, 11, 9))
    w = rng.standard_normal((6, 4 // groups, 3, 4))
    if layout == "NHWC":
        x, w = nhwc(x), wt_nhwc(w)
    chunks = ((1, 1), 4, (2, 1, 5, 3), (1, 5, 3)) if layout == "NCHW" else \
        ((1, 1), (2, 1, 5, 3), (1, 5, 3), 4)
    x_d = da.from_array(x, chunks=chunks)
    kw = dict(params, padding_mode=mode, layout=layout)
    y = fastim2col.conv2d(x, w, **kw)
    close(fd.conv2d(x_d, w, **kw).compute(), y)
    g = rng.standard_normal(y.shape)
    g_d = da.from_array(g, chunks=3)
    close(fd.grad.conv2d_input(x.shape, w, g_d, **kw).compute(),
          fastim2col.grad.conv2d_input(x.shape, w, g, **kw))
    close(fd.grad.conv2d_weight(x_d, w.shape, g_d, **kw).compute(),
          fastim2col.grad.conv2d_weight(x, w.shape, g, **kw), 1e-9)


def test_padding_mode_1d_and_errors():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 30))
    w = rng.standard_normal((2, 3, 5))
    x_d = da.from_array(x, chunks=(1, 3, (1, 2, 20, 7)))
    for mode in ("reflect", "replicate", "circular"):
        close(fd.conv1d(x_d, w, padding=4, stride=3, padding_mode=mode).compute(),
              fastim2col.conv1d(x, w, padding=4, stride=3, padding_mode=mode))
    small = da.zeros((1, 3, 4), chunks=2)
    with pytest.raises(ValueError, match="padding_mode"):
        fd.conv1d(small, w, padding=4, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        fd.conv1d(small, w, padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding_mode"):
        fd.conv_transpose1d(small, rng.standard_normal((3, 2, 2)), padding_mode="reflect")


def test_independent_references():
    """Against tests/reference.py (sliding windows + einsum), not fastim2col."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 15, 13))
    w = rng.standard_normal((6, 2, 3, 5))
    b = rng.standard_normal(6)
    args = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    x_d = da.from_array(x, chunks=(1, 4, 4, 5))
    y = R.conv2d(x, w, b, **args)
    close(fd.conv2d(x_d, w, b, **args).compute(), y)
    g = rng.standard_normal(y.shape)
    g_d = da.from_array(g, chunks=(1, 6, 3, 2))
    close(fd.grad.conv2d_weight(x_d, w.shape, g_d, **args).compute(),
          R.conv2d_weight_grad(x, w.shape, g, **args), 1e-9)
    close(fd.grad.conv2d_input(x.shape, w, g_d, **args).compute(),
          R.conv2d_input_grad(x.shape, w, g, **args))
    wt = rng.standard_normal((4, 3, 3, 3))
    close(fd.conv_transpose2d(x_d, wt, None, 2, 1, 1, 2).compute(),
          R.conv_transpose2d(x, wt, None, 2, 1, 1, 2))


def test_conv1d_against_scipy_and_in_memory():
    from scipy.signal import correlate
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 50))
    w = rng.standard_normal((1, 2, 7))
    x_d = da.from_array(x, chunks=(2, 1, (3, 20, 1, 26)))
    got = fd.conv1d(x_d, w).compute()
    want = np.stack([correlate(x[n], w[0], mode="valid") for n in range(3)])
    close(got, want)
    for params in (dict(stride=3, padding="valid", dilation=2), dict(padding="same")):
        close(fd.conv1d(x_d, w, **params).compute(), fastim2col.conv1d(x, w, **params))
    x_nlc = nhwc(x)
    close(fd.conv1d(da.from_array(x_nlc, chunks=(1, 9, 2)), wt_nhwc(w), stride=2,
                    layout="NLC").compute(),
          fastim2col.conv1d(x_nlc, wt_nhwc(w), stride=2, layout="NLC"))
    g = rng.standard_normal((3, 1, 44))
    g_d = da.from_array(g, chunks=(1, 1, 10))
    close(fd.grad.conv1d_weight(x_d, w.shape, g_d).compute(),
          fastim2col.grad.conv1d_weight(x, w.shape, g))
    close(fd.grad.conv1d_input(x.shape, w, g_d).compute(),
          fastim2col.grad.conv1d_input(x.shape, w, g))
    wt = rng.standard_normal((2, 3, 4))
    close(fd.conv_transpose1d(x_d, wt, stride=2, padding=1).compute(),
          fastim2col.conv_transpose1d(x, wt, stride=2, padding=1))


def test_unbatched_float32_and_numpy_grad_output():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 20, 20)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    x_d = da.from_array(x, chunks=(3, 7, 6))
    got = fd.conv2d(x_d, w, padding=1)
    assert got.dtype == np.float32 and got.shape == (2, 20, 20)
    want = fastim2col.conv2d(x, w, padding=1)
    np.testing.assert_allclose(got.compute(), want, rtol=1e-5, atol=1e-5)
    grad = fd.grad.conv2d_weight(x_d, w.shape, want, padding=1)   # grad_output in memory
    np.testing.assert_allclose(grad.compute(),
                               fastim2col.grad.conv2d_weight(x, w.shape, want, padding=1),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not HAS_CONV3D, reason="fastim2col.conv3d does not exist in this build "
                                           "(fastim2col.dask.conv3d runs it block by block)")
@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
def test_conv3d_matches_in_memory(layout):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 9, 8, 7))
    w = rng.standard_normal((3, 2, 3, 2, 3))
    if layout == "NDHWC":
        x, w = nhwc(x), wt_nhwc(w)
    chunks = tuple((1, 2, 3) + (1,) * (n - 6) if n > 5 else 1 for n in x.shape)
    params = dict(stride=(2, 1, 2), padding=1, dilation=(1, 2, 1))
    x_d = da.from_array(x, chunks=chunks)
    y = fastim2col.conv3d(x, w, layout=layout, **params)
    close(fd.conv3d(x_d, w, layout=layout, **params).compute(), y)
    if hasattr(fastim2col.grad, "conv3d_weight"):
        g = da.from_array(y, chunks=2)
        close(fd.grad.conv3d_weight(x_d, w.shape, g, layout=layout, **params).compute(),
              fastim2col.grad.conv3d_weight(x, w.shape, y, layout=layout, **params), 1e-9)
        close(fd.grad.conv3d_input(x.shape, w, g, layout=layout, **params).compute(),
              fastim2col.grad.conv3d_input(x.shape, w, y, layout=layout, **params))


def naive_conv3d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 padding_mode="zeros", layout="NCDHW"):
    """conv3d from its definition (sliding windows + einsum): an independent
    reference, and a stand-in for fastim2col.conv3d where it is missing."""
    assert padding_mode == "zeros"
    from numpy.lib.stride_tricks import sliding_window_view
    triple = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3)
    if layout == "NDHWC":
        x, w = np.moveaxis(x, -1, 1), np.moveaxis(w, -1, 1)
    k, s, d = w.shape[2:], triple(stride), triple(dilation)
    if padding == "same":
        pads = [(dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2) for kk, dd in zip(k, d)]
    else:
        pads = [(p, p) for p in triple(0 if padding == "valid" else padding)]
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    spans = [dd * (kk - 1) + 1 for kk, dd in zip(k, d)]
    win = sliding_window_view(xp, spans, axis=(2, 3, 4))
    win = win[:, :, ::s[0], ::s[1], ::s[2], ::d[0], ::d[1], ::d[2]]
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    out = np.concatenate([np.einsum("ncdhwijk,ocijk->nodhw", win[:, g * cg:(g + 1) * cg],
                                    w[g * og:(g + 1) * og]) for g in range(groups)], axis=1)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1, 1)
    return np.ascontiguousarray(np.moveaxis(out, 1, -1) if layout == "NDHWC" else out)


@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
def test_conv3d_against_definition(layout, monkeypatch):
    """The N-d code on 3 spatial axes against naive_conv3d (which stands in
    for fastim2col.conv3d where that is missing)."""
    rng = np.random.default_rng(10)
    # the stand-in itself, against fastim2col.conv2d slice by slice (depth-1 kernel)
    x2 = rng.standard_normal((2, 4, 3, 9, 8))
    w2 = rng.standard_normal((6, 2, 1, 3, 2))
    for z in range(3):
        close(naive_conv3d(x2, w2, None, (1, 2, 1), (0, 1, 2), 1, 2)[:, :, z],
              fastim2col.conv2d(x2[:, :, z], w2[:, :, 0], None, (2, 1), (1, 2), 1, 2))
    if not HAS_CONV3D:
        monkeypatch.setattr(fastim2col, "conv3d", naive_conv3d, raising=False)
    x = rng.standard_normal((2, 4, 9, 8, 7))
    w = rng.standard_normal((6, 2, 3, 2, 3))
    b = rng.standard_normal(6)
    if layout == "NDHWC":
        x, w = nhwc(x), wt_nhwc(w)
    chunks = tuple((1, 2, 3) + (1,) * (n - 6) if n > 5 else n for n in x.shape)
    for params in (dict(stride=(2, 1, 2), padding=1, dilation=(1, 2, 1), groups=2),
                   dict(padding="same", groups=2)):
        close(fd.conv3d(da.from_array(x, chunks=chunks), w, b, layout=layout,
                        **params).compute(),
              naive_conv3d(x, w, b, layout=layout, **params))


def test_conv3d_missing_is_a_clear_error():
    if HAS_CONV3D:
        pytest.skip("fastim2col.conv3d exists in this build")
    x = da.zeros((1, 1, 4, 4, 4), chunks=2)
    with pytest.raises(NotImplementedError, match="conv3d"):
        fd.conv3d(x, np.zeros((1, 1, 2, 2, 2)))


@pytest.mark.parametrize("size,k,s,d,pad", [(30, 5, 2, 1, (2, 2)), (17, 3, 3, 2, (0, 4)),
                                             (9, 1, 1, 1, (6, 0)), (40, 7, 1, 3, (9, 9))])
def test_geometry_blocks_tile_the_output(size, k, s, d, pad):
    """Every output is in exactly one block, and each block reads exactly
    the rows of its windows (input range + padding = the windows' span)."""
    rng = np.random.default_rng(size)
    for _ in range(20):
        cuts = np.sort(rng.choice(np.arange(1, size), rng.integers(0, 6), replace=False))
        chunks = tuple(np.diff(np.concatenate(([0], cuts, [size]))).tolist())
        blocks = _geometry.conv_axis(chunks, k, s, d, *pad)
        assert sum(blocks.out_chunks) == _geometry.conv_out_size(size, *pad, k, s, d)
        assert all(c > 0 for c in blocks.out_chunks)
        for n, (a, b), (before, after) in zip(blocks.out_chunks, blocks.in_ranges,
                                              blocks.info):
            assert 0 <= a <= b <= size and before >= 0 and after >= 0
            assert before + (b - a) + after == (n - 1) * s + d * (k - 1) + 1


def test_errors_before_anything_is_computed():
    def explode(block):
        raise AssertionError("a block was computed")
    x = da.map_blocks(explode, da.zeros((1, 2, 8, 8), chunks=4), dtype=float)
    w = np.zeros((3, 2, 3, 3))
    with pytest.raises(TypeError, match="dask.array.Array"):
        fd.conv2d(np.zeros((1, 2, 8, 8)), w)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fd.conv2d(x, w, pading=1)
    with pytest.raises(TypeError, match="out"):
        fd.conv2d(x, w, out=np.zeros(1))
    with pytest.raises(ValueError, match="layout"):
        fd.conv2d(x, w, layout="NCL")
    with pytest.raises(ValueError, match="groups"):
        fd.conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        fd.conv2d(x, np.zeros((3, 2, 9, 9)))
    with pytest.raises(TypeError, match="weight must be a NumPy array"):
        fd.conv2d(x, da.from_array(w))
    with pytest.raises(ValueError, match="threads"):
        fd.conv2d(x, w, threads=0)
    with pytest.raises(ValueError, match="stride"):
        fd.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="same"):
        fd.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        fd.conv2d(x[x[:, 0, 0, 0] > 0], w)
    with pytest.raises(ValueError, match="grad_output has shape"):
        fd.grad.conv2d_input((1, 2, 8, 8), w, da.zeros((1, 3, 5, 6)))
    with pytest.raises(ValueError, match="grad_output has shape"):
        fd.grad.conv2d_weight(x, w.shape, da.zeros((1, 3, 5, 6)))
    with pytest.raises(ValueError, match="not reachable"):
        fd.conv_transpose2d(x, np.zeros((2, 3, 3, 3)), stride=2, output_size=(30, 30))


def test_thread_count_per_scheduler_and_override():
    cores = _threads.usable_cores()
    ask = dask.delayed(_threads.task_threads)
    assert ask(None, {}).compute(scheduler="synchronous") == cores
    with dask.config.set(num_workers=2):
        assert ask(None, {}).compute(scheduler="threads") == max(1, cores // 2)
    assert ask(3, {}).compute(scheduler="threads") == 3

    # The limit is per thread: a task's limit leaves other threads alone.
    seen = {}

    def in_task():
        with _threads.kernel_threads(1):
            seen["task"] = fastim2col.get_num_threads()
    before = fastim2col.get_num_threads()
    t = threading.Thread(target=in_task)
    t.start()
    t.join()
    assert seen["task"] == 1
    assert fastim2col.get_num_threads() == before


def test_threaded_scheduler_concurrent_blocks():
    """Blocks run concurrently in one process, each under its own thread limit."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 2, 30, 30))
    w = rng.standard_normal((5, 2, 3, 3))
    y = fd.conv2d(da.from_array(x, chunks=(1, 2, 7, 9)), w, padding=1, threads=1)
    with dask.config.set(num_workers=2):
        close(y.compute(scheduler="threads"), fastim2col.conv2d(x, w, padding=1))


def test_import_fastim2col_needs_no_dask(tmp_path):
    code = ("import sys; sys.modules['dask'] = None; import fastim2col; "
            "assert 'fastim2col.dask' not in sys.modules; print('ok')")
    # the fastim2col these tests import (an in-place build or the installed
    # one), from an empty folder: the checkout's uncompiled package must not
    # shadow an installed build
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastim2col.__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": home})
    assert result.stdout.strip() == "ok", result.stderr


# --------------------------------------------------------------- a real cluster

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # (distributed's nanny sets OMP_NUM_THREADS=1 and the like in this
    # process's environment for its workers; later tests must not inherit it)
    environ = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(environ)


def test_local_cluster_results_and_threads(client):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 40, 33))
    w = rng.standard_normal((4, 3, 5, 3))
    x_d = da.from_array(x, chunks=(1, 3, (13, 2, 25), 11))
    y = fd.conv2d(x_d, w, None, 2, "valid", (2, 1))
    want = fastim2col.conv2d(x, w, None, 2, "valid", (2, 1))
    close(client.compute(y).result(), want)
    g = da.from_array(want, chunks=(2, 4, 5, 5))
    close(client.compute(fd.grad.conv2d_weight(x_d, w.shape, g, 2, 0, (2, 1))).result(),
          fastim2col.grad.conv2d_weight(x, w.shape, want, 2, 0, (2, 1)), 1e-9)
    close(client.compute(fd.grad.conv2d_input(x.shape, w, g, 2, 0, (2, 1))).result(),
          fastim2col.grad.conv2d_input(x.shape, w, want, 2, 0, (2, 1)))
    # 2 workers x 1 thread on this host: each task gets cores // 2 kernel threads.
    host_threads = _threads.host_threads_of_client()
    assert sum(host_threads.values()) == 2
    for known in (host_threads, {}):   # {}: a graph built before the client; tasks ask
        ask = client.submit(_threads.task_threads, None, known, pure=False)
        assert ask.result() == max(1, _threads.usable_cores() // 2)


def test_example_runs_on_an_existing_cluster(client, tmp_path):
    """examples/dask_filter_bank.py pointed at the cluster by address."""
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--size", "300", "--chunk", "128", "--filters", "4",
         "--scheduler", client.scheduler.address, "--workdir", str(tmp_path), "--check"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "matches the in-memory result" in result.stdout
