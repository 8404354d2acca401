# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (Arguments are validated by fastim2col.functional and the band size chosen by
# fastim2col._plan before a kernel runs.)
"""Direct conv2d for grouped convolutions with few channels per group (NCHW).

Depthwise and ResNeXt-style layers are GEMMs with a handful of rows per group,
far below the BLAS peak. Here each work unit (image, group, band of output
rows) copies its input band into a per-thread buffer, zero padded and with
columns split into stride_w phases, so that every tap of every output vector
is one contiguous load; the vector kernels of _direct_kernels.h then
accumulate each output vector in a register over all taps. Each output
element is computed by one unit, in a fixed order: deterministic, whatever
the number of threads.
"""
import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stddef cimport ptrdiff_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset

from _lines cimport CACHE_LINE, line_round, line_start
from _openmp cimport (FastUnitRun, fast_units_claim, new_thread_keys, new_unit_runs,
                      omp_get_thread_num, omp_get_wtime)
from _thin_gemm cimport (THIN_KC, THIN_PREFETCH_BYTES as PREFETCH_BYTES,
                         THIN_PREFETCH_C_BYTES as PREFETCH_C_BYTES, thin_gemm_f, thin_gemm_d)
from _unroll cimport Geometry, make_geometry, planar

cnp.import_array()

# Per-thread buffers start on a cache line (_lines.pxd), and the grids inside
# them too: the kernels' loads of grid rows then never split a line.


cdef extern from "_direct_kernels.h" nogil:
    ctypedef struct DirectShape:
        ptrdiff_t og, n_taps, w_stride, out_w, out_c, out_row, out_col
        ptrdiff_t row_len, phase_len, chan_len
        ptrdiff_t img_packed, img_out, grid_rows, grid_len
    int DIRECT_NV, DIRECT_MAX_CO, DIRECT_GRID_BYTES
    void direct_rows_f(const float* packed, const ptrdiff_t* tap_off, const ptrdiff_t* w_off,
                       const float* w, const float* bias, float* grid, float* out,
                       ptrdiff_t n_img, ptrdiff_t n_rows, ptrdiff_t n_out, const DirectShape* s)
    void direct_rows_d(const double* packed, const ptrdiff_t* tap_off, const ptrdiff_t* w_off,
                       const double* w, const double* bias, double* grid, double* out,
                       ptrdiff_t n_img, ptrdiff_t n_rows, ptrdiff_t n_out,
                       const DirectShape* s)
    void weight_rows_f(const float* packed, const ptrdiff_t* tap_off, ptrdiff_t n_taps,
                       const float* g, ptrdiff_t g_len, ptrdiff_t n_out, ptrdiff_t n_pos,
                       float* dw, ptrdiff_t dw_stride)
    void weight_rows_d(const double* packed, const ptrdiff_t* tap_off, ptrdiff_t n_taps,
                       const double* g, ptrdiff_t g_len, ptrdiff_t n_out, ptrdiff_t n_pos,
                       double* dw, ptrdiff_t dw_stride)
    int all_finite_f(const float* x, ptrdiff_t n)
    int all_finite_d(const double* x, ptrdiff_t n)
    const char* direct_isa_name()
    int direct_detect_isa()
    int direct_force_isa(int level)
    ptrdiff_t direct_vector_elements(ptrdiff_t itemsize)


def isa():
    """The instruction set the direct kernels run with on this CPU."""
    return direct_isa_name().decode()


def force_isa(int level):
    """For tests: run the kernels at ISA level `level` (0 baseline, 1 AVX2+FMA,
    2 AVX-512; never above what the CPU runs; -1: the best). Returns the
    level now in effect. Not thread-safe: call it while no kernel runs."""
    return direct_force_isa(level)


# Terms per packing pass of the thin GEMM: its scratch is THIN_TERMS x its
# broadcast side, per thread (fastim2col._plan.check_scratch).
THIN_TERMS = THIN_KC
# Bytes of w's (and c's) rows a pass sweeps past which the thin GEMM
# prefetches them.
THIN_PREFETCH_BYTES = PREFETCH_BYTES
THIN_PREFETCH_C_BYTES = PREFETCH_C_BYTES
# The most output channels of any register block of the direct kernels
# (a thread's grid scratch holds that many), and the bytes of grid per
# output channel (_direct_kernels.h), for fastim2col._plan's sizes.
MAX_CO = DIRECT_MAX_CO
GRID_BYTES = DIRECT_GRID_BYTES
# Bytes of a cache line, on which per-thread buffers start (_lines.pxd).
# (Set through the module's dict: the name CACHE_LINE is the cimported
# constant's here.)
globals()["CACHE_LINE"] = CACHE_LINE
cdef int best_level = -1


def unit_claims(Py_ssize_t n_units, int n_threads, int slow_run=-1, double slow_seconds=0):
    """For tests: the units each of n_threads runs claims from the unit
    scheduler of the forward kernels (_openmp.pxd fast_units_claim), in order: an
    (n_threads, n_units) array, -1 past each run's last claim. Run slow_run
    spends slow_seconds on each unit it claims (a slow core), the others none."""
    if not (n_units >= 0 and 1 <= n_threads and -1 <= slow_run < n_threads):
        raise ValueError("unit_claims: n_units >= 0, n_threads >= 1, -1 <= slow_run < n_threads")
    cdef cnp.ndarray claims_arr = np.full((n_threads, max(1, n_units)), -1, np.intp)
    cdef Py_ssize_t* claims = <Py_ssize_t*> cnp.PyArray_DATA(claims_arr)
    cdef Py_ssize_t width = claims_arr.shape[1]
    cdef FastUnitRun* runs = new_unit_runs(n_threads, n_units)
    if runs == NULL:
        raise MemoryError("unit_claims: could not allocate the runs")
    cdef Py_ssize_t t, u, k
    cdef double until
    with nogil, parallel(num_threads=n_threads):
        for t in prange(n_threads, schedule='static', chunksize=1):
            k = 0
            u = fast_units_claim(runs, n_threads, t)
            while u >= 0:
                claims[t * width + k] = u
                k = k + 1
                if t == slow_run:
                    until = omp_get_wtime() + slow_seconds
                    while omp_get_wtime() < until:
                        pass
                u = fast_units_claim(runs, n_threads, t)
    free(runs)
    return claims_arr[:, :n_units]


def best_isa_level():
    """The best ISA level this CPU runs (see force_isa), whatever is forced
    (detected once: the planner asks on every call)."""
    global best_level
    if best_level < 0:
        best_level = direct_detect_isa()
    return best_level


def thin_gemm(cnp.ndarray w, cnp.ndarray g, Py_ssize_t n_rows, cnp.ndarray c, bint add=False,
              object g_at=None, object c_at=None, object w_terms=None, object g_terms=None):
    """For tests: the thin GEMM kernel at the ISA in effect (force_isa).
    c[p, r] = sum_o w[o, r] g[o, p] (add: c[p, r] plus that sum) for r <
    n_rows; other columns of c are left alone. w: (n_terms, >= n_rows) with
    unit column stride (or unit row stride: w stored the other way round,
    the kernel's w_row); g: (n_terms, n_pos), any strides; c: (n_pos, >=
    n_rows) with unit column stride; one float dtype. g_at, c_at (integer
    sequences of n_pos): position p is g's column g_at[p] and c's row c_at[p]
    instead (the kernel's offset tables). w_terms, g_terms (integer sequences
    of one length, both or neither): term o is w's row
    w_terms[o] and g's row g_terms[o] (the kernel's term tables). Shapes are
    checked here, not in the kernel."""
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(w)
    if not (w.ndim == g.ndim == c.ndim == 2 and w.dtype == g.dtype == c.dtype
            and w.dtype in (np.float32, np.float64)):
        raise TypeError("thin_gemm: w, g and c must be 2-d, of one float dtype")
    cols = np.arange(g.shape[1]) if g_at is None else np.asarray(g_at, np.intp)
    rows = np.arange(c.shape[0]) if c_at is None else np.asarray(c_at, np.intp)
    gathered = w_terms is not None
    w_rows = np.arange(w.shape[0]) if w_terms is None else np.asarray(w_terms, np.intp)
    g_rows = np.arange(g.shape[0]) if g_terms is None else np.asarray(g_terms, np.intp)
    cdef Py_ssize_t n_pos = len(cols)
    cdef Py_ssize_t n_terms = len(w_rows)
    if not (len(g_rows) == n_terms and len(rows) == n_pos
            and gathered == (g_terms is not None)
            and not (gathered and w.strides[1] != item)
            and (gathered or g.shape[0] == w.shape[0])
            and 0 <= n_rows <= min(w.shape[1], c.shape[1])
            and ((cols >= 0) & (cols < g.shape[1])).all()
            and ((rows >= 0) & (rows < c.shape[0])).all()
            and ((w_rows >= 0) & (w_rows < w.shape[0])).all()
            and ((g_rows >= 0) & (g_rows < g.shape[0])).all()
            and (w.strides[1] == item or w.strides[0] == item) and c.strides[1] == item
            and w.strides[0] % item == 0 and w.strides[1] % item == 0
            and c.strides[0] % item == 0
            and g.strides[0] % item == 0 and g.strides[1] % item == 0):
        raise ValueError("thin_gemm: shapes, strides or positions do not fit")
    cdef Py_ssize_t ldw = w.strides[0] // item, ldc = c.strides[0] // item
    cdef Py_ssize_t w_row = w.strides[1] // item   # 1, or w transposed: ldw 1
    cdef Py_ssize_t g_term = g.strides[0] // item, g_pos = g.strides[1] // item
    cdef cnp.ndarray gp = np.empty(max(1, THIN_KC * n_pos), w.dtype)
    cdef cnp.ndarray g_off = np.ascontiguousarray(cols * g_pos, np.intp)
    cdef cnp.ndarray c_off = np.ascontiguousarray(rows * ldc, np.intp)
    cdef cnp.ndarray w_term_off = np.ascontiguousarray(w_rows * ldw, np.intp)
    cdef cnp.ndarray g_term_off = np.ascontiguousarray(g_rows * g_term, np.intp)
    cdef Py_ssize_t* g_ptr = NULL if g_at is None else <Py_ssize_t*> cnp.PyArray_DATA(g_off)
    cdef Py_ssize_t* c_ptr = NULL if c_at is None else <Py_ssize_t*> cnp.PyArray_DATA(c_off)
    cdef Py_ssize_t* w_t_ptr = NULL
    cdef Py_ssize_t* g_t_ptr = NULL
    if gathered:
        w_t_ptr = <Py_ssize_t*> cnp.PyArray_DATA(w_term_off)
        g_t_ptr = <Py_ssize_t*> cnp.PyArray_DATA(g_term_off)
    if n_rows == 0 or n_pos == 0 or n_terms == 0:
        return c
    if w.dtype == np.float32:
        thin_gemm_f(n_rows, n_pos, n_terms, <float*> cnp.PyArray_DATA(w), ldw, w_row,
                    <float*> cnp.PyArray_DATA(g), g_term, g_pos, g_ptr,
                    <float*> cnp.PyArray_DATA(c), ldc, c_ptr, w_t_ptr, g_t_ptr,
                    <float*> cnp.PyArray_DATA(gp), add)
    else:
        thin_gemm_d(n_rows, n_pos, n_terms, <double*> cnp.PyArray_DATA(w), ldw, w_row,
                    <double*> cnp.PyArray_DATA(g), g_term, g_pos, g_ptr,
                    <double*> cnp.PyArray_DATA(c), ldc, c_ptr, w_t_ptr, g_t_ptr,
                    <double*> cnp.PyArray_DATA(gp), add)
    return c


def vector_elements(Py_ssize_t itemsize):
    """Elements per vector of the direct kernels for this item size."""
    return direct_vector_elements(itemsize)


cdef void pack_band(const floating* x, Py_ssize_t s_c, Py_ssize_t s_h, Py_ssize_t s_w,
                    Py_ssize_t cg, const Geometry* g, Py_ssize_t row0, Py_ssize_t n_rows,
                    const DirectShape* s, floating* packed) noexcept nogil:
    # Padded input rows row0 + a*stride_h + ph, a in [0, n_rows), of cg
    # channels of x (the group's first channel in one image), split into
    # stride_h x stride_w phase planes: plane (ph, pw), row a, column b holds
    # padded row row0 + a*stride_h + ph, padded column b*stride_w + pw; zeros
    # in the padding, past the input and in the plane's rows past n_rows.
    cdef Py_ssize_t c, ph, pw, a, ih, q, q_lo, q_hi, first, step
    cdef floating* plane
    cdef floating* dst
    cdef const floating* src
    cdef Py_ssize_t sh = g.stride_h, sw = g.stride_w
    for c in range(cg):
        for ph in range(sh):
            for pw in range(sw):
                plane = packed + c * s.chan_len + (ph * sw + pw) * s.phase_len
                # b*sw + pw - pad_w in [0, in_w)  <=>  b in [q_lo, q_hi)
                first = g.pad_w - pw
                q_lo = (first + sw - 1) // sw if first > 0 else 0
                q_hi = (g.in_w + first + sw - 1) // sw if g.in_w + first > 0 else 0
                q_lo = min(q_lo, s.row_len)
                q_hi = min(max(q_hi, q_lo), s.row_len)
                step = sw * s_w
                for a in range(n_rows):
                    dst = plane + a * s.row_len
                    ih = row0 + a * sh + ph - g.pad_h
                    if ih < 0 or ih >= g.in_h:
                        memset(dst, 0, s.row_len * sizeof(floating))
                        continue
                    for q in range(q_lo):
                        dst[q] = 0
                    src = x + c * s_c + ih * s_h + (q_lo * sw - first) * s_w
                    if step == 1:
                        for q in range(q_lo, q_hi):
                            dst[q] = src[q - q_lo]
                    else:
                        for q in range(q_lo, q_hi):
                            dst[q] = src[(q - q_lo) * step]
                    for q in range(q_hi, s.row_len):
                        dst[q] = 0
                memset(plane + n_rows * s.row_len, 0,
                       (s.phase_len - n_rows * s.row_len) * sizeof(floating))


cdef void band_layout(const Geometry* g, Py_ssize_t band, DirectShape* s) noexcept nogil:
    # Lengths of a packed band of `band` output rows (see pack_band): a row
    # of a phase plane, a plane, a channel's stride_h x stride_w planes.
    cdef Py_ssize_t halo = (g.kernel_h - 1) * g.dilation_h // g.stride_h
    s.row_len = g.out_w + (g.kernel_w - 1) * g.dilation_w // g.stride_w
    s.phase_len = (band + halo) * s.row_len
    s.chan_len = g.stride_h * g.stride_w * s.phase_len


cdef void fill_tap_offsets(ptrdiff_t* tap_off, Py_ssize_t n_channels, const Geometry* g,
                           const DirectShape* s) noexcept nogil:
    # tap (c, i, j) reads the packed band at grid position + tap_off[t],
    # t = (c * kh + i) * kw + j: channel c's planes, the phase plane of its
    # row and column offsets, and the whole rows and columns left over.
    cdef Py_ssize_t c, i, j, di, dj
    for c in range(n_channels):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                di = i * g.dilation_h
                dj = j * g.dilation_w
                tap_off[(c * g.kernel_h + i) * g.kernel_w + j] = (
                    c * s.chan_len
                    + (di % g.stride_h * g.stride_w + dj % g.stride_w) * s.phase_len
                    + di // g.stride_h * s.row_len + dj // g.stride_w)


cdef Py_ssize_t direct_forward_impl(const floating* x, Py_ssize_t s_n, Py_ssize_t s_c,
                                    Py_ssize_t s_h, Py_ssize_t s_w, const floating* w,
                                    const floating* bias, floating* out, Py_ssize_t n_images,
                                    Py_ssize_t groups, Py_ssize_t cg, Geometry g,
                                    Py_ssize_t band, Py_ssize_t chunk, Py_ssize_t per_unit,
                                    DirectShape s, const ptrdiff_t* tap_off,
                                    const ptrdiff_t* w_off, int n_threads) noexcept nogil:
    # Units: (block of per_unit images, group, band of output rows, chunk of
    # output channels), the chunk varying fastest: a thread's consecutive
    # units mostly share their input bands, packed once (last_key, per thread).
    # Chunks of whole register blocks (the planner's chunk is a multiple of
    # DIRECT_MAX_CO, or all of og) split og evenly, the sizes at most one block
    # apart: 256 channels in 8 chunks of up to 36 are 30-36 each, not 7 x 36 + 4
    # (on 2 threads one got 144 channels, the other 112).
    cdef Py_ssize_t n_bands = (g.out_h + band - 1) // band
    cdef Py_ssize_t n_chunks = (s.og + chunk - 1) // chunk
    cdef Py_ssize_t step = DIRECT_MAX_CO if chunk % DIRECT_MAX_CO == 0 else chunk
    cdef Py_ssize_t n_steps = (s.og + step - 1) // step
    cdef Py_ssize_t n_blocks = (n_images + per_unit - 1) // per_unit
    cdef Py_ssize_t n_units = n_blocks * groups * n_bands * n_chunks
    cdef Py_ssize_t halo = (g.kernel_h - 1) * g.dilation_h // g.stride_h
    # the packed bands, then a zero tail (the last register block of the last
    # band reads up to a span + a row past it), then the grid
    cdef Py_ssize_t tail = DIRECT_NV * direct_vector_elements(sizeof(floating)) + s.row_len
    cdef Py_ssize_t grid_at = line_round(per_unit * s.img_packed + tail, sizeof(floating))
    cdef Py_ssize_t buf_elems = grid_at + DIRECT_MAX_CO * s.grid_len
    cdef Py_ssize_t t, u, n0, m, n_img, grp, b, key, oh0, rows, co0, n_out, n_failed = 0
    cdef floating* buf
    cdef void* raw
    cdef floating* dst
    cdef const floating* chunk_bias
    cdef const floating* w_chunk
    cdef int tid
    cdef Py_ssize_t* last_key = new_thread_keys(n_threads)
    # each thread starts on its static run of units, then takes the slower
    # threads' last ones (_openmp.pxd fast_units_claim): units write disjoint
    # outputs, so the result is the same whichever thread computes each
    cdef FastUnitRun* runs = new_unit_runs(n_threads, n_units)
    if last_key == NULL or runs == NULL:
        free(last_key)
        free(runs)
        return 1
    buf = NULL   # (also before the block: silences gcc's maybe-uninitialized)
    raw = NULL
    with parallel(num_threads=n_threads):
        # calloc: the tail, and any slot a unit leaves unpacked, read as zeros
        raw = calloc(buf_elems * sizeof(floating) + CACHE_LINE, 1)
        buf = <floating*> line_start(raw)
        for t in prange(n_threads, schedule='static', chunksize=1):
            if raw == NULL:
                n_failed += 1
            else:
                tid = omp_get_thread_num()
                u = fast_units_claim(runs, n_threads, t)
                while u >= 0:
                    key = u // n_chunks
                    co0 = (u % n_chunks) * n_steps // n_chunks * step
                    n_out = min(s.og, (u % n_chunks + 1) * n_steps // n_chunks * step) - co0
                    b = key % n_bands
                    grp = (key // n_bands) % groups
                    n0 = key // (n_bands * groups) * per_unit
                    n_img = min(per_unit, n_images - n0)
                    oh0 = b * band
                    rows = min(band, g.out_h - oh0)
                    if key != last_key[tid]:
                        for m in range(n_img):
                            pack_band(x + (n0 + m) * s_n + grp * cg * s_c, s_c, s_h, s_w,
                                      cg, &g, oh0 * g.stride_h, rows + halo, &s,
                                      buf + m * s.img_packed)
                        last_key[tid] = key
                    w_chunk = w + grp * s.og * s.n_taps + co0 * s.w_stride
                    co0 = co0 + grp * s.og
                    chunk_bias = bias
                    if bias != NULL:
                        chunk_bias = bias + co0
                    dst = out + n0 * s.img_out + co0 * s.out_c + oh0 * s.out_row
                    if floating is float:
                        direct_rows_f(buf, tap_off, w_off, w_chunk, chunk_bias, buf + grid_at,
                                      dst, n_img, rows, n_out, &s)
                    else:
                        direct_rows_d(buf, tap_off, w_off, w_chunk, chunk_bias, buf + grid_at,
                                      dst, n_img, rows, n_out, &s)
                    u = fast_units_claim(runs, n_threads, t)
        free(raw)
    free(runs)
    free(last_key)
    return n_failed


def direct_forward(cnp.ndarray x, cnp.ndarray w, object bias, cnp.ndarray out, *,
                   Py_ssize_t groups, tuple geom, tuple split, int n_threads,
                   bint flip_weights=False, bint nhwc=False):
    """out = conv2d(x, w, groups) + bias, NCHW, by direct accumulation.
    x (N, C, H, W) any strides; w C-contiguous (C_out, C/groups*kh*kw);
    out C-contiguous (N, C_out, Ho, Wo); split: (output rows, output channels,
    images) per work unit.

    flip_weights: w holds the weights of the conv2d whose input gradient this
    is, (C, C_out/groups*kh*kw): they are read flipped in space and
    transposed per group (never copied).

    nhwc: out is (N, Ho, Wo, C_out) and w's rows are ordered (i, j, c) (x
    stays an NCHW view: pass the NHWC array transposed)."""
    cdef Py_ssize_t band = split[0], chunk = split[1], per_unit = split[2]
    cdef Geometry g = make_geometry(geom)
    if not planar(&g) or cnp.PyArray_NDIM(x) != 4:
        raise ValueError("direct_forward: for images only (4-d arrays, 2-d geometries)")
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef cnp.npy_intp* st = cnp.PyArray_STRIDES(x)
    cdef Py_ssize_t n_images = x.shape[0], cg = x.shape[1] // groups
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t span = DIRECT_NV * direct_vector_elements(item)   # one register block
    cdef DirectShape s
    s.og = (out.shape[3] if nhwc else out.shape[1]) // groups
    s.n_taps = cg * kk
    cdef Py_ssize_t c_out = out.shape[3] if nhwc else out.shape[1]
    s.out_w = g.out_w
    s.out_c = 1 if nhwc else g.out_h * g.out_w
    s.out_row = g.out_w * c_out if nhwc else g.out_w
    s.out_col = c_out if nhwc else 1
    band_layout(&g, band, &s)
    s.img_packed = cg * s.chan_len
    s.img_out = c_out * g.out_h * g.out_w
    s.grid_rows = max(1, min(band, DIRECT_GRID_BYTES // item // s.row_len))
    s.grid_len = (s.grid_rows * s.row_len + span - 1) // span * span
    # w_off[t]: tap t's weight, from its output channel's first one
    s.w_stride = (1 if nhwc else kk) if flip_weights else s.n_taps
    cdef ptrdiff_t* tap_off = <ptrdiff_t*> malloc(2 * s.n_taps * sizeof(ptrdiff_t))
    if tap_off == NULL:
        raise MemoryError("conv2d: could not allocate the tap offsets")
    cdef ptrdiff_t* w_off = tap_off + s.n_taps
    fill_tap_offsets(tap_off, cg, &g, &s)
    cdef Py_ssize_t c, i, j, t
    for c in range(cg):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                t = (c * g.kernel_h + i) * g.kernel_w + j
                # flipped: the forward weight w[c][o][kh-1-i][kw-1-j] of (o = this
                # output channel, c = this tap's channel), w being (c, o, i, j)-major
                # (NCHW) or (c, i, j, o)-major (NHWC)
                if flip_weights and nhwc:
                    w_off[t] = c * kk * s.og + (kk - 1 - i * g.kernel_w - j) * s.og
                elif flip_weights:
                    w_off[t] = c * s.og * kk + (kk - 1 - i * g.kernel_w - j)
                elif nhwc:
                    w_off[t] = (i * g.kernel_w + j) * cg + c
                else:
                    w_off[t] = t
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* wp = cnp.PyArray_DATA(w)
    cdef void* bp = NULL if bias is None else cnp.PyArray_DATA(bias)
    cdef void* op = cnp.PyArray_DATA(out)
    cdef Py_ssize_t n_failed
    with nogil:
        if cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT32:
            n_failed = direct_forward_impl(
                <float*> xp, st[0] // item, st[1] // item, st[2] // item, st[3] // item,
                <float*> wp, <float*> bp, <float*> op, n_images, groups, cg, g, band, chunk,
                per_unit, s, tap_off, w_off, n_threads)
        else:
            n_failed = direct_forward_impl(
                <double*> xp, st[0] // item, st[1] // item, st[2] // item, st[3] // item,
                <double*> wp, <double*> bp, <double*> op, n_images, groups, cg, g, band,
                chunk, per_unit, s, tap_off, w_off, n_threads)
    free(tap_off)
    if n_failed:
        raise MemoryError("conv2d: could not allocate the per-thread input buffers")


cdef void pack_grad_band(const floating* g, Py_ssize_t s_c, Py_ssize_t s_h, Py_ssize_t s_w,
                         Py_ssize_t og, Py_ssize_t out_w, Py_ssize_t oh0, Py_ssize_t rows,
                         Py_ssize_t row_len, Py_ssize_t g_len, floating* dst) noexcept nogil:
    # Rows [oh0, oh0 + rows) of og channels of grad_output (g: the first
    # channel of one image; strides in elements, NCHW or NHWC) in grid
    # layout: row_len per row, zeros in the dropped columns and up to g_len.
    cdef Py_ssize_t o, r, q, q0, q1
    cdef floating* d
    cdef const floating* src
    if s_c == 1 and s_w != 1:
        # NHWC: a block of 16 positions at a time, all channels, so that
        # the block's lines (each position's channels) stay in L1 while
        # every channel's row takes its run. Channel by channel, each
        # position's line was fetched again for every channel: the stem's
        # NHWC weight gradient took 1.28x its GEMM's time at batch 1 (0.98
        # from an NCHW copy of grad_output), 1.07-1.12x now; batch 8 1.13 ->
        # 0.95-0.97.
        for r in range(rows):
            src = g + (oh0 + r) * s_h
            for q0 in range(0, out_w, 16):
                q1 = min(out_w, q0 + 16)
                for o in range(og):
                    d = dst + o * g_len + r * row_len
                    for q in range(q0, q1):
                        d[q] = src[q * s_w + o]
    else:
        for o in range(og):
            d = dst + o * g_len
            for r in range(rows):
                src = g + o * s_c + (oh0 + r) * s_h
                if s_w == 1:
                    memcpy(d + r * row_len, src, out_w * sizeof(floating))
                else:
                    for q in range(out_w):
                        d[r * row_len + q] = src[q * s_w]
    for o in range(og):   # the zeros: dropped columns, then up to g_len
        d = dst + o * g_len
        for r in range(rows):
            memset(d + r * row_len + out_w, 0, (row_len - out_w) * sizeof(floating))
        memset(d + rows * row_len, 0, (g_len - rows * row_len) * sizeof(floating))


cdef Py_ssize_t direct_weight_impl(const floating* x, Py_ssize_t s_n, Py_ssize_t s_c,
                                   Py_ssize_t s_h, Py_ssize_t s_w, const floating* go,
                                   const Py_ssize_t* go_strides, floating* dw,
                                   Py_ssize_t n_images, Py_ssize_t groups, Py_ssize_t cg,
                                   Py_ssize_t og, Geometry g, Py_ssize_t band,
                                   Py_ssize_t ci_chunk, Py_ssize_t o_block, DirectShape s,
                                   Py_ssize_t g_len, const ptrdiff_t* tap_off, int n_threads,
                                   Py_ssize_t* n_nonfinite) noexcept nogil:
    # Units: (group, chunk of input channels, block of output channels),
    # block innermost; each sums its block of the weight gradient over every
    # image and band, in that order, alone: no reduction between threads, and
    # each weight's sum runs in the same order whatever the split, so the
    # same bits whatever the thread count.
    # Each thread takes a contiguous run of units (as a static schedule
    # would) and goes band by band, its units inside: consecutive units that
    # share a chunk's input band or a block's grad_output band pack it once
    # (with 2 threads, 4 chunks and 1 block, a unit used to pack the whole
    # grad_output band for itself, the larger part of the copying).
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t n_chunks = (cg + ci_chunk - 1) // ci_chunk
    cdef Py_ssize_t n_blocks = (og + o_block - 1) // o_block
    cdef Py_ssize_t n_units = groups * n_chunks * n_blocks
    cdef Py_ssize_t per_thread = (n_units + n_threads - 1) // n_threads
    cdef Py_ssize_t n_bands = (g.out_h + band - 1) // band
    cdef Py_ssize_t halo = (g.kernel_h - 1) * g.dilation_h // g.stride_h
    cdef Py_ssize_t tail = DIRECT_NV * direct_vector_elements(sizeof(floating)) + s.row_len
    cdef Py_ssize_t g_at = line_round(ci_chunk * s.chan_len + tail, sizeof(floating))
    cdef Py_ssize_t buf_elems = g_at + o_block * g_len
    cdef Py_ssize_t t, u, u_end, grp, chunk, block, ci0, n_ci, o0, n_o, n, b, oh0, rows
    cdef Py_ssize_t x_key, g_key, n_failed = 0, bad = 0
    cdef floating* buf
    cdef void* raw
    cdef floating* dw_unit
    buf = NULL   # (also before the block: silences gcc's maybe-uninitialized)
    raw = NULL
    with parallel(num_threads=n_threads):
        raw = calloc(buf_elems * sizeof(floating) + CACHE_LINE, 1)
        buf = <floating*> line_start(raw)
        for t in prange(n_threads, schedule='static', chunksize=1):
            if raw == NULL:
                n_failed += 1
                continue
            u_end = min(n_units, (t + 1) * per_thread)
            for n in range(n_images):
                for b in range(n_bands):
                    oh0 = b * band
                    rows = min(band, g.out_h - oh0)
                    x_key = -1
                    g_key = -1
                    for u in range(t * per_thread, u_end):
                        chunk = u // n_blocks          # (group, chunk) of all groups
                        grp = chunk // n_chunks
                        ci0 = chunk % n_chunks * ci_chunk
                        n_ci = min(ci_chunk, cg - ci0)
                        block = grp * n_blocks + u % n_blocks   # (group, block)
                        o0 = u % n_blocks * o_block
                        n_o = min(o_block, og - o0)
                        if chunk != x_key:
                            pack_band(x + n * s_n + (grp * cg + ci0) * s_c, s_c, s_h, s_w,
                                      n_ci, &g, oh0 * g.stride_h, rows + halo, &s, buf)
                            x_key = chunk
                            # (the units of a chunk's first output block
                            # check its input bands: the others pack the
                            # same ones)
                            if o0 == 0:
                                if floating is float:
                                    if not all_finite_f(buf, n_ci * s.chan_len):
                                        bad += 1
                                else:
                                    if not all_finite_d(buf, n_ci * s.chan_len):
                                        bad += 1
                        if block != g_key:
                            pack_grad_band(go + n * go_strides[0]
                                           + (grp * og + o0) * go_strides[1], go_strides[1],
                                           go_strides[2], go_strides[3], n_o, g.out_w, oh0,
                                           rows, s.row_len, g_len, buf + g_at)
                            g_key = block
                        dw_unit = dw + (grp * og + o0) * cg * kk + ci0 * kk
                        if floating is float:
                            weight_rows_f(buf, tap_off, n_ci * kk, buf + g_at, g_len, n_o,
                                          rows * s.row_len, dw_unit, cg * kk)
                        else:
                            weight_rows_d(buf, tap_off, n_ci * kk, buf + g_at, g_len, n_o,
                                          rows * s.row_len, dw_unit, cg * kk)
        free(raw)
    n_nonfinite[0] = bad
    return n_failed


def direct_weight(cnp.ndarray x, cnp.ndarray go, cnp.ndarray dw, *, Py_ssize_t groups,
                  tuple geom, tuple split, int n_threads):
    """dw = the weight gradient of conv2d(x, w, groups), NCHW, by direct
    accumulation. x (N, C, H, W) and go (N, C_out, Ho, Wo) any strides (NHWC
    arrays as transposed views); dw C-contiguous (C_out, C/groups*kh*kw),
    overwritten; split:
    (output rows per band, input channels and output channels per work unit).
    Returns False (dw then undefined) when x holds a NaN or an infinity: the
    kernels multiply inputs in dropped lanes by zero, which is only nothing
    for finite ones."""
    if len(split) != 3:
        raise ValueError(f"direct_weight: split must be (band, ci_chunk, o_block), got {split!r}")
    cdef Py_ssize_t band = split[0], ci_chunk = split[1], o_block = split[2]
    cdef Geometry g = make_geometry(geom)
    if not planar(&g) or cnp.PyArray_NDIM(x) != 4:
        raise ValueError("direct_weight: for images only (4-d arrays, 2-d geometries)")
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef cnp.npy_intp* st = cnp.PyArray_STRIDES(x)
    cdef Py_ssize_t n_images = x.shape[0], cg = x.shape[1] // groups
    cdef Py_ssize_t og = go.shape[1] // groups
    cdef Py_ssize_t kk = g.kernel_h * g.kernel_w
    cdef Py_ssize_t span = DIRECT_NV * direct_vector_elements(item)
    cdef DirectShape s
    band_layout(&g, band, &s)
    cdef Py_ssize_t g_len = (band * s.row_len + span - 1) // span * span
    cdef ptrdiff_t* tap_off = <ptrdiff_t*> malloc(ci_chunk * kk * sizeof(ptrdiff_t))
    if tap_off == NULL:
        raise MemoryError("conv2d_weight: could not allocate the tap offsets")
    fill_tap_offsets(tap_off, ci_chunk, &g, &s)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* gp = cnp.PyArray_DATA(go)
    cdef void* wp = cnp.PyArray_DATA(dw)
    cdef Py_ssize_t go_strides[4]
    cdef int k
    for k in range(4):
        go_strides[k] = cnp.PyArray_STRIDES(go)[k] // item
    cdef Py_ssize_t n_failed, n_nonfinite = 0
    with nogil:
        memset(wp, 0, dw.shape[0] * cg * kk * item)
        if cnp.PyArray_TYPE(dw) == cnp.NPY_FLOAT32:
            n_failed = direct_weight_impl(
                <float*> xp, st[0] // item, st[1] // item, st[2] // item, st[3] // item,
                <float*> gp, go_strides, <float*> wp, n_images, groups, cg, og, g, band,
                ci_chunk, o_block, s, g_len, tap_off, n_threads, &n_nonfinite)
        else:
            n_failed = direct_weight_impl(
                <double*> xp, st[0] // item, st[1] // item, st[2] // item, st[3] // item,
                <double*> gp, go_strides, <double*> wp, n_images, groups, cg, og, g, band,
                ci_chunk, o_block, s, g_len, tap_off, n_threads, &n_nonfinite)
    free(tap_off)
    if n_failed:
        raise MemoryError("conv2d_weight: could not allocate the per-thread buffers")
    return n_nonfinite == 0
