"""fastim2col.explain: the Plan a call would run, computed without running it."""
from __future__ import annotations

from typing import Any, Callable

from . import _calls, functional, grad
from ._execute import plan
from ._kernels import Plan

# each public function -> the validation it runs (the same arguments)
_CALLS: dict[Callable[..., Any], Callable[..., _calls.Call]] = {
    functional.im2col: _calls.im2col,
    functional.col2im: _calls.col2im,
    functional.conv2d: _calls.conv2d,
    functional.conv_transpose2d: _calls.conv_transpose2d,
    grad.conv2d_input: _calls.conv2d_input,
    grad.conv2d_weight: _calls.conv2d_weight,
    functional.conv1d: _calls.conv1d,
    functional.conv_transpose1d: _calls.conv_transpose1d,
    grad.conv1d_input: _calls.conv1d_input,
    grad.conv1d_weight: _calls.conv1d_weight,
    functional.conv3d: _calls.conv3d,
    functional.conv_transpose3d: _calls.conv_transpose3d,
    grad.conv3d_input: _calls.conv3d_input,
    grad.conv3d_weight: _calls.conv3d_weight,
}


def explain(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Plan:
    """The :class:`Plan` that ``func(*args, **kwargs)`` would run, without running it.

    The arguments are validated (the same errors as the call), converted as
    the call would convert them, and planned; no kernel runs and no result
    is allocated.

    Parameters
    ----------
    func : callable
        One of fastim2col's public functions (:func:`conv2d`, :func:`im2col`,
        :func:`fastim2col.grad.conv2d_weight`, ...).
    *args, **kwargs
        The arguments ``func`` would be called with.

    Returns
    -------
    Plan
        The kernel, threads, scratch memory, work split and the reason.

    Raises
    ------
    TypeError
        ``func`` is not a public fastim2col function.

    Examples
    --------
    >>> import numpy as np, fastim2col
    >>> x = np.zeros((1, 64, 56, 56), np.float32)
    >>> w = np.zeros((64, 64, 3, 3), np.float32)
    >>> plan = fastim2col.explain(fastim2col.conv2d, x, w, padding=1)
    >>> plan.op, plan.kernel in fastim2col.kernels()
    ('conv2d', True)
    >>> print(plan)  # kernel, threads, scratch, work split, reason  # doctest: +ELLIPSIS
    conv2d: ..., scratch ... (...)
    >>> fastim2col.explain(fastim2col.im2col, x, 3).kernel
    'unroll'
    """
    try:
        build = _CALLS[func]
    except (KeyError, TypeError):
        names = ", ".join(f"fastim2col.{'grad.' if f.__module__.endswith('grad') else ''}"
                          f"{f.__name__}" for f in _CALLS)
        raise TypeError(f"explain: func must be one of {names}, got {func!r}") from None
    return plan(build(*args, **kwargs))
