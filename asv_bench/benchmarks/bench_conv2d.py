"""conv2d: time_ over the full grid, track_ GFLOP/s, NHWC, and the NumPy and
PyTorch baselines that asv_bench/plot_results.py plots next to fastim2col."""
import numpy as np

from .common import (BATCHES, DTYPES, LAYER_NAMES, LAYERS, THREADS, _Bench, _LayerBench,
                     blas_threads, check_case, conv_flops, conv_kwargs, fastim2col,
                     median_time, rate, numpy_conv2d, rng_arrays, set_threads, shapes, skip)


class Conv2d(_Bench):
    """conv2d forward, NCHW: the one benchmark with the full grid (every layer,
    batch 1 and 8, float32 and float64, 1 and 2 threads: 72 cases)."""
    params = [LAYER_NAMES, BATCHES, DTYPES, THREADS]
    param_names = ["layer", "batch", "dtype", "threads"]

    def setup(self, layer, batch, dtype, threads):
        set_threads(threads)
        self.layer = LAYERS[layer]
        xs, ws, _ = shapes(self.layer, batch)
        self.x, self.w = rng_arrays([xs, ws], dtype)
        self.kw = conv_kwargs(self.layer)

    def time_conv2d(self, layer, batch, dtype, threads):
        fastim2col.conv2d(self.x, self.w, **self.kw)


class Conv2dGFlops(_LayerBench):
    """conv2d throughput, float32, NCHW (VGG at batch 8 skipped)."""

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        set_threads(threads)
        xs, ws, _ = shapes(L, batch)
        self.x, self.w = rng_arrays([xs, ws], self.dtype)
        self.kw = conv_kwargs(L)
        self.flops = conv_flops(L, batch)

    def track_gflops(self, layer, batch, threads):
        t = median_time(fastim2col.conv2d, self.x, self.w, **self.kw)
        return rate(self.flops, t)

    track_gflops.unit = "GFLOP/s"


class Conv2dNHWC(_LayerBench):
    """conv2d forward in the NHWC layout, float32, one thread (VGG at batch 8
    skipped): the layout's own kernels, without a second thread sweep."""
    params = [LAYER_NAMES, BATCHES, [1]]

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        set_threads(threads)
        xs, ws, _ = shapes(L, batch, "NHWC")
        self.x, self.w = rng_arrays([xs, ws], self.dtype)
        self.kw = conv_kwargs(L)
        self.flops = conv_flops(L, batch)

    def time_conv2d_nhwc(self, layer, batch, threads):
        fastim2col.conv2d(self.x, self.w, **self.kw, layout="NHWC")

    def track_gflops_nhwc(self, layer, batch, threads):
        t = median_time(fastim2col.conv2d, self.x, self.w, **self.kw, layout="NHWC")
        return rate(self.flops, t)

    track_gflops_nhwc.unit = "GFLOP/s"


class NumpyConv2dGFlops(_LayerBench):
    """Baseline: NumPy im2col (sliding_window_view + ascontiguousarray, the
    full unrolled matrix) + matmul, float32, BLAS limited to `threads` threads
    with threadpoolctl. Not a fastim2col benchmark: it moves only when NumPy
    or its BLAS change, and gives the dashboard and plot_results.py a
    reference line."""

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        self._limits = blas_threads(threads)
        xs, ws, _ = shapes(L, batch)
        self.x, self.w = rng_arrays([xs, ws], self.dtype)
        self.L = L
        self.flops = conv_flops(L, batch)

    def teardown(self, layer, batch, threads):
        # asv calls teardown after a skip in setup too: undo only what was done.
        limits = getattr(self, "_limits", None)
        if limits is not None:
            limits.restore_original_limits()

    def track_gflops_numpy(self, layer, batch, threads):
        L = self.L
        t = median_time(numpy_conv2d, self.x, self.w, L.stride, L.pad, L.groups)
        return rate(self.flops, t)

    track_gflops_numpy.unit = "GFLOP/s"


class TorchConv2dGFlops(_LayerBench):
    """Baseline: torch.nn.functional.conv2d on CPU, float32, with
    torch.set_num_threads(threads). Skipped (n/a) where PyTorch is not
    installed, which is the case in asv's own environments: it only runs with
    `--python=same` (or an `--environment existing:...`) in a Python that has
    torch."""

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        try:
            import torch
        except ImportError:
            skip("PyTorch is not installed")
        self.torch = torch
        self._saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        xs, ws, _ = shapes(L, batch)
        x, w = rng_arrays([xs, ws], self.dtype)
        self.x, self.w = torch.from_numpy(x), torch.from_numpy(w)
        self.kw = conv_kwargs(L)
        self.flops = conv_flops(L, batch)

    def teardown(self, layer, batch, threads):
        if hasattr(self, "_saved"):   # not after a skip in setup
            self.torch.set_num_threads(self._saved)

    def track_gflops_torch(self, layer, batch, threads):
        F = self.torch.nn.functional
        with self.torch.inference_mode():
            t = median_time(F.conv2d, self.x, self.w, **self.kw)
        return rate(self.flops, t)

    track_gflops_torch.unit = "GFLOP/s"
