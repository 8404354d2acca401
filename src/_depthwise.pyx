# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (Arguments are validated by fastim2col.functional before a kernel runs.)
"""Direct depthwise conv2d in NHWC (groups == C_in, one input channel per group).

A depthwise layer is not a GEMM: each output channel reads one input channel
through kh*kw taps, so an unroll + GEMM would do 1 x (kh*kw) matrix products.
This kernel accumulates tap by tap along contiguous channel vectors, in a
fixed order: deterministic. (NCHW depthwise runs in src/_direct.pyx.)
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from _unroll cimport Geometry, make_geometry, planar

cnp.import_array()


cdef void depthwise_nhwc(const floating* x, Py_ssize_t s_n, Py_ssize_t s_h,
                         Py_ssize_t s_w, Py_ssize_t s_c, const floating* w_taps,
                         const floating* bias, floating* out, Py_ssize_t n_images,
                         Py_ssize_t n_channels, Py_ssize_t multiplier, Geometry g,
                         int n_threads) noexcept nogil:
    # Units: (image, output row). w_taps is (kh*kw, C_out): the weights of one
    # tap are a contiguous vector matching a contiguous run of channels.
    cdef Py_ssize_t n_out = n_channels * multiplier
    cdef Py_ssize_t u, n, oh, ow, i, j, ih, iw, co, tap
    cdef floating* dst
    cdef const floating* src
    cdef const floating* wt
    for u in prange(n_images * g.out_h, nogil=True, num_threads=n_threads, schedule='static'):
        n = u // g.out_h
        oh = u % g.out_h
        for ow in range(g.out_w):
            dst = out + (u * g.out_w + ow) * n_out
            for co in range(n_out):
                dst[co] = bias[co] if bias != NULL else 0
            for i in range(g.kernel_h):
                ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                if ih < 0 or ih >= g.in_h:
                    continue
                for j in range(g.kernel_w):
                    iw = ow * g.stride_w - g.pad_w + j * g.dilation_w
                    if iw < 0 or iw >= g.in_w:
                        continue
                    src = x + n * s_n + ih * s_h + iw * s_w
                    wt = w_taps + (i * g.kernel_w + j) * n_out
                    if multiplier == 1 and s_c == 1:
                        for co in range(n_out):
                            dst[co] += wt[co] * src[co]
                    else:
                        for co in range(n_out):
                            dst[co] += wt[co] * src[(co // multiplier) * s_c]


def depthwise_forward(cnp.ndarray x, cnp.ndarray w_taps, object bias, cnp.ndarray out, *,
                      Py_ssize_t multiplier, tuple geom, int n_threads):
    """out = depthwise conv2d(x, w) + bias, NHWC. x (N, H, W, C) any strides;
    w_taps C-contiguous (kh*kw, C_out); out C-contiguous (N, Ho, Wo, C_out)."""
    cdef Geometry g = make_geometry(geom)
    if not planar(&g) or cnp.PyArray_NDIM(x) != 4:
        raise ValueError("depthwise_forward: for images only (4-d arrays, 2-d geometries)")
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef cnp.npy_intp* st = cnp.PyArray_STRIDES(x)
    cdef Py_ssize_t s0 = st[0] // item, s1 = st[1] // item
    cdef Py_ssize_t s2 = st[2] // item, s3 = st[3] // item
    cdef Py_ssize_t n_images = x.shape[0]
    cdef Py_ssize_t n_channels = x.shape[3]
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* wp = cnp.PyArray_DATA(w_taps)
    cdef void* bp = NULL if bias is None else cnp.PyArray_DATA(bias)
    cdef void* op = cnp.PyArray_DATA(out)
    with nogil:
        if cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT32:
            depthwise_nhwc(<float*> xp, s0, s1, s2, s3, <float*> wp, <float*> bp,
                           <float*> op, n_images, n_channels, multiplier, g, n_threads)
        else:
            depthwise_nhwc(<double*> xp, s0, s1, s2, s3, <double*> wp, <double*> bp,
                           <double*> op, n_images, n_channels, multiplier, g, n_threads)
