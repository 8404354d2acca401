"""Peak memory of conv2d and both gradients on large layers, float32, batch 8.

asv's peakmem_ is the maximum resident set size of the whole benchmark
process (ru_maxrss), so it also counts the interpreter, the imported
libraries and the inputs made in setup. Each class therefore pairs the
benchmark with `peakmem_reference`, which has the same setup and only
allocates and writes the output the operation returns. For the same
parameters,

    peakmem_<op> - peakmem_reference = the memory the kernel needs beyond its
                                       inputs and its output

(unrolled tiles, per-thread sums, BLAS packing buffers). Setup also runs the
operation once on a tiny input, so that one-time costs (OpenMP thread
stacks, threadpoolctl's library scan) are in both numbers and cancel out.
`peakmem_numpy_im2col` shows, for comparison, the textbook NumPy way that
materializes the full unrolled matrix.
"""
import numpy as np

from .common import (LAYERS, SMOKE, _Bench, conv_kwargs, fastim2col, fgrad, numpy_conv2d,
                     rng_arrays, set_threads, shapes)

# Layers with a big unrolled matrix (VGG: 0.9 GB at batch 8, float32; the
# stem: 59 MB; res2 3x3: 58 MB) and one that needs none (the 1x1, read in place).
PEAKMEM_LAYERS = ["vgg_3x3_224", "r50_stem", "r50_3x3_56", "r50_1x1_56"]
PEAKMEM_BATCHES = [8]
if SMOKE:
    PEAKMEM_LAYERS, PEAKMEM_BATCHES = ["r50_stem"], [1]


class _PeakMem(_Bench):
    params = [PEAKMEM_LAYERS, PEAKMEM_BATCHES, [1, 2]]
    param_names = ["layer", "batch", "threads"]
    dtype = "float32"
    timeout = 300

    def setup(self, layer, batch, threads):
        set_threads(threads)
        L = LAYERS[layer]
        self.kw = conv_kwargs(L)
        self.L = L
        self.xs, self.ws, self.gs = shapes(L, batch)
        self.make_inputs()
        self.warm_up()

    def reference(self, shape):
        out = np.empty(shape, self.dtype)
        out.fill(1.0)     # write every page, as the operation does
        return out


class PeakMemConv2d(_PeakMem):
    def make_inputs(self):
        self.x, self.w = rng_arrays([self.xs, self.ws], self.dtype)

    def warm_up(self):
        x, w = rng_arrays([(1, 2, 8, 8), (2, 2, 3, 3)], self.dtype)
        fastim2col.conv2d(x, w, padding=1)

    def peakmem_reference(self, layer, batch, threads):
        self.reference(self.gs)

    def peakmem_conv2d(self, layer, batch, threads):
        fastim2col.conv2d(self.x, self.w, **self.kw)

    def peakmem_numpy_im2col(self, layer, batch, threads):
        L = self.L
        numpy_conv2d(self.x, self.w, L.stride, L.pad, L.groups)


class PeakMemConv2dInput(_PeakMem):
    def make_inputs(self):
        self.w, self.g = rng_arrays([self.ws, self.gs], self.dtype)

    def warm_up(self):
        w, g = rng_arrays([(2, 2, 3, 3), (1, 2, 8, 8)], self.dtype)
        fgrad.conv2d_input((1, 2, 8, 8), w, g, padding=1)

    def peakmem_reference(self, layer, batch, threads):
        self.reference(self.xs)

    def peakmem_conv2d_input(self, layer, batch, threads):
        fgrad.conv2d_input(self.xs, self.w, self.g, **self.kw)


class PeakMemConv2dWeight(_PeakMem):
    def make_inputs(self):
        self.x, self.g = rng_arrays([self.xs, self.gs], self.dtype)

    def warm_up(self):
        x, g = rng_arrays([(1, 2, 8, 8), (1, 2, 8, 8)], self.dtype)
        fgrad.conv2d_weight(x, (2, 2, 3, 3), g, padding=1)

    def peakmem_reference(self, layer, batch, threads):
        self.reference(self.ws)

    def peakmem_conv2d_weight(self, layer, batch, threads):
        fgrad.conv2d_weight(self.x, self.ws, self.g, **self.kw)
