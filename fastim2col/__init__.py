"""fastim2col: fast, memory-lean im2col convolutions on NumPy arrays.

Cython + OpenMP kernels unroll the input tile by tile, each tile sized to stay
in cache, and hand it straight to SciPy's BLAS sgemm/dgemm: the full unrolled
matrix never exists. The API follows torch.nn.functional and torch.nn.grad.
"""
from ._version import __version__
from .functional import col2im, conv2d, conv_transpose2d, im2col
from ._threads import get_num_threads, set_num_threads
from ._config import show_config
from . import grad

__all__ = [
    "__version__",
    "im2col",
    "col2im",
    "conv2d",
    "conv_transpose2d",
    "grad",
    "set_num_threads",
    "get_num_threads",
    "show_config",
]
