/* One instance of the direct convolution kernel (see _direct_kernels.h).
 *
 * Included several times with, defined by the includer:
 *   DT      the element type (float or double)
 *   DVEC    elements per vector (1 when the compiler has no vector extensions)
 *   DCO     output channels per register block (the most this ISA's registers hold)
 *   DWCO, DWT  output channels x taps per register block of the weight gradient
 *   DTNR    positions per register tile of the thin GEMM
 *   DFEW_SUMS  vectors of sums per block of the few-channel input gradient
 *   DFN(x)  the name of function x in this instance
 *   DTARGET function attributes (an ISA target) or nothing
 *   DTUNED  DTARGET with that ISA's tuning (the few-channel kernels)
 */

#if DIRECT_VECTOR_EXT
typedef DT DFN(vec) __attribute__((vector_size(DVEC * sizeof(DT))));
/* the same vector type, loadable from / storable to any element address */
typedef DT DFN(uvec) __attribute__((vector_size(DVEC * sizeof(DT)), aligned(sizeof(DT)), may_alias));
#else
typedef DT DFN(vec);
typedef DT DFN(uvec);
#endif

/* co output channels x nv (<= DIRECT_NV) vectors of consecutive grid
 * positions (both constants after inlining), from p0 on, over every tap: the
 * sums live in registers; bias first, then the taps in order (deterministic).
 * The weight of channel c, tap t is w[c * w_stride + w_off[t]]. */
static inline __attribute__((always_inline)) DTARGET void
DFN(block)(const int co, const int nv, const DT* packed, const ptrdiff_t* tap_off,
           const ptrdiff_t* w_off, ptrdiff_t n_taps, const DT* w, ptrdiff_t w_stride,
           const DT* bias, DT* grid, ptrdiff_t grid_len, ptrdiff_t p0)
{
    DFN(vec) acc[DCO][DIRECT_NV];
    for (int c = 0; c < co; c++) {
        DT b = bias != NULL ? bias[c] : (DT)0;
        for (int v = 0; v < nv; v++) {
            memset(&acc[c][v], 0, sizeof(acc[c][v]));
            acc[c][v] += b;
        }
    }
    const DT* src = packed + p0;
    for (ptrdiff_t t = 0; t < n_taps; t++) {
        const DT* p = src + tap_off[t];
        DFN(vec) x[DIRECT_NV];
        for (int v = 0; v < nv; v++)
            x[v] = *(const DFN(uvec)*)(p + v * DVEC);
        const ptrdiff_t wt_off = w_off[t];
        for (int c = 0; c < co; c++) {
            DT wt = w[c * w_stride + wt_off];
            for (int v = 0; v < nv; v++)
                acc[c][v] += x[v] * wt;
        }
    }
    for (int c = 0; c < co; c++)
        for (int v = 0; v < nv; v++)
            *(DFN(uvec)*)(grid + c * grid_len + p0 + v * DVEC) = acc[c][v];
}

/* The last, partial register block of channels(): nv (1 to DIRECT_NV - 1)
 * vectors, from p0 on, for each channel count direct_rows() uses (its
 * `done`: DCO, 4, 3, 2 or 1; test_partial_register_blocks runs each). Out of
 * line: it runs once per grid fill, and inlined into each of channels()'
 * instances its 15 block variants would multiply their code. */
static __attribute__((noinline)) DTARGET void
DFN(tail)(const int co, const int nv, const DT* packed, const ptrdiff_t* tap_off,
          const ptrdiff_t* w_off, ptrdiff_t n_taps, const DT* w, ptrdiff_t w_stride,
          const DT* bias, DT* grid, ptrdiff_t grid_len, ptrdiff_t p0)
{
#define DIRECT_TAIL(C)                                                                     \
    if (co == (C)) {                                                                       \
        if (nv == 1)                                                                       \
            DFN(block)(C, 1, packed, tap_off, w_off, n_taps, w, w_stride, bias, grid,      \
                       grid_len, p0);                                                      \
        else if (nv == 2)                                                                  \
            DFN(block)(C, 2, packed, tap_off, w_off, n_taps, w, w_stride, bias, grid,      \
                       grid_len, p0);                                                      \
        else                                                                               \
            DFN(block)(C, 3, packed, tap_off, w_off, n_taps, w, w_stride, bias, grid,      \
                       grid_len, p0);                                                      \
        return;                                                                            \
    }
    _Static_assert(DIRECT_NV == 4, "tails are 1 to 3 vectors");
    DIRECT_TAIL(1)
    DIRECT_TAIL(2)
#if DCO > 3
    DIRECT_TAIL(3)
    DIRECT_TAIL(4)
#endif
    DIRECT_TAIL(DCO)
#undef DIRECT_TAIL
}

/* `co` output channels over all grid positions [0, n_pos), into grid: whole
 * register blocks, then the last, partial one only as many vectors wide as
 * it needs (a 14 px image's 224 grid positions are 3.5 blocks of 64 floats:
 * a whole fourth block computed 12.5% of the work for nothing). Each
 * position's sum runs in the same order either way: the same bits. */
static inline __attribute__((always_inline)) DTARGET void
DFN(channels)(const int co, const DT* packed, const ptrdiff_t* tap_off, const ptrdiff_t* w_off,
              ptrdiff_t n_taps, const DT* w, ptrdiff_t w_stride, const DT* bias, DT* grid,
              ptrdiff_t grid_len, ptrdiff_t n_pos)
{
    ptrdiff_t p0 = 0;
    /* whole blocks while more than DIRECT_NV - 1 vectors are left */
    for (; n_pos - p0 > (DIRECT_NV - 1) * DVEC; p0 += DIRECT_NV * DVEC)
        DFN(block)(co, DIRECT_NV, packed, tap_off, w_off, n_taps, w, w_stride, bias, grid,
                   grid_len, p0);
    if (n_pos > p0)
        DFN(tail)(co, (int)((n_pos - p0 + DVEC - 1) / DVEC), packed, tap_off, w_off, n_taps, w,
                  w_stride, bias, grid, grid_len, p0);
}

/* The output rows of one band of n_img images, n_out output channels of one
 * group.
 *   packed: the group's input bands, laid out by pack_band (_direct.pyx),
 *           image m's at packed + m * s->img_packed;
 *   tap_off: per (c, i, j) tap, its offset into packed (see there);
 *   w_off: per tap, its weight's offset: output channel o's weight for tap t
 *          is w[o * s->w_stride + w_off[t]];
 *   bias: n_out values or NULL;
 *   grid: scratch of DIRECT_MAX_CO x s->grid_len elements;
 *   out: the first output channel of the first image, at the band's first
 *        row; image m's at out + m * s->img_out; channels, rows and columns
 *        s->out_c, s->out_row and s->out_col apart (NCHW or NHWC).
 * Output row r, column q is grid position r * row_len + q: every tap reads
 * the packed band at grid position + its offset, so runs of grid positions
 * are contiguous vector loads. Columns q >= out_w (the grid is row_len wide)
 * are computed and dropped. The grid is filled grid_rows rows at a time (it
 * stays in L1) and its valid columns copied out. A register block's weights
 * serve all n_img images before the next block's are read. */
static DTARGET void DFN(direct_rows)(const DT* packed, const ptrdiff_t* tap_off,
                                     const ptrdiff_t* w_off, const DT* w, const DT* bias,
                                     DT* grid, DT* out, ptrdiff_t n_img, ptrdiff_t n_rows,
                                     ptrdiff_t n_out, const DirectShape* s)
{
    const ptrdiff_t n_taps = s->n_taps, row_len = s->row_len, w_stride = s->w_stride;
    for (ptrdiff_t co = 0; co < n_out;) {
        ptrdiff_t left = n_out - co, done;
        /* constant channel counts, so that each call is its own unrolled,
         * all-in-registers loop nest */
        done = left >= DCO ? DCO : (DCO > 4 && left >= 4) ? 4 : (DCO > 3 && left == 3) ? 3
             : left >= 2 ? 2 : 1;
        const DT* wc = w + co * w_stride;
        const DT* bc = bias != NULL ? bias + co : NULL;
        for (ptrdiff_t m = 0; m < n_img; m++) {
            for (ptrdiff_t r0 = 0; r0 < n_rows; r0 += s->grid_rows) {
                ptrdiff_t rows = n_rows - r0 < s->grid_rows ? n_rows - r0 : s->grid_rows;
                const DT* band = packed + m * s->img_packed + r0 * row_len;
                ptrdiff_t n_pos = rows * row_len;
                if (done == DCO)
                    DFN(channels)(DCO, band, tap_off, w_off, n_taps, wc, w_stride, bc, grid,
                                  s->grid_len, n_pos);
                else if (done == 3)   /* 3 channels (RGB): one pass, not 2 + 1 */
                    DFN(channels)(3, band, tap_off, w_off, n_taps, wc, w_stride, bc, grid,
                                  s->grid_len, n_pos);
                else if (done == 4)
                    DFN(channels)(4, band, tap_off, w_off, n_taps, wc, w_stride, bc, grid,
                                  s->grid_len, n_pos);
                else if (done == 2)
                    DFN(channels)(2, band, tap_off, w_off, n_taps, wc, w_stride, bc, grid,
                                  s->grid_len, n_pos);
                else
                    DFN(channels)(1, band, tap_off, w_off, n_taps, wc, w_stride, bc, grid,
                                  s->grid_len, n_pos);
                DT* dst = out + m * s->img_out + co * s->out_c + r0 * s->out_row;
                if (s->out_col == 1) {          /* NCHW: rows of one channel */
                    for (ptrdiff_t c = 0; c < done; c++)
                        for (ptrdiff_t r = 0; r < rows; r++)
                            memcpy(dst + c * s->out_c + r * s->out_row,
                                   grid + c * s->grid_len + r * row_len,
                                   s->out_w * sizeof(DT));
                } else {                        /* NHWC: the block's channels side by side */
                    for (ptrdiff_t r = 0; r < rows; r++)
                        for (ptrdiff_t q = 0; q < s->out_w; q++) {
                            DT* d = dst + r * s->out_row + q * s->out_col;
                            const DT* src = grid + r * row_len + q;
                            for (ptrdiff_t c = 0; c < done; c++)
                                d[c * s->out_c] = src[c * s->grid_len];
                        }
                }
            }
        }
        co += done;
    }
}

/* ---- weight gradient ---- */

/* The most vectors one lane_sums call sums: a weight-gradient block's or a
 * few-channel block's sums. */
#define DLANE_MAX (DWCO * DWT > DFEW_SUMS ? DWCO * DWT : DFEW_SUMS)
#if DIRECT_VECTOR_EXT && DVEC > 1 && (defined(__clang__) || __GNUC__ >= 12)
#define DIRECT_LANE_TREE 1
#if DVEC == 16
#define DEVEN 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define DODD 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#elif DVEC == 8
#define DEVEN 0, 2, 4, 6, 8, 10, 12, 14
#define DODD 1, 3, 5, 7, 9, 11, 13, 15
#elif DVEC == 4
#define DEVEN 0, 2, 4, 6
#define DODD 1, 3, 5, 7
#else
#define DEVEN 0, 2
#define DODD 1, 3
#endif
#endif

/* sums[i] = the sum of the lanes of v[(i / per_row) * row_stride + i % per_row]
 * for i < n (a constant after inlining): rows of per_row vectors, row_stride
 * apart (an accumulator array's used part). Lanes go in a fixed tree of
 * pairs, many vectors at once: each step adds the even lanes of two vectors
 * to their odd ones, halving the lanes per sum, so that DVEC sums take
 * about 3 (DVEC - 1) vector operations (adding each vector's lanes in turn,
 * the weight gradient spent 29% of its time there on 64-channel 3x3 layers).
 * n is at most DLANE_MAX; sums must hold n rounded up to DVEC.
 * Deterministic: the same tree for every call. Used by the weight gradient's
 * blocks and the few-channel input gradient's (adding each vector's lanes
 * in turn made few_rows 1.25-1.35x slower). */
static inline __attribute__((always_inline)) DTARGET void
DFN(lane_sums)(const int n, const DFN(vec)* v, const int row_stride, const int per_row,
               DT* sums)
{
#ifdef DIRECT_LANE_TREE
#define DLANE_V(i) v[((i) / per_row) * row_stride + (i) % per_row]
    DFN(vec) t[(DLANE_MAX + 1) / 2];
    DFN(vec) zero;
    memset(&zero, 0, sizeof(zero));
    /* (unrolled: with constant indices the accumulators stay in registers) */
#pragma GCC unroll 16
    for (int i = 0; 2 * i < n; i++) {
        DFN(vec) a = DLANE_V(2 * i), b = 2 * i + 1 < n ? DLANE_V(2 * i + 1) : zero;
        t[i] = __builtin_shufflevector(a, b, DEVEN) + __builtin_shufflevector(a, b, DODD);
    }
#undef DLANE_V
    int m = (n + 1) / 2;
#pragma GCC unroll 4
    for (int width = DVEC / 2; width > 1; width /= 2) {
#pragma GCC unroll 8
        for (int i = 0; 2 * i < m; i++) {
            DFN(vec) b = 2 * i + 1 < m ? t[2 * i + 1] : zero;
            t[i] = __builtin_shufflevector(t[2 * i], b, DEVEN)
                   + __builtin_shufflevector(t[2 * i], b, DODD);
        }
        m = (m + 1) / 2;
    }
    memcpy(sums, t, m * sizeof(DFN(vec)));
#else
    for (int i = 0; i < n; i++) {
        DT lanes[DVEC], sum = 0;
        memcpy(lanes, &v[(i / per_row) * row_stride + i % per_row], sizeof(lanes));
        for (int l = 0; l < DVEC; l++)
            sum += lanes[l];
        sums[i] = sum;
    }
#endif
}
#undef DIRECT_LANE_TREE
#undef DEVEN
#undef DODD

/* co output channels (constants after inlining) x nt taps of the weight
 * gradient: dw[c][k] += sum over grid positions p < n_vec * DVEC of
 * g[c][p] * packed[p + tap_off[k]]. Sums in registers, lane by lane, then
 * each vector's lanes added up by lane_sums' fixed tree: deterministic. */
static inline __attribute__((always_inline)) DTARGET void
DFN(wblock)(const int co, const int nt, const DT* packed, const ptrdiff_t* tap_off,
            const DT* g, ptrdiff_t g_len, ptrdiff_t n_vec, DT* dw, ptrdiff_t dw_stride)
{
    DFN(vec) acc[DWCO][DWT];
    for (int c = 0; c < co; c++)
        for (int k = 0; k < nt; k++)
            memset(&acc[c][k], 0, sizeof(acc[c][k]));
    for (ptrdiff_t v = 0; v < n_vec; v++) {
        const ptrdiff_t p = v * DVEC;
        DFN(vec) gv[DWCO];
        for (int c = 0; c < co; c++)
            gv[c] = *(const DFN(uvec)*)(g + c * g_len + p);
        for (int k = 0; k < nt; k++) {
            DFN(vec) xv = *(const DFN(uvec)*)(packed + p + tap_off[k]);
            for (int c = 0; c < co; c++)
                acc[c][k] += gv[c] * xv;
        }
    }
    DT sums[DLANE_MAX + DVEC];
    DFN(lane_sums)(co * nt, &acc[0][0], DWT, nt, sums);
    for (int c = 0; c < co; c++)
        for (int k = 0; k < nt; k++)
            dw[c * dw_stride + k] += sums[c * nt + k];
}

/* wblock() over all n_taps taps (a chunk's channels x kh x kw) of co output
 * channels: blocks of DWT taps, then the remaining taps in one block (a
 * constant size for each case), not one at a time: a block of one tap holds
 * too few independent sums (DWCO) to keep both FMA units busy through their
 * latency. */
static inline __attribute__((always_inline)) DTARGET void
DFN(wtaps)(const int co, const DT* packed, const ptrdiff_t* tap_off, ptrdiff_t n_taps,
           const DT* g, ptrdiff_t g_len, ptrdiff_t n_vec, DT* dw, ptrdiff_t dw_stride)
{
    ptrdiff_t t = 0;
    for (; t + DWT <= n_taps; t += DWT)
        DFN(wblock)(co, DWT, packed, tap_off + t, g, g_len, n_vec, dw + t, dw_stride);
    switch (n_taps - t) {   /* 0 to DWT - 1 (DWT is 5 or 6) */
    case 1: DFN(wblock)(co, 1, packed, tap_off + t, g, g_len, n_vec, dw + t, dw_stride); break;
    case 2: DFN(wblock)(co, 2, packed, tap_off + t, g, g_len, n_vec, dw + t, dw_stride); break;
    case 3: DFN(wblock)(co, 3, packed, tap_off + t, g, g_len, n_vec, dw + t, dw_stride); break;
    case 4: DFN(wblock)(co, 4, packed, tap_off + t, g, g_len, n_vec, dw + t, dw_stride); break;
    case 5: DFN(wblock)(co, 5, packed, tap_off + t, g, g_len, n_vec, dw + t, dw_stride); break;
    default: break;
    }
}

/* The weight gradient's share of one band: dw[o][t] += sum over grid
 * positions p < n_pos of g[o][p] * packed[p + tap_off[t]], for o < n_out,
 * t < n_taps. g: the band of grad_output in grid layout (g_len per output
 * channel, zero in the dropped columns and past n_pos up to a whole vector);
 * packed: the input band as for the forward kernel. Positions go in chunks
 * that keep a register block's rows of g and packed in L1. */
static DTARGET void DFN(weight_rows)(const DT* packed, const ptrdiff_t* tap_off,
                                     ptrdiff_t n_taps, const DT* g, ptrdiff_t g_len,
                                     ptrdiff_t n_out, ptrdiff_t n_pos, DT* dw,
                                     ptrdiff_t dw_stride)
{
    for (ptrdiff_t p0 = 0; p0 < n_pos; p0 += DIRECT_WCHUNK) {
        ptrdiff_t n_vec = ((n_pos - p0 < DIRECT_WCHUNK ? n_pos - p0 : DIRECT_WCHUNK)
                           + DVEC - 1) / DVEC;
        const DT* pk = packed + p0;
        for (ptrdiff_t o = 0; o < n_out;) {
            const DT* go = g + o * g_len + p0;
            DT* dwo = dw + o * dw_stride;
            int co = n_out - o >= DWCO ? DWCO : 1;
            if (co == DWCO)
                DFN(wtaps)(DWCO, pk, tap_off, n_taps, go, g_len, n_vec, dwo, dw_stride);
            else
                DFN(wtaps)(1, pk, tap_off, n_taps, go, g_len, n_vec, dwo, dw_stride);
            o += co;
        }
    }
}

/* Whether n values are all finite (a NaN or inf turns the sum of x - x into
 * NaN): the weight gradient multiplies dropped lanes' inputs by zero, which
 * is only nothing when they are finite. Four vectors of sums: independent
 * chains of adds (a single scalar chain waits out each add's latency: with
 * it the weight gradient took 1.5-1.8x as long on ResNeXt's grouped and
 * MobileNet's depthwise layers, 1.05x on 64-channel 3x3 ones). */
static DTARGET int DFN(all_finite)(const DT* x, ptrdiff_t n)
{
    DFN(vec) acc[4];
    DT lanes[4 * DVEC], sum = 0;
    ptrdiff_t i = 0;
    memset(acc, 0, sizeof(acc));
    for (; i + 4 * DVEC <= n; i += 4 * DVEC)
        for (int k = 0; k < 4; k++) {
            DFN(vec) v = *(const DFN(uvec)*)(x + i + k * DVEC);
            acc[k] += v - v;
        }
    for (; i < n; i++)
        sum += x[i] - x[i];
    memcpy(lanes, acc, sizeof(lanes));
    for (int l = 0; l < 4 * DVEC; l++)
        sum += lanes[l];
    return sum == 0;
}

/* ---- thin GEMM: the input gradient's GEMM where a tile has few positions ---- */

/* Where position j of a tile lies in c: at c + c_at[j] where the caller gave
 * a table of offsets (thin_gemm's c_at), else c + j * ldc. */
static inline __attribute__((always_inline)) DT*
DFN(thin_at)(DT* c, ptrdiff_t ldc, const ptrdiff_t* c_at, ptrdiff_t j)
{
    return c_at != NULL ? c + c_at[j] : c + j * ldc;
}

/* nr (<= DTNR) positions x nv (1 or 2) vectors of rows, over kc terms:
 * c[j] = (accumulate ? c[j] : 0) + sum over o < kc of w[o * ldw + r] *
 * gp[o * nr + j], position j's row of c at thin_at(c, ldc, c_at, j). w is
 * read in place, a row's vectors per term; gp is the packed tile of
 * positions (thin_gemm). */
static inline __attribute__((always_inline)) DTARGET void
DFN(thin_block)(const int nr, const int nv, const int accumulate, const DT* w, ptrdiff_t ldw,
                const DT* gp, ptrdiff_t kc, DT* c, ptrdiff_t ldc, const ptrdiff_t* c_at)
{
    DFN(vec) acc[DTNR][2];
    for (int j = 0; j < nr; j++)
        for (int v = 0; v < nv; v++) {
            if (accumulate)
                acc[j][v] = *(const DFN(uvec)*)(DFN(thin_at)(c, ldc, c_at, j) + v * DVEC);
            else
                memset(&acc[j][v], 0, sizeof(acc[j][v]));
        }
    for (ptrdiff_t o = 0; o < kc; o++) {
        DFN(vec) wv[2];
        for (int v = 0; v < nv; v++)
            wv[v] = *(const DFN(uvec)*)(w + o * ldw + v * DVEC);
        const DT* g = gp + o * nr;
        for (int j = 0; j < nr; j++) {
            const DT b = g[j];
            for (int v = 0; v < nv; v++)
                acc[j][v] += wv[v] * b;
        }
    }
    for (int j = 0; j < nr; j++)
        for (int v = 0; v < nv; v++)
            *(DFN(uvec)*)(DFN(thin_at)(c, ldc, c_at, j) + v * DVEC) = acc[j][v];
}

/* thin_block for the last, narrower tile of positions (1 to DTNR - 1): out
 * of line, it runs once per row block. */
static __attribute__((noinline)) DTARGET void
DFN(thin_tail)(const int nr, const int nv, const int accumulate, const DT* w, ptrdiff_t ldw,
               const DT* gp, ptrdiff_t kc, DT* c, ptrdiff_t ldc, const ptrdiff_t* c_at)
{
#define THIN_TAIL(N)                                                                       \
    case N:                                                                                \
        if (nv == 2)                                                                       \
            DFN(thin_block)(N, 2, accumulate, w, ldw, gp, kc, c, ldc, c_at);              \
        else                                                                               \
            DFN(thin_block)(N, 1, accumulate, w, ldw, gp, kc, c, ldc, c_at);              \
        break;
    _Static_assert(DTNR == 6 || DTNR == 12, "tails are 1 to DTNR - 1 positions");
    switch (nr) {
    THIN_TAIL(1) THIN_TAIL(2) THIN_TAIL(3) THIN_TAIL(4) THIN_TAIL(5)
#if DTNR == 12
    THIN_TAIL(6) THIN_TAIL(7) THIN_TAIL(8) THIN_TAIL(9) THIN_TAIL(10) THIN_TAIL(11)
#endif
    default: break;
    }
#undef THIN_TAIL
}

/* nv (1 or 2) vectors of rows over all n_pos positions: whole tiles of
 * DTNR, then the narrower last one. */
static inline __attribute__((always_inline)) DTARGET void
DFN(thin_rows)(const int nv, const int accumulate, const DT* w, ptrdiff_t ldw, const DT* gp,
               ptrdiff_t kc, ptrdiff_t n_pos, DT* c, ptrdiff_t ldc, const ptrdiff_t* c_at)
{
    ptrdiff_t p0 = 0;
    for (; p0 + DTNR <= n_pos; p0 += DTNR)
        DFN(thin_block)(DTNR, nv, accumulate, w, ldw, gp + p0 * kc, kc,
                        c_at ? c : c + p0 * ldc, ldc, c_at ? c_at + p0 : NULL);
    if (p0 < n_pos)
        DFN(thin_tail)((int)(n_pos - p0), nv, accumulate, w, ldw, gp + p0 * kc, kc,
                       c_at ? c : c + p0 * ldc, ldc, c_at ? c_at + p0 : NULL);
}

/* Prefetch the lines that hold bytes bytes from p (rows need not start on
 * a line), for writing where write. */
static inline __attribute__((always_inline)) void
DFN(prefetch_run)(const char* p, ptrdiff_t bytes, const int write)
{
    const char* end = p + bytes;
    for (p -= (uintptr_t)p % 64; p < end; p += 64) {
        if (write)   /* (__builtin_prefetch takes constants only) */
            __builtin_prefetch(p, 1, 3);
        else
            __builtin_prefetch(p, 0, 3);
    }
}

/* thin_gemm's last n_rest (< DVEC) rows, as one vector: their weights
 * copied into a zero-padded slice, each tile's sums through a vector-wide
 * scratch tile (reading or writing past the rows could leave the arrays).
 * Scalar loops took a third longer than the whole rest of the GEMM where
 * the rows were a few past a multiple of 2 vectors (392 = 12 x 32 + 8). */
static __attribute__((noinline)) DTARGET void
DFN(thin_rest)(ptrdiff_t n_rest, ptrdiff_t n_pos, ptrdiff_t kc, int accumulate, const DT* w,
               ptrdiff_t ldw, const DT* gp, DT* c, ptrdiff_t ldc, const ptrdiff_t* c_at)
{
    DT w_pad[THIN_KC * DVEC], c_tile[DTNR * DVEC];
    for (ptrdiff_t o = 0; o < kc; o++)
        for (ptrdiff_t i = 0; i < DVEC; i++)
            w_pad[o * DVEC + i] = i < n_rest ? w[o * ldw + i] : (DT)0;
    for (ptrdiff_t p0 = 0; p0 < n_pos; p0 += DTNR) {
        const int nr = (int)(n_pos - p0 < DTNR ? n_pos - p0 : DTNR);
        for (int j = 0; j < nr; j++) {
            const DT* cj = DFN(thin_at)(c, ldc, c_at, p0 + j);
            for (ptrdiff_t i = 0; i < DVEC; i++)
                c_tile[j * DVEC + i] = accumulate && i < n_rest ? cj[i] : (DT)0;
        }
        if (nr == DTNR)
            DFN(thin_block)(DTNR, 1, 1, w_pad, DVEC, gp + p0 * kc, kc, c_tile, DVEC, NULL);
        else
            DFN(thin_tail)(nr, 1, 1, w_pad, DVEC, gp + p0 * kc, kc, c_tile, DVEC, NULL);
        for (int j = 0; j < nr; j++) {
            DT* cj = DFN(thin_at)(c, ldc, c_at, p0 + j);
            for (ptrdiff_t i = 0; i < n_rest; i++)
                cj[i] = c_tile[j * DVEC + i];
        }
    }
}

/* wp[o * width + i] = w[w_at[o] + i] for o < kc, i < width: a block of
 * rows' slice of kc gathered rows, contiguous (thin_gemm's w_at); whole
 * vectors by vector moves, not a memcpy call per row. */
static inline __attribute__((always_inline)) DTARGET void
DFN(thin_gather)(ptrdiff_t width, ptrdiff_t kc, const DT* w, const ptrdiff_t* w_at, DT* wp)
{
    if (width == 2 * DVEC) {
        for (ptrdiff_t o = 0; o < kc; o++) {
            const DT* src = w + w_at[o];
            *(DFN(uvec)*)(wp + o * 2 * DVEC) = *(const DFN(uvec)*)src;
            *(DFN(uvec)*)(wp + o * 2 * DVEC + DVEC) = *(const DFN(uvec)*)(src + DVEC);
        }
    } else if (width == DVEC) {
        for (ptrdiff_t o = 0; o < kc; o++)
            *(DFN(uvec)*)(wp + o * DVEC) = *(const DFN(uvec)*)(w + w_at[o]);
    } else {
        for (ptrdiff_t o = 0; o < kc; o++)
            memcpy(wp + o * width, w + w_at[o], width * sizeof(DT));
    }
}

/* wp[o * width + i] = w[o * ldw + i * w_row] for o < kc, i < width: a block
 * of rows' slice of a w stored the other way round (thin_gemm's w_row),
 * each of its rows read along its terms. */
static inline __attribute__((always_inline)) DTARGET void
DFN(thin_transpose)(ptrdiff_t width, ptrdiff_t kc, const DT* w, ptrdiff_t ldw, ptrdiff_t w_row,
                    DT* wp)
{
    for (ptrdiff_t i = 0; i < width; i++) {
        const DT* row = w + i * w_row;
        for (ptrdiff_t o = 0; o < kc; o++)
            wp[o * width + i] = row[o * ldw];
    }
}

/* c[p * ldc + r] = (add ? c[p * ldc + r] : 0) + sum over o < n_terms of
 * w[o * ldw + r * w_row] * g[o * g_term + p * g_pos], for r < n_rows, p < n_pos: a GEMM
 * whose operand w is read in place, its rows being the vectors, and only g,
 * the small operand, is packed: THIN_KC terms at a time, into gp (THIN_KC x
 * n_pos elements), tiles of DTNR positions whose sums stay in registers while
 * a block of rows' slice of w (THIN_KC rows of 2 vectors) stays in L1. For
 * GEMMs that BLAS would pack for little reuse (the input gradient's W^T
 * grad_output on a 7 px image uses each packed weight 49 times: OpenBLAS's
 * sgemm ran at 60% of its peak there) or whose large operand it packs in
 * its slow orientation; _conv.pyx and fastim2col._plan (use_thin_*) say
 * where. Each sum runs over o in order, whatever the blocking: the same bits
 * for any split of rows or positions.
 * g_at, c_at (either may be NULL): tables of n_pos offsets that replace
 * p * g_pos and p * ldc, for positions that lie in no regular pattern (the
 * NHWC input gradient's taps: a gather of grad_output, a scatter into the
 * result, _conv.pyx grad_input_taps).
 * w_at, gt_at (both NULL or both given): tables of n_terms offsets that
 * replace o * ldw and o * g_term, for terms gathered from anywhere (the NHWC
 * weight gradient's taps: the input rows a tap reaches and the grad_output
 * rows they meet, _conv.pyx grad_weight_taps). Gathered rows would land on
 * few of L1's sets (an NHWC row is C elements after the last), so each block
 * of rows' slice of them is copied into wp, a contiguous THIN_KC x 2 vectors,
 * once per pass and read there by every tile of positions.
 * w_row (1 where w_at is given): the distance between w's rows r; other
 * than 1, w is stored the other way round (its terms contiguous, ldw 1: the
 * NCHW weight gradient's unrolled rows, _conv.pyx grad_weight_channels) and
 * each block of rows' slice is copied into wp transposed. */
static DTARGET void DFN(thin_gemm)(ptrdiff_t n_rows, ptrdiff_t n_pos, ptrdiff_t n_terms,
                                   const DT* w, ptrdiff_t ldw, ptrdiff_t w_row, const DT* g,
                                   ptrdiff_t g_term,
                                   ptrdiff_t g_pos, const ptrdiff_t* g_at, DT* c,
                                   ptrdiff_t ldc, const ptrdiff_t* c_at,
                                   const ptrdiff_t* w_at, const ptrdiff_t* gt_at, DT* gp,
                                   int add)
{
    DT wp[THIN_KC * 2 * DVEC] __attribute__((aligned(64)));
    for (ptrdiff_t o0 = 0; o0 < n_terms; o0 += THIN_KC) {
        const ptrdiff_t kc = n_terms - o0 < THIN_KC ? n_terms - o0 : THIN_KC;
        const int fetch = w_at == NULL && w_row == 1
                          && n_rows * kc * (ptrdiff_t)sizeof(DT) > THIN_PREFETCH_BYTES;
        const int fetch_c = c_at == NULL
                            && n_rows * n_pos * (ptrdiff_t)sizeof(DT) > THIN_PREFETCH_C_BYTES;
        const int accumulate = add || o0 > 0;
        const DT* wk = w_at != NULL ? w : w + o0 * ldw;   /* (w_at: rows from w) */
        /* tile p0 (nr positions) at gp + p0 * kc, element (o, j) at o * nr + j */
        for (ptrdiff_t p0 = 0; p0 < n_pos; p0 += DTNR) {
            const ptrdiff_t nr = n_pos - p0 < DTNR ? n_pos - p0 : DTNR;
            ptrdiff_t at_j[DTNR];
            for (ptrdiff_t j = 0; j < nr; j++)
                at_j[j] = g_at != NULL ? g_at[p0 + j] : (p0 + j) * g_pos;
            DT* dst = gp + p0 * kc;
            for (ptrdiff_t o = 0; o < kc; o++) {
                const DT* go = g + (gt_at != NULL ? gt_at[o0 + o] : (o0 + o) * g_term);
                for (ptrdiff_t j = 0; j < nr; j++)
                    dst[o * nr + j] = go[at_j[j]];
            }
        }
        ptrdiff_t r = 0;
        for (; r < n_rows; ) {
            const ptrdiff_t width = n_rows - r >= 2 * DVEC ? 2 * DVEC
                                    : n_rows - r >= DVEC ? DVEC : n_rows - r;
            const DT* wr = wk + r;   /* (w_row 1) */
            ptrdiff_t ldr = ldw;
            if (r + width < n_rows) {
                /* The next slice of w (read in place: kc rows ldw apart, NCHW
                 * grad_output's or the input's rows, positions contiguous;
                 * the 7 px input gradient's weights) and of c (n_pos rows ldc
                 * apart) is fetched while this one computes (see
                 * THIN_PREFETCH_BYTES, THIN_PREFETCH_C_BYTES). */
                const ptrdiff_t bytes = width * (ptrdiff_t)sizeof(DT);
                if (fetch)
                    for (ptrdiff_t o = 0; o < kc; o++)
                        DFN(prefetch_run)((const char*)(wr + width + o * ldw), bytes, 0);
                if (fetch_c)
                    for (ptrdiff_t j = 0; j < n_pos; j++)
                        DFN(prefetch_run)((const char*)(c + r + width + j * ldc), bytes, 1);
            }
            if (w_at != NULL) {   /* this slice of the gathered rows, copied */
                DFN(thin_gather)(width, kc, w + r, w_at + o0, wp);
                wr = wp;
                ldr = width;
            } else if (w_row != 1) {   /* this slice of w's rows, transposed */
                DFN(thin_transpose)(width, kc, wk + r * w_row, ldw, w_row, wp);
                wr = wp;
                ldr = width;
            }
            if (width == 2 * DVEC)
                DFN(thin_rows)(2, accumulate, wr, ldr, gp, kc, n_pos, c + r, ldc, c_at);
            else if (width == DVEC)
                DFN(thin_rows)(1, accumulate, wr, ldr, gp, kc, n_pos, c + r, ldc, c_at);
            else   /* the last rows, fewer than a vector */
                DFN(thin_rest)(width, n_pos, kc, accumulate, wr, ldr, gp, c + r, ldc, c_at);
            r += width;
        }
    }
}

/* The last og % DVEC output channels' part of few_block's sums, added to
 * gx one element at a time (slow: the planner sends only multiples of the
 * widest vector to few_rows). */
static inline __attribute__((always_inline)) DTUNED void
DFN(few_rest)(const int nb, const int cg, const DT* go, ptrdiff_t go_at, ptrdiff_t ld_go,
              const ptrdiff_t* g_off, const ptrdiff_t* w_off, ptrdiff_t n_taps,
              const DT* wt, ptrdiff_t og, ptrdiff_t og_vec, DT* gx, ptrdiff_t x_step)
{
    for (int k = 0; k < nb; k++)
        for (int c = 0; c < cg; c++) {
            DT sum = 0;
            for (ptrdiff_t t = 0; t < n_taps; t++) {
                const DT* g = go + (go_at + g_off[t]) + k * ld_go;
                const DT* w = wt + w_off[t] + c * og;
                for (ptrdiff_t o = og_vec; o < og; o++)
                    sum += g[o] * w[o];
            }
            gx[k * x_step + c] += sum;
        }
}

/* nb input positions (each stride_w columns after the last) x cg channels
 * of the input gradient, each a dot product over the n_taps taps that reach
 * it and the og output channels: gx[k * x_step + c] = bias[c] + sum over t
 * of sum over o of go[go_at + g_off[t] + k * ld_go + o] * wt[w_off[t] + c * og
 * + o]. The sums run over o in vectors (lane l sums o = l, l + DVEC, ...),
 * added across lanes at the end (lane_sums), then few_rest's. nb and cg are constants
 * after inlining: nb x cg vectors of sums stay in registers; each weight
 * vector serves nb positions, each grad_output vector cg channels. One
 * position (nb 1) sums even and odd vectors apart: twice the chains of FMAs
 * in flight. */
static inline __attribute__((always_inline)) DTUNED void
DFN(few_block)(const int nb, const int cg, const DT* go, ptrdiff_t go_at, ptrdiff_t ld_go,
               const ptrdiff_t* g_off, const ptrdiff_t* w_off, ptrdiff_t n_taps,
               const DT* wt, ptrdiff_t og, const DT* bias, DT* gx, ptrdiff_t x_step)
{
    const ptrdiff_t og_vec = og - og % DVEC;
    DFN(vec) acc[FEW_MAX_BLOCK][FEW_MAX_CHANNELS], odd[FEW_MAX_CHANNELS];
    for (int k = 0; k < nb; k++)
        for (int c = 0; c < cg; c++)
            memset(&acc[k][c], 0, sizeof(acc[k][c]));
    for (int c = 0; c < cg; c++)
        memset(&odd[c], 0, sizeof(odd[c]));
    for (ptrdiff_t t = 0; t < n_taps; t++) {
        const DT* g = go + (go_at + g_off[t]);
        const DT* w = wt + w_off[t];
        ptrdiff_t o = 0;
        if (nb == 1)
            for (; o + 2 * DVEC <= og_vec; o += 2 * DVEC) {
                const DFN(vec) g0 = *(const DFN(uvec)*)(g + o);
                const DFN(vec) g1 = *(const DFN(uvec)*)(g + o + DVEC);
                for (int c = 0; c < cg; c++) {
                    acc[0][c] += g0 * *(const DFN(uvec)*)(w + c * og + o);
                    odd[c] += g1 * *(const DFN(uvec)*)(w + c * og + o + DVEC);
                }
            }
        for (; o < og_vec; o += DVEC) {
            DFN(vec) wv[FEW_MAX_CHANNELS];
            for (int c = 0; c < cg; c++)
                wv[c] = *(const DFN(uvec)*)(w + c * og + o);
            for (int k = 0; k < nb; k++) {
                const DFN(vec) gv = *(const DFN(uvec)*)(g + k * ld_go + o);
                for (int c = 0; c < cg; c++)
                    acc[k][c] += gv * wv[c];
            }
        }
    }
    if (nb == 1)
        for (int c = 0; c < cg; c++)
            acc[0][c] += odd[c];
    DT sums[DLANE_MAX + DVEC];
    DFN(lane_sums)(nb * cg, &acc[0][0], FEW_MAX_CHANNELS, cg, sums);
    for (int k = 0; k < nb; k++)
        for (int c = 0; c < cg; c++)
            gx[k * x_step + c] = sums[k * cg + c] + (bias != NULL ? bias[c] : (DT)0);
    if (og_vec < og)
        DFN(few_rest)(nb, cg, go, go_at, ld_go, g_off, w_off, n_taps, wt, og, og_vec, gx,
                      x_step);
}

/* Positions per block of few_block for cg channels: as many as DFEW_SUMS
 * vectors of sums allow, at most FEW_MAX_BLOCK. */
#define DFEW_BLOCK(cg) (DFEW_SUMS / (cg) < FEW_MAX_BLOCK ? DFEW_SUMS / (cg) : FEW_MAX_BLOCK)

/* few_block for cg (1 to FEW_MAX_CHANNELS) channels and size 0 (a block:
 * DFEW_BLOCK(cg) positions), 1 (half a block) or 2 (one position), each
 * combination a constant instance (size must be a literal). */
static inline __attribute__((always_inline)) DTUNED void
DFN(few_blocks)(const int size, ptrdiff_t cg, const DT* go, ptrdiff_t go_at, ptrdiff_t ld_go,
                const ptrdiff_t* g_off, const ptrdiff_t* w_off, ptrdiff_t n_taps,
                const DT* wt, ptrdiff_t og, const DT* bias, DT* gx, ptrdiff_t x_step)
{
#define DFEW_CASE(CG)                                                                      \
    DFN(few_block)(size == 0 ? DFEW_BLOCK(CG) : size == 1 ? DFEW_BLOCK(CG) / 2 : 1, CG, go, \
                   go_at, ld_go, g_off, w_off, n_taps, wt, og, bias, gx, x_step)
    switch (cg) {
    case 1: DFEW_CASE(1); break;
    case 2: DFEW_CASE(2); break;
    case 3: DFEW_CASE(3); break;
    default: DFEW_CASE(4); break;
    }
#undef DFEW_CASE
}

/* Rows [y0, y1) of one image's (and group's) input gradient with few
 * channels (s->cg <= FEW_MAX_CHANNELS), NHWC: each element a dot product of
 * the grad_output pixels whose windows cover it with the weights of the
 * taps that reach it, nothing unrolled or folded, each element written once
 * (units of rows never race). go: the image's grad_output from row oy0
 * on (the rows that reach [y0, y1)) at the group's first channel, pixels
 * s->ld_go apart; wt: the group's weights as (tap,
 * channel, output channel), contiguous; gx: the image's input gradient at
 * the group's first channel, pixels s->ld_gx apart; bias (cg or NULL) seeds
 * it. Columns x of one residue q mod stride_w take the same taps j, and
 * consecutive ones (x, x + stride_w, ...) meet consecutive grad_output
 * columns: blocks of DFEW_BLOCK(cg) of them (or half that) where every such
 * tap stays inside grad_output, single columns at the edges. tab: FEW_TABLES x kernel_h x
 * kernel_w scratch offsets. */
static DTUNED void DFN(few_rows)(const DT* go, ptrdiff_t oy0, const DT* wt, const DT* bias,
                                  DT* gx, ptrdiff_t y0, ptrdiff_t y1, const FewShape* s,
                                  ptrdiff_t* tab)
{
    const ptrdiff_t taps = s->kernel_h * s->kernel_w;
    ptrdiff_t* g_off = tab;              /* the row's taps at this residue */
    ptrdiff_t* w_off = tab + taps;
    ptrdiff_t* shifts = tab + 2 * taps;
    ptrdiff_t* g_one = tab + 3 * taps;   /* those reaching one edge column */
    ptrdiff_t* w_one = tab + 4 * taps;
    const ptrdiff_t x_step = s->stride_w * s->ld_gx;
    for (ptrdiff_t y = y0; y < y1; y++) {
        for (ptrdiff_t q = 0; q < s->stride_w && q < s->in_w; q++) {
            /* columns x = q + m * stride_w, m < n_m; tap (i, j) reaches x
             * from grad_output (oy, m + shift) for m in [lo, hi) */
            const ptrdiff_t n_m = (s->in_w - q + s->stride_w - 1) / s->stride_w;
            ptrdiff_t lo = 0, hi = n_m, n_taps = 0;
            for (ptrdiff_t i = 0; i < s->kernel_h; i++) {
                const ptrdiff_t ry = y + s->pad_h - i * s->dilation_h;
                if (ry < 0 || ry % s->stride_h || ry / s->stride_h >= s->out_h)
                    continue;
                for (ptrdiff_t j = 0; j < s->kernel_w; j++) {
                    const ptrdiff_t rx = q + s->pad_w - j * s->dilation_w;
                    if (rx % s->stride_w)
                        continue;
                    const ptrdiff_t shift = rx / s->stride_w;   /* exact */
                    lo = -shift > lo ? -shift : lo;
                    hi = s->out_w - shift < hi ? s->out_w - shift : hi;
                    g_off[n_taps] = ((ry / s->stride_h - oy0) * s->out_w + shift) * s->ld_go;
                    shifts[n_taps] = shift;
                    w_off[n_taps] = (i * s->kernel_w + j) * s->cg * s->og;
                    n_taps++;
                }
            }
            DT* row = gx + (y * s->in_w + q) * s->ld_gx;
            const ptrdiff_t block = DFEW_BLOCK(s->cg);
            for (ptrdiff_t m = 0; m < n_m; ) {
                if (m >= lo && m + block / 2 <= hi) {   /* (a block, or half of one) */
                    if (m + block <= hi) {
                        DFN(few_blocks)(0, s->cg, go, m * s->ld_go, s->ld_go, g_off, w_off,
                                        n_taps, wt, s->og, bias, row + m * x_step, x_step);
                        m += block;
                    } else {
                        DFN(few_blocks)(1, s->cg, go, m * s->ld_go, s->ld_go, g_off, w_off,
                                        n_taps, wt, s->og, bias, row + m * x_step, x_step);
                        m += block / 2;
                    }
                    continue;
                }
                ptrdiff_t n_one = 0;   /* column m alone: its taps inside grad_output */
                for (ptrdiff_t t = 0; t < n_taps; t++)
                    if (m + shifts[t] >= 0 && m + shifts[t] < s->out_w) {
                        g_one[n_one] = g_off[t];
                        w_one[n_one] = w_off[t];
                        n_one++;
                    }
                DFN(few_blocks)(2, s->cg, go, m * s->ld_go, s->ld_go, g_one, w_one, n_one, wt,
                                s->og, bias, row + m * x_step, x_step);
                m++;
            }
        }
    }
}

#undef DLANE_MAX
