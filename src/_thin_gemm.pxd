# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (A .pxd's inline functions are compiled with its own directives, not with
# those of the .pyx that cimports them. C division: every divisor here is a
# validated positive size or stride.)
# The thin GEMM of _direct_kernels.h (see thin_gemm in _direct_impl.h): a
# vector kernel for GEMMs whose one operand is read in place, rows as its
# vectors, and whose other, small one it packs itself.
from cython cimport floating


cdef extern from "_direct_kernels.h" nogil:
    int THIN_KC   # terms per packing pass: gp holds THIN_KC x n_pos elements
    int THIN_PREFETCH_BYTES   # w's rows swept per pass past which it prefetches
    int THIN_PREFETCH_C_BYTES   # and c's rows
    void thin_gemm_f(Py_ssize_t n_rows, Py_ssize_t n_pos, Py_ssize_t n_terms, const float* w,
                     Py_ssize_t ldw, Py_ssize_t w_row, const float* g, Py_ssize_t g_term,
                     Py_ssize_t g_pos,
                     const Py_ssize_t* g_at, float* c, Py_ssize_t ldc, const Py_ssize_t* c_at,
                     const Py_ssize_t* w_at, const Py_ssize_t* gt_at, float* gp, int add)
    void thin_gemm_d(Py_ssize_t n_rows, Py_ssize_t n_pos, Py_ssize_t n_terms, const double* w,
                     Py_ssize_t ldw, Py_ssize_t w_row, const double* g, Py_ssize_t g_term,
                     Py_ssize_t g_pos,
                     const Py_ssize_t* g_at, double* c, Py_ssize_t ldc,
                     const Py_ssize_t* c_at, const Py_ssize_t* w_at, const Py_ssize_t* gt_at,
                     double* gp, int add)


cdef inline void thin_gemm(Py_ssize_t n_rows, Py_ssize_t n_pos, Py_ssize_t n_terms,
                           const floating* w, Py_ssize_t ldw, const floating* g,
                           Py_ssize_t g_term, Py_ssize_t g_pos, floating* c, Py_ssize_t ldc,
                           floating* gp, bint add=False) noexcept nogil:
    # c[p*ldc + r] = (add ? c[p*ldc + r] : 0) + sum_o w[o*ldw + r] g[o*g_term + p*g_pos],
    # at the best ISA the CPU runs; gp: THIN_KC x n_pos scratch
    if floating is float:
        thin_gemm_f(n_rows, n_pos, n_terms, w, ldw, 1, g, g_term, g_pos, NULL, c, ldc, NULL, NULL,
                    NULL, gp, add)
    else:
        thin_gemm_d(n_rows, n_pos, n_terms, w, ldw, 1, g, g_term, g_pos, NULL, c, ldc, NULL, NULL,
                    NULL, gp, add)


cdef inline void thin_gemm_at(Py_ssize_t n_rows, Py_ssize_t n_pos, Py_ssize_t n_terms,
                              const floating* w, Py_ssize_t ldw, const floating* g,
                              Py_ssize_t g_term, const Py_ssize_t* g_at, floating* c,
                              const Py_ssize_t* c_at, floating* gp,
                              bint add=False) noexcept nogil:
    # thin_gemm with position p's operand at g + g_at[p] and its result at
    # c + c_at[p] (a gather and a scatter): c[c_at[p] + r] = (add ? ... : 0)
    # + sum_o w[o*ldw + r] g[o*g_term + g_at[p]]
    if floating is float:
        thin_gemm_f(n_rows, n_pos, n_terms, w, ldw, 1, g, g_term, 0, g_at, c, 0, c_at, NULL, NULL,
                    gp, add)
    else:
        thin_gemm_d(n_rows, n_pos, n_terms, w, ldw, 1, g, g_term, 0, g_at, c, 0, c_at, NULL, NULL,
                    gp, add)


cdef inline void thin_gemm_terms(Py_ssize_t n_rows, Py_ssize_t n_pos, Py_ssize_t n_terms,
                                 const floating* w, const Py_ssize_t* w_at, const floating* g,
                                 const Py_ssize_t* gt_at, floating* c, Py_ssize_t ldc,
                                 floating* gp, bint add=False) noexcept nogil:
    # thin_gemm with term o's row of w at w + w_at[o] and of g at g + gt_at[o]
    # (gathered terms; positions consecutive in g): c[p*ldc + r] = (add ? ... :
    # 0) + sum_o w[w_at[o] + r] g[gt_at[o] + p]
    if floating is float:
        thin_gemm_f(n_rows, n_pos, n_terms, w, 0, 1, g, 0, 1, NULL, c, ldc, NULL, w_at, gt_at,
                    gp, add)
    else:
        thin_gemm_d(n_rows, n_pos, n_terms, w, 0, 1, g, 0, 1, NULL, c, ldc, NULL, w_at, gt_at,
                    gp, add)


cdef inline void thin_gemm_t(Py_ssize_t n_rows, Py_ssize_t n_pos, Py_ssize_t n_terms,
                             const floating* w, Py_ssize_t w_row, const floating* g,
                             Py_ssize_t g_term, Py_ssize_t g_pos, floating* c, Py_ssize_t ldc,
                             floating* gp, bint add=False) noexcept nogil:
    # thin_gemm with w stored the other way round, its terms contiguous:
    # c[p*ldc + r] = (add ? ... : 0) + sum_o w[r*w_row + o] g[o*g_term + p*g_pos]
    if floating is float:
        thin_gemm_f(n_rows, n_pos, n_terms, w, 1, w_row, g, g_term, g_pos, NULL, c, ldc, NULL,
                    NULL, NULL, gp, add)
    else:
        thin_gemm_d(n_rows, n_pos, n_terms, w, 1, w_row, g, g_term, g_pos, NULL, c, ldc, NULL,
                    NULL, NULL, gp, add)
