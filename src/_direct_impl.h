/* One instance of the direct grouped-convolution kernel (see _direct_kernels.h).
 *
 * Included several times with, defined by the includer:
 *   DT      the element type (float or double)
 *   DVEC    elements per vector (1 when the compiler has no vector extensions)
 *   DFN(x)  the name of function x in this instance
 *   DTARGET function attributes (an ISA target) or nothing
 */

#if DIRECT_VECTOR_EXT
typedef DT DFN(vec) __attribute__((vector_size(DVEC * sizeof(DT))));
/* the same vector type, loadable from / storable to any element address */
typedef DT DFN(uvec) __attribute__((vector_size(DVEC * sizeof(DT)), aligned(sizeof(DT)), may_alias));
#else
typedef DT DFN(vec);
typedef DT DFN(uvec);
#endif

/* Store the first n (<= DVEC) elements of a vector. */
static inline DTARGET void DFN(store)(DT* dst, DFN(vec) v, ptrdiff_t n)
{
    if (n >= DVEC) {
        *(DFN(uvec)*)dst = v;
    } else {
        DT lanes[DVEC];
        memcpy(lanes, &v, sizeof(v));
        for (ptrdiff_t k = 0; k < n; k++) dst[k] = lanes[k];
    }
}

/* Output rows [0, n_rows) of the og output channels of one group.
 *   packed: the group's input band, laid out by direct_pack (zero padded,
 *           columns split into stride_w phases so every tap reads a
 *           contiguous run);
 *   tap_off: per (c, i, j) tap, its offset into packed from the start of
 *           the row the output row reads first;
 *   w: (og, n_taps) weights; bias: og values or NULL;
 *   out: output channel 0 of the group, at the band's first row.
 * Each output vector is accumulated in a register over all taps in a fixed
 * order (bias first, then taps in (c, i, j) order): deterministic, and the
 * same whatever the band or thread split. */
static DTARGET void DFN(direct_rows)(const DT* packed, const ptrdiff_t* tap_off,
                                     const DT* w, const DT* bias, DT* out,
                                     ptrdiff_t n_rows, const DirectShape* s)
{
    const ptrdiff_t n_taps = s->n_taps, out_w = s->out_w;
    DFN(vec) zero;
    memset(&zero, 0, sizeof(zero));
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        const DT* base = packed + r * s->stride_h * s->row_len;
        DT* out_row = out + r * out_w;
        ptrdiff_t co = 0;
        /* 4 output channels x 2 vectors: each loaded input vector feeds 4
         * FMAs, and 8 independent sums hide the FMA latency. */
        for (; co + 4 <= s->og; co += 4) {
            const DT* w0 = w + co * n_taps;
            const DT* w1 = w0 + n_taps;
            const DT* w2 = w1 + n_taps;
            const DT* w3 = w2 + n_taps;
            DT* dst_row = out_row + co * s->out_plane;
            ptrdiff_t ow = 0;
            for (; ow + DVEC < out_w; ow += 2 * DVEC) {
                DFN(vec) a0 = zero, a1 = zero, a2 = zero, a3 = zero;
                if (bias != NULL) {
                    a0 += bias[co]; a1 += bias[co + 1]; a2 += bias[co + 2]; a3 += bias[co + 3];
                }
                DFN(vec) b0 = a0, b1 = a1, b2 = a2, b3 = a3;
                const DT* src = base + ow;
                for (ptrdiff_t t = 0; t < n_taps; t++) {
                    const DT* p = src + tap_off[t];
                    DFN(vec) u = *(const DFN(uvec)*)p;
                    DFN(vec) v = *(const DFN(uvec)*)(p + DVEC);
                    a0 += u * w0[t]; b0 += v * w0[t];
                    a1 += u * w1[t]; b1 += v * w1[t];
                    a2 += u * w2[t]; b2 += v * w2[t];
                    a3 += u * w3[t]; b3 += v * w3[t];
                }
                ptrdiff_t n = out_w - ow - DVEC;   /* > 0 */
                DT* dst = dst_row + ow;
                *(DFN(uvec)*)dst = a0;
                *(DFN(uvec)*)(dst + s->out_plane) = a1;
                *(DFN(uvec)*)(dst + 2 * s->out_plane) = a2;
                *(DFN(uvec)*)(dst + 3 * s->out_plane) = a3;
                DFN(store)(dst + DVEC, b0, n);
                DFN(store)(dst + DVEC + s->out_plane, b1, n);
                DFN(store)(dst + DVEC + 2 * s->out_plane, b2, n);
                DFN(store)(dst + DVEC + 3 * s->out_plane, b3, n);
            }
            for (; ow < out_w; ow += DVEC) {   /* at most one vector left */
                DFN(vec) a0 = zero, a1 = zero, a2 = zero, a3 = zero;
                if (bias != NULL) {
                    a0 += bias[co]; a1 += bias[co + 1]; a2 += bias[co + 2]; a3 += bias[co + 3];
                }
                const DT* src = base + ow;
                for (ptrdiff_t t = 0; t < n_taps; t++) {
                    DFN(vec) v = *(const DFN(uvec)*)(src + tap_off[t]);
                    a0 += v * w0[t];
                    a1 += v * w1[t];
                    a2 += v * w2[t];
                    a3 += v * w3[t];
                }
                ptrdiff_t n = out_w - ow;
                DT* dst = dst_row + ow;
                DFN(store)(dst, a0, n);
                DFN(store)(dst + s->out_plane, a1, n);
                DFN(store)(dst + 2 * s->out_plane, a2, n);
                DFN(store)(dst + 3 * s->out_plane, a3, n);
            }
        }
        /* the rest (all of them when depthwise): 1 channel x 4 vectors */
        for (; co < s->og; co++) {
            const DT* w0 = w + co * n_taps;
            DT* dst_row = out_row + co * s->out_plane;
            for (ptrdiff_t ow = 0; ow < out_w; ow += 4 * DVEC) {
                DFN(vec) a0 = zero, a1 = zero, a2 = zero, a3 = zero;
                if (bias != NULL) {
                    a0 += bias[co]; a1 += bias[co]; a2 += bias[co]; a3 += bias[co];
                }
                const DT* src = base + ow;
                for (ptrdiff_t t = 0; t < n_taps; t++) {
                    const DT* p = src + tap_off[t];
                    DT wt = w0[t];
                    a0 += *(const DFN(uvec)*)p * wt;
                    a1 += *(const DFN(uvec)*)(p + DVEC) * wt;
                    a2 += *(const DFN(uvec)*)(p + 2 * DVEC) * wt;
                    a3 += *(const DFN(uvec)*)(p + 3 * DVEC) * wt;
                }
                ptrdiff_t n = out_w - ow;
                DT* dst = dst_row + ow;
                DFN(store)(dst, a0, n);
                if (n > DVEC) DFN(store)(dst + DVEC, a1, n - DVEC);
                if (n > 2 * DVEC) DFN(store)(dst + 2 * DVEC, a2, n - 2 * DVEC);
                if (n > 3 * DVEC) DFN(store)(dst + 3 * DVEC, a3, n - 3 * DVEC);
            }
        }
    }
}
