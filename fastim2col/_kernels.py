"""The kernel table, the Plan a call runs, and forcing a kernel.

Every public function validates its arguments (fastim2col._calls), plans
(fastim2col._planner: one Plan value) and executes that plan
(fastim2col._execute). A Plan names one kernel from KERNELS and carries the
numbers the compiled entry takes; the compiled side never re-decides.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

__all__ = ["Plan", "kernels", "use_kernel"]

# name -> what it does; the planner picks one per call.
KERNELS: dict[str, str] = {
    "unroll": "im2col: copies every window into its column",
    "fold": "col2im: adds every column back into its window",
    "gemm": "tiles of unrolled input (or folded output) multiplied by BLAS sgemm/dgemm",
    "thin_gemm": "the same tiles through fastim2col's own vector GEMM, for thin operands",
    "direct": "band-packed direct kernels: register blocks accumulated over all taps",
    "depthwise": "NHWC depthwise convolution along channel vectors",
    "taps": "NHWC gradients tap by tap, each tap a thin GEMM over the pixels it reaches",
    "elementwise": "NHWC input gradients of 1-4 channels a group, element by element",
    "fill": "nothing to multiply (an empty size): the result is zeros or the bias",
}


def kernels() -> tuple[str, ...]:
    """The names of fastim2col's kernels (what :func:`use_kernel` takes).

    Returns
    -------
    tuple of str
        ``unroll`` (the im2col copy), ``fold`` (the col2im sum), ``gemm``
        (unrolled tiles and BLAS), ``thin_gemm`` (the same tiles through
        fastim2col's own vector GEMM), ``direct`` (band-packed direct
        kernels), ``depthwise``, ``taps``, ``elementwise`` (NHWC kernels) and
        ``fill`` (nothing to multiply).

    Examples
    --------
    >>> import fastim2col
    >>> fastim2col.kernels()
    ('unroll', 'fold', 'gemm', 'thin_gemm', 'direct', 'depthwise', 'taps', 'elementwise', 'fill')
    """
    return tuple(KERNELS)


# (kernel name, strict) forced in this context, or None
_forced: contextvars.ContextVar[Optional[tuple[str, bool]]] = contextvars.ContextVar(
    "fastim2col_forced_kernel", default=None)


class KernelRefused(ValueError):
    """A kernel forced with use_kernel cannot run this call."""


def forced_kernel() -> str | None:
    """The kernel use_kernel forces in this context, or None."""
    forced = _forced.get()
    return None if forced is None else forced[0]


def forced_strictly() -> bool:
    """Whether a forced kernel that cannot run a call is an error (else the
    planner's own choice runs)."""
    forced = _forced.get()
    return forced is None or forced[1]


@contextlib.contextmanager
def unforced() -> Iterator[None]:
    """Plan as if nothing were forced (non-strict use_kernel's fallback)."""
    token = _forced.set(None)
    try:
        yield
    finally:
        _forced.reset(token)


@contextlib.contextmanager
def use_kernel(name: str, *, strict: bool = True) -> Iterator[None]:
    """Force kernel ``name`` for the calls inside the ``with`` block.

    Context-local (a :mod:`contextvars` variable): other threads and asyncio
    tasks keep planning as usual. Calls with nothing to compute (an empty
    size) still run ``"fill"``.

    Parameters
    ----------
    name : str
        One of :func:`kernels` except ``"fill"``.
    strict : bool, optional
        If True (the default), a call inside that the kernel cannot run raises
        ``ValueError`` saying why; if False it runs the planner's own choice
        instead (for sweeping one kernel over calls of every kind).

    Examples
    --------
    >>> import numpy as np, fastim2col
    >>> x = np.ones((1, 8, 10, 10))
    >>> w = np.ones((4, 8, 3, 3))
    >>> with fastim2col.use_kernel("gemm"):
    ...     print(fastim2col.explain(fastim2col.conv2d, x, w).kernel)
    ...     y = fastim2col.conv2d(x, w)
    gemm
    >>> bool(np.all(y == 72.0))
    True
    >>> with fastim2col.use_kernel("depthwise", strict=False):   # NCHW: not possible
    ...     fastim2col.explain(fastim2col.conv2d, x, w).kernel != "depthwise"
    True
    """
    if name not in kernels() or name == "fill":
        choices = ", ".join(repr(k) for k in KERNELS if k != "fill")
        raise ValueError(f"use_kernel: name must be one of {choices}, got {name!r}")
    token = _forced.set((name, bool(strict)))
    try:
        yield
    finally:
        _forced.reset(token)


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 ** 2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 ** 2:.1f} MiB"


@dataclass(frozen=True)
class Plan:
    """What one call runs, as :func:`explain` returns it.

    Attributes
    ----------
    op : str
        The function, e.g. ``"conv2d"`` or ``"conv2d_weight"``.
    kernel : str
        A kernel from :func:`kernels`.
    threads : int
        OpenMP threads the call uses.
    scratch_bytes : int
        Per-call scratch memory, all threads' buffers together.
    reason : str
        Why the planner chose this kernel.
    params : mapping
        The numbers the compiled kernel takes: its work split.
    fallback : Plan or None
        The plan run instead if the kernel declines at run time (the direct
        weight gradient of an input holding NaN or infinity).

    Examples
    --------
    >>> import numpy as np, fastim2col
    >>> plan = fastim2col.explain(fastim2col.im2col, np.ones((1, 3, 8, 8)), 3)
    >>> plan.op, plan.kernel, plan.fallback
    ('im2col', 'unroll', None)
    >>> str(plan).startswith("im2col: unroll, ")
    True
    """
    op: str
    kernel: str
    threads: int
    scratch_bytes: int
    reason: str
    params: Mapping[str, Any] = field(default_factory=dict)
    fallback: Optional["Plan"] = None

    def __str__(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        text = (f"{self.op}: {self.kernel}, {self.threads} thread"
                f"{'s' if self.threads != 1 else ''}, scratch {_fmt_bytes(self.scratch_bytes)}"
                f"{' [' + params + ']' if params else ''} ({self.reason})")
        if self.fallback is not None:
            text += f"; non-finite input: {self.fallback.kernel}"
        return text
