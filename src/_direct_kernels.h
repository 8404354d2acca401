/* Direct (non-GEMM) conv2d kernels for grouped convolutions with few channels
 * per group, NCHW: depthwise (1 input channel per group) and ResNeXt-style
 * groups (a few channels per group). There a GEMM per group has a handful of
 * rows (the group's output channels) and runs far below the BLAS peak;
 * accumulating each output vector in a register over all taps does not.
 *
 * Vectors are GCC/Clang vector extensions, one register wide: on x86-64 the
 * kernel is compiled three times (baseline SSE2 with 16-byte vectors,
 * AVX2+FMA with 32, AVX-512 with 64) and the widest one the CPU runs is
 * picked once, at first use: wheels stay portable and still use the
 * machine's vectors. Other targets get 16-byte vectors (NEON, ...); other
 * compilers a plain scalar build.
 */
#ifndef FASTIM2COL_DIRECT_KERNELS_H
#define FASTIM2COL_DIRECT_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    ptrdiff_t og;          /* output channels per group */
    ptrdiff_t n_taps;      /* input channels per group x kh x kw */
    ptrdiff_t w_stride;    /* weights: elements from one output channel to the next */
    ptrdiff_t out_w;       /* output row length */
    ptrdiff_t out_c, out_row, out_col;   /* out: strides of channels, rows, columns */
    ptrdiff_t row_len;     /* packed and grid: elements per row of one phase */
    ptrdiff_t phase_len;   /* packed: one (row phase, column phase) plane; reads
                              past its end (dropped lanes) land in the next
                              plane, or in the buffer's zeroed tail */
    ptrdiff_t chan_len;    /* packed: stride_h x stride_w planes */
    ptrdiff_t img_packed;  /* packed: elements from one image's band to the next */
    ptrdiff_t img_out;     /* out: elements from one image to the next */
    ptrdiff_t grid_rows;   /* output rows per grid fill */
    ptrdiff_t grid_len;    /* grid scratch: elements per output channel */
} DirectShape;

/* The input gradient with few channels (few_rows in _direct_impl.h): its
 * geometry (as conv2d's, see fastim2col._args.window), the group's channels
 * of gx (cg) and grad_output (og), and the elements from one pixel to the
 * next in each (ld_gx, ld_go). */
typedef struct {
    ptrdiff_t in_h, in_w, out_h, out_w, kernel_h, kernel_w;
    ptrdiff_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    ptrdiff_t cg, og, ld_gx, ld_go;
} FewShape;
/* few_rows: the most channels, the most positions of a block, and its
 * scratch offset tables (FEW_TABLES x kernel_h x kernel_w elements). */
#define FEW_MAX_CHANNELS 4
#define FEW_MAX_BLOCK 8
#define FEW_TABLES 5

/* Vectors of grid positions per register block; the most output channels
 * of any instance's register block (the grid scratch holds that many). */
#define DIRECT_NV 4
#define DIRECT_MAX_CO 6
/* Grid positions per chunk of the weight gradient (a multiple of every
 * instance's vector). */
#define DIRECT_WCHUNK 1024
/* Bytes of grid per output channel (DIRECT_MAX_CO of them stay in L1). */
#define DIRECT_GRID_BYTES 4096
/* Terms per pass of the thin GEMM: a block of rows' slice of the weights
 * (THIN_KC x 2 vectors: 16 KiB with 64-byte vectors) stays in L1. */
#define THIN_KC 128
/* The thin GEMM prefetches the next slice of w's rows (read in place) where
 * a pass sweeps more of w than THIN_PREFETCH_BYTES (n_rows x THIN_KC
 * terms), and of c's rows where it sweeps more of c than
 * THIN_PREFETCH_C_BYTES (n_rows x n_pos): such operands come from L3 or
 * memory in more streams (one a row) than hardware prefetchers follow.
 * Smaller ones (NHWC weights, 7-14 px tiles; c in the unroll kernels'
 * scratch tiles, at most fastim2col._plan.TILE_BYTES) stay in cache across
 * passes and calls, and gained nothing from it. */
#define THIN_PREFETCH_BYTES (256 * 1024)
#define THIN_PREFETCH_C_BYTES (1024 * 1024)

#if (defined(__GNUC__) || defined(__clang__)) && !defined(FASTIM2COL_NO_VECTOR_EXT)
#define DIRECT_VECTOR_EXT 1
#define DIRECT_BYTES 16
#else
#define DIRECT_VECTOR_EXT 0
#define DIRECT_BYTES 0
#endif
/* The widest vector of any instance: the packed rows are padded to 4 of them. */
#define DIRECT_MAX_BYTES 64

#if DIRECT_VECTOR_EXT && defined(__x86_64__) && !defined(FASTIM2COL_NO_ISA_DISPATCH)
#define DIRECT_X86_DISPATCH 1
#else
#define DIRECT_X86_DISPATCH 0
#endif

/* ---- one instance per (type, ISA): _direct_types.h includes _direct_impl.h
 * for float and double, given DISA (the names' suffix), DISA_BYTES (bytes
 * per vector), DTARGET, DTUNED, the register blocks DCO, DWCO x DWT, and
 * DFEW_SUMS (few_block's vectors of sums: 8 positions x 3 channels with 32
 * registers; with 16, 4 x 3, and 3 x 4 where the compiler has to read the
 * weights from memory in the FMAs) ---- */
/* DTUNED (the few-channel kernels' target): DTARGET and that CPU's
 * tuning. Under the default generic tuning GCC 12 kept one of few_block's
 * 24 vectors of sums on the stack, a load and a store in each step of its
 * loop, and read each grad_output vector once per channel: 1.4x the time.
 * Clang before 12 (Apple's before 13) takes no tune= in a target. */
#if defined(__clang__) && (__clang_major__ < 12 \
                           || (defined(__apple_build_version__) && __clang_major__ < 13))
#define DIRECT_TUNE(isa, cpu) isa
#else
#define DIRECT_TUNE(isa, cpu) isa ",tune=" cpu
#endif
#define DIRECT_CAT_(a, b, c) a##b##c
#define DIRECT_CAT(a, b, c) DIRECT_CAT_(a, b, c)

/* 16 registers (SSE2, AVX2): 3 channels x 4 vectors of sums + 4 of inputs;
 * weight gradient: 2 channels x 5 taps of sums + 2 of grad_output + 1 input;
 * thin GEMM: 6 positions x 2 vectors of sums + 2 of weights + 1 broadcast */
#define DCO 3
#define DWCO 2
#define DWT 5
#define DTNR 6
#define DFEW_SUMS 12
#define DISA base
#define DISA_BYTES DIRECT_BYTES
#define DTARGET
#define DTUNED
#include "_direct_types.h"
#undef DISA
#undef DISA_BYTES
#undef DTARGET
#undef DTUNED

#if DIRECT_X86_DISPATCH
#define DISA avx2
#define DISA_BYTES 32
#define DTARGET __attribute__((target("avx2,fma")))
#define DTUNED __attribute__((target(DIRECT_TUNE("avx2,fma", "haswell"))))
#include "_direct_types.h"
#undef DISA
#undef DISA_BYTES
#undef DTARGET
#undef DTUNED
#undef DCO
#undef DWCO
#undef DWT
#undef DTNR
#undef DFEW_SUMS

/* 32 registers: 6 channels x 4 vectors of sums + 4 of inputs; weight
 * gradient: 4 channels x 6 taps of sums + 4 of grad_output + 1 of input;
 * thin GEMM: 12 positions x 2 vectors of sums + 2 of weights + 1 broadcast */
#define DCO 6
#define DWCO 4
#define DWT 6
#define DTNR 12
#define DFEW_SUMS 24
#define DISA avx512
#define DISA_BYTES 64
#define DTARGET __attribute__((target("avx512f,avx2,fma")))
#define DTUNED __attribute__((target(DIRECT_TUNE("avx512f,avx2,fma", "skylake-avx512"))))
#include "_direct_types.h"
#undef DISA
#undef DISA_BYTES
#undef DTARGET
#undef DTUNED
#endif
#undef DCO
#undef DWCO
#undef DWT
#undef DTNR
#undef DFEW_SUMS

/* 0: baseline, 1: AVX2+FMA, 2: AVX-512 (x86-64 only). */
static int direct_detect_isa(void)
{
#if DIRECT_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

static int direct_level = -1;

static int direct_isa_level(void)
{
    if (direct_level < 0)   /* benign race: every thread computes the same value */
        direct_level = direct_detect_isa();
    return direct_level;
}

/* For tests: run the kernels at a lower level (never above what the CPU
 * runs); a negative level goes back to the best one. Returns the level. */
static int direct_force_isa(int level)
{
    int best = direct_detect_isa();
    direct_level = (level < 0 || level > best) ? best : level;
    return direct_level;
}

static const char* direct_isa_name(void)
{
    static const char* names[] = {DIRECT_VECTOR_EXT ? "baseline (16-byte vectors)" : "scalar",
                                  "AVX2+FMA", "AVX-512"};
    return names[direct_isa_level()];
}

/* Elements per vector of the widest instance: grid blocks are DIRECT_NV of
 * them (the most any kernel reads or writes past the last grid position). */
static ptrdiff_t direct_vector_elements(ptrdiff_t itemsize)
{
    return DIRECT_VECTOR_EXT ? DIRECT_MAX_BYTES / itemsize : 1;
}

#define DIRECT_DISPATCH(SUF, DT_)                                                        \
static void direct_rows_##SUF(const DT_* packed, const ptrdiff_t* tap_off,               \
                              const ptrdiff_t* w_off, const DT_* w, const DT_* bias,     \
                              DT_* grid, DT_* out, ptrdiff_t n_img, ptrdiff_t n_rows,    \
                              ptrdiff_t n_out, const DirectShape* s)                     \
{                                                                                        \
    DIRECT_DISPATCH_X86(SUF)                                                             \
    direct_rows_##SUF##_base(packed, tap_off, w_off, w, bias, grid, out, n_img, n_rows,   \
                             n_out, s);                                                   \
}

#if DIRECT_X86_DISPATCH
#define DIRECT_DISPATCH_X86(SUF)                                                          \
    switch (direct_isa_level()) {                                                         \
    case 2:                                                                               \
        direct_rows_##SUF##_avx512(packed, tap_off, w_off, w, bias, grid, out, n_img,    \
                                   n_rows, n_out, s);                                     \
        return;                                                                           \
    case 1:                                                                               \
        direct_rows_##SUF##_avx2(packed, tap_off, w_off, w, bias, grid, out, n_img,      \
                                 n_rows, n_out, s);                                       \
        return;                                                                           \
    default: break;                                                                       \
    }
#else
#define DIRECT_DISPATCH_X86(SUF)
#endif

DIRECT_DISPATCH(f, float)
DIRECT_DISPATCH(d, double)

#define DIRECT_WEIGHT_DISPATCH(SUF, DT_)                                                  \
static void weight_rows_##SUF(const DT_* packed, const ptrdiff_t* tap_off, ptrdiff_t n_taps, \
                              const DT_* g, ptrdiff_t g_len, ptrdiff_t n_out,              \
                              ptrdiff_t n_pos, DT_* dw, ptrdiff_t dw_stride)               \
{                                                                                          \
    DIRECT_WEIGHT_DISPATCH_X86(SUF)                                                        \
    weight_rows_##SUF##_base(packed, tap_off, n_taps, g, g_len, n_out, n_pos, dw, dw_stride); \
}                                                                                          \
static int all_finite_##SUF(const DT_* x, ptrdiff_t n)                                     \
{                                                                                          \
    DIRECT_FINITE_DISPATCH_X86(SUF)                                                        \
    return all_finite_##SUF##_base(x, n);                                                  \
}

#if DIRECT_X86_DISPATCH
#define DIRECT_WEIGHT_DISPATCH_X86(SUF)                                                   \
    switch (direct_isa_level()) {                                                         \
    case 2:                                                                               \
        weight_rows_##SUF##_avx512(packed, tap_off, n_taps, g, g_len, n_out, n_pos, dw,   \
                                   dw_stride);                                            \
        return;                                                                           \
    case 1:                                                                               \
        weight_rows_##SUF##_avx2(packed, tap_off, n_taps, g, g_len, n_out, n_pos, dw,     \
                                 dw_stride);                                              \
        return;                                                                           \
    default: break;                                                                       \
    }
#define DIRECT_FINITE_DISPATCH_X86(SUF)                                                   \
    switch (direct_isa_level()) {                                                         \
    case 2: return all_finite_##SUF##_avx512(x, n);                                       \
    case 1: return all_finite_##SUF##_avx2(x, n);                                         \
    default: break;                                                                       \
    }
#else
#define DIRECT_WEIGHT_DISPATCH_X86(SUF)
#define DIRECT_FINITE_DISPATCH_X86(SUF)
#endif

DIRECT_WEIGHT_DISPATCH(f, float)
DIRECT_WEIGHT_DISPATCH(d, double)

/* NAME_SUF(ARGS(DT_)): kernel NAME (see _direct_impl.h) at the best ISA the
 * CPU runs; CALL(F) calls F with the entry's arguments. */
#if DIRECT_X86_DISPATCH
#define DIRECT_ISA_SWITCH(NAME, SUF, CALL)                                                \
    switch (direct_isa_level()) {                                                         \
    case 2: CALL(NAME##_##SUF##_avx512); return;                                          \
    case 1: CALL(NAME##_##SUF##_avx2); return;                                            \
    default: break;                                                                       \
    }
#else
#define DIRECT_ISA_SWITCH(NAME, SUF, CALL)
#endif
#define DIRECT_ISA_ENTRY(NAME, SUF, DT_, ARGS, CALL)                                      \
static void NAME##_##SUF(ARGS(DT_))                                                       \
{                                                                                         \
    DIRECT_ISA_SWITCH(NAME, SUF, CALL)                                                    \
    CALL(NAME##_##SUF##_base);                                                            \
}

#define THIN_GEMM_ARGS(DT_)                                                               \
    ptrdiff_t n_rows, ptrdiff_t n_pos, ptrdiff_t n_terms, const DT_* w, ptrdiff_t ldw,    \
    ptrdiff_t w_row,                                                                      \
    const DT_* g, ptrdiff_t g_term, ptrdiff_t g_pos, const ptrdiff_t* g_at, DT_* c,       \
    ptrdiff_t ldc, const ptrdiff_t* c_at, const ptrdiff_t* w_at, const ptrdiff_t* gt_at,  \
    DT_* gp, int add
#define THIN_GEMM_CALL(NAME)                                                              \
    NAME(n_rows, n_pos, n_terms, w, ldw, w_row, g, g_term, g_pos, g_at, c, ldc, c_at, w_at, \
         gt_at, gp, add)
/* thin_gemm_f / _d; gp: THIN_KC x n_pos elements */
DIRECT_ISA_ENTRY(thin_gemm, f, float, THIN_GEMM_ARGS, THIN_GEMM_CALL)
DIRECT_ISA_ENTRY(thin_gemm, d, double, THIN_GEMM_ARGS, THIN_GEMM_CALL)

#define FEW_ROWS_ARGS(DT_)                                                                \
    const DT_* go, ptrdiff_t oy0, const DT_* wt, const DT_* bias, DT_* gx, ptrdiff_t y0,  \
    ptrdiff_t y1, const FewShape* s, ptrdiff_t* tab
#define FEW_ROWS_CALL(NAME) NAME(go, oy0, wt, bias, gx, y0, y1, s, tab)
/* few_rows_f / _d */
DIRECT_ISA_ENTRY(few_rows, f, float, FEW_ROWS_ARGS, FEW_ROWS_CALL)
DIRECT_ISA_ENTRY(few_rows, d, double, FEW_ROWS_ARGS, FEW_ROWS_CALL)

#endif
