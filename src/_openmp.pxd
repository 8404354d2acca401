from libc.stdlib cimport malloc

# OpenMP runtime calls that also compile without OpenMP (as scikit-learn's
# _openmp_helpers.pxd does): a compiler without it builds a correct,
# single-threaded library, and prange loops then run serially.
cdef extern from *:
    """
    #ifdef _OPENMP
        #include <omp.h>
        #define FASTIM2COL_OPENMP 1
    #else
        #define FASTIM2COL_OPENMP 0
        static int omp_get_max_threads(void) { return 1; }
        static int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint FASTIM2COL_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil


cdef inline Py_ssize_t* new_thread_keys(int n_threads) noexcept nogil:
    # One key per thread naming what its buffer holds, all -1 (nothing yet),
    # for kernels that skip refilling a buffer a thread's next unit shares;
    # NULL when out of memory. The caller frees it.
    cdef Py_ssize_t* keys = <Py_ssize_t*> malloc(n_threads * sizeof(Py_ssize_t))
    cdef int t
    if keys != NULL:
        for t in range(n_threads):
            keys[t] = -1
    return keys
