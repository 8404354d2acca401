"""Gradients of conv1d/conv2d/conv3d on dask arrays, as fastim2col.grad.

The input gradient is computed block by block like a transposed convolution;
the weight gradient is a tree reduction (``split_every`` blocks per step) of
the weight gradients of the blocks, a lazy dask array of ``weight_size``.
"""
from __future__ import annotations

from . import _ops

__all__ = ["conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight",
           "conv3d_input", "conv3d_weight"]


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                 *, padding_mode="zeros", layout="NCL", threads=None):
    """fastim2col.grad.conv1d_input with a dask ``grad_output``."""
    return _ops.conv_input(1, input_size, weight, grad_output, stride, padding, dilation,
                           groups, layout, threads, padding_mode)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                 *, padding_mode="zeros", layout="NCHW", threads=None):
    """fastim2col.grad.conv2d_input with a dask ``grad_output``."""
    return _ops.conv_input(2, input_size, weight, grad_output, stride, padding, dilation,
                           groups, layout, threads, padding_mode)


def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                 *, padding_mode="zeros", layout="NCDHW", threads=None):
    """fastim2col.grad.conv3d_input with a dask ``grad_output`` (needs it in fastim2col)."""
    return _ops.conv_input(3, input_size, weight, grad_output, stride, padding, dilation,
                           groups, layout, threads, padding_mode)


def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1,
                  *, padding_mode="zeros", layout="NCL", threads=None,
                  split_every=None):
    """fastim2col.grad.conv1d_weight with a dask ``input`` (``grad_output``: dask or NumPy)."""
    return _ops.conv_weight(1, input, weight_size, grad_output, stride, padding, dilation,
                            groups, layout, threads, split_every, padding_mode)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1,
                  *, padding_mode="zeros", layout="NCHW", threads=None,
                  split_every=None):
    """fastim2col.grad.conv2d_weight with a dask ``input`` (``grad_output``: dask or NumPy)."""
    return _ops.conv_weight(2, input, weight_size, grad_output, stride, padding, dilation,
                            groups, layout, threads, split_every, padding_mode)


def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1,
                  *, padding_mode="zeros", layout="NCDHW", threads=None,
                  split_every=None):
    """fastim2col.grad.conv3d_weight with a dask ``input`` (needs it in fastim2col)."""
    return _ops.conv_weight(3, input, weight_size, grad_output, stride, padding, dilation,
                            groups, layout, threads, split_every, padding_mode)
