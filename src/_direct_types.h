/* Instantiates _direct_impl.h for float and double (see _direct_kernels.h,
 * which defines DISA, DISA_BYTES, DTARGET, DTUNED, DCO, DWCO, DWT, DTNR and
 * DFEW_SUMS first). */
#define DT float
#define DVEC (DIRECT_VECTOR_EXT ? DISA_BYTES / 4 : 1)
#define DFN(x) DIRECT_CAT(x, _f_, DISA)
#include "_direct_impl.h"
#undef DT
#undef DVEC
#undef DFN
#define DT double
#define DVEC (DIRECT_VECTOR_EXT ? DISA_BYTES / 8 : 1)
#define DFN(x) DIRECT_CAT(x, _d_, DISA)
#include "_direct_impl.h"
#undef DT
#undef DVEC
#undef DFN
