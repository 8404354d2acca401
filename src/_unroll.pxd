# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (A .pxd's inline functions are compiled with its own directives, not with
# those of the .pyx that cimports them. C division: every divisor here is a
# validated positive size or stride.)
# The unroll (im2col) and fold (col2im) of one image, for a range of output
# positions: the building blocks that every kernel module shares.
#
# All indices are signed Py_ssize_t; every function takes raw pointers and
# element strides (any sign), so that callers inside prange never slice
# memoryviews. Functions are sequential: callers partition the work so that
# no two threads ever write the same element.
from cython cimport floating
from libc.string cimport memcpy, memset


cdef struct Geometry:
    # Input image size, output size and window parameters of one convolution.
    # pad_h / pad_w are the top / left padding; bottom / right padding is
    # implied by out_h / out_w (which lets 'same' padding be asymmetric).
    # The depth fields are those of 3-d volumes: 1 (pad_d 0) for images, whose
    # kernels then see a single plane.
    Py_ssize_t in_h, in_w, out_h, out_w
    Py_ssize_t kernel_h, kernel_w, stride_h, stride_w
    Py_ssize_t pad_h, pad_w, dilation_h, dilation_w
    Py_ssize_t in_d, out_d, kernel_d, stride_d, pad_d, dilation_d
    # What the padding reads (PadMode): zeros, or the input reflected,
    # replicated or wrapped around (torch's padding_mode)
    Py_ssize_t pad_mode


cdef enum PadMode:
    PAD_ZEROS = 0
    PAD_REFLECT = 1
    PAD_REPLICATE = 2
    PAD_CIRCULAR = 3


cdef inline Geometry make_geometry(tuple geom):
    # geom: the plan's 19 numbers, in the field order above
    # (fastim2col._args.Window).
    cdef Geometry g
    (g.in_h, g.in_w, g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h,
     g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w,
     g.in_d, g.out_d, g.kernel_d, g.stride_d, g.pad_d, g.dilation_d, g.pad_mode) = geom
    return g


cdef inline Py_ssize_t pad_index(Py_ssize_t t, Py_ssize_t n, Py_ssize_t mode) noexcept nogil:
    # The input index that index t of the padded axis reads, -1 for a zero.
    # (Python checks that the padding is within one reflection or wrap.)
    if 0 <= t < n:
        return t
    if mode == PAD_REFLECT:
        return -t if t < 0 else 2 * (n - 1) - t
    if mode == PAD_REPLICATE:
        return 0 if t < 0 else n - 1
    if mode == PAD_CIRCULAR:
        return t + n if t < 0 else t - n
    return -1


cdef inline Py_ssize_t out_positions(const Geometry* g) noexcept nogil:
    return g.out_d * g.out_h * g.out_w


cdef inline Py_ssize_t in_positions(const Geometry* g) noexcept nogil:
    return g.in_d * g.in_h * g.in_w


cdef inline Py_ssize_t n_taps(const Geometry* g) noexcept nogil:
    return g.kernel_d * g.kernel_h * g.kernel_w


cdef inline bint planar(const Geometry* g) noexcept nogil:
    # one input and one output plane: a 2-d image (or a volume of depth 1)
    return g.in_d == 1 and g.out_d == 1 and g.kernel_d == 1


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # Ceiling of a / b for b > 0 and a of any sign (C division truncates).
    if a >= 0:
        return (a + b - 1) // b
    return -((-a) // b)


cdef struct ColRange:
    Py_ssize_t lo, hi


cdef enum:
    # Kernel rows / columns whose valid ranges TapRanges holds (wider
    # kernels: worked out per use).
    MAX_CACHED_TAPS = 32


cdef inline ColRange valid_out_range(Py_ssize_t offset, Py_ssize_t stride,
                                     Py_ssize_t in_size, Py_ssize_t out_size) noexcept nogil:
    # Outputs o in [lo, hi) with 0 <= o*stride + offset < in_size, offset
    # being a kernel tap's k*dilation - pad (one dimension).
    # (Returned by value, not through pointers: a variable whose address is
    # taken inside prange is shared between threads, not private.)
    cdef ColRange r
    r.lo = max(<Py_ssize_t> 0, ceil_div(-offset, stride))
    r.hi = max(r.lo, min(out_size, ceil_div(in_size - offset, stride)))
    return r


cdef inline ColRange valid_out_rows(const Geometry* g, Py_ssize_t i) noexcept nogil:
    # Output rows whose kernel row i falls inside the image.
    return valid_out_range(i * g.dilation_h - g.pad_h, g.stride_h, g.in_h, g.out_h)


cdef inline ColRange valid_out_cols(const Geometry* g, Py_ssize_t j) noexcept nogil:
    # Output columns whose kernel column j falls inside the image.
    return valid_out_range(j * g.dilation_w - g.pad_w, g.stride_w, g.in_w, g.out_w)


cdef inline void copy_run(floating* out, const floating* src, Py_ssize_t step,
                          Py_ssize_t n) noexcept nogil:
    # out[i] = src[i*step], i < n. Plain loops, not memcpy: runs are short (an
    # output row) and the call would dominate; the unit-stride loop is kept
    # apart so that the compiler vectorizes it.
    cdef Py_ssize_t i
    if step == 1:
        for i in range(n):
            out[i] = src[i]
    else:
        for i in range(n):
            out[i] = src[i * step]


cdef inline void add_run(floating* dst, Py_ssize_t dst_step, const floating* src,
                         Py_ssize_t src_step, Py_ssize_t n) noexcept nogil:
    # dst[i*dst_step] += src[i*src_step], i < n (a unit-stride source apart,
    # as in copy_run).
    cdef Py_ssize_t i
    if src_step == 1:
        for i in range(n):
            dst[i * dst_step] += src[i]
    else:
        for i in range(n):
            dst[i * dst_step] += src[i * src_step]


cdef inline void add_pair(floating* dst, const floating* a, const floating* b,
                          Py_ssize_t n) noexcept nogil:
    # dst[2i] += a[i], dst[2i + 1] += b[i], i < n: two taps of a stride-2
    # row fill the columns between them; contiguous, so it vectorizes (a
    # stride-2 add_run does not).
    cdef Py_ssize_t i
    for i in range(n):
        dst[2 * i] += a[i]
        dst[2 * i + 1] += b[i]


cdef struct TapRanges:
    # Each kernel row's valid output rows and each kernel column's valid
    # output columns (two integer divisions each), worked out once per call
    # of unroll_nchw / fold_nchw, not once per channel.
    bint cached
    ColRange rows[MAX_CACHED_TAPS]
    ColRange cols[MAX_CACHED_TAPS]


cdef inline TapRanges tap_ranges(const Geometry* g) noexcept nogil:
    cdef TapRanges tr
    cdef Py_ssize_t k
    tr.cached = g.kernel_h <= MAX_CACHED_TAPS and g.kernel_w <= MAX_CACHED_TAPS
    if tr.cached:
        for k in range(g.kernel_h):
            tr.rows[k] = valid_out_rows(g, k)
        for k in range(g.kernel_w):
            tr.cols[k] = valid_out_cols(g, k)
    return tr


cdef inline ColRange tap_rows(const TapRanges* tr, const Geometry* g,
                              Py_ssize_t i) noexcept nogil:
    return tr.rows[i] if tr.cached else valid_out_rows(g, i)


cdef inline ColRange tap_cols(const TapRanges* tr, const Geometry* g,
                              Py_ssize_t j) noexcept nogil:
    return tr.cols[j] if tr.cached else valid_out_cols(g, j)


# ---------------------------------------------------------------- padding modes
# Reflected, replicated or wrapped padding: each padded row and column reads
# the input index pad_index() gives. Rows map as a whole; a row's columns
# inside the image are one strided run, as with zeros, and only the padding
# columns at its ends are gathered (or, folding, scattered) one by one.

cdef inline void unroll_plane_nchw_mapped(const floating* x, Py_ssize_t s_c, Py_ssize_t s_h,
                                          Py_ssize_t s_w, Py_ssize_t n_channels,
                                          const Geometry* g, Py_ssize_t p_start,
                                          Py_ssize_t p_stop, floating* dst,
                                          Py_ssize_t ld_dst) noexcept nogil:
    cdef Py_ssize_t c, i, j, p, oh, ow, ow0, ow1, ih, a, b
    cdef ColRange cols_ok
    cdef const floating* src
    cdef floating* out
    for c in range(n_channels):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                cols_ok = valid_out_cols(g, j)
                out = dst + ((c * g.kernel_h + i) * g.kernel_w + j) * ld_dst - p_start
                p = p_start
                while p < p_stop:
                    oh = p // g.out_w
                    ow0 = p - oh * g.out_w
                    ow1 = min(g.out_w, ow0 + p_stop - p)
                    ih = pad_index(oh * g.stride_h - g.pad_h + i * g.dilation_h, g.in_h,
                                   g.pad_mode)
                    src = x + c * s_c + ih * s_h
                    a = min(max(ow0, cols_ok.lo), ow1)
                    b = max(a, min(ow1, cols_ok.hi))
                    for ow in range(ow0, a):
                        out[p + ow - ow0] = src[pad_index(
                            ow * g.stride_w - g.pad_w + j * g.dilation_w, g.in_w,
                            g.pad_mode) * s_w]
                    copy_run(out + p + a - ow0,
                             src + (a * g.stride_w - g.pad_w + j * g.dilation_w) * s_w,
                             g.stride_w * s_w, b - a)
                    for ow in range(b, ow1):
                        out[p + ow - ow0] = src[pad_index(
                            ow * g.stride_w - g.pad_w + j * g.dilation_w, g.in_w,
                            g.pad_mode) * s_w]
                    p += ow1 - ow0


cdef inline void unroll_plane_nhwc_mapped(const floating* x, Py_ssize_t s_h, Py_ssize_t s_w,
                                          Py_ssize_t s_c, Py_ssize_t c_start,
                                          Py_ssize_t n_channels, const Geometry* g,
                                          Py_ssize_t p_start, Py_ssize_t p_stop,
                                          floating* dst, Py_ssize_t ld_dst) noexcept nogil:
    cdef Py_ssize_t p, oh, ow, i, j, c, ih, iw
    cdef const floating* src
    cdef floating* out
    for p in range(p_start, p_stop):
        oh = p // g.out_w
        ow = p - oh * g.out_w
        out = dst + (p - p_start) * ld_dst
        for i in range(g.kernel_h):
            ih = pad_index(oh * g.stride_h - g.pad_h + i * g.dilation_h, g.in_h, g.pad_mode)
            for j in range(g.kernel_w):
                iw = pad_index(ow * g.stride_w - g.pad_w + j * g.dilation_w, g.in_w,
                               g.pad_mode)
                src = x + ih * s_h + iw * s_w + c_start * s_c
                for c in range(n_channels):
                    out[c] = src[c * s_c]
                out += n_channels


cdef inline void fold_plane_nchw_mapped(const floating* cols, Py_ssize_t k_stride,
                                        Py_ssize_t p_stride, Py_ssize_t n_channels,
                                        const Geometry* g, Py_ssize_t p_start,
                                        Py_ssize_t p_stop, floating* img) noexcept nogil:
    # unroll_plane_nchw_mapped's adjoint: a padded element's column adds into
    # the input element it read; the columns inside the image as one strided
    # run, as with zeros
    cdef Py_ssize_t c, i, j, p, oh, ow, ow0, ow1, ih, iw, a, b
    cdef ColRange cols_ok
    cdef const floating* row
    cdef const floating* src
    cdef floating* dst
    for c in range(n_channels):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                row = cols + ((c * g.kernel_h + i) * g.kernel_w + j) * k_stride
                cols_ok = valid_out_cols(g, j)
                p = p_start
                while p < p_stop:
                    oh = p // g.out_w
                    ow0 = p - oh * g.out_w
                    ow1 = min(g.out_w, ow0 + p_stop - p)
                    ih = pad_index(oh * g.stride_h - g.pad_h + i * g.dilation_h, g.in_h,
                                   g.pad_mode)
                    dst = img + (c * g.in_h + ih) * g.in_w
                    src = row + (p - p_start - ow0) * p_stride   # output column 0's
                    a = min(max(ow0, cols_ok.lo), ow1)
                    b = max(a, min(ow1, cols_ok.hi))
                    for ow in range(ow0, a):
                        iw = pad_index(ow * g.stride_w - g.pad_w + j * g.dilation_w, g.in_w,
                                       g.pad_mode)
                        dst[iw] += src[ow * p_stride]
                    add_run(dst + a * g.stride_w - g.pad_w + j * g.dilation_w, g.stride_w,
                            src + a * p_stride, p_stride, b - a)
                    for ow in range(b, ow1):
                        iw = pad_index(ow * g.stride_w - g.pad_w + j * g.dilation_w, g.in_w,
                                       g.pad_mode)
                        dst[iw] += src[ow * p_stride]
                    p += ow1 - ow0


cdef inline void fold_plane_nhwc_mapped(const floating* cols, Py_ssize_t ld_cols,
                                        Py_ssize_t n_img_channels, Py_ssize_t c_start,
                                        Py_ssize_t n_channels, const Geometry* g,
                                        Py_ssize_t p_start, Py_ssize_t p_stop,
                                        floating* img) noexcept nogil:
    cdef Py_ssize_t p, oh, ow, i, j, c, ih, iw
    cdef const floating* src
    cdef floating* out
    for p in range(p_start, p_stop):
        oh = p // g.out_w
        ow = p - oh * g.out_w
        src = cols + (p - p_start) * ld_cols
        for i in range(g.kernel_h):
            ih = pad_index(oh * g.stride_h - g.pad_h + i * g.dilation_h, g.in_h, g.pad_mode)
            for j in range(g.kernel_w):
                iw = pad_index(ow * g.stride_w - g.pad_w + j * g.dilation_w, g.in_w,
                               g.pad_mode)
                out = img + (ih * g.in_w + iw) * n_img_channels + c_start
                for c in range(n_channels):
                    out[c] += src[c]
                src += n_channels


cdef inline void unroll_run(const floating* x_c, Py_ssize_t s_h, const Geometry* g,
                            Py_ssize_t i, Py_ssize_t j, ColRange rows_ok, ColRange cols_ok,
                            Py_ssize_t oh_first, Py_ssize_t oh_last,
                            floating* row) noexcept nogil:
    """unroll_plane_nchw's rows for tap (i, j) of one channel x_c, output rows
    [oh_first, oh_last), where x's columns are unit strided and an output
    row's input row is g.out_w elements past the previous one's (stride_h *
    s_h == out_w): the valid part is then a single run of x. One memcpy
    copies it from the first valid column of the first valid row to the last
    valid column of the last; the columns outside [lo, hi) of each valid row
    (the run filled those in between from the neighbouring image rows; all
    of them where lo == hi) and the rows outside the valid ones are then
    zeroed."""
    cdef Py_ssize_t out_w = g.out_w, oh, ow, ih
    cdef Py_ssize_t lo = min(cols_ok.lo, out_w), hi = min(cols_ok.hi, out_w)
    cdef Py_ssize_t r0 = min(max(oh_first, rows_ok.lo), oh_last)
    cdef Py_ssize_t r1 = max(r0, min(oh_last, rows_ok.hi))
    cdef floating* out
    if r0 < r1 and lo < hi:
        ih = r0 * g.stride_h - g.pad_h + i * g.dilation_h
        memcpy(row + (r0 - oh_first) * out_w + lo,
               x_c + ih * s_h + lo + j * g.dilation_w - g.pad_w,
               ((r1 - r0 - 1) * out_w + hi - lo) * sizeof(floating))
    for oh in range(oh_first, oh_last):
        out = row + (oh - oh_first) * out_w
        if oh < r0 or oh >= r1:
            for ow in range(out_w):
                out[ow] = 0
        else:
            for ow in range(lo):
                out[ow] = 0
            for ow in range(hi, out_w):
                out[ow] = 0


cdef inline void unroll_plane_nchw(const floating* x, Py_ssize_t s_c, Py_ssize_t s_h,
                             Py_ssize_t s_w, Py_ssize_t n_channels,
                             const Geometry* g, Py_ssize_t p_start,
                             Py_ssize_t p_stop, floating* dst,
                             Py_ssize_t ld_dst) noexcept nogil:
    """dst[(c*kh + i)*kw + j, p - p_start] = x[c, ih, iw] (0 in the padding).

    x points at channel 0 of one image; output positions p = oh*out_w + ow run
    over [p_start, p_stop); rows of dst are ld_dst apart.
    """
    cdef Py_ssize_t c, i, j, ow, oh, ow_first, seg_stop, ih, iw0, lo, hi, a, b, t
    cdef Py_ssize_t oh_first = p_start // g.out_w, oh_last = p_stop // g.out_w
    cdef ColRange cols_ok, rows_ok
    cdef Py_ssize_t step = g.stride_w * s_w
    cdef floating* row
    cdef floating* out
    cdef const floating* src
    # Whole output rows: per tap, the rows in the padding are zeros and the
    # others a zero head, a copy and a zero tail of known widths, with no
    # per-row bounds work (rows of 7-14 outputs spent more time there than
    # copying).
    cdef bint whole_rows = p_start % g.out_w == 0 and p_stop % g.out_w == 0
    # Whole rows, unit strides, and as many outputs as inputs a row ('same'
    # padding at stride 1): a tap's rows are one contiguous run of x shifted
    # by the tap, so one memcpy copies them all; then the columns the shift
    # took from the next or previous image row are zeroed (per row, copy
    # loops of an output row each took longer than the GEMM's packing: 256
    # channels at 14 px).
    cdef bint one_run = whole_rows and step == 1 and g.stride_h * s_h == g.out_w
    cdef TapRanges taps = tap_ranges(g)
    for c in range(n_channels):
        for i in range(g.kernel_h):
            rows_ok = tap_rows(&taps, g, i)
            for j in range(g.kernel_w):
                row = dst + ((c * g.kernel_h + i) * g.kernel_w + j) * ld_dst
                cols_ok = tap_cols(&taps, g, j)
                lo = cols_ok.lo
                hi = cols_ok.hi
                if one_run:
                    unroll_run(x + c * s_c, s_h, g, i, j, rows_ok, cols_ok, oh_first, oh_last,
                               row)
                    continue
                if whole_rows:
                    # (a kernel column may lie wholly in the padding: lo > out_w)
                    lo = min(lo, g.out_w)
                    hi = min(hi, g.out_w)
                    src = x + c * s_c + (j * g.dilation_w - g.pad_w) * s_w
                    for oh in range(oh_first, oh_last):
                        out = row + (oh - oh_first) * g.out_w
                        if oh < rows_ok.lo or oh >= rows_ok.hi:
                            for ow in range(g.out_w):
                                out[ow] = 0
                            continue
                        ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                        for ow in range(lo):
                            out[ow] = 0
                        copy_run(out + lo, src + ih * s_h + lo * step, step, hi - lo)
                        for ow in range(hi, g.out_w):
                            out[ow] = 0
                    continue
                oh = p_start // g.out_w
                ow_first = p_start - oh * g.out_w
                t = 0
                while t < p_stop - p_start:
                    seg_stop = min(g.out_w, ow_first + (p_stop - p_start - t))
                    ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                    # Plain loops, not memcpy/memset: runs are short (an
                    # output row, a pad column) and the call overhead would
                    # dominate; the compiler vectorizes the unit-stride copy.
                    out = row + t - ow_first
                    if ih < 0 or ih >= g.in_h:
                        for ow in range(ow_first, seg_stop):
                            out[ow] = 0
                    else:
                        # [a, b): the columns that read the image, clamped to
                        # this segment (a kernel column may lie wholly in the
                        # padding, lo >= seg_stop).
                        a = min(max(ow_first, lo), seg_stop)
                        b = max(a, min(seg_stop, hi))
                        for ow in range(ow_first, a):
                            out[ow] = 0
                        src = x + c * s_c + ih * s_h + (j * g.dilation_w - g.pad_w) * s_w
                        copy_run(out + a, src + a * step, step, b - a)
                        for ow in range(b, seg_stop):
                            out[ow] = 0
                    t += seg_stop - ow_first
                    ow_first = 0
                    oh += 1


cdef inline void unroll_plane_nhwc(const floating* x, Py_ssize_t s_h, Py_ssize_t s_w,
                             Py_ssize_t s_c, Py_ssize_t c_start,
                             Py_ssize_t n_channels, const Geometry* g,
                             Py_ssize_t p_start, Py_ssize_t p_stop,
                             floating* dst, Py_ssize_t ld_dst) noexcept nogil:
    """dst[p - p_start, (i*kw + j)*n_channels + c] = x[ih, iw, c_start + c].

    x points at one image (H, W, C); channel runs are copied whole.
    """
    cdef Py_ssize_t p, oh, ow, i, j, c, ih, iw, iw0
    cdef Py_ssize_t run = n_channels * sizeof(floating)
    cdef floating* out
    cdef const floating* src
    # Pixels of exactly the copied channels, no dilation: a kernel row inside
    # the image is one run of kw * channels elements in x as in dst (the
    # stem's 3 channels: one loop of 21, not 7 of 3), as fold_plane_nhwc adds it.
    cdef bint whole_pixels = s_c == 1 and s_w == n_channels and g.dilation_w == 1
    cdef Py_ssize_t row_run = g.kernel_w * n_channels
    oh = p_start // g.out_w
    ow = p_start - oh * g.out_w
    for p in range(p_stop - p_start):
        out = dst + p * ld_dst
        iw0 = ow * g.stride_w - g.pad_w   # the window's first column
        for i in range(g.kernel_h):
            ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
            if ih < 0 or ih >= g.in_h:
                memset(out, 0, g.kernel_w * run)
                out += g.kernel_w * n_channels
                continue
            if whole_pixels and iw0 >= 0 and iw0 + g.kernel_w <= g.in_w:
                src = x + ih * s_h + iw0 * s_w + c_start
                if row_run >= 32:
                    memcpy(out, src, row_run * sizeof(floating))
                else:
                    for c in range(row_run):
                        out[c] = src[c]
                out += row_run
                continue
            for j in range(g.kernel_w):
                iw = ow * g.stride_w - g.pad_w + j * g.dilation_w
                if iw < 0 or iw >= g.in_w:
                    for c in range(n_channels):
                        out[c] = 0
                else:
                    src = x + ih * s_h + iw * s_w + c_start * s_c
                    if s_c == 1 and n_channels >= 32:
                        memcpy(out, src, run)
                    elif s_c == 1:   # short runs (e.g. 3 RGB channels): no call
                        for c in range(n_channels):
                            out[c] = src[c]
                    else:
                        for c in range(n_channels):
                            out[c] = src[c * s_c]
                out += n_channels
        ow += 1
        if ow == g.out_w:
            ow = 0
            oh += 1


cdef inline void fold_run(floating* row, const Geometry* g, Py_ssize_t i, Py_ssize_t j,
                          Py_ssize_t oh_lo, Py_ssize_t oh_hi, Py_ssize_t oh_first,
                          ColRange cols_ok, floating* img_c) noexcept nogil:
    """fold_plane_nchw's tap (i, j) of one channel, output rows [oh_lo, oh_hi)
    (the valid ones), where they add to one run of the image: row holds the
    tap's unrolled row from output row oh_first on, positions contiguous,
    and an output row's image row is g.out_w elements past the previous
    one's (stride_h * in_w == out_w, unit column stride). The columns
    outside [lo, hi) between the run's ends are set to -0.0 in row (a
    scratch tile: they are the padding's, which nothing reads) and the run
    is added in one loop: x + -0.0 == x for every x, NaN, inf and -0.0
    included, so every element gets the same sums in the same order as
    added row by row."""
    cdef Py_ssize_t out_w = g.out_w, oh, ow, ih
    cdef Py_ssize_t lo = min(cols_ok.lo, out_w), hi = min(cols_ok.hi, out_w)
    cdef floating neg_zero = -0.0
    cdef floating* r
    if oh_lo >= oh_hi or lo >= hi:
        return
    for oh in range(oh_lo, oh_hi):
        r = row + (oh - oh_first) * out_w
        if oh > oh_lo:
            for ow in range(lo):
                r[ow] = neg_zero
        if oh < oh_hi - 1:
            for ow in range(hi, out_w):
                r[ow] = neg_zero
    ih = oh_lo * g.stride_h - g.pad_h + i * g.dilation_h
    add_run(img_c + ih * g.in_w + lo - g.pad_w + j * g.dilation_w, 1,
            row + (oh_lo - oh_first) * out_w + lo, 1, (oh_hi - oh_lo - 1) * out_w + hi - lo)


cdef inline void fold_plane_nchw(const floating* cols, Py_ssize_t k_stride,
                           Py_ssize_t p_stride, Py_ssize_t n_channels,
                           const Geometry* g, Py_ssize_t p_start, Py_ssize_t p_stop,
                           floating* img, bint cols_scratch=False) noexcept nogil:
    """img[c, ih, iw] += cols[k*k_stride + (p - p_start)*p_stride], with
    k = (c*kh + i)*kw + j: unroll's adjoint.

    cols is unroll's layout with p_stride 1 (k_stride its leading dimension),
    or its transpose with k_stride 1 (p_stride the leading dimension: the
    input gradient's GEMM in the orientation BLAS runs faster, see
    fastim2col._plan.grad_input_transposed). img is C-contiguous
    (n_channels, in_h, in_w). cols_scratch: cols is the caller's scratch,
    which fold_run may write its padding columns in.
    """
    cdef Py_ssize_t c, i, j, ow, oh, ow_first, seg_stop, ih, iw0, lo, hi, a, b, t
    cdef Py_ssize_t oh_first = p_start // g.out_w, oh_lo, oh_hi
    cdef ColRange cols_ok, rows_ok
    cdef const floating* row
    cdef const floating* src
    cdef floating* dst
    # Whole output rows (every caller's tiles but partial ones): each tap
    # adds a rectangle, no per-row bounds checks (small images have many
    # short rows: the general loop below took a quarter of the time of a 7x7
    # layer's input gradient).
    cdef bint whole_rows = p_start % g.out_w == 0 and p_stop % g.out_w == 0
    # Stride 2, no dilation: taps j and j + 1 add to alternate columns, in
    # pairs contiguous ones (add_pair). Each element still gets its taps in
    # ascending order: the same sums.
    cdef bint pairs = whole_rows and g.stride_w == 2 and g.dilation_w == 1 and p_stride == 1
    # 'Same' padding at stride 1 into a scratch tile: each tap's rows are one
    # run of the image (fold_run; per row, the adds of a 7 px layer's 5-7
    # columns took 7% of its input gradient).
    cdef bint one_run = (cols_scratch and whole_rows and p_stride == 1 and g.stride_w == 1
                         and g.stride_h * g.in_w == g.out_w)
    cdef ColRange cols_next
    cdef Py_ssize_t both_hi
    cdef TapRanges taps = tap_ranges(g)
    for c in range(n_channels):
        for i in range(g.kernel_h):
            rows_ok = tap_rows(&taps, g, i)
            oh_lo = max(rows_ok.lo, oh_first)
            oh_hi = min(rows_ok.hi, p_stop // g.out_w)
            for j in range(g.kernel_w):
                if pairs and j % 2:   # added with tap j - 1
                    continue
                row = cols + ((c * g.kernel_h + i) * g.kernel_w + j) * k_stride
                cols_ok = tap_cols(&taps, g, j)
                lo = cols_ok.lo
                hi = cols_ok.hi
                if one_run:
                    fold_run(<floating*> row, g, i, j, oh_lo, oh_hi, oh_first, cols_ok,
                             img + c * g.in_h * g.in_w)
                    continue
                if pairs and j + 1 < g.kernel_w:
                    # tap j's output column ow adds to input column 2 ow + j -
                    # pad_w, tap j + 1's to the one after it. Tap j + 1's
                    # valid columns start and end no later than tap j's: it
                    # alone on the left, both, then tap j alone on the right.
                    cols_next = tap_cols(&taps, g, j + 1)
                    both_hi = max(lo, cols_next.hi)
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                        dst = img + (c * g.in_h + ih) * g.in_w + j - g.pad_w
                        src = row + (oh - oh_first) * g.out_w
                        add_run(dst + 1 + 2 * cols_next.lo, 2, src + k_stride + cols_next.lo,
                                1, min(lo, cols_next.hi) - cols_next.lo)
                        add_pair(dst + 2 * lo, src + lo, src + k_stride + lo, both_hi - lo)
                        add_run(dst + 2 * both_hi, 2, src + both_hi, 1, hi - both_hi)
                    continue
                if whole_rows:
                    iw0 = lo * g.stride_w - g.pad_w + j * g.dilation_w
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                        dst = img + (c * g.in_h + ih) * g.in_w + iw0
                        src = row + ((oh - oh_first) * g.out_w + lo) * p_stride
                        add_run(dst, g.stride_w, src, p_stride, hi - lo)
                    continue
                oh = p_start // g.out_w
                ow_first = p_start - oh * g.out_w
                t = 0
                while t < p_stop - p_start:
                    seg_stop = min(g.out_w, ow_first + (p_stop - p_start - t))
                    ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                    if 0 <= ih < g.in_h:
                        a = max(ow_first, lo)
                        b = max(a, min(seg_stop, hi))
                        iw0 = a * g.stride_w - g.pad_w + j * g.dilation_w
                        dst = img + (c * g.in_h + ih) * g.in_w + iw0
                        src = row + (t + (a - ow_first)) * p_stride
                        add_run(dst, g.stride_w, src, p_stride, b - a)
                    t += seg_stop - ow_first
                    ow_first = 0
                    oh += 1


cdef inline void fold_plane_nhwc(const floating* cols, Py_ssize_t ld_cols,
                           Py_ssize_t n_img_channels, Py_ssize_t c_start,
                           Py_ssize_t n_channels, const Geometry* g,
                           Py_ssize_t p_start, Py_ssize_t p_stop,
                           floating* img) noexcept nogil:
    """img[ih, iw, c_start + c] += cols[p - p_start, (i*kw + j)*n_channels + c].

    img is C-contiguous (in_h, in_w, n_img_channels).
    """
    cdef Py_ssize_t p, oh, ow, i, j, c, ih, iw, iw0
    cdef const floating* src
    cdef floating* out
    # All of the image's channels, no dilation: a kernel row's taps are
    # consecutive in cols and consecutive pixels in img, one run of kw *
    # channels where the row lies inside the image (the stem's 3 channels: 21 elements, not 7 runs
    # of 3). Each element still gets its sums in the same order.
    cdef bint whole_pixels = n_channels == n_img_channels and g.dilation_w == 1
    cdef Py_ssize_t row_run = g.kernel_w * n_channels
    oh = p_start // g.out_w
    ow = p_start - oh * g.out_w
    for p in range(p_stop - p_start):
        src = cols + p * ld_cols
        iw0 = ow * g.stride_w - g.pad_w   # the window's first column
        for i in range(g.kernel_h):
            ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
            if ih < 0 or ih >= g.in_h:
                src += row_run
                continue
            if whole_pixels and iw0 >= 0 and iw0 + g.kernel_w <= g.in_w:
                add_run(img + (ih * g.in_w + iw0) * n_img_channels, 1, src, 1, row_run)
                src += row_run
                continue
            for j in range(g.kernel_w):
                iw = ow * g.stride_w - g.pad_w + j * g.dilation_w
                if 0 <= iw < g.in_w:
                    out = img + (ih * g.in_w + iw) * n_img_channels + c_start
                    for c in range(n_channels):
                        out[c] += src[c]
                src += n_channels
        ow += 1
        if ow == g.out_w:
            ow = 0
            oh += 1


# ---------------------------------------------------------------- volumes
# Output positions p = (od*out_h + oh)*out_w + ow and taps (kd, i, j): the
# plane functions above run each output plane's part of [p_start, p_stop)
# against input plane id = od*stride_d - pad_d + kd*dilation_d (zeros, or
# nothing folded, where id lies in the padding). A 2-d geometry is one plane.

cdef inline void zero_rows(floating* dst, Py_ssize_t n_rows, Py_ssize_t ld_dst,
                           Py_ssize_t n_cols) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(n_rows):
        memset(dst + r * ld_dst, 0, n_cols * sizeof(floating))


cdef inline void unroll_nchw(const floating* x, Py_ssize_t s_c, Py_ssize_t s_d,
                             Py_ssize_t s_h, Py_ssize_t s_w, Py_ssize_t n_channels,
                             const Geometry* g, Py_ssize_t p_start, Py_ssize_t p_stop,
                             floating* dst, Py_ssize_t ld_dst) noexcept nogil:
    """dst[((c*kd + d)*kh + i)*kw + j, p - p_start] = x[c, id, ih, iw] (0 in
    the padding); x points at channel 0 of one image or volume."""
    if planar(g) and g.pad_mode == PAD_ZEROS:
        unroll_plane_nchw(x, s_c, s_h, s_w, n_channels, g, p_start, p_stop, dst, ld_dst)
        return
    if planar(g):
        unroll_plane_nchw_mapped(x, s_c, s_h, s_w, n_channels, g, p_start, p_stop, dst,
                                 ld_dst)
        return
    cdef Py_ssize_t plane = g.out_h * g.out_w, taps2 = g.kernel_h * g.kernel_w
    cdef Py_ssize_t c, d, p, od, q0, q1, id_
    cdef floating* rows
    for c in range(n_channels):
        for d in range(g.kernel_d):
            rows = dst + (c * g.kernel_d + d) * taps2 * ld_dst
            p = p_start
            while p < p_stop:
                od = p // plane
                q0 = p - od * plane
                q1 = min(plane, q0 + p_stop - p)
                id_ = pad_index(od * g.stride_d - g.pad_d + d * g.dilation_d, g.in_d,
                                g.pad_mode)
                if id_ >= 0 and g.pad_mode == PAD_ZEROS:
                    unroll_plane_nchw(x + c * s_c + id_ * s_d, s_c, s_h, s_w, 1, g, q0, q1,
                                      rows + p - p_start, ld_dst)
                elif id_ >= 0:
                    unroll_plane_nchw_mapped(x + c * s_c + id_ * s_d, s_c, s_h, s_w, 1, g, q0,
                                             q1, rows + p - p_start, ld_dst)
                else:
                    zero_rows(rows + p - p_start, taps2, ld_dst, q1 - q0)
                p += q1 - q0


cdef inline void unroll_nhwc(const floating* x, Py_ssize_t s_d, Py_ssize_t s_h,
                             Py_ssize_t s_w, Py_ssize_t s_c, Py_ssize_t c_start,
                             Py_ssize_t n_channels, const Geometry* g,
                             Py_ssize_t p_start, Py_ssize_t p_stop,
                             floating* dst, Py_ssize_t ld_dst) noexcept nogil:
    """dst[p - p_start, ((d*kh + i)*kw + j)*n_channels + c] = x[id, ih, iw,
    c_start + c]; x points at one image or volume."""
    if planar(g) and g.pad_mode == PAD_ZEROS:
        unroll_plane_nhwc(x, s_h, s_w, s_c, c_start, n_channels, g, p_start, p_stop, dst,
                          ld_dst)
        return
    if planar(g):
        unroll_plane_nhwc_mapped(x, s_h, s_w, s_c, c_start, n_channels, g, p_start, p_stop,
                                 dst, ld_dst)
        return
    cdef Py_ssize_t plane = g.out_h * g.out_w
    cdef Py_ssize_t per_depth = g.kernel_h * g.kernel_w * n_channels
    cdef Py_ssize_t d, p, od, q0, q1, id_
    for d in range(g.kernel_d):
        p = p_start
        while p < p_stop:
            od = p // plane
            q0 = p - od * plane
            q1 = min(plane, q0 + p_stop - p)
            id_ = pad_index(od * g.stride_d - g.pad_d + d * g.dilation_d, g.in_d,
                            g.pad_mode)
            if id_ >= 0 and g.pad_mode == PAD_ZEROS:
                unroll_plane_nhwc(x + id_ * s_d, s_h, s_w, s_c, c_start, n_channels, g, q0, q1,
                                  dst + (p - p_start) * ld_dst + d * per_depth, ld_dst)
            elif id_ >= 0:
                unroll_plane_nhwc_mapped(x + id_ * s_d, s_h, s_w, s_c, c_start, n_channels, g,
                                         q0, q1, dst + (p - p_start) * ld_dst + d * per_depth,
                                         ld_dst)
            else:
                zero_rows(dst + (p - p_start) * ld_dst + d * per_depth, q1 - q0, ld_dst,
                          per_depth)
            p += q1 - q0


cdef inline void fold_nchw(const floating* cols, Py_ssize_t k_stride,
                           Py_ssize_t p_stride, Py_ssize_t n_channels,
                           const Geometry* g, Py_ssize_t p_start, Py_ssize_t p_stop,
                           floating* img, bint cols_scratch=False) noexcept nogil:
    """unroll_nchw's adjoint: img[c, id, ih, iw] += cols[k*k_stride + (p -
    p_start)*p_stride], k = ((c*kd + d)*kh + i)*kw + j; img C-contiguous
    (n_channels, in_d, in_h, in_w). See fold_plane_nchw."""
    if planar(g) and g.pad_mode == PAD_ZEROS:
        fold_plane_nchw(cols, k_stride, p_stride, n_channels, g, p_start, p_stop, img,
                        cols_scratch)
        return
    if planar(g):
        fold_plane_nchw_mapped(cols, k_stride, p_stride, n_channels, g, p_start, p_stop, img)
        return
    cdef Py_ssize_t plane = g.out_h * g.out_w, taps2 = g.kernel_h * g.kernel_w
    cdef Py_ssize_t in_plane = g.in_h * g.in_w
    cdef Py_ssize_t c, d, p, od, q0, q1, id_
    for c in range(n_channels):
        for d in range(g.kernel_d):
            p = p_start
            while p < p_stop:
                od = p // plane
                q0 = p - od * plane
                q1 = min(plane, q0 + p_stop - p)
                id_ = pad_index(od * g.stride_d - g.pad_d + d * g.dilation_d, g.in_d,
                                g.pad_mode)
                if id_ >= 0 and g.pad_mode == PAD_ZEROS:
                    fold_plane_nchw(cols + (c * g.kernel_d + d) * taps2 * k_stride
                                    + (p - p_start) * p_stride, k_stride, p_stride, 1, g, q0,
                                    q1, img + (c * g.in_d + id_) * in_plane, cols_scratch)
                elif id_ >= 0:
                    fold_plane_nchw_mapped(cols + (c * g.kernel_d + d) * taps2 * k_stride
                                           + (p - p_start) * p_stride, k_stride, p_stride, 1,
                                           g, q0, q1, img + (c * g.in_d + id_) * in_plane)
                p += q1 - q0


cdef inline void fold_nhwc(const floating* cols, Py_ssize_t ld_cols,
                           Py_ssize_t n_img_channels, Py_ssize_t c_start,
                           Py_ssize_t n_channels, const Geometry* g,
                           Py_ssize_t p_start, Py_ssize_t p_stop,
                           floating* img) noexcept nogil:
    """unroll_nhwc's adjoint: img[id, ih, iw, c_start + c] += cols[p - p_start,
    ((d*kh + i)*kw + j)*n_channels + c]; img C-contiguous (in_d, in_h, in_w,
    n_img_channels)."""
    if planar(g) and g.pad_mode == PAD_ZEROS:
        fold_plane_nhwc(cols, ld_cols, n_img_channels, c_start, n_channels, g, p_start,
                        p_stop, img)
        return
    if planar(g):
        fold_plane_nhwc_mapped(cols, ld_cols, n_img_channels, c_start, n_channels, g, p_start,
                               p_stop, img)
        return
    cdef Py_ssize_t plane = g.out_h * g.out_w
    cdef Py_ssize_t per_depth = g.kernel_h * g.kernel_w * n_channels
    cdef Py_ssize_t in_plane = g.in_h * g.in_w * n_img_channels
    cdef Py_ssize_t d, p, od, q0, q1, id_
    for d in range(g.kernel_d):
        p = p_start
        while p < p_stop:
            od = p // plane
            q0 = p - od * plane
            q1 = min(plane, q0 + p_stop - p)
            id_ = pad_index(od * g.stride_d - g.pad_d + d * g.dilation_d, g.in_d,
                            g.pad_mode)
            if id_ >= 0 and g.pad_mode == PAD_ZEROS:
                fold_plane_nhwc(cols + (p - p_start) * ld_cols + d * per_depth, ld_cols,
                                n_img_channels, c_start, n_channels, g, q0, q1,
                                img + id_ * in_plane)
            elif id_ >= 0:
                fold_plane_nhwc_mapped(cols + (p - p_start) * ld_cols + d * per_depth,
                                       ld_cols, n_img_channels, c_start, n_channels, g, q0,
                                       q1, img + id_ * in_plane)
            p += q1 - q0
