# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (Indices are validated in Python before any kernel runs, so bounds and
# wraparound checks only cost time; C division is safe because divisors are
# validated positive.)
"""Parallel im2col / col2im kernels.

Thin def wrappers take arrays already validated and normalized by
fastim2col._args; the noexcept nogil kernels compute.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from _unroll cimport Geometry, fold_nchw, fold_nhwc, make_geometry, unroll_nchw, unroll_nhwc

cnp.import_array()


cdef inline Py_ssize_t elem_stride(cnp.ndarray a, int axis):
    return cnp.PyArray_STRIDES(a)[axis] // cnp.PyArray_ITEMSIZE(a)


cdef void im2col_nchw(const floating* x, Py_ssize_t s_n, Py_ssize_t s_c,
                      Py_ssize_t s_h, Py_ssize_t s_w, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, Py_ssize_t tile,
                      floating* out, int n_threads) noexcept nogil:
    # Units: (image, channel, position tile). Each writes its own block of
    # rows and columns of out (N, C*kh*kw, L): no two units share an element.
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t n_tiles = (n_pos + tile - 1) // tile
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t u, n, c, t, p0
    for u in prange(n_images * n_channels * n_tiles, nogil=True,
                    num_threads=n_threads, schedule='static'):
        t = u % n_tiles
        c = (u // n_tiles) % n_channels
        n = u // (n_tiles * n_channels)
        p0 = t * tile
        unroll_nchw(x + n * s_n + c * s_c, s_c, s_h, s_w, 1, &g, p0,
                    min(n_pos, p0 + tile),
                    out + (n * n_channels + c) * kk * n_pos + p0, n_pos)


cdef void im2col_nhwc(const floating* x, Py_ssize_t s_n, Py_ssize_t s_h,
                      Py_ssize_t s_w, Py_ssize_t s_c, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, Py_ssize_t tile,
                      floating* out, int n_threads) noexcept nogil:
    # Units: (image, position tile), each writing whole rows of out (N, L, K).
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t n_tiles = (n_pos + tile - 1) // tile
    cdef Py_ssize_t n_cols = g.kernel_h * g.kernel_w * n_channels
    cdef Py_ssize_t u, n, p0
    for u in prange(n_images * n_tiles, nogil=True, num_threads=n_threads,
                    schedule='static'):
        n = u // n_tiles
        p0 = (u % n_tiles) * tile
        unroll_nhwc(x + n * s_n, s_h, s_w, s_c, 0, n_channels, &g, p0,
                    min(n_pos, p0 + tile), out + (n * n_pos + p0) * n_cols, n_cols)


cdef void col2im_nchw(const floating* cols, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, floating* out,
                      int n_threads) noexcept nogil:
    # Units: (image, channel). A channel plane is summed by one thread, in a
    # fixed order: race-free and bitwise deterministic.
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t plane = g.in_h * g.in_w
    cdef Py_ssize_t u, k
    for u in prange(n_images * n_channels, nogil=True, num_threads=n_threads,
                    schedule='static'):
        for k in range(plane):
            out[u * plane + k] = 0
        fold_nchw(cols + u * kk * n_pos, n_pos, 1, 1, &g, 0, n_pos, out + u * plane)


cdef void col2im_nhwc(const floating* cols, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, Py_ssize_t tile_rows,
                      floating* out, int n_threads) noexcept nogil:
    # Units: (image, band of tile_rows output rows). Bands two apart never
    # touch the same input row (tile_rows is chosen so), so even bands run in
    # parallel first, then odd ones: race-free, and the order in which each
    # element is summed is fixed, hence deterministic.
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t n_cols = g.kernel_h * g.kernel_w * n_channels
    cdef Py_ssize_t n_bands = (g.out_h + tile_rows - 1) // tile_rows
    cdef Py_ssize_t n_pairs = (n_bands + 1) // 2
    cdef Py_ssize_t image_size = g.in_h * g.in_w * n_channels
    cdef Py_ssize_t u, k, n, band, p0, p1
    cdef int parity
    for u in prange(n_images, nogil=True, num_threads=n_threads, schedule='static'):
        for k in range(image_size):
            out[u * image_size + k] = 0
    for parity in range(2):
        for u in prange(n_images * n_pairs, nogil=True, num_threads=n_threads,
                        schedule='static'):
            n = u // n_pairs
            band = 2 * (u % n_pairs) + parity
            if band < n_bands:
                p0 = band * tile_rows * g.out_w
                p1 = min(n_pos, p0 + tile_rows * g.out_w)
                fold_nhwc(cols + (n * n_pos + p0) * n_cols, n_cols, n_channels,
                          0, n_channels, &g, p0, p1, out + n * image_size)


cdef void run_im2col(const floating* x, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t s2,
                     Py_ssize_t s3, Py_ssize_t n_images, Py_ssize_t n_channels, Geometry g,
                     bint nhwc, Py_ssize_t tile, floating* out, int n_threads) noexcept nogil:
    # (the entries branch on the dtype alone; the layout is chosen here)
    if nhwc:
        im2col_nhwc(x, s0, s1, s2, s3, n_images, n_channels, g, tile, out, n_threads)
    else:
        im2col_nchw(x, s0, s1, s2, s3, n_images, n_channels, g, tile, out, n_threads)


cdef void run_col2im(const floating* cols, Py_ssize_t n_images, Py_ssize_t n_channels,
                     Geometry g, bint nhwc, Py_ssize_t rows_per_band, floating* out,
                     int n_threads) noexcept nogil:
    if nhwc:
        col2im_nhwc(cols, n_images, n_channels, g, rows_per_band, out, n_threads)
    else:
        col2im_nchw(cols, n_images, n_channels, g, out, n_threads)


def im2col(cnp.ndarray x, cnp.ndarray out, *, tuple geom, bint nhwc,
           Py_ssize_t tile, int n_threads):
    """x: (N, C, H, W) or (N, H, W, C), any strides; out: C-contiguous."""
    cdef Geometry g = make_geometry(geom)
    cdef Py_ssize_t s0 = elem_stride(x, 0), s1 = elem_stride(x, 1)
    cdef Py_ssize_t s2 = elem_stride(x, 2), s3 = elem_stride(x, 3)
    cdef Py_ssize_t n_images = x.shape[0]
    cdef Py_ssize_t n_channels = x.shape[3] if nhwc else x.shape[1]
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* op = cnp.PyArray_DATA(out)
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    with nogil:
        if single:
            run_im2col(<float*> xp, s0, s1, s2, s3, n_images, n_channels, g, nhwc, tile,
                       <float*> op, n_threads)
        else:
            run_im2col(<double*> xp, s0, s1, s2, s3, n_images, n_channels, g, nhwc, tile,
                       <double*> op, n_threads)


def col2im(cnp.ndarray cols, cnp.ndarray out, *, tuple geom, bint nhwc,
           Py_ssize_t rows_per_band, int n_threads):
    """cols: C-contiguous (N, C*kh*kw, L) or (N, L, kh*kw*C); out C-contiguous."""
    cdef Geometry g = make_geometry(geom)
    cdef Py_ssize_t n_images = out.shape[0]
    cdef Py_ssize_t n_channels = out.shape[3] if nhwc else out.shape[1]
    cdef void* cp = cnp.PyArray_DATA(cols)
    cdef void* op = cnp.PyArray_DATA(out)
    cdef bint single = cnp.PyArray_TYPE(cols) == cnp.NPY_FLOAT32
    with nogil:
        if single:
            run_col2im(<float*> cp, n_images, n_channels, g, nhwc, rows_per_band,
                       <float*> op, n_threads)
        else:
            run_col2im(<double*> cp, n_images, n_channels, g, nhwc, rows_per_band,
                       <double*> op, n_threads)
