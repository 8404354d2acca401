"""fastim2col on Dask arrays: out-of-core and on a dask.distributed cluster.

An optional extra: ``pip install "fastim2col[dask]"`` (dask[array],
distributed, zarr). Every function takes a ``dask.array.Array`` input (weights
and bias as NumPy arrays), the same arguments as the in-memory function of the
same name, plus ``threads=``, and returns a lazy dask array equal to the
in-memory result (to rounding) for any chunking of the batch and spatial axes::

    import dask.array as da, fastim2col.dask as fd
    x = da.from_zarr("image.zarr")                    # (N, C, H, W), chunked
    y = fd.conv2d(x, weight, padding="same")          # lazy
    (y ** 2).sum(axis=1).to_zarr("energy.zarr")       # computed block by block

Each output block is computed by the in-memory function on the input rows its
windows read (its halo from the neighbouring chunks; strides, dilations and
padding so that it lines up with the whole-array result; a padding_mode other
than zeros pads the dask array lazily first). Channel chunks are merged:
every block sees all channels. ``threads``: the kernel threads of each
task, by default max(1, cores // threads sharing the cores) so that worker
threads x kernel threads never oversubscribe a worker (fastim2col.dask._threads).
"""
from __future__ import annotations

try:
    import dask.array as _da  # noqa: F401
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError("fastim2col.dask needs dask: pip install \"fastim2col[dask]\" "
                      "(or dask[array] and distributed)") from exc

from . import _ops
from . import grad

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "grad"]


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", layout="NCL", threads=None):
    """fastim2col.conv1d on a dask array ``(N, C_in, L)`` (``"NLC"``: ``(N, L, C_in)``)."""
    return _ops.conv(1, x, weight, bias, stride, padding, dilation, groups, layout, threads,
                     padding_mode)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", layout="NCHW", threads=None):
    """fastim2col.conv2d on a dask array ``(N, C_in, H, W)`` (``"NHWC"``: ``(N, H, W, C_in)``)."""
    return _ops.conv(2, x, weight, bias, stride, padding, dilation, groups, layout, threads,
                     padding_mode)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", layout="NCDHW", threads=None):
    """fastim2col.conv3d on a dask array ``(N, C_in, D, H, W)`` (``"NDHWC"``).

    Needs a fastim2col that has conv3d (NotImplementedError otherwise)."""
    return _ops.conv(3, x, weight, bias, stride, padding, dilation, groups, layout, threads,
                     padding_mode)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", layout="NCL",
                     threads=None):
    """fastim2col.conv_transpose1d on a dask array."""
    return _ops.transposed(1, x, weight, bias, stride, padding, output_padding, groups,
                           dilation, output_size, layout, threads, padding_mode)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", layout="NCHW",
                     threads=None):
    """fastim2col.conv_transpose2d on a dask array (each output block gathers
    the inputs that reach it)."""
    return _ops.transposed(2, x, weight, bias, stride, padding, output_padding, groups,
                           dilation, output_size, layout, threads, padding_mode)
