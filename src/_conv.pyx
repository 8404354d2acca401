# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (Shapes, strides and tile sizes are validated by fastim2col._args and
# fastim2col._plan before a kernel runs: runtime checks would only cost time.)
"""Blocked conv2d forward and gradient kernels.

The full unrolled matrix never exists: each work unit unrolls one tile of
output positions into a per-thread buffer (sized by the planner to stay in
cache) and hands it to a single-threaded BLAS GEMM. The caller pins BLAS to one
thread while these kernels run (fastim2col._threads), so OpenMP and BLAS
threads never oversubscribe the cores.

Weights are C-contiguous (n_out, K_g), K_g = C_g*kh*kw, columns ordered
(c, i, j) for NCHW and (i, j, c) for NHWC, matching the unroll kernels.

The kernels live in .pxd files by family, `cdef inline` and compiled into
this one module: _conv_common.pxd (the Conv record, unrolled tiles),
_conv_forward.pxd, _conv_input.pxd (GEMM + fold), _conv_input_taps.pxd (tap
by tap, element by element), _conv_weight.pxd. This file holds the entries,
one a family, and the argument checks that guard their memory.
"""
cimport numpy as cnp
from cython cimport floating

from _conv_common cimport Conv
from _conv_forward cimport forward, forward_images
from _conv_input cimport grad_input, grad_input_images
from _conv_input_taps cimport FEW_MAX_CHANNELS, grad_input_few, grad_input_taps
from _conv_weight cimport (TapsSplit, grad_weight, grad_weight_channels,
                           grad_weight_channels_images, grad_weight_images, grad_weight_taps)
from _unroll cimport Geometry, make_geometry, planar

cnp.import_array()


cdef extern from "_direct_kernels.h" nogil:
    int direct_force_isa(int level)


cdef Conv make_conv(cnp.ndarray x, tuple shape, tuple split, bint nhwc, bint direct):
    cdef Conv cv
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef cnp.npy_intp* st = cnp.PyArray_STRIDES(x)
    cv.n_images, cv.n_channels, cv.n_out, cv.groups = shape
    cv.tile, cv.block = split
    cv.nhwc = nhwc
    cv.direct = direct
    cv.s_n = st[0] // item
    cv.s_d = 0   # (images: one plane)
    if cnp.PyArray_NDIM(x) == 5 and nhwc:
        cv.s_d, cv.s_h, cv.s_w, cv.s_c = (st[1] // item, st[2] // item, st[3] // item,
                                          st[4] // item)
    elif cnp.PyArray_NDIM(x) == 5:
        cv.s_c, cv.s_d, cv.s_h, cv.s_w = (st[1] // item, st[2] // item, st[3] // item,
                                          st[4] // item)
    elif nhwc:
        cv.s_h, cv.s_w, cv.s_c = st[1] // item, st[2] // item, st[3] // item
    else:
        cv.s_c, cv.s_h, cv.s_w = st[1] // item, st[2] // item, st[3] // item
    return cv


cdef inline void* data(cnp.ndarray a):
    return NULL if a is None else cnp.PyArray_DATA(a)


cdef inline bint single(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


# One fused runner an entry whose plan picks between a one-image and a
# multi-image variant: the entry then branches on the dtype alone.

cdef Py_ssize_t run_forward(const floating* x, const floating* w, const floating* bias,
                            floating* out, Conv cv, Geometry g, Py_ssize_t images_per_tile,
                            int n_threads, bint thin) noexcept nogil:
    if images_per_tile > 1:
        return forward_images(x, w, bias, out, cv, g, images_per_tile, n_threads)
    return forward(x, w, bias, out, cv, g, n_threads, thin)


cdef Py_ssize_t run_grad_input(const floating* go, const floating* w, const floating* bias,
                               floating* gx, Conv cv, Geometry g, Py_ssize_t images_per_tile,
                               int n_threads, bint transposed, bint thin,
                               bint thin_positions) noexcept nogil:
    if images_per_tile > 1:
        return grad_input_images(go, w, bias, gx, cv, g, images_per_tile, n_threads,
                                 transposed, thin, thin_positions)
    return grad_input(go, w, bias, gx, cv, g, n_threads, transposed, thin, thin_positions)


cdef Py_ssize_t run_grad_weight(const floating* x, const floating* go, floating* gw, Conv cv,
                                Geometry g, Py_ssize_t images_per_tile, bint per_thread_sums,
                                bint transposed, int n_threads, bint thin) noexcept nogil:
    if images_per_tile > 1:
        return grad_weight_images(x, go, gw, cv, g, images_per_tile, n_threads)
    return grad_weight(x, go, gw, cv, g, per_thread_sums, transposed, n_threads, thin)


cdef Py_ssize_t run_grad_weight_channels(const floating* x, const floating* go, floating* gw,
                                         Conv cv, Geometry g, Py_ssize_t images_per_tile,
                                         bint transposed, int n_threads,
                                         bint thin) noexcept nogil:
    if images_per_tile > 1:
        return grad_weight_channels_images(x, go, gw, cv, g, images_per_tile, n_threads)
    return grad_weight_channels(x, go, gw, cv, g, transposed, n_threads, thin)


# The most input channels a group of the element-by-element input gradient
# (for fastim2col._plan.FEW_MAX_CHANNELS, which a test holds equal).
FEW_CHANNELS = FEW_MAX_CHANNELS


def force_isa(int level):
    """For tests: run this module's vector kernels (the thin GEMM, few_rows)
    at ISA level `level`, as fastim2col._direct.force_isa does for its own
    (each extension module holds its own copy of the level). Returns the
    level now in effect. Not thread-safe: call it while no kernel runs."""
    return direct_force_isa(level)


# The entries, one a kernel family. Every argument after the arrays is a
# keyword: shape = (N, C, C_out, groups) (the input gradients: gx's
# channels, go's, groups), geom = the 12 ints of fastim2col._args.Window,
# split = (tile, block) unless said otherwise. in_place: a 1x1, stride 1,
# unpadded convolution whose input (or gx) is read (written) in place as
# the GEMM's operand, nothing unrolled or folded.

def gemm_forward(cnp.ndarray x, cnp.ndarray w, object bias, cnp.ndarray out, *,
                 tuple shape, tuple geom, tuple split, bint in_place, bint nhwc,
                 int n_threads, Py_ssize_t images_per_tile=1, bint thin=False):
    """out = conv2d(x, w) + bias by unrolled tiles and GEMM (forward,
    forward_images); x any strides, w/bias/out C-contiguous.
    images_per_tile > 1: tiles of that many whole images (not in_place).
    thin (NCHW, one image a tile): the GEMMs by the thin kernel."""
    if thin and (nhwc or images_per_tile > 1):
        raise ValueError("gemm_forward: the thin GEMM is for NCHW tiles of one image")
    cdef Conv cv = make_conv(x, shape, split, nhwc, in_place)
    cdef Geometry g = make_geometry(geom)
    cdef void* xp = data(x)
    cdef void* wp = data(w)
    cdef void* bp = data(bias)
    cdef void* op = data(out)
    cdef bint is_single = single(out)
    cdef Py_ssize_t failed
    with nogil:
        if is_single:
            failed = run_forward(<float*> xp, <float*> wp, <float*> bp, <float*> op, cv, g,
                                 images_per_tile, n_threads, thin)
        else:
            failed = run_forward(<double*> xp, <double*> wp, <double*> bp, <double*> op, cv, g,
                                 images_per_tile, n_threads, thin)
    if failed:
        raise MemoryError("conv2d: could not allocate the per-thread tile buffers")


def gemm_grad_input(cnp.ndarray go, cnp.ndarray w, object bias, cnp.ndarray gx, *,
                    tuple shape, tuple geom, tuple split, bint in_place, bint nhwc,
                    int n_threads, Py_ssize_t images_per_tile=1, bint transposed=False,
                    bint thin=False, bint thin_positions=False):
    """gx = d/dx <conv2d(x, w), go> (+ bias per channel of gx) by GEMM and
    fold (grad_input, grad_input_images); all C-contiguous.
    images_per_tile > 1: units of that many whole images (not in_place).
    transposed (NCHW only): each GEMM in the orientation with positions as
    its rows (see grad_input). thin: the GEMMs by the thin kernel
    (_plan.use_thin_gemm), in the transposed orientation in NCHW. thin_positions
    (NCHW): by the thin kernel over grad_output's rows (_plan.use_thin_positions)."""
    if transposed and nhwc:
        raise ValueError("gemm_grad_input: transposed GEMMs are for NCHW only")
    if thin and not (transposed or nhwc):
        raise ValueError("gemm_grad_input: the thin GEMM writes the transposed orientation")
    if thin_positions and (nhwc or transposed or thin):
        raise ValueError("gemm_grad_input: thin_positions is for NCHW, not transposed, "
                         "instead of thin")
    cdef Conv cv = make_conv(gx, shape, split, nhwc, in_place)
    cdef Geometry g = make_geometry(geom)
    cdef void* gop = data(go)
    cdef void* wp = data(w)
    cdef void* bp = data(bias)
    cdef void* gxp = data(gx)
    cdef bint is_single = single(gx)
    cdef Py_ssize_t failed
    with nogil:
        if is_single:
            failed = run_grad_input(<float*> gop, <float*> wp, <float*> bp, <float*> gxp, cv, g,
                                    images_per_tile, n_threads, transposed, thin,
                                    thin_positions)
        else:
            failed = run_grad_input(<double*> gop, <double*> wp, <double*> bp, <double*> gxp,
                                    cv, g, images_per_tile, n_threads, transposed, thin,
                                    thin_positions)
    if failed:
        raise MemoryError("conv2d_input: could not allocate the per-thread tile buffers")


def taps_grad_input(cnp.ndarray go, cnp.ndarray w, object bias, cnp.ndarray gx, *,
                    tuple shape, tuple geom, tuple split, Py_ssize_t images_per_set,
                    Py_ssize_t weights_copy_ld, int n_threads):
    """NHWC: gx = d/dx <conv2d(x, w), go> (+ bias per channel of gx) tap by
    tap in the thin kernel (grad_input_taps); all C-contiguous. Units of
    split = (band, block): band input rows, block input channels, of
    images_per_set images; weights_copy_ld > 0 (at least a block): each
    tap's weights copied first, rows that far apart."""
    if weights_copy_ld and weights_copy_ld < min(split[1], shape[1] // shape[3]):
        raise ValueError("taps_grad_input: weights_copy_ld is shorter than a block")
    cdef Conv cv = make_conv(gx, shape, split, True, False)
    cdef Geometry g = make_geometry(geom)
    if not planar(&g) or cnp.PyArray_NDIM(go) != 4:
        raise ValueError("taps_grad_input: for images only (4-d arrays, 2-d geometries)")
    cdef void* gop = data(go)
    cdef void* wp = data(w)
    cdef void* bp = data(bias)
    cdef void* gxp = data(gx)
    cdef bint is_single = single(gx)
    cdef Py_ssize_t failed
    with nogil:
        if is_single:
            failed = grad_input_taps(<float*> gop, <float*> wp, <float*> bp, <float*> gxp,
                                     cv, g, images_per_set, weights_copy_ld, n_threads)
        else:
            failed = grad_input_taps(<double*> gop, <double*> wp, <double*> bp, <double*> gxp,
                                     cv, g, images_per_set, weights_copy_ld, n_threads)
    if failed:
        raise MemoryError("conv2d_input: could not allocate the per-thread tile buffers")


def elementwise_grad_input(cnp.ndarray go, cnp.ndarray w_taps, object bias, cnp.ndarray gx,
                           *, tuple shape, tuple geom, Py_ssize_t band, bint copy_rows,
                           int n_threads):
    """NHWC, at most FEW_CHANNELS input channels a group: gx = d/dx
    <conv2d(x, w), go> (+ bias per channel of gx) element by element
    (grad_input_few), units of `band` input rows; all C-contiguous, w_taps
    the weights as (groups, taps, cg, og). copy_rows: each unit copies the
    grad_output rows it needs first (else they are read in place)."""
    if not (1 <= shape[1] // shape[3] <= FEW_MAX_CHANNELS and band > 0
            and w_taps.size == shape[1] * shape[2] // shape[3] * geom[4] * geom[5]):
        raise ValueError("elementwise_grad_input: for at most FEW_CHANNELS input channels "
                         "a group, bands of rows, w_taps as (groups, taps, cg, og)")
    cdef Conv cv = make_conv(gx, shape, (band, shape[1] // shape[3]), True, False)
    cdef Geometry g = make_geometry(geom)
    if not planar(&g) or cnp.PyArray_NDIM(go) != 4:
        raise ValueError("elementwise_grad_input: for images only (4-d arrays, 2-d geometries)")
    cdef void* gop = data(go)
    cdef void* wp = data(w_taps)
    cdef void* bp = data(bias)
    cdef void* gxp = data(gx)
    cdef bint is_single = single(gx)
    cdef Py_ssize_t failed
    with nogil:
        if is_single:
            failed = grad_input_few(<float*> gop, <float*> wp, <float*> bp, <float*> gxp, cv, g,
                                    copy_rows, n_threads)
        else:
            failed = grad_input_few(<double*> gop, <double*> wp, <double*> bp, <double*> gxp,
                                    cv, g, copy_rows, n_threads)
    if failed:
        raise MemoryError("conv2d_input: could not allocate the per-thread tile buffers")


def gemm_grad_weight(cnp.ndarray x, cnp.ndarray go, cnp.ndarray gw, *, tuple shape,
                     tuple geom, tuple split, bint in_place, bint nhwc,
                     bint per_thread_sums, int n_threads, Py_ssize_t images_per_tile=1,
                     bint transposed=False, bint thin=False):
    """gw = d/dw <conv2d(x, w), go> by unrolled tiles and GEMM (grad_weight,
    grad_weight_images); x any strides, go/gw C-contiguous.
    per_thread_sums: units (image, group, tile) into per-thread sums; else
    units (group, block of output channels). images_per_tile > 1: tiles of
    that many whole images, per-thread sums. transposed (NCHW, one image a
    tile, per-thread sums): GEMMs in the transposed orientation. thin (NHWC,
    one image a tile): the GEMMs by the thin kernel."""
    if thin and not (images_per_tile == 1 and nhwc):
        raise ValueError("gemm_grad_weight: the thin GEMM is for NHWC tiles of one image")
    cdef Conv cv = make_conv(x, shape, split, nhwc, in_place)
    cdef Geometry g = make_geometry(geom)
    cdef void* xp = data(x)
    cdef void* gop = data(go)
    cdef void* gwp = data(gw)
    cdef bint is_single = single(gw)
    cdef Py_ssize_t failed
    with nogil:
        if is_single:
            failed = run_grad_weight(<float*> xp, <float*> gop, <float*> gwp, cv, g,
                                     images_per_tile, per_thread_sums, transposed, n_threads,
                                     thin)
        else:
            failed = run_grad_weight(<double*> xp, <double*> gop, <double*> gwp, cv, g,
                                     images_per_tile, per_thread_sums, transposed, n_threads,
                                     thin)
    if failed:
        raise MemoryError("conv2d_weight: could not allocate the per-thread buffers")


def gemm_grad_weight_by_channels(cnp.ndarray x, cnp.ndarray go, cnp.ndarray gw, *,
                                 tuple shape, tuple geom, tuple split, bint in_place,
                                 int n_threads, Py_ssize_t images_per_tile=1,
                                 bint transposed=False, bint thin=False):
    """NCHW: gw = d/dw <conv2d(x, w), go>, units owning chunks of split[1]
    input channels (grad_weight_channels; images_per_tile > 1: sets of whole
    images, grad_weight_channels_images); x any strides, go/gw C-contiguous.
    transposed (one image a tile): GEMMs in the transposed orientation.
    thin (one image a tile, not transposed): the GEMMs by the thin kernel."""
    if thin and not (images_per_tile == 1 and not transposed):
        raise ValueError("gemm_grad_weight_by_channels: the thin GEMM is for tiles of one "
                         "image, not transposed")
    cdef Conv cv = make_conv(x, shape, split, False, in_place)
    cdef Geometry g = make_geometry(geom)
    cdef void* xp = data(x)
    cdef void* gop = data(go)
    cdef void* gwp = data(gw)
    cdef bint is_single = single(gw)
    cdef Py_ssize_t failed
    with nogil:
        if is_single:
            failed = run_grad_weight_channels(<float*> xp, <float*> gop, <float*> gwp, cv, g,
                                              images_per_tile, transposed, n_threads, thin)
        else:
            failed = run_grad_weight_channels(<double*> xp, <double*> gop, <double*> gwp, cv,
                                              g, images_per_tile, transposed, n_threads, thin)
    if failed:
        raise MemoryError("conv2d_weight: could not allocate the per-thread buffers")


def taps_grad_weight(cnp.ndarray x, cnp.ndarray go, cnp.ndarray gw, *, tuple shape,
                     tuple geom, tuple split, tuple taps_split, int n_threads):
    """NHWC, x's channels contiguous: gw = d/dw <conv2d(x, w), go> tap by tap
    in the thin kernel (grad_weight_taps); go/gw C-contiguous. Units of
    split = (in_block, out_block) input and output channels; taps_split =
    (taps a unit, images a call, output rows a call: fewer than out_h for
    bands of one image)."""
    cdef Conv cv = make_conv(x, shape, split, True, False)
    cdef Geometry g = make_geometry(geom)
    if not planar(&g) or cnp.PyArray_NDIM(x) != 4:
        raise ValueError("taps_grad_weight: for images only (4-d arrays, 2-d geometries)")
    cdef void* xp = data(x)
    cdef void* gop = data(go)
    cdef void* gwp = data(gw)
    cdef bint is_single = single(gw)
    cdef Py_ssize_t failed
    if cv.s_c != 1:
        raise ValueError("taps_grad_weight: x's channels must be contiguous")
    cdef TapsSplit sp
    sp.in_block, sp.out_block = split
    sp.tap_block, sp.per_call, sp.band = taps_split
    if min(split + taps_split) < 1:
        raise ValueError("taps_grad_weight: needs positive blocks")
    with nogil:
        if is_single:
            failed = grad_weight_taps(<float*> xp, <float*> gop, <float*> gwp, cv, g, sp,
                                      n_threads)
        else:
            failed = grad_weight_taps(<double*> xp, <double*> gop, <double*> gwp, cv, g, sp,
                                      n_threads)
    if failed:
        raise MemoryError("conv2d_weight: could not allocate the per-thread buffers")
