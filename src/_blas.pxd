# Row-major GEMM on SciPy's BLAS, as scikit-learn's _cython_blas does.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k,
                         floating alpha, const floating* a, int lda,
                         const floating* b, int ldb, floating beta,
                         floating* c, int ldc) noexcept nogil:
    """C (m x n, row-major, leading dim ldc) = alpha op(A) op(B) + beta C.

    BLAS is column-major; a row-major matrix is the column-major view of its
    transpose, so C^T = op(B)^T op(A)^T is computed: operands and m/n swap,
    the transpose flags travel with their operand.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)
