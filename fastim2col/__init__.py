"""fastim2col: fast, memory-lean im2col convolutions on NumPy arrays.

Cython + OpenMP kernels unroll the input tile by tile, each tile sized to stay
in cache, and hand it straight to SciPy's BLAS sgemm/dgemm: the full unrolled
matrix never exists. The API follows torch.nn.functional and torch.nn.grad.
"""
from ._version import __version__

try:
    from . import _conv, _depthwise, _direct, _im2col, _openmp_info  # noqa: F401  (compiled kernels)
except ImportError as exc:  # pragma: no cover - depends on how it was imported
    raise ImportError(
        "fastim2col's compiled kernels could not be imported. If you are inside the "
        "source checkout, its fastim2col/ folder (which holds no compiled modules) "
        "shadows the installed package: run from another directory, or use "
        "`python -P -m fastim2col`, or build in place with "
        "`python setup.py build_ext --inplace`."
    ) from exc
from .functional import (col2im, conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d,
                         conv_transpose3d, im2col)
from ._kernels import Plan, kernels, use_kernel
from ._explain import explain
from ._threads import get_num_threads, set_num_threads
from ._config import show_config
from . import grad

__all__ = [
    "__version__",
    "im2col",
    "col2im",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "grad",
    "explain",
    "kernels",
    "use_kernel",
    "Plan",
    "set_num_threads",
    "get_num_threads",
    "show_config",
]
