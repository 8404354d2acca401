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
