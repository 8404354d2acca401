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
        static double omp_get_wtime(void) { return 0.0; }
    #endif
    """
    bint FASTIM2COL_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    double omp_get_wtime() noexcept nogil


# Work units shared out as a static schedule would (contiguous runs, so
# that a thread's consecutive units share what they pack), except that a
# thread whose run is done takes the last unit left of the thread with the
# most left: on cores of unequal speed (a VM's vCPUs, a busy sibling
# hyperthread) the faster ones no longer wait at the barrier for the
# slower ones. Which thread computes a unit changes from call to call; what
# each unit computes, and in which order, does not (only where units write
# disjoint results: the same bits). Claims run in one critical section
# (each unit is a kernel call of tens of microseconds or more).
cdef extern from *:
    """
    typedef struct {
        Py_ssize_t next, end;   /* the run's units left: [next, end) */
        char pad[64 - 2 * sizeof(Py_ssize_t)];   /* a cache line's size each */
    } FastUnitRun;

    /* n_units in n_runs contiguous runs of near-equal length, in order */
    static void fast_units_init(FastUnitRun* runs, int n_runs, Py_ssize_t n_units) {
        for (int r = 0; r < n_runs; r++) {
            runs[r].next = n_units * r / n_runs;
            runs[r].end = n_units * (r + 1) / n_runs;
        }
    }

    /* the next unit for run r: its own first one left, else the last one
       left of the run with the most left; -1 when none is left */
    static Py_ssize_t fast_units_claim(FastUnitRun* runs, int n_runs, int r) {
        Py_ssize_t unit = -1;
    #ifdef _OPENMP
    #pragma omp critical(fastim2col_units)
    #endif
        {
            if (runs[r].next < runs[r].end) {
                unit = runs[r].next++;
            } else {
                int most = -1;
                Py_ssize_t left = 0;
                for (int v = 0; v < n_runs; v++)
                    if (runs[v].end - runs[v].next > left) {
                        left = runs[v].end - runs[v].next;
                        most = v;
                    }
                if (most >= 0)
                    unit = --runs[most].end;
            }
        }
        return unit;
    }
    """
    ctypedef struct FastUnitRun:
        Py_ssize_t next, end
    void fast_units_init(FastUnitRun* runs, int n_runs, Py_ssize_t n_units) noexcept nogil
    Py_ssize_t fast_units_claim(FastUnitRun* runs, int n_runs, int r) noexcept nogil


cdef inline FastUnitRun* new_unit_runs(int n_threads, Py_ssize_t n_units) noexcept nogil:
    # n_units in one run a thread for fast_units_claim (run t: thread t's
    # static share); NULL when out of memory. The caller frees it.
    cdef FastUnitRun* runs = <FastUnitRun*> malloc(n_threads * sizeof(FastUnitRun))
    if runs != NULL:
        fast_units_init(runs, n_threads, n_units)
    return runs


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
