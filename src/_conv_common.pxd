# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (These directives must be here too: a .pxd's inline functions are compiled
# with its own directives, not with those of the .pyx that cimports them.
# Shapes, strides and tile sizes are validated by fastim2col._args and
# fastim2col._plan before a kernel runs: runtime checks would only cost time.)
#
# What the kernel families of fastim2col._conv share: one convolution's shapes
# and work split (Conv), its unrolled tiles, and the thin GEMM's per-thread
# packing buffer. Its functions are `cdef inline`, compiled into _conv.
from cython cimport floating
from libc.stdlib cimport malloc

from _thin_gemm cimport THIN_KC
from _unroll cimport Geometry, n_taps, unroll_nchw, unroll_nhwc


cdef struct Conv:
    # One convolution's shapes and its work split, chosen by fastim2col._plan.
    Py_ssize_t n_images, n_channels, n_out, groups
    Py_ssize_t s_n, s_c, s_d, s_h, s_w   # element strides of the strided operand (s_d: volumes)
    bint nhwc, direct               # direct: 1x1/stride 1/no padding, no unroll
    Py_ssize_t tile                 # output positions per tile
    Py_ssize_t block                # rows (output or input channels) per unit


cdef inline floating* thin_scratch(bint thin, Py_ssize_t n_pos, floating* like) noexcept nogil:
    # a thread's packing buffer for thin_gemm calls of up to n_pos positions
    # (its broadcast side); NULL where the GEMMs are BLAS's (`like` only
    # picks the type)
    if not thin:
        return NULL
    return <floating*> malloc(THIN_KC * n_pos * sizeof(floating))


cdef inline Py_ssize_t tile_ld(const Conv* cv, const Geometry* g,
                               Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    # Leading dimension of the matrix unrolled_tile returns. (Returned, not
    # written through a pointer: inside prange a variable whose address is
    # taken is shared between threads.)
    if cv.nhwc:
        return cv.s_w if cv.direct else (cv.n_channels // cv.groups) * n_taps(g)
    return cv.s_c if cv.direct else p1 - p0


cdef inline const floating* unrolled_tile(const floating* x_img, const Conv* cv,
                                          const Geometry* g, Py_ssize_t group,
                                          Py_ssize_t p0, Py_ssize_t p1,
                                          floating* buf, bint fill=True) noexcept nogil:
    # The K_g x (p1-p0) (NCHW) or (p1-p0) x K_g (NHWC) matrix of one group's
    # unrolled tile: unrolled into buf, or, for a direct convolution, the
    # input itself, which already is that matrix; its leading dimension is
    # tile_ld(). fill=False: buf already holds this tile (Cython resets
    # prange-private variables every iteration, so the pointer is recomputed).
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t kg = cg * n_taps(g)
    if cv.nhwc:
        if cv.direct:
            return x_img + p0 * cv.s_w + group * cg
        if fill:
            unroll_nhwc(x_img, cv.s_d, cv.s_h, cv.s_w, cv.s_c, group * cg, cg, g, p0, p1, buf,
                        kg)
        return buf
    if cv.direct:
        return x_img + group * cg * cv.s_c + p0
    if fill:
        unroll_nchw(x_img + group * cg * cv.s_c, cv.s_c, cv.s_d, cv.s_h, cv.s_w, cg, g, p0, p1,
                    buf, p1 - p0)
    return buf
