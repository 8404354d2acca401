# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# (A .pxd's inline functions are compiled with its own directives, not with
# those of the .pyx that cimports them; the itemsize divisor is positive.)
# Cache-line alignment of per-thread buffers (_direct.pyx, _conv.pyx).
# Buffers start on a cache line (64 bytes, the widest vector), so that the
# kernels' vector loads of rows a whole number of lines long never split a
# line (a grad_output band 8 bytes off a line cost the direct weight kernel
# 7%; NumPy's arrays start 16 bytes past one, which cost few_rows 20%).
# Allocate CACHE_LINE bytes more than needed, then line_start(raw).
cdef enum:
    CACHE_LINE = 64


cdef inline void* line_start(void* raw) noexcept nogil:
    return <void*> ((<size_t> raw + CACHE_LINE - 1) & ~(<size_t> (CACHE_LINE - 1)))


cdef inline Py_ssize_t line_round(Py_ssize_t n_elems, Py_ssize_t itemsize) noexcept nogil:
    # n_elems rounded up to whole cache lines
    cdef Py_ssize_t per_line = CACHE_LINE // itemsize
    return (n_elems + per_line - 1) // per_line * per_line
