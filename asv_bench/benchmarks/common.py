"""Shared pieces of the fastim2col benchmark suite: the layer suite, input
makers, FLOP/byte counts, thread pinning and the timer behind the track_
throughput benchmarks.

Benchmark files must stay importable on every commit asv runs them against:
import fastim2col through this module only, guarded (a commit with a broken
build then shows failed benchmarks instead of breaking discovery).
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np

try:
    import fastim2col
    from fastim2col import grad as fgrad
except ImportError:   # discovery must not fail on a commit whose build is broken
    fastim2col = None
    fgrad = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:   # pragma: no cover - threadpoolctl is a runtime dependency
    threadpool_limits = None


class Layer(NamedTuple):
    """One convolution of a real network, NCHW: x (N, c_in, h, h),
    weight (c_out, c_in/groups, k, k), stride, padding (dilation 1)."""
    c_in: int
    c_out: int
    h: int
    k: int
    stride: int
    pad: int
    groups: int
    note: str

    @property
    def out_h(self) -> int:
        return (self.h + 2 * self.pad - self.k) // self.stride + 1


# The layer suite. Keys are the asv parameter values (short on purpose: they
# show up in every result line and in the dashboard's axis labels).
LAYERS: dict[str, Layer] = {
    "r50_stem":  Layer(3, 64, 224, 7, 2, 3, 1, "ResNet-50 conv1: 7x7/2, 3->64, 224px"),
    "r50_3x3_56": Layer(64, 64, 56, 3, 1, 1, 1, "ResNet-50 res2 3x3, 64->64, 56px"),
    "r50_3x3_28": Layer(128, 128, 28, 3, 1, 1, 1, "ResNet-50 res3 3x3, 128->128, 28px"),
    "r50_3x3_14": Layer(256, 256, 14, 3, 1, 1, 1, "ResNet-50 res4 3x3, 256->256, 14px"),
    "r50_3x3_7":  Layer(512, 512, 7, 3, 1, 1, 1, "ResNet-50 res5 3x3, 512->512, 7px"),
    "r50_1x1_56": Layer(64, 256, 56, 1, 1, 0, 1, "ResNet-50 res2 1x1 expand, 64->256, 56px"),
    "vgg_3x3_224": Layer(64, 64, 224, 3, 1, 1, 1, "VGG-16 conv1_2 3x3, 64->64, 224px"),
    "rnx_g32_56": Layer(128, 128, 56, 3, 1, 1, 32, "ResNeXt-50 32x4d res2 grouped 3x3, 128 ch, 56px"),
    "mb2_dw_56":  Layer(144, 144, 56, 3, 1, 1, 144, "MobileNetV2 depthwise 3x3, 144 ch, 56px"),
}
LAYER_NAMES = list(LAYERS)

# Two-line labels for plots (asv_bench/plot_results.py).
LABELS = {
    "r50_stem": "R50 stem 7x7/2\n3→64 @224",
    "r50_3x3_56": "R50 3x3\n64→64 @56",
    "r50_3x3_28": "R50 3x3\n128→128 @28",
    "r50_3x3_14": "R50 3x3\n256→256 @14",
    "r50_3x3_7": "R50 3x3\n512→512 @7",
    "r50_1x1_56": "R50 1x1\n64→256 @56",
    "vgg_3x3_224": "VGG 3x3\n64→64 @224",
    "rnx_g32_56": "ResNeXt 3x3 g32\n128→128 @56",
    "mb2_dw_56": "MBv2 dw 3x3\n144 ch @56",
}

# Layers too heavy for every benchmark at batch 8: VGG at 224px, batch 8, is
# 30 GFLOP per conv2d call and a 0.9 GB unrolled matrix for im2col. Only the
# conv2d time_ benchmark (and the peakmem suite, which runs once) keeps it.
HEAVY_LAYERS = ("vgg_3x3_224",)
HEAVY_BATCH = 8

BATCHES = [1, 8]
DTYPES = ["float32", "float64"]
THREADS = [1, 2]

# Smoke mode (tools/asv_ci.sh): FASTIM2COL_ASV_SMOKE=1 keeps every benchmark
# but shrinks the grid to batch 1 and three layers: the stride-2 7x7 stem,
# the grouped 3x3, and VGG, which smoke mode treats as heavy at batch 1 so
# that the skip path (setup raising NotImplementedError, then teardown) runs
# too. `asv run --quick` then calls each benchmark function a few times in
# about a minute. Never record results in this mode: its numbers are not
# comparable with the full grid (tools/asv_ci.sh runs it with --python=same,
# which records nothing).
SMOKE = os.environ.get("FASTIM2COL_ASV_SMOKE", "") not in ("", "0")
if SMOKE:
    LAYER_NAMES = ["r50_stem", "rnx_g32_56", "vgg_3x3_224"]
    BATCHES = [1]
    HEAVY_BATCH = 1


def skip(reason: str):
    """asv's documented way to skip one parameter combination: raise
    NotImplementedError in setup (the result shows as n/a, not as a failure)."""
    raise NotImplementedError(reason)


def set_threads(n: int) -> None:
    """Pin the kernels' OpenMP thread count for this benchmark process
    (fastim2col pins BLAS to one thread inside its kernels by itself). A
    build whose kernels cannot run n threads (no OpenMP) skips the case."""
    if fastim2col is None:
        raise RuntimeError("fastim2col is not importable")
    fastim2col.set_num_threads(n)
    got = fastim2col.get_num_threads()
    if got != n:
        skip(f"fastim2col runs {got} thread(s), not {n} (no OpenMP, or a threadpoolctl limit)")


def check_case(layer_name: str, batch: int) -> "Layer":
    """The layer, or a skip for the heavy layers at batch 8."""
    if batch >= HEAVY_BATCH and layer_name in HEAVY_LAYERS:
        skip(f"{layer_name} at batch {batch} only runs in conv2d's time_ benchmark")
    return LAYERS[layer_name]


def rng_arrays(shapes, dtype, seed=0):
    """Standard-normal arrays of the given shapes, C-contiguous, in dtype."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.dtype(dtype)) for s in shapes]


def shapes(layer: Layer, batch: int, layout: str = "NCHW"):
    """(x shape, weight shape, conv2d output shape) of a layer."""
    ho = layer.out_h
    cg = layer.c_in // layer.groups
    if layout == "NHWC":
        return ((batch, layer.h, layer.h, layer.c_in), (layer.c_out, layer.k, layer.k, cg),
                (batch, ho, ho, layer.c_out))
    return ((batch, layer.c_in, layer.h, layer.h), (layer.c_out, cg, layer.k, layer.k),
            (batch, layer.c_out, ho, ho))


def conv_kwargs(layer: Layer) -> dict:
    return dict(stride=layer.stride, padding=layer.pad, groups=layer.groups)


def conv_flops(layer: Layer, batch: int) -> int:
    """2 * N * C_out * Ho * Wo * (C_in / groups) * kh * kw: the multiply-adds of
    conv2d, counted twice. The same count is used for conv_transpose2d and
    both gradients (each is one GEMM of the same size)."""
    return (2 * batch * layer.c_out * layer.out_h ** 2
            * (layer.c_in // layer.groups) * layer.k * layer.k)


def im2col_bytes(layer: Layer, batch: int, itemsize: int) -> int:
    """Bytes im2col writes: N * C_in*k*k * Ho*Wo elements."""
    return batch * layer.c_in * layer.k * layer.k * layer.out_h ** 2 * itemsize


def col2im_bytes(layer: Layer, batch: int, itemsize: int) -> int:
    """Bytes col2im writes: the N * C_in * H * W image."""
    return batch * layer.c_in * layer.h * layer.h * itemsize


def transpose_output_padding(layer: Layer) -> int:
    """output_padding that makes conv_transpose2d map Ho back onto exactly H."""
    ho = layer.out_h
    return layer.h - ((ho - 1) * layer.stride - 2 * layer.pad + (layer.k - 1) + 1)


# ---------------------------------------------------------------- track_ timer
# track_ benchmarks report a rate, so they time the call themselves: one
# warm-up call, then repeats until TRACK_MIN_REPEATS calls and TRACK_MIN_TIME
# seconds are both reached (at most TRACK_MAX_REPEATS), and the median of the
# per-call times is used. The median, not the mean or the minimum: robust to
# the noise of a shared machine, and comparable to asv's own time_ statistic.
TRACK_MIN_REPEATS = 1 if SMOKE else 3
TRACK_MAX_REPEATS = 15
TRACK_MIN_TIME = 0.0 if SMOKE else 0.2


def median_time(func, *args, **kwargs) -> float:
    func(*args, **kwargs)   # warm-up: page faults of the output, BLAS buffers
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        func(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        n = len(times)
        if n >= TRACK_MAX_REPEATS:
            break
        if n >= TRACK_MIN_REPEATS and time.perf_counter() - start >= TRACK_MIN_TIME:
            break
    return float(np.median(times))


def rate(amount: float, seconds: float) -> float:
    """amount / seconds / 1e9 (GFLOP/s, GB/s), to 4 significant digits."""
    return float(f"{amount / seconds / 1e9:.4g}")


# ------------------------------------------------------- NumPy/PyTorch baselines
def numpy_conv2d(x, w, stride, pad, groups):
    """The textbook NumPy convolution: im2col by sliding_window_view +
    ascontiguousarray (the full unrolled matrix), then one matmul per group.
    NCHW in, NCHW out."""
    n, c, h, _ = x.shape
    c_out, cg, k, _ = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]                      # (N, C, Ho, Wo, k, k)
    ho, wo = win.shape[2], win.shape[3]
    og = c_out // groups
    win = win.reshape(n, groups, cg, ho, wo, k, k)
    # (N, G, cg, k, k, Ho, Wo) -> columns (N, G, cg*k*k, Ho*Wo), materialized
    cols = np.ascontiguousarray(win.transpose(0, 1, 2, 5, 6, 3, 4)).reshape(
        n, groups, cg * k * k, ho * wo)
    w2 = w.reshape(groups, og, cg * k * k)
    out = np.matmul(w2[None], cols)                          # (N, G, og, Ho*Wo)
    return out.reshape(n, c_out, ho, wo)


def blas_threads(n: int):
    """A context manager limiting every BLAS library to n threads (for NumPy
    and PyTorch baselines); a no-op without threadpoolctl."""
    if threadpool_limits is None:   # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ------------------------------------------------------------ benchmark bases
class _Bench:
    """Timing settings shared by every time_ benchmark of the suite.

    asv's defaults on CPython are a 0.1 s warm-up and (1, 10, 20.0) for
    repeat, which with 2 rounds means 1-5 samples and up to 10 s per round.
    Here: at least 3 samples per round (a median and quartiles worth the
    name on a noisy machine), at most 7, and at most 4 s per round so that
    the slow cases (VGG at batch 8, float64: ~1 s a call) stay bounded.
    `--quick` ignores all of this and calls each benchmark once.
    """
    warmup_time = 0.1
    repeat = (3, 7, 4.0)     # (min samples, max samples, max seconds) per round
    timeout = 180            # VGG at batch 8 in float64 takes ~1 s per call


class _LayerBench(_Bench):
    """The layer x batch x threads grid, float32 (the default grid of every
    operation but conv2d's time_, which also runs float64)."""
    params = [LAYER_NAMES, BATCHES, THREADS]
    param_names = ["layer", "batch", "threads"]
    dtype = "float32"
