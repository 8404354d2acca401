# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (These directives must be here too: a .pxd's inline functions are compiled
# with its own directives, not with those of the .pyx that cimports them.
# Shapes, strides and tile sizes are validated by fastim2col._args and
# fastim2col._plan before a kernel runs: runtime checks would only cost time.)
#
# The forward kernels of fastim2col._conv (entry: gemm_forward in
# src/_conv.pyx): unrolled tiles times the weights, by BLAS or the thin
# GEMM. `cdef inline`, compiled into _conv.
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, free

from _blas cimport gemm_rm
from _conv_common cimport Conv, thin_scratch, tile_ld, unrolled_tile
from _openmp cimport (FastUnitRun, fast_units_claim, new_thread_keys, new_unit_runs,
                      omp_get_thread_num)
from _thin_gemm cimport thin_gemm
from _unroll cimport Geometry, n_taps, out_positions, unroll_nchw, unroll_nhwc


cdef inline Py_ssize_t forward(const floating* x, const floating* w, const floating* bias,
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
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * n_taps(&g)
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


cdef inline Py_ssize_t forward_images(const floating* x, const floating* w, const floating* bias,
                                      floating* out, Conv cv, Geometry g, Py_ssize_t per_tile,
                                      int n_threads) noexcept nogil:
    # forward() for small images: one tile holds `per_tile` whole images, so
    # the GEMM sees a wide tile and BLAS packs the weights once per several
    # images instead of once per image (measured 20-50% on 7-14 px layers).
    # Units (image group, group, block of output channels), block innermost,
    # tiles reused per thread as in forward(). NCHW: the GEMM writes a
    # (channels x tile) buffer, copied image by image into the output; NHWC:
    # the images' positions are contiguous in the output, written directly.
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * n_taps(&g)
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
                            unroll_nhwc(x + (n0 + i) * cv.s_n, cv.s_d, cv.s_h, cv.s_w, cv.s_c,
                                        grp * cg, cg, &g, 0, n_pos, buf + i * n_pos * kg, kg)
                        else:
                            unroll_nchw(x + (n0 + i) * cv.s_n + grp * cg * cv.s_c, cv.s_c,
                                        cv.s_d, cv.s_h, cv.s_w, cg, &g, 0, n_pos, buf + i * n_pos,
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
