# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (These directives must be here too: a .pxd's inline functions are compiled
# with its own directives, not with those of the .pyx that cimports them.
# Shapes, strides and tile sizes are validated by fastim2col._args and
# fastim2col._plan before a kernel runs: runtime checks would only cost time.)
#
# The input gradient kernels of fastim2col._conv by GEMM and fold (entry:
# gemm_grad_input in src/_conv.pyx): W^T go a tile (or a set of whole
# images) at a time, folded back into gx (col2im), or for 1x1 written in
# place. `cdef inline`, compiled into _conv.
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, free

from _blas cimport gemm_rm
from _conv_common cimport Conv, thin_scratch
from _thin_gemm cimport thin_gemm
from _unroll cimport (PAD_ZEROS, Geometry, fold_nchw, fold_nhwc, in_positions, n_taps,
                     out_positions)


cdef inline void seed_with_bias(floating* gx, const floating* bias, const Conv* cv,
                                const Geometry* g, int n_threads) noexcept nogil:
    # gx = the bias of its channel (or 0), before input gradients are folded in.
    cdef Py_ssize_t plane = in_positions(g)
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


cdef inline Py_ssize_t grad_input(const floating* go, const floating* w, const floating* bias,
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
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kk = n_taps(&g)
    cdef Py_ssize_t kg = cg * kk
    cdef Py_ssize_t n_tiles = (n_pos + cv.tile - 1) // cv.tile
    cdef Py_ssize_t n_blocks = (cg + cv.block - 1) // cv.block
    cdef Py_ssize_t n_pairs = (n_tiles + 1) // 2
    cdef Py_ssize_t plane = in_positions(&g)
    cdef Py_ssize_t image_size = plane * cv.n_channels
    cdef Py_ssize_t n_units, u, n, grp, t, b, p0, p1, c0, c1, k, r, q, c, rows
    cdef Py_ssize_t n_failed = 0
    cdef int parity, n_phases
    cdef floating* buf
    cdef floating* gp
    cdef floating* dst
    cdef const floating* src
    # A reflected or wrapped border folds into input rows far from its band
    # (circular: the other end of the image): there, a unit folds all of its
    # image's tiles in turn (one phase; a plan that wants parallel units
    # gives images or channel blocks).
    cdef bint whole_images = g.pad_mode != PAD_ZEROS and not cv.direct
    cdef Py_ssize_t t_first, t_stop
    if cv.direct:
        n_phases = 1   # input and output positions coincide: tiles are disjoint
        n_pairs = n_tiles
    elif whole_images:
        n_phases = 1
        n_pairs = 1
        seed_with_bias(gx, bias, &cv, &g, n_threads)
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
                t_first = u % n_pairs
                if not cv.direct:
                    t_first = 2 * t_first + parity
                t_stop = n_tiles if whole_images else t_first + 1
                b = (u // n_pairs) % n_blocks
                grp = (u // (n_pairs * n_blocks)) % cv.groups
                n = u // (n_pairs * n_blocks * cv.groups)
                if t_first >= n_tiles:
                    pass
                elif (((not cv.direct or transposed) and buf == NULL)
                      or ((thin or thin_positions) and gp == NULL)):
                    n_failed += 1
                else:
                  for t in range(t_first, t_stop):
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

cdef inline Py_ssize_t grad_input_images(const floating* go, const floating* w,
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
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kk = n_taps(&g)
    cdef Py_ssize_t kg = cg * kk
    cdef Py_ssize_t tile = per_tile * n_pos
    cdef Py_ssize_t n_sets = (cv.n_images + per_tile - 1) // per_tile
    cdef Py_ssize_t n_blocks = (cg + cv.block - 1) // cv.block
    cdef Py_ssize_t n_units = n_sets * cv.groups * n_blocks
    cdef Py_ssize_t plane = in_positions(&g)
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
