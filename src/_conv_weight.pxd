# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (These directives must be here too: a .pxd's inline functions are compiled
# with its own directives, not with those of the .pyx that cimports them.
# Shapes, strides and tile sizes are validated by fastim2col._args and
# fastim2col._plan before a kernel runs: runtime checks would only cost time.)
#
# The weight gradient kernels of fastim2col._conv (entries in
# src/_conv.pyx): unrolled tiles by GEMM into per-thread sums or blocks of
# output channels (grad_weight*: gemm_grad_weight), NCHW by chunks of input
# channels (grad_weight_channels*: gemm_grad_weight_by_channels), NHWC tap
# by tap (grad_weight_taps: taps_grad_weight). `cdef inline`, compiled
# into _conv.
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

from _blas cimport gemm_rm
from _conv_common cimport Conv, thin_scratch, tile_ld, unrolled_tile
from _openmp cimport omp_get_thread_num
from _thin_gemm cimport THIN_KC, thin_gemm, thin_gemm_terms, thin_gemm_t
from _unroll cimport Geometry, n_taps, out_positions, unroll_nchw, unroll_nhwc


cdef struct ChannelSplit:
    # The NCHW weight gradient split by input channels (grad_weight_channels*):
    # units (group, chunk of cv.block input channels), chunk innermost.
    Py_ssize_t n_pos, cg, og, taps, kg, n_chunks, n_units


cdef struct ChannelChunk:
    Py_ssize_t grp, c0, n_ch


cdef inline ChannelSplit channel_split(const Conv* cv, const Geometry* g) noexcept nogil:
    cdef ChannelSplit cs
    cs.n_pos = out_positions(g)
    cs.cg = cv.n_channels // cv.groups
    cs.og = cv.n_out // cv.groups
    cs.taps = n_taps(g)
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

cdef inline void reduce_thread_sums(floating* sums, Py_ssize_t n_threads, Py_ssize_t n_out,
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


cdef inline Py_ssize_t grad_weight(const floating* x, const floating* go, floating* gw,
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
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * n_taps(&g)
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


cdef inline Py_ssize_t grad_weight_images(const floating* x, const floating* go, floating* gw,
                                          Conv cv, Geometry g, Py_ssize_t per_tile,
                                          int n_threads) noexcept nogil:
    # grad_weight() for small images: a tile holds `per_tile` whole images,
    # so each GEMM sums over per_tile*L positions at once instead of updating
    # the whole (n_out, K_g) sum once per image with a thin rank-L product.
    # Units (image group, group) add into per-thread sums, reduced in thread
    # order (static schedule: deterministic for a thread count). NCHW gathers
    # the images' grad_output rows into a (og x tile) buffer; in NHWC they are
    # contiguous already.
    cdef Py_ssize_t n_pos = out_positions(&g)
    cdef Py_ssize_t cg = cv.n_channels // cv.groups
    cdef Py_ssize_t og = cv.n_out // cv.groups
    cdef Py_ssize_t kg = cg * n_taps(&g)
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
                        unroll_nhwc(x + (n0 + i) * cv.s_n, cv.s_d, cv.s_h, cv.s_w, cv.s_c,
                                    grp * cg, cg, &g, 0, n_pos, buf + i * n_pos * kg, kg)
                    else:
                        unroll_nchw(x + (n0 + i) * cv.s_n + grp * cg * cv.s_c, cv.s_c,
                                    cv.s_d, cv.s_h, cv.s_w, cg, &g, 0, n_pos, buf + i * n_pos, width)
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


cdef inline Py_ssize_t grad_weight_channels(const floating* x, const floating* go, floating* gw,
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
                            unroll_nchw(x_chunk, cv.s_c, cv.s_d, cv.s_h, cv.s_w, ch.n_ch, &g,
                                        p0, p1, buf, p1 - p0)
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


cdef inline Py_ssize_t grad_weight_channels_images(const floating* x, const floating* go,
                                                   floating* gw, Conv cv, Geometry g,
                                                   Py_ssize_t per_tile,
                                                   int n_threads) noexcept nogil:
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
                        unroll_nchw(x_chunk, cv.s_c, cv.s_d, cv.s_h, cv.s_w, ch.n_ch, &g, 0,
                                    n_pos, buf + i * n_pos, n_in * n_pos)
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


cdef inline Py_ssize_t grad_weight_taps(const floating* x, const floating* go, floating* gw,
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
    cdef Py_ssize_t taps_2d = g.kernel_h * g.kernel_w
    cdef Py_ssize_t kg = cg * taps_2d
    cdef Py_ssize_t n_oblocks = (og + sp.out_block - 1) // sp.out_block
    cdef Py_ssize_t n_iblocks = (cg + sp.in_block - 1) // sp.in_block
    cdef Py_ssize_t n_tblocks = (taps_2d + sp.tap_block - 1) // sp.tap_block
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
                t1 = min(taps_2d, t0 + sp.tap_block)
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
