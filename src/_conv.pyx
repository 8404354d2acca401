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
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

from _blas cimport gemm_rm
from _lines cimport CACHE_LINE, line_start
from _openmp cimport (FastUnitRun, fast_units_claim, new_thread_keys, new_unit_runs,
                      omp_get_thread_num)
from _thin_gemm cimport THIN_KC, thin_gemm, thin_gemm_at, thin_gemm_terms, thin_gemm_t
from _unroll cimport Geometry, ceil_div, unroll_nchw, unroll_nhwc, fold_nchw, fold_nhwc

cnp.import_array()


cdef extern from "_direct_kernels.h" nogil:
    ctypedef struct FewShape:
        Py_ssize_t in_h, in_w, out_h, out_w, kernel_h, kernel_w
        Py_ssize_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
        Py_ssize_t cg, og, ld_gx, ld_go
    int FEW_MAX_CHANNELS
    int FEW_TABLES
    int direct_force_isa(int level)
    void few_rows_f(const float* go, Py_ssize_t oy0, const float* wt, const float* bias,
                    float* gx, Py_ssize_t y0, Py_ssize_t y1, const FewShape* s, Py_ssize_t* tab)
    void few_rows_d(const double* go, Py_ssize_t oy0, const double* wt, const double* bias,
                    double* gx, Py_ssize_t y0, Py_ssize_t y1, const FewShape* s,
                    Py_ssize_t* tab)


cdef inline floating* thin_scratch(bint thin, Py_ssize_t n_pos, floating* like) noexcept nogil:
    # a thread's packing buffer for thin_gemm calls of up to n_pos positions
    # (its broadcast side); NULL where the GEMMs are BLAS's (`like` only
    # picks the type)
    if not thin:
        return NULL
    return <floating*> malloc(THIN_KC * n_pos * sizeof(floating))


cdef struct Conv:
    # One convolution's shapes and its work split, chosen by fastim2col._plan.
    Py_ssize_t n_images, n_channels, n_out, groups
    Py_ssize_t s_n, s_c, s_h, s_w   # element strides of the strided operand
    bint nhwc, direct               # direct: 1x1/stride 1/no padding, no unroll
    Py_ssize_t tile                 # output positions per tile
    Py_ssize_t block                # rows (output or input channels) per unit


cdef Conv make_conv(cnp.ndarray x, tuple shape, tuple split, bint nhwc, bint direct):
    cdef Conv cv
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef cnp.npy_intp* st = cnp.PyArray_STRIDES(x)
    cv.n_images, cv.n_channels, cv.n_out, cv.groups = shape
    cv.tile, cv.block = split
    cv.nhwc = nhwc
    cv.direct = direct
    cv.s_n = st[0] // item
    if nhwc:
        cv.s_h, cv.s_w, cv.s_c = st[1] // item, st[2] // item, st[3] // item
    else:
        cv.s_c, cv.s_h, cv.s_w = st[1] // item, st[2] // item, st[3] // item
    return cv


cdef Geometry make_geometry(tuple geom):
    cdef Geometry g
    (g.in_h, g.in_w, g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h,
     g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w) = geom
    return g


cdef struct ChannelSplit:
    # The NCHW weight gradient split by input channels (grad_weight_channels*):
    # units (group, chunk of cv.block input channels), chunk innermost.
    Py_ssize_t n_pos, cg, og, taps, kg, n_chunks, n_units


cdef struct ChannelChunk:
    Py_ssize_t grp, c0, n_ch


cdef inline ChannelSplit channel_split(const Conv* cv, const Geometry* g) noexcept nogil:
    cdef ChannelSplit cs
    cs.n_pos = g.out_h * g.out_w
    cs.cg = cv.n_channels // cv.groups
    cs.og = cv.n_out // cv.groups
    cs.taps = g.kernel_h * g.kernel_w
    cs.kg = cs.cg * cs.taps
    cs.n_chunks = (cs.cg + cv.block - 1) // cv.block
    cs.n_units = cv.groups * cs.n_chunks
    return cs


cdef inline ChannelChunk channel_chunk(const ChannelSplit* cs, Py_ssize_t block,
                                       Py_ssize_t u) noexcept nogil:
    # Unit u's group and input channels [c0, c0 + n_ch). (Returned by value:
    # a variable whose address is taken inside prange is shared, not private.)
    cdef ChannelChunk ch
    ch.grp = u // cs.n_chunks
    ch.c0 = (u % cs.n_chunks) * block
    ch.n_ch = min(cs.cg, ch.c0 + block) - ch.c0
    return ch


cdef inline Py_ssize_t tile_ld(const Conv* cv, const Geometry* g,
                               Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    # Leading dimension of the matrix unrolled_tile returns. (Returned, not
    # written through a pointer: inside prange a variable whose address is
    # taken is shared between threads.)
    if cv.nhwc:
        return cv.s_w if cv.direct else (cv.n_channels // cv.groups) * g.kernel_h * g.kernel_w
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
    cdef Py_ssize_t kg = cg * g.kernel_h * g.kernel_w
    if cv.nhwc:
        if cv.direct:
            return x_img + p0 * cv.s_w + group * cg
        if fill:
            unroll_nhwc(x_img, cv.s_h, cv.s_w, cv.s_c, group * cg, cg, g, p0, p1, buf, kg)
        return buf
    if cv.direct:
        return x_img + group * cg * cv.s_c + p0
    if fill:
        unroll_nchw(x_img + group * cg * cv.s_c, cv.s_c, cv.s_h, cv.s_w, cg, g, p0, p1,
                    buf, p1 - p0)
    return buf


cdef Py_ssize_t forward(const floating* x, const floating* w, const floating* bias,
                        floating* out, Conv cv, Geometry g, int n_threads,
                        bint thin) noexcept nogil:
    # Units (image, group, tile, block of output channels), block innermost:
    # a thread gets a run of consecutive units, so consecutive blocks of one
    # tile reuse the tile it unrolled (keyed per thread); threads done with
    # their run take the slower threads' last units (fast_units_claim; each
    # unit writes its own part of out: the same bits whoever computes it).
    # thin (NCHW): the GEMMs are the thin kernel's, the tile's rows (x itself
    # for 1x1) its vectors, the block's weights broadcast
    # (_plan.use_thin_forward).
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * g.kernel_h * g.kernel_w
    cdef Py_ssize_t n_tiles = (n_pos + cv.tile - 1) // cv.tile
    cdef Py_ssize_t n_blocks = (og + cv.block - 1) // cv.block
    cdef Py_ssize_t n_units = cv.n_images * cv.groups * n_tiles * n_blocks
    cdef Py_ssize_t run, u, n, grp, t, b, p0, p1, m0, m1, tile_key, ld, r, q
    cdef Py_ssize_t n_failed = 0
    cdef floating* buf
    cdef floating* gp
    cdef const floating* cols
    cdef floating* dst
    cdef int tid
    cdef Py_ssize_t* last_key = new_thread_keys(n_threads)
    cdef FastUnitRun* runs = new_unit_runs(n_threads, n_units)
    if last_key == NULL or runs == NULL:
        free(last_key)
        free(runs)
        return 1
    buf = NULL   # (also before the block: silences gcc's maybe-uninitialized)
    gp = NULL
    with parallel(num_threads=n_threads):
        buf = NULL
        if not cv.direct:
            buf = <floating*> malloc(kg * cv.tile * sizeof(floating))
        gp = thin_scratch(thin, cv.block, buf)
        for run in prange(n_threads, schedule='static', chunksize=1):
            if (not cv.direct and buf == NULL) or (thin and gp == NULL):
                n_failed += 1
            else:
                tid = omp_get_thread_num()
                u = fast_units_claim(runs, n_threads, run)
                while u >= 0:
                    b = u % n_blocks
                    tile_key = u // n_blocks
                    t = tile_key % n_tiles
                    grp = (tile_key // n_tiles) % cv.groups
                    n = tile_key // (n_tiles * cv.groups)
                    p0 = t * cv.tile
                    p1 = min(n_pos, p0 + cv.tile)
                    cols = unrolled_tile(x + n * cv.s_n, &cv, &g, grp, p0, p1, buf,
                                         last_key[tid] != tile_key)
                    ld = tile_ld(&cv, &g, p0, p1)
                    last_key[tid] = tile_key
                    m0 = grp * og + b * cv.block
                    m1 = min((grp + 1) * og, m0 + cv.block)
                    if cv.nhwc:
                        dst = out + (n * n_pos + p0) * cv.n_out + m0
                        gemm_rm(False, True, p1 - p0, m1 - m0, kg, 1, cols, ld,
                                w + m0 * kg, kg, 0, dst, cv.n_out)
                        if bias != NULL:
                            for r in range(p1 - p0):
                                for q in range(m1 - m0):
                                    dst[r * cv.n_out + q] += bias[m0 + q]
                    else:
                        dst = out + (n * cv.n_out + m0) * n_pos + p0
                        if thin:   # out[m, p] = sum_k cols[k, p] w[m, k]
                            thin_gemm(p1 - p0, m1 - m0, kg, cols, ld, w + m0 * kg, 1, kg, dst,
                                      n_pos, gp)
                        else:
                            gemm_rm(False, False, m1 - m0, p1 - p0, kg, 1, w + m0 * kg, kg,
                                    cols, ld, 0, dst, n_pos)
                        if bias != NULL:
                            for r in range(m1 - m0):
                                for q in range(p1 - p0):
                                    dst[r * n_pos + q] += bias[m0 + r]
                    u = fast_units_claim(runs, n_threads, run)
        free(buf)
        free(gp)
    free(runs)
    free(last_key)
    return n_failed


cdef Py_ssize_t forward_images(const floating* x, const floating* w, const floating* bias,
                               floating* out, Conv cv, Geometry g, Py_ssize_t per_tile,
                               int n_threads) noexcept nogil:
    # forward() for small images: one tile holds `per_tile` whole images, so
    # the GEMM sees a wide tile and BLAS packs the weights once per several
    # images instead of once per image (measured 20-50% on 7-14 px layers).
    # Units (image group, group, block of output channels), block innermost,
    # tiles reused per thread as in forward(). NCHW: the GEMM writes a
    # (channels x tile) buffer, copied image by image into the output; NHWC:
    # the images' positions are contiguous in the output, written directly.
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * g.kernel_h * g.kernel_w
    cdef Py_ssize_t tile = per_tile * n_pos
    cdef Py_ssize_t n_sets = (cv.n_images + per_tile - 1) // per_tile
    cdef Py_ssize_t n_blocks = (og + cv.block - 1) // cv.block
    cdef Py_ssize_t n_units = n_sets * cv.groups * n_blocks
    cdef Py_ssize_t u, grp, b, m0, m1, tile_key, r, q, i, n0, n_in, width
    cdef Py_ssize_t n_failed = 0
    cdef floating* buf = NULL
    cdef floating* tbuf = NULL
    cdef floating* dst
    cdef floating bias_r
    cdef int tid
    cdef Py_ssize_t* last_key = new_thread_keys(n_threads)
    if last_key == NULL:
        return 1
    with parallel(num_threads=n_threads):
        buf = <floating*> malloc(kg * tile * sizeof(floating))
        tbuf = NULL
        if not cv.nhwc:
            tbuf = <floating*> malloc(cv.block * tile * sizeof(floating))
        for u in prange(n_units, schedule='static'):
            if buf == NULL or (not cv.nhwc and tbuf == NULL):
                n_failed += 1
            else:
                tid = omp_get_thread_num()
                b = u % n_blocks
                tile_key = u // n_blocks
                grp = tile_key % cv.groups
                n0 = (tile_key // cv.groups) * per_tile
                n_in = min(per_tile, cv.n_images - n0)
                width = n_in * n_pos
                if last_key[tid] != tile_key:
                    for i in range(n_in):
                        if cv.nhwc:
                            unroll_nhwc(x + (n0 + i) * cv.s_n, cv.s_h, cv.s_w, cv.s_c,
                                        grp * cg, cg, &g, 0, n_pos, buf + i * n_pos * kg, kg)
                        else:
                            unroll_nchw(x + (n0 + i) * cv.s_n + grp * cg * cv.s_c, cv.s_c,
                                        cv.s_h, cv.s_w, cg, &g, 0, n_pos, buf + i * n_pos,
                                        width)
                    last_key[tid] = tile_key
                m0 = grp * og + b * cv.block
                m1 = min((grp + 1) * og, m0 + cv.block)
                if cv.nhwc:
                    dst = out + n0 * n_pos * cv.n_out + m0
                    gemm_rm(False, True, width, m1 - m0, kg, 1, buf, kg,
                            w + m0 * kg, kg, 0, dst, cv.n_out)
                    if bias != NULL:
                        for r in range(width):
                            for q in range(m1 - m0):
                                dst[r * cv.n_out + q] += bias[m0 + q]
                else:
                    gemm_rm(False, False, m1 - m0, width, kg, 1, w + m0 * kg, kg,
                            buf, width, 0, tbuf, width)
                    for i in range(n_in):
                        for r in range(m1 - m0):
                            bias_r = bias[m0 + r] if bias != NULL else 0
                            dst = out + ((n0 + i) * cv.n_out + m0 + r) * n_pos
                            for q in range(n_pos):
                                dst[q] = tbuf[r * width + i * n_pos + q] + bias_r
        free(buf)
        free(tbuf)
    free(last_key)
    return n_failed


cdef void seed_with_bias(floating* gx, const floating* bias, const Conv* cv,
                         const Geometry* g, int n_threads) noexcept nogil:
    # gx = the bias of its channel (or 0), before input gradients are folded in.
    cdef Py_ssize_t plane = g.in_h * g.in_w
    cdef Py_ssize_t image_size = plane * cv.n_channels
    cdef Py_ssize_t u, n, c, k
    for u in prange(cv.n_images * cv.n_channels, nogil=True, num_threads=n_threads,
                    schedule='static'):
        n = u // cv.n_channels
        c = u % cv.n_channels
        if cv.nhwc:
            for k in range(plane):
                gx[n * image_size + k * cv.n_channels + c] = bias[c] if bias != NULL else 0
        else:
            for k in range(plane):
                gx[u * plane + k] = bias[c] if bias != NULL else 0


cdef inline void transpose_tile(const floating* src, Py_ssize_t n_pos, Py_ssize_t n_rows,
                                floating* dst, Py_ssize_t ld_dst) noexcept nogil:
    # dst[r * ld_dst + p] = src[p * n_rows + r]: a transposed 1x1 input
    # gradient tile into NCHW. Runs of 64 positions keep their source lines
    # in L1 while every row reads them.
    cdef Py_ssize_t p0, p1, r, p
    for p0 in range(0, n_pos, 64):
        p1 = min(n_pos, p0 + 64)
        for r in range(n_rows):
            for p in range(p0, p1):
                dst[r * ld_dst + p] = src[p * n_rows + r]


cdef inline void input_grad_gemm(bint transposed, const floating* w, Py_ssize_t ld_w,
                                 const floating* go, Py_ssize_t ld_go, Py_ssize_t rows,
                                 Py_ssize_t n_pos, Py_ssize_t og, floating* buf,
                                 floating* gp) noexcept nogil:
    # buf = W^T go of one tile: (rows x n_pos), or transposed (n_pos x rows)
    # with the rows as BLAS's M (_plan.grad_input_transposed). By the thin
    # GEMM where gp is not NULL: transposed, w's rows its vectors
    # (_plan.use_thin_gemm), or not transposed, go's rows its vectors
    # (_plan.use_thin_positions).
    if gp != NULL and not transposed:
        thin_gemm(n_pos, rows, og, go, ld_go, w, ld_w, 1, buf, n_pos, gp)
    elif gp != NULL:
        thin_gemm(rows, n_pos, og, w, ld_w, go, ld_go, 1, buf, rows, gp)
    elif transposed:
        gemm_rm(True, False, n_pos, rows, og, 1, go, ld_go, w, ld_w, 0, buf, rows)
    else:
        gemm_rm(True, False, rows, n_pos, og, 1, w, ld_w, go, ld_go, 0, buf, n_pos)


cdef inline void nhwc_gemm(Py_ssize_t n_pos, Py_ssize_t n_cols, Py_ssize_t og,
                           const floating* go, Py_ssize_t ld_go, const floating* w,
                           Py_ssize_t ld_w, floating* dst, Py_ssize_t ld_dst,
                           floating* gp) noexcept nogil:
    # NHWC: dst (n_pos x n_cols) = go (n_pos x og) W (og x n_cols), by BLAS or
    # (gp not NULL: _plan.use_thin_gemm) the thin GEMM
    if gp != NULL:
        thin_gemm(n_cols, n_pos, og, w, ld_w, go, 1, ld_go, dst, ld_dst, gp)
    else:
        gemm_rm(False, False, n_pos, n_cols, og, 1, go, ld_go, w, ld_w, 0, dst, ld_dst)


cdef Py_ssize_t grad_input(const floating* go, const floating* w, const floating* bias,
                           floating* gx, Conv cv, Geometry g, int n_threads,
                           bint transposed, bint thin, bint thin_positions) noexcept nogil:
    # gx = col2im(W^T go), a tile at a time. Units (image, group, block of
    # input channels, band of `tile` positions = whole output rows). Units of
    # different images/groups/channel blocks write disjoint elements; bands two
    # apart never reach the same input row (the planner sizes them so), so even
    # bands run first, then odd ones. Race-free and bitwise deterministic.
    # `bias` (conv_transpose2d) seeds gx instead of zeros. Here cv.n_channels
    # is gx's channel count and cv.n_out go's. transposed (NCHW): the GEMM
    # writes the tile's transpose, (positions x rows), into buf (BLAS runs
    # that orientation faster for some shapes: _plan.grad_input_transposed),
    # folded (or, 1x1, copied) from there. thin: the GEMMs are the thin
    # kernel's (_plan.use_thin_gemm; NCHW: transposed too). thin_positions
    # (NCHW): the thin kernel the other way round, grad_output's rows read
    # in place as its vectors, the unit's weights broadcast
    # (_plan.use_thin_positions); 1x1 straight into gx.
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t kg = cg * kk
    cdef Py_ssize_t n_tiles = (n_pos + cv.tile - 1) // cv.tile
    cdef Py_ssize_t n_blocks = (cg + cv.block - 1) // cv.block
    cdef Py_ssize_t n_pairs = (n_tiles + 1) // 2
    cdef Py_ssize_t plane = g.in_h * g.in_w
    cdef Py_ssize_t image_size = plane * cv.n_channels
    cdef Py_ssize_t n_units, u, n, grp, t, b, p0, p1, c0, c1, k, r, q, c, rows
    cdef Py_ssize_t n_failed = 0
    cdef int parity, n_phases
    cdef floating* buf
    cdef floating* gp
    cdef floating* dst
    cdef const floating* src
    if cv.direct:
        n_phases = 1   # input and output positions coincide: tiles are disjoint
        n_pairs = n_tiles
    else:
        n_phases = 2
        seed_with_bias(gx, bias, &cv, &g, n_threads)
    n_units = cv.n_images * cv.groups * n_blocks * n_pairs
    for parity in range(n_phases):
        buf = NULL
        gp = NULL
        with parallel(num_threads=n_threads):
            buf = NULL
            if not cv.direct or transposed:
                buf = <floating*> malloc(kg * cv.tile * sizeof(floating))
            gp = thin_scratch(thin or thin_positions,
                              cv.block * kk if thin_positions else cv.tile, buf)
            for u in prange(n_units, schedule='static'):
                t = u % n_pairs
                if not cv.direct:
                    t = 2 * t + parity
                b = (u // n_pairs) % n_blocks
                grp = (u // (n_pairs * n_blocks)) % cv.groups
                n = u // (n_pairs * n_blocks * cv.groups)
                if t >= n_tiles:
                    pass
                elif (((not cv.direct or transposed) and buf == NULL)
                      or ((thin or thin_positions) and gp == NULL)):
                    n_failed += 1
                else:
                    p0 = t * cv.tile
                    p1 = min(n_pos, p0 + cv.tile)
                    c0 = b * cv.block
                    c1 = min(cg, c0 + cv.block)
                    src = go + n * n_pos * cv.n_out
                    if cv.nhwc:
                        src = src + p0 * cv.n_out + grp * og
                        if cv.direct:
                            dst = gx + n * image_size + p0 * cv.n_channels + grp * cg + c0
                            nhwc_gemm(p1 - p0, c1 - c0, og, src, cv.n_out,
                                      w + grp * og * kg + c0, kg, dst, cv.n_channels, gp)
                            if bias != NULL:
                                for r in range(p1 - p0):
                                    for q in range(c1 - c0):
                                        dst[r * cv.n_channels + q] += bias[grp * cg + c0 + q]
                        else:
                            # NHWC weights are (og, taps, cg): a block of
                            # channels is a slice of each tap's columns, one
                            # GEMM per tap into (positions, taps, block); all
                            # of the group's channels are one GEMM
                            if c1 - c0 == cg:
                                nhwc_gemm(p1 - p0, kg, og, src, cv.n_out, w + grp * og * kg,
                                          kg, buf, kg, gp)
                            else:
                                for k in range(kk):
                                    nhwc_gemm(p1 - p0, c1 - c0, og, src, cv.n_out,
                                              w + grp * og * kg + k * cg + c0, kg,
                                              buf + k * (c1 - c0), kk * (c1 - c0), gp)
                            fold_nhwc(buf, kk * (c1 - c0), cv.n_channels, grp * cg + c0,
                                      c1 - c0, &g, p0, p1, gx + n * image_size)
                    else:
                        src = src + grp * og * n_pos + p0
                        rows = (c1 - c0) * kk
                        dst = gx + n * image_size + (grp * cg + c0) * plane
                        if cv.direct and thin_positions:   # straight into gx
                            thin_gemm(p1 - p0, c1 - c0, og, src, n_pos, w + grp * og * kg + c0,
                                      kg, 1, dst + p0, plane, gp)
                        elif cv.direct and not transposed:   # straight into gx
                            gemm_rm(True, False, rows, p1 - p0, og, 1,
                                    w + grp * og * kg + c0, kg, src, n_pos, 0, dst + p0, plane)
                        else:
                            input_grad_gemm(transposed, w + grp * og * kg + c0 * kk, kg, src,
                                            n_pos, rows, p1 - p0, og, buf, gp)
                        if cv.direct:
                            if transposed:
                                transpose_tile(buf, p1 - p0, rows, dst + p0, plane)
                            if bias != NULL:
                                for r in range(c1 - c0):
                                    for q in range(p0, p1):
                                        dst[r * plane + q] += bias[grp * cg + c0 + r]
                        else:   # buf's element (k, p) at k*k_stride + p*p_stride
                            fold_nchw(buf, 1 if transposed else p1 - p0,
                                      rows if transposed else 1, c1 - c0, &g, p0, p1, dst, True)
            free(buf)
            free(gp)
    return n_failed


cdef inline void few_rows(const floating* go, Py_ssize_t oy0, const floating* wt,
                          const floating* bias, floating* gx, Py_ssize_t y0, Py_ssize_t y1,
                          const FewShape* s, Py_ssize_t* tab) noexcept nogil:
    # few_rows_f / few_rows_d (src/_direct_kernels.h) for either dtype
    if floating is float:
        few_rows_f(go, oy0, wt, bias, gx, y0, y1, s, tab)
    else:
        few_rows_d(go, oy0, wt, bias, gx, y0, y1, s, tab)


cdef inline Py_ssize_t few_first_row(const Geometry* g, Py_ssize_t y0) noexcept nogil:
    # The first grad_output row whose window reaches input rows from y0 on
    return max(0, ceil_div(y0 + g.pad_h - (g.kernel_h - 1) * g.dilation_h, g.stride_h))


cdef inline Py_ssize_t few_end_row(const Geometry* g, Py_ssize_t y1) noexcept nogil:
    # One past the last grad_output row whose window reaches input rows before y1
    return min(g.out_h, (y1 - 1 + g.pad_h) // g.stride_h + 1)


cdef Py_ssize_t grad_input_few(const floating* go, const floating* w, const floating* bias,
                               floating* gx, Conv cv, Geometry g, bint copy,
                               int n_threads) noexcept nogil:
    # NHWC, few input channels a group: gx element by element, each a dot
    # product of the grad_output pixels that reach it with the weights of
    # the taps they reach it by (few_rows, src/_direct_impl.h); nothing
    # unrolled, folded or reduced. Units (image, group, band of cv.tile input
    # rows) write disjoint rows of gx: one phase, any split gives the same
    # bits. w: the weights as (groups, taps, cg, og), contiguous (the caller
    # starts them on a cache line). copy: each unit first copies the
    # grad_output rows its band needs, the group's channels, to a per-thread
    # buffer on a cache line (NumPy's arrays start 16 bytes past one: every
    # vector load of grad_output split a line, 1.2x the time); else go is
    # read in place (its pixels start on lines).
    cdef FewShape s
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t n_bands = (g.in_h + cv.tile - 1) // cv.tile
    cdef Py_ssize_t n_units = cv.n_images * cv.groups * n_bands
    cdef Py_ssize_t u, n, grp, band, y0, y1, oy0, oy1, r, n_failed = 0
    cdef Py_ssize_t buf_rows = 0, row_elems
    cdef Py_ssize_t* tab
    cdef void* raw
    cdef floating* buf
    cdef const floating* src
    cdef const floating* go_n
    cdef FewShape su
    s.in_h, s.in_w, s.out_h, s.out_w = g.in_h, g.in_w, g.out_h, g.out_w
    s.kernel_h, s.kernel_w, s.stride_h, s.stride_w = (g.kernel_h, g.kernel_w, g.stride_h,
                                                      g.stride_w)
    s.pad_h, s.pad_w, s.dilation_h, s.dilation_w = g.pad_h, g.pad_w, g.dilation_h, g.dilation_w
    s.cg, s.og = cv.n_channels // cv.groups, cv.n_out // cv.groups
    s.ld_gx, s.ld_go = cv.n_channels, cv.n_out
    row_elems = g.out_w * s.og
    if copy:   # the most rows a band reaches (_plan.grad_input_few)
        buf_rows = min(g.out_h, (cv.tile - 1 + (g.kernel_h - 1) * g.dilation_h) // g.stride_h + 1)
    with parallel(num_threads=n_threads):
        tab = <Py_ssize_t*> malloc(FEW_TABLES * kk * sizeof(Py_ssize_t))
        raw = NULL
        if copy:
            raw = malloc(buf_rows * row_elems * sizeof(floating) + CACHE_LINE)
        buf = <floating*> line_start(raw)
        for u in prange(n_units, schedule='static'):
            band = u % n_bands
            grp = (u // n_bands) % cv.groups
            n = u // (n_bands * cv.groups)
            if tab == NULL or (copy and raw == NULL):
                n_failed += 1
            else:
                y0 = band * cv.tile
                y1 = min(g.in_h, y0 + cv.tile)
                su = s
                oy0 = 0
                go_n = go + n * g.out_h * g.out_w * cv.n_out + grp * s.og
                if copy:   # rows [oy0, oy1), the group's channels, pixels og apart
                    # (assigned here, not through pointers: prange keeps only
                    # variables assigned in its body private to each thread)
                    oy0 = few_first_row(&g, y0)
                    oy1 = max(oy0, few_end_row(&g, y1))
                    src = go_n + oy0 * g.out_w * cv.n_out
                    if s.og == cv.n_out:
                        memcpy(buf, src, (oy1 - oy0) * row_elems * sizeof(floating))
                    else:
                        for r in range((oy1 - oy0) * g.out_w):
                            memcpy(buf + r * s.og, src + r * cv.n_out, s.og * sizeof(floating))
                    go_n = buf
                    su.ld_go = s.og
                few_rows(go_n, oy0, w + grp * kk * s.cg * s.og,
                         bias + grp * s.cg if bias != NULL else NULL,
                         gx + n * g.in_h * g.in_w * cv.n_channels + grp * s.cg, y0, y1, &su,
                         tab)
        free(tab)
        free(raw)
    return n_failed


cdef inline Py_ssize_t reached_from(Py_ssize_t pos, Py_ssize_t shift, Py_ssize_t stride,
                                    Py_ssize_t n_out) noexcept nogil:
    # The output index whose tap, `shift` = pad - tap * dilation along this
    # axis, reaches input index pos (pos + shift = out * stride), or -1.
    cdef Py_ssize_t r = pos + shift
    if r < 0 or r % stride or r // stride >= n_out:
        return -1
    return r // stride


cdef inline Py_ssize_t tap_positions(const Geometry* g, Py_ssize_t i, Py_ssize_t j,
                                     Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t n_img,
                                     Py_ssize_t go_ld, Py_ssize_t gx_ld, Py_ssize_t* g_at,
                                     Py_ssize_t* c_at) noexcept nogil:
    # The input positions of rows [y0, y1) of n_img images that tap (i, j)
    # reaches, and the grad_output positions it reaches them from (input (y,
    # x) from output (oy, ox), see reached_from). g_at: output offsets from
    # the first image's, ((m * out_h + oy) * out_w + ox) * go_ld for image m;
    # c_at: input offsets from row y0 of the first image's, ((m * in_h + y -
    # y0) * in_w + x) * gx_ld. Returns their count.
    cdef Py_ssize_t n_at = 0, m, y, x, oy, ox
    for m in range(n_img):
        for y in range(y0, y1):
            oy = reached_from(y, g.pad_h - i * g.dilation_h, g.stride_h, g.out_h)
            if oy < 0:
                continue
            for x in range(g.in_w):
                ox = reached_from(x, g.pad_w - j * g.dilation_w, g.stride_w, g.out_w)
                if ox < 0:
                    continue
                g_at[n_at] = ((m * g.out_h + oy) * g.out_w + ox) * go_ld
                c_at[n_at] = ((m * g.in_h + y - y0) * g.in_w + x) * gx_ld
                n_at += 1
    return n_at


cdef Py_ssize_t grad_input_taps(const floating* go, const floating* w, const floating* bias,
                                floating* gx, Conv cv, Geometry g, Py_ssize_t per_set,
                                Py_ssize_t ld_copy, int n_threads) noexcept nogil:
    # NHWC: gx = the input gradient tap by tap, nothing unrolled or folded.
    # Units (set of per_set images, group, band of cv.tile input rows of
    # each of them, block of cv.block input channels) own their part of gx:
    # each seeds it (zeros, or conv_transpose2d's bias), then adds, tap (i, j)
    # after tap, grad_output's rows at the output positions the tap reaches
    # the unit from times the tap's weights W[:, i, j, block] (og x block,
    # rows kg apart; ld_copy > 0: copied first into rows ld_copy apart, see
    # _plan.TAPS_MIN_L1_SETS), in one thin GEMM that gathers those rows and
    # scatters its result rows into gx (thin_gemm_at). Every element of gx is
    # summed by one unit, taps and then output channels in order: the same
    # bits for any split and any number of threads; no phases, no tile buffer.
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * g.kernel_h * g.kernel_w
    cdef Py_ssize_t n_sets = (cv.n_images + per_set - 1) // per_set
    cdef Py_ssize_t n_bands = (g.in_h + cv.tile - 1) // cv.tile
    cdef Py_ssize_t n_blocks = (cg + cv.block - 1) // cv.block
    cdef Py_ssize_t n_units = n_sets * cv.groups * n_bands * n_blocks
    cdef Py_ssize_t max_pos = per_set * cv.tile * g.in_w
    cdef Py_ssize_t u, n0, n_img, grp, b, y0, y1, c0, c1, i, j, q, c, o, m, n_at
    cdef Py_ssize_t n_failed = 0
    cdef floating* gp = NULL
    cdef Py_ssize_t* at = NULL   # a tap's output offsets, then its input offsets
    cdef floating* w_copy = NULL
    cdef floating* dst
    cdef const floating* w_tap
    with parallel(num_threads=n_threads):
        gp = <floating*> malloc(THIN_KC * max_pos * sizeof(floating))
        at = <Py_ssize_t*> malloc(2 * max_pos * sizeof(Py_ssize_t))
        w_copy = NULL
        if ld_copy:
            w_copy = <floating*> malloc(og * ld_copy * sizeof(floating))
        for u in prange(n_units, schedule='static'):
            if gp == NULL or at == NULL or (ld_copy and w_copy == NULL):
                n_failed += 1
            else:
                b = u % n_blocks
                y0 = ((u // n_blocks) % n_bands) * cv.tile
                grp = (u // (n_blocks * n_bands)) % cv.groups
                n0 = (u // (n_blocks * n_bands * cv.groups)) * per_set
                n_img = min(per_set, cv.n_images - n0)
                y1 = min(g.in_h, y0 + cv.tile)
                c0 = b * cv.block
                c1 = min(cg, c0 + cv.block)
                dst = gx + ((n0 * g.in_h + y0) * g.in_w * cv.n_channels + grp * cg + c0)
                for m in range(n_img):
                    for q in range((m * g.in_h) * g.in_w, (m * g.in_h + y1 - y0) * g.in_w):
                        for c in range(c1 - c0):
                            dst[q * cv.n_channels + c] = (0 if bias == NULL
                                                          else bias[grp * cg + c0 + c])
                for i in range(g.kernel_h):
                    for j in range(g.kernel_w):
                        n_at = tap_positions(&g, i, j, y0, y1, n_img, cv.n_out, cv.n_channels,
                                             at, at + max_pos)
                        if n_at == 0:
                            continue
                        w_tap = w + grp * og * kg + (i * g.kernel_w + j) * cg + c0
                        if ld_copy:
                            for o in range(og):
                                memcpy(w_copy + o * ld_copy, w_tap + o * kg,
                                       (c1 - c0) * sizeof(floating))
                        thin_gemm_at(c1 - c0, n_at, og, w_copy if ld_copy else w_tap,
                                     ld_copy if ld_copy else kg,
                                     go + n0 * g.out_h * g.out_w * cv.n_out + grp * og,
                                     1, at, dst, at + max_pos, gp, True)
        free(w_copy)
        free(gp)
        free(at)
    return n_failed


cdef Py_ssize_t grad_input_images(const floating* go, const floating* w,
                                  const floating* bias, floating* gx, Conv cv, Geometry g,
                                  Py_ssize_t per_tile, int n_threads,
                                  bint transposed, bint thin,
                                  bint thin_positions) noexcept nogil:
    # grad_input() for small images: units (image group, group, block of
    # input channels) each compute W^T go for `per_tile` whole images in one
    # GEMM (weights packed once per several images), then fold every image's
    # columns. Units touch disjoint (image, channel) sets: no phases needed.
    # NCHW gathers the images' grad_output rows into a (og x tile) buffer;
    # transposed, thin and thin_positions as in grad_input().
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t kg = cg * kk
    cdef Py_ssize_t tile = per_tile * n_pos
    cdef Py_ssize_t n_sets = (cv.n_images + per_tile - 1) // per_tile
    cdef Py_ssize_t n_blocks = (cg + cv.block - 1) // cv.block
    cdef Py_ssize_t n_units = n_sets * cv.groups * n_blocks
    cdef Py_ssize_t plane = g.in_h * g.in_w
    cdef Py_ssize_t image_size = plane * cv.n_channels
    cdef Py_ssize_t u, grp, b, c0, c1, n0, n_in, width, i, r, q, k, c, n, rows
    cdef Py_ssize_t k_stride, p_stride
    cdef Py_ssize_t n_failed = 0
    cdef floating* buf = NULL
    cdef floating* gbuf = NULL
    cdef floating* gp = NULL
    cdef const floating* src
    seed_with_bias(gx, bias, &cv, &g, n_threads)
    with parallel(num_threads=n_threads):
        buf = <floating*> malloc(kg * tile * sizeof(floating))
        gbuf = NULL
        if not cv.nhwc:
            gbuf = <floating*> malloc(og * tile * sizeof(floating))
        gp = thin_scratch(thin or thin_positions,
                          cv.block * kk if thin_positions else tile, buf)
        for u in prange(n_units, schedule='static'):
            if (buf == NULL or (not cv.nhwc and gbuf == NULL)
                    or ((thin or thin_positions) and gp == NULL)):
                n_failed += 1
            else:
                b = u % n_blocks
                grp = (u // n_blocks) % cv.groups
                n0 = (u // (n_blocks * cv.groups)) * per_tile
                n_in = min(per_tile, cv.n_images - n0)
                width = n_in * n_pos
                c0 = b * cv.block
                c1 = min(cg, c0 + cv.block)
                if cv.nhwc:   # (NHWC runs with a single channel block: planner)
                    nhwc_gemm(width, kg, og, go + n0 * n_pos * cv.n_out + grp * og, cv.n_out,
                              w + grp * og * kg, kg, buf, kg, gp)
                    for i in range(n_in):
                        fold_nhwc(buf + i * n_pos * kg, kg, cv.n_channels, grp * cg, cg, &g,
                                  0, n_pos, gx + (n0 + i) * image_size)
                else:
                    for i in range(n_in):
                        for r in range(og):
                            src = go + ((n0 + i) * cv.n_out + grp * og + r) * n_pos
                            for q in range(n_pos):
                                gbuf[r * width + i * n_pos + q] = src[q]
                    rows = (c1 - c0) * kk
                    input_grad_gemm(transposed, w + grp * og * kg + c0 * kk, kg, gbuf, width,
                                    rows, width, og, buf, gp)
                    # buf's element (k, p) at k*k_stride + p*p_stride
                    k_stride = 1 if transposed else width
                    p_stride = rows if transposed else 1
                    for i in range(n_in):
                        fold_nchw(buf + i * n_pos * p_stride, k_stride, p_stride, c1 - c0, &g,
                                  0, n_pos, gx + (n0 + i) * image_size + (grp * cg + c0) * plane,
                                  True)
        free(buf)
        free(gbuf)
        free(gp)
    return n_failed


cdef void reduce_thread_sums(floating* sums, Py_ssize_t n_threads, Py_ssize_t n_out,
                             Py_ssize_t og, Py_ssize_t kg, bint transposed,
                             floating* gw) noexcept nogil:
    # gw (n_out, kg) = the sum over threads of their sums, in thread order
    # (the same thread count sums the same way), a row of gw per iteration.
    # Each thread's sums are (n_out, kg), or transposed per group of og
    # output channels, (kg, og). Frees sums.
    cdef Py_ssize_t size = n_out * kg
    cdef Py_ssize_t m, grp, k, tid, at
    cdef floating total
    for m in prange(n_out, nogil=True, num_threads=n_threads, schedule='static'):
        grp = m // og
        for k in range(kg):
            if transposed:
                at = grp * og * kg + k * og + m - grp * og
            else:
                at = m * kg + k
            total = 0
            for tid in range(n_threads):
                total = total + sums[tid * size + at]
            gw[m * kg + k] = total
    free(sums)


cdef inline void nhwc_weight_gemm(Py_ssize_t n_out, Py_ssize_t kg, Py_ssize_t n_pos,
                                  const floating* go, Py_ssize_t ld_go, const floating* cols,
                                  Py_ssize_t ld_cols, floating* dst, Py_ssize_t ld_dst,
                                  floating* gp) noexcept nogil:
    # NHWC: dst (n_out x kg) += go^T cols, go (n_pos x n_out), cols (n_pos x
    # kg), by BLAS or (gp not NULL: _plan.use_thin_weight) the thin GEMM
    if gp != NULL:
        thin_gemm(kg, n_out, n_pos, cols, ld_cols, go, ld_go, 1, dst, ld_dst, gp, True)
    else:
        gemm_rm(True, False, n_out, kg, n_pos, 1, go, ld_go, cols, ld_cols, 1, dst, ld_dst)


cdef Py_ssize_t grad_weight(const floating* x, const floating* go, floating* gw,
                            Conv cv, Geometry g, bint per_thread_sums,
                            bint transposed, int n_threads, bint thin) noexcept nogil:
    # gw_g = sum over images and tiles of go_tile @ unrolled_tile^T.
    # per_thread_sums: units (image, group, tile) add into one private
    #   (n_out, K_g) sum per thread, reduced in thread order at the end.
    # otherwise: units (group, block of output channels) each own their rows
    #   of gw and loop over images and tiles themselves (re-unrolling a tile
    #   per block: chosen when there are few images and tiles).
    # Both are deterministic for a given thread count (static schedule).
    # transposed (NCHW, per-thread sums): each group's sums are (K_g x og),
    # GEMMs in the orientation OpenBLAS runs faster for thin groups (see
    # grad_weight_channels), transposed in the reduction. thin (NHWC): the
    # GEMMs are the thin kernel's, the tile's unrolled rows its vectors, the
    # block's grad_output broadcast (_plan.use_thin_weight).
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * g.kernel_h * g.kernel_w
    cdef Py_ssize_t n_tiles = (n_pos + cv.tile - 1) // cv.tile
    cdef Py_ssize_t n_blocks = (og + cv.block - 1) // cv.block
    cdef Py_ssize_t size = cv.n_out * kg
    cdef Py_ssize_t n_units, u, n, grp, t, b, p0, p1, m0, m1, ld, k
    cdef Py_ssize_t n_failed = 0
    cdef floating* buf
    cdef floating* gp
    cdef floating* sums = NULL
    cdef floating* dst
    cdef const floating* cols
    cdef const floating* src
    if per_thread_sums:
        sums = <floating*> calloc(n_threads * size, sizeof(floating))
        if sums == NULL:
            return 1
        n_units = cv.n_images * cv.groups * n_tiles
    else:
        n_units = cv.groups * n_blocks
        for k in prange(size, nogil=True, num_threads=n_threads, schedule='static'):
            gw[k] = 0
    buf = NULL   # (also before the block: silences gcc's maybe-uninitialized)
    gp = NULL
    with parallel(num_threads=n_threads):
        buf = NULL
        if not cv.direct:
            buf = <floating*> malloc(kg * cv.tile * sizeof(floating))
        gp = thin_scratch(thin, og if per_thread_sums else cv.block, buf)
        for u in prange(n_units, schedule='static'):
            if (not cv.direct and buf == NULL) or (thin and gp == NULL):
                n_failed += 1
            elif per_thread_sums:
                t = u % n_tiles
                grp = (u // n_tiles) % cv.groups
                n = u // (n_tiles * cv.groups)
                p0 = t * cv.tile
                p1 = min(n_pos, p0 + cv.tile)
                cols = unrolled_tile(x + n * cv.s_n, &cv, &g, grp, p0, p1, buf)
                ld = tile_ld(&cv, &g, p0, p1)
                dst = sums + omp_get_thread_num() * size + grp * og * kg
                if cv.nhwc:
                    src = go + (n * n_pos + p0) * cv.n_out + grp * og
                    nhwc_weight_gemm(og, kg, p1 - p0, src, cv.n_out, cols, ld, dst, kg, gp)
                elif transposed:
                    src = go + (n * cv.n_out + grp * og) * n_pos + p0
                    gemm_rm(False, True, kg, og, p1 - p0, 1, cols, ld, src, n_pos,
                            1, dst, og)
                else:
                    src = go + (n * cv.n_out + grp * og) * n_pos + p0
                    gemm_rm(False, True, og, kg, p1 - p0, 1, src, n_pos,
                            cols, ld, 1, dst, kg)
            else:
                b = u % n_blocks
                grp = u // n_blocks
                m0 = grp * og + b * cv.block
                m1 = min((grp + 1) * og, m0 + cv.block)
                for n in range(cv.n_images):
                    for t in range(n_tiles):
                        p0 = t * cv.tile
                        p1 = min(n_pos, p0 + cv.tile)
                        cols = unrolled_tile(x + n * cv.s_n, &cv, &g, grp, p0, p1, buf)
                        ld = tile_ld(&cv, &g, p0, p1)
                        if cv.nhwc:
                            src = go + (n * n_pos + p0) * cv.n_out + m0
                            nhwc_weight_gemm(m1 - m0, kg, p1 - p0, src, cv.n_out, cols, ld,
                                             gw + m0 * kg, kg, gp)
                        else:
                            src = go + (n * cv.n_out + m0) * n_pos + p0
                            gemm_rm(False, True, m1 - m0, kg, p1 - p0, 1, src, n_pos,
                                    cols, ld, 1, gw + m0 * kg, kg)
        free(buf)
        free(gp)
    if per_thread_sums:
        reduce_thread_sums(sums, n_threads, cv.n_out, og, kg, transposed, gw)
    return n_failed


cdef Py_ssize_t grad_weight_images(const floating* x, const floating* go, floating* gw,
                                   Conv cv, Geometry g, Py_ssize_t per_tile,
                                   int n_threads) noexcept nogil:
    # grad_weight() for small images: a tile holds `per_tile` whole images,
    # so each GEMM sums over per_tile*L positions at once instead of updating
    # the whole (n_out, K_g) sum once per image with a thin rank-L product.
    # Units (image group, group) add into per-thread sums, reduced in thread
    # order (static schedule: deterministic for a thread count). NCHW gathers
    # the images' grad_output rows into a (og x tile) buffer; in NHWC they are
    # contiguous already.
    cdef Py_ssize_t n_pos = g.out_h * g.out_w
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * g.kernel_h * g.kernel_w
    cdef Py_ssize_t tile = per_tile * n_pos
    cdef Py_ssize_t n_sets = (cv.n_images + per_tile - 1) // per_tile
    cdef Py_ssize_t n_units = n_sets * cv.groups
    cdef Py_ssize_t size = cv.n_out * kg
    cdef Py_ssize_t u, grp, n0, n_in, width, i, r, q
    cdef Py_ssize_t n_failed = 0
    cdef floating* buf = NULL
    cdef floating* gbuf = NULL
    cdef floating* dst
    cdef const floating* src
    cdef floating* sums = <floating*> calloc(n_threads * size, sizeof(floating))
    if sums == NULL:
        return 1
    with parallel(num_threads=n_threads):
        buf = <floating*> malloc(kg * tile * sizeof(floating))
        gbuf = NULL
        if not cv.nhwc:
            gbuf = <floating*> malloc(og * tile * sizeof(floating))
        for u in prange(n_units, schedule='static'):
            if buf == NULL or (not cv.nhwc and gbuf == NULL):
                n_failed += 1
            else:
                grp = u % cv.groups
                n0 = (u // cv.groups) * per_tile
                n_in = min(per_tile, cv.n_images - n0)
                width = n_in * n_pos
                dst = sums + omp_get_thread_num() * size + grp * og * kg
                for i in range(n_in):
                    if cv.nhwc:
                        unroll_nhwc(x + (n0 + i) * cv.s_n, cv.s_h, cv.s_w, cv.s_c,
                                    grp * cg, cg, &g, 0, n_pos, buf + i * n_pos * kg, kg)
                    else:
                        unroll_nchw(x + (n0 + i) * cv.s_n + grp * cg * cv.s_c, cv.s_c,
                                    cv.s_h, cv.s_w, cg, &g, 0, n_pos, buf + i * n_pos, width)
                        for r in range(og):
                            src = go + ((n0 + i) * cv.n_out + grp * og + r) * n_pos
                            for q in range(n_pos):
                                gbuf[r * width + i * n_pos + q] = src[q]
                if cv.nhwc:
                    gemm_rm(True, False, og, kg, width, 1,
                            go + n0 * n_pos * cv.n_out + grp * og, cv.n_out, buf, kg,
                            1, dst, kg)
                else:
                    gemm_rm(False, True, og, kg, width, 1, gbuf, width, buf, width,
                            1, dst, kg)
        free(buf)
        free(gbuf)
    reduce_thread_sums(sums, n_threads, cv.n_out, og, kg, False, gw)
    return n_failed


cdef Py_ssize_t grad_weight_channels(const floating* x, const floating* go, floating* gw,
                                     Conv cv, Geometry g, bint transposed,
                                     int n_threads, bint thin=False) noexcept nogil:
    # NCHW weight gradient split by input channels: a unit (group, chunk of
    # cv.block input channels) owns the columns of gw those channels make
    # (contiguous, (c, i, j) order) and sums into them over every image and
    # tile itself: each input element is unrolled once, no per-thread sums,
    # no reduction, and the unit's part of gw (sized by the planner) stays in
    # cache across its GEMMs; tiles of cv.tile positions of one image (small
    # images: grad_weight_channels_images). Every element of gw is summed by
    # one unit in a fixed order: deterministic for a split.
    # transposed: the GEMMs compute the unit's columns as rows of a private
    # (columns x og) buffer, copied into gw at the end: for thin groups (og
    # <= 64) OpenBLAS runs that orientation faster (64 -> 64 channels at
    # 56 px, batch 1: 1.38 vs 1.54 ms); with wide groups and few positions
    # the copy costs more than it saves.
    cdef ChannelSplit cs = channel_split(&cv, &g)
    cdef Py_ssize_t n_pos = cs.n_pos, og = cs.og, taps = cs.taps, kg = cs.kg
    cdef Py_ssize_t n_steps_img = (n_pos + cv.tile - 1) // cv.tile
    cdef ChannelChunk ch
    cdef Py_ssize_t u, nk, n0, t, p0, p1, i, r, ld
    cdef Py_ssize_t n_failed = 0
    cdef floating beta
    cdef floating* buf = NULL
    cdef floating* part = NULL
    cdef floating* gp = NULL
    cdef floating* dst
    cdef const floating* src
    cdef const floating* cols
    cdef const floating* x_chunk
    with parallel(num_threads=n_threads):
        buf = NULL
        if not cv.direct:
            buf = <floating*> malloc(cv.block * taps * cv.tile * sizeof(floating))
        part = NULL
        if transposed:
            part = <floating*> malloc(cv.block * taps * og * sizeof(floating))
        gp = NULL
        if thin:
            gp = <floating*> malloc(THIN_KC * og * sizeof(floating))
        for u in prange(cs.n_units, schedule='static'):
            if ((not cv.direct and buf == NULL) or (transposed and part == NULL)
                    or (thin and gp == NULL)):
                n_failed += 1
            else:
                ch = channel_chunk(&cs, cv.block, u)
                nk = ch.n_ch * taps
                dst = gw + ch.grp * og * kg + ch.c0 * taps
                beta = 0   # the first GEMM of a unit overwrites: no zeroing pass
                for n0 in range(cv.n_images):
                    x_chunk = x + n0 * cv.s_n + (ch.grp * cs.cg + ch.c0) * cv.s_c
                    for t in range(n_steps_img):
                        p0 = t * cv.tile
                        p1 = min(n_pos, p0 + cv.tile)
                        if cv.direct:
                            cols = x_chunk + p0
                            ld = cv.s_c
                        else:
                            unroll_nchw(x_chunk, cv.s_c, cv.s_h, cv.s_w, ch.n_ch, &g, p0, p1,
                                        buf, p1 - p0)
                            cols = buf
                            ld = p1 - p0
                        src = go + (n0 * cv.n_out + ch.grp * og) * n_pos + p0
                        if thin:
                            thin_gemm_t(nk, og, p1 - p0, cols, ld, src, 1, n_pos, dst, kg, gp,
                                        beta != 0)
                        elif transposed:
                            gemm_rm(False, True, nk, og, p1 - p0, 1, cols, ld, src, n_pos,
                                    beta, part, og)
                        else:
                            gemm_rm(False, True, og, nk, p1 - p0, 1, src, n_pos, cols, ld,
                                    beta, dst, kg)
                        beta = 1
                if transposed:   # part holds this unit's columns of gw, transposed
                    for i in range(nk):
                        for r in range(og):
                            dst[r * kg + i] = part[i * og + r]
        free(buf)
        free(part)
        free(gp)
    return n_failed


cdef Py_ssize_t grad_weight_channels_images(const floating* x, const floating* go,
                                            floating* gw, Conv cv, Geometry g,
                                            Py_ssize_t per_tile, int n_threads) noexcept nogil:
    # grad_weight_channels() for small images: sets of per_tile whole images,
    # one GEMM per unit and set (summing over per_tile * out_h * out_w
    # positions at once). The set's grad_output rows are gathered once into a
    # shared (n_out x positions) buffer before its units run (a per-unit
    # gather repeated it for every chunk of channels: 32 chunks of a
    # 512-channel 7 px layer copied 51 MB in float64, batch 8). A unit's
    # chunk of channels goes to the same thread in every set (static
    # schedule), its part of gw summed in set order: deterministic.
    cdef ChannelSplit cs = channel_split(&cv, &g)
    cdef Py_ssize_t n_pos = cs.n_pos, og = cs.og, taps = cs.taps, kg = cs.kg
    cdef Py_ssize_t n_sets = (cv.n_images + per_tile - 1) // per_tile
    cdef Py_ssize_t width = per_tile * n_pos
    cdef ChannelChunk ch
    cdef Py_ssize_t set_, n0, n_in, r, i, u, nk
    cdef Py_ssize_t n_failed = 0
    cdef floating beta
    cdef floating* buf
    cdef const floating* x_chunk
    cdef floating* gbuf = <floating*> malloc(cv.n_out * width * sizeof(floating))
    if gbuf == NULL:
        return 1
    for set_ in range(n_sets):
        n0 = set_ * per_tile
        n_in = min(per_tile, cv.n_images - n0)
        beta = 0 if set_ == 0 else 1   # the first set overwrites gw: no zeroing
        for r in prange(cv.n_out, nogil=True, num_threads=n_threads, schedule='static'):
            for i in range(n_in):
                memcpy(gbuf + (r * n_in + i) * n_pos, go + ((n0 + i) * cv.n_out + r) * n_pos,
                       n_pos * sizeof(floating))
        buf = NULL
        with parallel(num_threads=n_threads):
            buf = <floating*> malloc(cv.block * taps * width * sizeof(floating))
            for u in prange(cs.n_units, schedule='static'):
                if buf == NULL:
                    n_failed += 1
                else:
                    ch = channel_chunk(&cs, cv.block, u)
                    nk = ch.n_ch * taps
                    for i in range(n_in):
                        x_chunk = x + (n0 + i) * cv.s_n + (ch.grp * cs.cg + ch.c0) * cv.s_c
                        unroll_nchw(x_chunk, cv.s_c, cv.s_h, cv.s_w, ch.n_ch, &g, 0, n_pos,
                                    buf + i * n_pos, n_in * n_pos)
                    gemm_rm(False, True, og, nk, n_in * n_pos, 1,
                            gbuf + ch.grp * og * n_in * n_pos, n_in * n_pos, buf, n_in * n_pos,
                            beta, gw + ch.grp * og * kg + ch.c0 * taps, kg)
            free(buf)
        if n_failed:
            break
    free(gbuf)
    return n_failed


cdef inline Py_ssize_t tap_terms(const Conv* cv, const Geometry* g, Py_ssize_t i,
                                  Py_ssize_t j, Py_ssize_t n0, Py_ssize_t n_img, Py_ssize_t y0,
                                  Py_ssize_t y1, Py_ssize_t* x_at,
                                  Py_ssize_t* go_at) noexcept nogil:
    # The output positions in rows [y0, y1) of images [n0, n0 + n_img) whose
    # tap (i, j) reaches inside the input, in order: x_at, the input row's
    # offset in x (from x's start); go_at, the output row's in grad_output
    # (NHWC, C-contiguous). Returns their count.
    cdef Py_ssize_t n_at = 0, n, oy, ox, y, x
    for n in range(n0, n0 + n_img):
        for oy in range(y0, y1):
            y = oy * g.stride_h + i * g.dilation_h - g.pad_h
            if y < 0 or y >= g.in_h:
                continue
            for ox in range(g.out_w):
                x = ox * g.stride_w + j * g.dilation_w - g.pad_w
                if x < 0 or x >= g.in_w:
                    continue
                x_at[n_at] = n * cv.s_n + y * cv.s_h + x * cv.s_w
                go_at[n_at] = ((n * g.out_h + oy) * g.out_w + ox) * cv.n_out
                n_at += 1
    return n_at


cdef struct TapsSplit:
    # grad_weight_taps' units and calls, chosen by fastim2col._plan
    Py_ssize_t out_block, in_block, tap_block   # a unit's channels and taps
    Py_ssize_t per_call, band                   # a call's images or output rows


cdef Py_ssize_t grad_weight_taps(const floating* x, const floating* go, floating* gw,
                                 Conv cv, Geometry g, TapsSplit sp,
                                 int n_threads) noexcept nogil:
    # NHWC: gw = the weight gradient tap by tap, nothing unrolled. Units
    # (group, block of sp.tap_block taps, block of sp.out_block output
    # channels, block of sp.in_block input channels) own their part of gw,
    # gw[outputs, tap, inputs]: they zero it, then go through the images in
    # parts (sets of sp.per_call images, or bands of sp.band output rows of
    # one image) and, for each tap of theirs, add one thin GEMM of
    # grad_output's rows times the input rows the tap reaches from them, both
    # gathered by term tables (thin_gemm_terms; x's channels must be
    # contiguous). A part's rows stay in cache across the unit's taps. Every
    # element of gw is summed by one unit, positions in order: the same bits
    # for any split and any number of threads; no tile, no per-thread sums.
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t n_taps = g.kernel_h * g.kernel_w
    cdef Py_ssize_t kg = cg * n_taps
    cdef Py_ssize_t n_oblocks = (og + sp.out_block - 1) // sp.out_block
    cdef Py_ssize_t n_iblocks = (cg + sp.in_block - 1) // sp.in_block
    cdef Py_ssize_t n_tblocks = (n_taps + sp.tap_block - 1) // sp.tap_block
    cdef Py_ssize_t n_units = cv.groups * n_tblocks * n_oblocks * n_iblocks
    cdef bint by_images = sp.band >= g.out_h
    cdef Py_ssize_t n_bands = (g.out_h + sp.band - 1) // sp.band
    cdef Py_ssize_t n_parts = ((cv.n_images + sp.per_call - 1) // sp.per_call if by_images
                               else cv.n_images * n_bands)
    cdef Py_ssize_t max_terms = (sp.per_call * g.out_h if by_images else sp.band) * g.out_w
    cdef Py_ssize_t u, grp, t0, t1, t, m0, m1, c0, c1, part, n0, n_img, y0, y1, n_at, q, c
    cdef Py_ssize_t n_failed = 0
    cdef floating* gp = NULL
    cdef Py_ssize_t* at = NULL   # a call's input row offsets, then its output ones
    cdef floating* dst
    with parallel(num_threads=n_threads):
        gp = <floating*> malloc(THIN_KC * sp.out_block * sizeof(floating))
        at = <Py_ssize_t*> malloc(2 * max_terms * sizeof(Py_ssize_t))
        for u in prange(n_units, schedule='static'):
            if gp == NULL or at == NULL:
                n_failed += 1
            else:
                c0 = (u % n_iblocks) * sp.in_block
                m0 = ((u // n_iblocks) % n_oblocks) * sp.out_block
                t0 = ((u // (n_iblocks * n_oblocks)) % n_tblocks) * sp.tap_block
                grp = u // (n_iblocks * n_oblocks * n_tblocks)
                c1 = min(cg, c0 + sp.in_block)
                m1 = min(og, m0 + sp.out_block)
                t1 = min(n_taps, t0 + sp.tap_block)
                dst = gw + (grp * og + m0) * kg + c0
                for q in range(m1 - m0):
                    for t in range(t0, t1):
                        for c in range(c1 - c0):
                            dst[q * kg + t * cg + c] = 0
                for part in range(n_parts):
                    if by_images:
                        n0 = part * sp.per_call
                        n_img = min(sp.per_call, cv.n_images - n0)
                        y0 = 0
                        y1 = g.out_h
                    else:
                        n0 = part // n_bands
                        n_img = 1
                        y0 = (part % n_bands) * sp.band
                        y1 = min(g.out_h, y0 + sp.band)
                    for t in range(t0, t1):
                        n_at = tap_terms(&cv, &g, t // g.kernel_w, t % g.kernel_w, n0, n_img,
                                         y0, y1, at, at + max_terms)
                        if n_at:
                            thin_gemm_terms(c1 - c0, m1 - m0, n_at,
                                            x + (grp * cg + c0) * cv.s_c, at,
                                            go + grp * og + m0, at + max_terms,
                                            dst + t * cg, kg, gp, True)
        free(gp)
        free(at)
    return n_failed


cdef inline void* data(cnp.ndarray a):
    return NULL if a is None else cnp.PyArray_DATA(a)


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
    cdef Py_ssize_t failed
    with nogil:
        if images_per_tile > 1 and cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT32:
            failed = forward_images(<float*> xp, <float*> wp, <float*> bp, <float*> op,
                                    cv, g, images_per_tile, n_threads)
        elif images_per_tile > 1:
            failed = forward_images(<double*> xp, <double*> wp, <double*> bp, <double*> op,
                                    cv, g, images_per_tile, n_threads)
        elif cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT32:
            failed = forward(<float*> xp, <float*> wp, <float*> bp, <float*> op,
                             cv, g, n_threads, thin)
        else:
            failed = forward(<double*> xp, <double*> wp, <double*> bp, <double*> op,
                             cv, g, n_threads, thin)
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
    cdef Py_ssize_t failed
    with nogil:
        if images_per_tile > 1 and cnp.PyArray_TYPE(gx) == cnp.NPY_FLOAT32:
            failed = grad_input_images(<float*> gop, <float*> wp, <float*> bp, <float*> gxp,
                                       cv, g, images_per_tile, n_threads, transposed, thin,
                                       thin_positions)
        elif images_per_tile > 1:
            failed = grad_input_images(<double*> gop, <double*> wp, <double*> bp,
                                       <double*> gxp, cv, g, images_per_tile, n_threads,
                                       transposed, thin, thin_positions)
        elif cnp.PyArray_TYPE(gx) == cnp.NPY_FLOAT32:
            failed = grad_input(<float*> gop, <float*> wp, <float*> bp, <float*> gxp,
                                cv, g, n_threads, transposed, thin, thin_positions)
        else:
            failed = grad_input(<double*> gop, <double*> wp, <double*> bp, <double*> gxp,
                                cv, g, n_threads, transposed, thin, thin_positions)
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
    cdef void* gop = data(go)
    cdef void* wp = data(w)
    cdef void* bp = data(bias)
    cdef void* gxp = data(gx)
    cdef Py_ssize_t failed
    with nogil:
        if cnp.PyArray_TYPE(gx) == cnp.NPY_FLOAT32:
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
    cdef void* gop = data(go)
    cdef void* wp = data(w_taps)
    cdef void* bp = data(bias)
    cdef void* gxp = data(gx)
    cdef Py_ssize_t failed
    with nogil:
        if cnp.PyArray_TYPE(gx) == cnp.NPY_FLOAT32:
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
    cdef Py_ssize_t failed
    with nogil:
        if images_per_tile > 1 and cnp.PyArray_TYPE(gw) == cnp.NPY_FLOAT32:
            failed = grad_weight_images(<float*> xp, <float*> gop, <float*> gwp, cv, g,
                                        images_per_tile, n_threads)
        elif images_per_tile > 1:
            failed = grad_weight_images(<double*> xp, <double*> gop, <double*> gwp, cv, g,
                                        images_per_tile, n_threads)
        elif cnp.PyArray_TYPE(gw) == cnp.NPY_FLOAT32:
            failed = grad_weight(<float*> xp, <float*> gop, <float*> gwp, cv, g,
                                 per_thread_sums, transposed, n_threads, thin)
        else:
            failed = grad_weight(<double*> xp, <double*> gop, <double*> gwp, cv, g,
                                 per_thread_sums, transposed, n_threads, thin)
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
    cdef Py_ssize_t failed
    with nogil:
        if images_per_tile > 1 and cnp.PyArray_TYPE(gw) == cnp.NPY_FLOAT32:
            failed = grad_weight_channels_images(<float*> xp, <float*> gop, <float*> gwp, cv,
                                                 g, images_per_tile, n_threads)
        elif images_per_tile > 1:
            failed = grad_weight_channels_images(<double*> xp, <double*> gop, <double*> gwp,
                                                 cv, g, images_per_tile, n_threads)
        elif cnp.PyArray_TYPE(gw) == cnp.NPY_FLOAT32:
            failed = grad_weight_channels(<float*> xp, <float*> gop, <float*> gwp, cv, g,
                                          transposed, n_threads, thin)
        else:
            failed = grad_weight_channels(<double*> xp, <double*> gop, <double*> gwp, cv, g,
                                          transposed, n_threads, thin)
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
    cdef void* xp = data(x)
    cdef void* gop = data(go)
    cdef void* gwp = data(gw)
    cdef Py_ssize_t failed
    if cv.s_c != 1:
        raise ValueError("taps_grad_weight: x's channels must be contiguous")
    cdef TapsSplit sp
    sp.in_block, sp.out_block = split
    sp.tap_block, sp.per_call, sp.band = taps_split
    if min(split + taps_split) < 1:
        raise ValueError("taps_grad_weight: needs positive blocks")
    with nogil:
        if cnp.PyArray_TYPE(gw) == cnp.NPY_FLOAT32:
            failed = grad_weight_taps(<float*> xp, <float*> gop, <float*> gwp, cv, g, sp,
                                      n_threads)
        else:
            failed = grad_weight_taps(<double*> xp, <double*> gop, <double*> gwp, cv, g, sp,
                                      n_threads)
    if failed:
        raise MemoryError("conv2d_weight: could not allocate the per-thread buffers")
