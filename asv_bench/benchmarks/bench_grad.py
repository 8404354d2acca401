"""The backward pass: grad.conv2d_input, grad.conv2d_weight and
conv_transpose2d (conv2d_input's twin), time_ and track_ GFLOP/s.

float32 runs the layer x batch x threads grid (VGG at batch 8 skipped);
float64 runs every layer at batch 8 on one thread only (the *Float64
classes): a canary for the dgemm path, not a second full grid. The NHWC
layout's gradients (their own kernels: tap by tap for most ResNet layers,
element by element for the stem's input gradient) run float32 on one
thread (the *NHWC classes), as conv2d's NHWC benchmark.
"""
from .common import (BATCHES, LAYER_NAMES, _LayerBench, check_case, conv_flops, conv_kwargs, fastim2col,
                     fgrad, median_time, rate, rng_arrays, set_threads, shapes,
                     transpose_output_padding)

# Batch 8 (the last batch size: batch 1 in smoke mode), one thread.
_FLOAT64_PARAMS = [LAYER_NAMES, BATCHES[-1:], [1]]


class _GradBench(_LayerBench):
    layout = "NCHW"

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        set_threads(threads)
        self.xs, self.ws, gs = shapes(L, batch, self.layout)
        self.x, self.w, self.g = rng_arrays([self.xs, self.ws, gs], self.dtype)
        self.kw = dict(conv_kwargs(L), layout=self.layout)
        self.op = transpose_output_padding(L)
        self.flops = conv_flops(L, batch)


class Conv2dInput(_GradBench):
    """grad.conv2d_input: the input gradient (N, C_in, H, W) from grad_output."""

    def time_conv2d_input(self, layer, batch, threads):
        fgrad.conv2d_input(self.xs, self.w, self.g, **self.kw)

    def track_gflops(self, layer, batch, threads):
        t = median_time(fgrad.conv2d_input, self.xs, self.w, self.g, **self.kw)
        return rate(self.flops, t)

    track_gflops.unit = "GFLOP/s"


class Conv2dWeight(_GradBench):
    """grad.conv2d_weight: the weight gradient (C_out, C_in/groups, k, k)."""

    def time_conv2d_weight(self, layer, batch, threads):
        fgrad.conv2d_weight(self.x, self.ws, self.g, **self.kw)

    def track_gflops(self, layer, batch, threads):
        t = median_time(fgrad.conv2d_weight, self.x, self.ws, self.g, **self.kw)
        return rate(self.flops, t)

    track_gflops.unit = "GFLOP/s"


class ConvTranspose2d(_GradBench):
    """conv_transpose2d of the layer's output-shaped tensor with the layer's
    weight, output_padding chosen to land exactly on the layer's input size."""

    def time_conv_transpose2d(self, layer, batch, threads):
        fastim2col.conv_transpose2d(self.g, self.w, output_padding=self.op, **self.kw)

    def track_gflops(self, layer, batch, threads):
        t = median_time(fastim2col.conv_transpose2d, self.g, self.w,
                        output_padding=self.op, **self.kw)
        return rate(self.flops, t)

    track_gflops.unit = "GFLOP/s"


class Conv2dInputNHWC(Conv2dInput):
    params = [LAYER_NAMES, BATCHES, [1]]
    layout = "NHWC"


class Conv2dWeightNHWC(Conv2dWeight):
    params = [LAYER_NAMES, BATCHES, [1]]
    layout = "NHWC"


class Conv2dInputFloat64(Conv2dInput):
    params = _FLOAT64_PARAMS
    dtype = "float64"


class Conv2dWeightFloat64(Conv2dWeight):
    params = _FLOAT64_PARAMS
    dtype = "float64"


class ConvTranspose2dFloat64(ConvTranspose2d):
    params = _FLOAT64_PARAMS
    dtype = "float64"
