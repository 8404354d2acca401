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

from _unroll cimport (Geometry, fold_nchw, fold_nhwc, in_positions, make_geometry, n_taps,
                     out_positions, unroll_nchw, unroll_nhwc)

cnp.import_array()


cdef inline Py_ssize_t elem_stride(cnp.ndarray a, int axis):
    return cnp.PyArray_STRIDES(a)[axis] // cnp.PyArray_ITEMSIZE(a)


cdef void im2col_nchw(const floating* x, Py_ssize_t s_n, Py_ssize_t s_c, Py_ssize_t s_d,
                      Py_ssize_t s_h, Py_ssize_t s_w, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, Py_ssize_t tile,
                      floating* out, int n_threads) noexcept nogil:
    # Units: (image, channel, position tile). Each writes its own block of
    # rows and columns of out (N, C*taps, L): no two units share an element.
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t n_tiles = (n_pos + tile - 1) // tile
    cdef Py_ssize_t kk = n_taps(&g)
    cdef Py_ssize_t u, n, c, t, p0
    for u in prange(n_images * n_channels * n_tiles, nogil=True,
                    num_threads=n_threads, schedule='static'):
        t = u % n_tiles
        c = (u // n_tiles) % n_channels
        n = u // (n_tiles * n_channels)
        p0 = t * tile
        unroll_nchw(x + n * s_n + c * s_c, s_c, s_d, s_h, s_w, 1, &g, p0,
                    min(n_pos, p0 + tile),
                    out + (n * n_channels + c) * kk * n_pos + p0, n_pos)


cdef void im2col_nhwc(const floating* x, Py_ssize_t s_n, Py_ssize_t s_d, Py_ssize_t s_h,
                      Py_ssize_t s_w, Py_ssize_t s_c, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, Py_ssize_t tile,
                      floating* out, int n_threads) noexcept nogil:
    # Units: (image, position tile), each writing whole rows of out (N, L, K).
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t n_tiles = (n_pos + tile - 1) // tile
    cdef Py_ssize_t n_cols = n_taps(&g) * n_channels
    cdef Py_ssize_t u, n, p0
    for u in prange(n_images * n_tiles, nogil=True, num_threads=n_threads,
                    schedule='static'):
        n = u // n_tiles
        p0 = (u % n_tiles) * tile
        unroll_nhwc(x + n * s_n, s_d, s_h, s_w, s_c, 0, n_channels, &g, p0,
                    min(n_pos, p0 + tile), out + (n * n_pos + p0) * n_cols, n_cols)


cdef void col2im_nchw(const floating* cols, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, floating* out,
                      int n_threads) noexcept nogil:
    # Units: (image, channel). A channel plane (volume) is summed by one
    # thread, in a fixed order: race-free and bitwise deterministic.
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t kk = n_taps(&g)
    cdef Py_ssize_t plane = in_positions(&g)
    cdef Py_ssize_t u, k
    for u in prange(n_images * n_channels, nogil=True, num_threads=n_threads,
                    schedule='static'):
        for k in range(plane):
            out[u * plane + k] = 0
        fold_nchw(cols + u * kk * n_pos, n_pos, 1, 1, &g, 0, n_pos, out + u * plane)


cdef void col2im_nhwc(const floating* cols, Py_ssize_t n_images,
                      Py_ssize_t n_channels, Geometry g, Py_ssize_t tile_rows,
                      floating* out, int n_threads) noexcept nogil:
    # Units: (image, band of tile_rows output rows; volumes: rows of all
    # output planes in turn). Bands two apart never touch the same input row
    # (tile_rows is chosen so: for volumes, whole planes where the kernel is
    # deeper than 1), so even bands run in parallel first, then odd ones:
    # race-free, and the order in which each element is summed is fixed,
    # hence deterministic.
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t n_cols = n_taps(&g) * n_channels
    cdef Py_ssize_t n_rows = g.out_d * g.out_h
    cdef Py_ssize_t n_bands = (n_rows + tile_rows - 1) // tile_rows
    cdef Py_ssize_t n_pairs = (n_bands + 1) // 2
    cdef Py_ssize_t image_size = in_positions(&g) * n_channels
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


cdef void run_im2col(const floating* x, Py_ssize_t s_n, Py_ssize_t s_c, Py_ssize_t s_d,
                     Py_ssize_t s_h, Py_ssize_t s_w, Py_ssize_t n_images,
                     Py_ssize_t n_channels, Geometry g, bint nhwc, Py_ssize_t tile,
                     floating* out, int n_threads) noexcept nogil:
    # (the entries branch on the dtype alone; the layout is chosen here)
    if nhwc:
        im2col_nhwc(x, s_n, s_d, s_h, s_w, s_c, n_images, n_channels, g, tile, out, n_threads)
    else:
        im2col_nchw(x, s_n, s_c, s_d, s_h, s_w, n_images, n_channels, g, tile, out, n_threads)


cdef void run_col2im(const floating* cols, Py_ssize_t n_images, Py_ssize_t n_channels,
                     Geometry g, bint nhwc, Py_ssize_t rows_per_band, floating* out,
                     int n_threads) noexcept nogil:
    if nhwc:
        col2im_nhwc(cols, n_images, n_channels, g, rows_per_band, out, n_threads)
    else:
        col2im_nchw(cols, n_images, n_channels, g, out, n_threads)


def im2col(cnp.ndarray x, cnp.ndarray out, *, tuple geom, bint nhwc,
           Py_ssize_t tile, int n_threads):
    """x: (N, C, [D,] H, W) or (N, [D,] H, W, C), any strides; out: C-contiguous."""
    cdef Geometry g = make_geometry(geom)
    cdef int nd = cnp.PyArray_NDIM(x)
    # element strides (n, c, d, h, w); images have no depth (their s_d unused)
    cdef Py_ssize_t s_n = elem_stride(x, 0)
    cdef Py_ssize_t s_c = elem_stride(x, nd - 1 if nhwc else 1)
    cdef Py_ssize_t s_d = elem_stride(x, nd - 4 if nhwc else 2) if nd == 5 else 0
    cdef Py_ssize_t s_h = elem_stride(x, nd - 3 if nhwc else nd - 2)
    cdef Py_ssize_t s_w = elem_stride(x, nd - 2 if nhwc else nd - 1)
    cdef Py_ssize_t n_images = x.shape[0]
    cdef Py_ssize_t n_channels = x.shape[nd - 1] if nhwc else x.shape[1]
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* op = cnp.PyArray_DATA(out)
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    with nogil:
        if single:
            run_im2col(<float*> xp, s_n, s_c, s_d, s_h, s_w, n_images, n_channels, g, nhwc,
                       tile, <float*> op, n_threads)
        else:
            run_im2col(<double*> xp, s_n, s_c, s_d, s_h, s_w, n_images, n_channels, g, nhwc,
                       tile, <double*> op, n_threads)


def col2im(cnp.ndarray cols, cnp.ndarray out, *, tuple geom, bint nhwc,
           Py_ssize_t rows_per_band, int n_threads):
    """cols: C-contiguous (N, C*taps, L) or (N, L, taps*C); out C-contiguous."""
    cdef Geometry g = make_geometry(geom)
    cdef Py_ssize_t n_images = out.shape[0]
    cdef Py_ssize_t n_channels = out.shape[cnp.PyArray_NDIM(out) - 1] if nhwc else out.shape[1]
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
