# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (These directives must be here too: a .pxd's inline functions are compiled
# with its own directives, not with those of the .pyx that cimports them.
# Shapes, strides and tile sizes are validated by fastim2col._args and
# fastim2col._plan before a kernel runs: runtime checks would only cost time.)
#
# The input gradient kernels of fastim2col._conv that neither unroll nor
# fold (entries in src/_conv.pyx): tap by tap in the thin GEMM
# (grad_input_taps: taps_grad_input) and element by element for few input
# channels (grad_input_few: elementwise_grad_input). `cdef inline`,
# compiled into _conv.
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from _conv_common cimport Conv
from _lines cimport CACHE_LINE, line_start
from _thin_gemm cimport THIN_KC, thin_gemm_at
from _unroll cimport Geometry, ceil_div


cdef extern from "_direct_kernels.h" nogil:
    ctypedef struct FewShape:
        Py_ssize_t in_h, in_w, out_h, out_w, kernel_h, kernel_w
        Py_ssize_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
        Py_ssize_t cg, og, ld_gx, ld_go
    int FEW_MAX_CHANNELS
    int FEW_TABLES
    void few_rows_f(const float* go, Py_ssize_t oy0, const float* wt, const float* bias,
                    float* gx, Py_ssize_t y0, Py_ssize_t y1, const FewShape* s, Py_ssize_t* tab)
    void few_rows_d(const double* go, Py_ssize_t oy0, const double* wt, const double* bias,
                    double* gx, Py_ssize_t y0, Py_ssize_t y1, const FewShape* s,
                    Py_ssize_t* tab)


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


cdef inline Py_ssize_t grad_input_few(const floating* go, const floating* w, const floating* bias,
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


cdef inline Py_ssize_t grad_input_taps(const floating* go, const floating* w, const floating* bias,
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
