"""im2col and col2im: time_ and track_ GB/s of output written, float32, NCHW
(VGG at batch 8 skipped: its unrolled matrix alone is 0.9 GB)."""
import numpy as np

from .common import (_LayerBench, check_case, col2im_bytes, fastim2col, im2col_bytes,
                     median_time, rate, rng_arrays, set_threads, shapes)


class Im2col(_LayerBench):
    """im2col of each layer's input with the layer's window: (N, C*k*k, Ho*Wo)."""

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        set_threads(threads)
        xs, _, _ = shapes(L, batch)
        (self.x,) = rng_arrays([xs], self.dtype)
        self.args = (L.k, L.stride, L.pad)
        self.nbytes = im2col_bytes(L, batch, self.x.itemsize)

    def time_im2col(self, layer, batch, threads):
        fastim2col.im2col(self.x, *self.args)

    def track_gbps(self, layer, batch, threads):
        t = median_time(fastim2col.im2col, self.x, *self.args)
        return rate(self.nbytes, t)

    track_gbps.unit = "GB/s"


class Col2im(_LayerBench):
    """col2im (fold), the adjoint of Im2col: columns back to the layer's input
    image, overlapping windows summed."""

    def setup(self, layer, batch, threads):
        L = check_case(layer, batch)
        set_threads(threads)
        ho = L.out_h
        (self.cols,) = rng_arrays([(batch, L.c_in * L.k * L.k, ho * ho)], self.dtype)
        self.args = ((L.h, L.h), L.k, L.stride, L.pad)
        self.nbytes = col2im_bytes(L, batch, self.cols.itemsize)

    def time_col2im(self, layer, batch, threads):
        fastim2col.col2im(self.cols, *self.args)

    def track_gbps(self, layer, batch, threads):
        t = median_time(fastim2col.col2im, self.cols, *self.args)
        return rate(self.nbytes, t)

    track_gbps.unit = "GB/s"
