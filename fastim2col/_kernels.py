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
    """The names of fastim2col's kernels (what :func:`use_kernel` takes)."""
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
    tasks keep planning as usual. A call inside that the kernel cannot run
    raises ``ValueError`` saying why; with ``strict=False`` it runs the
    planner's own choice instead (for sweeping one kernel over calls of every
    kind). Calls with nothing to compute (an empty size) still run ``"fill"``.
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
    """What one call runs: a kernel from :func:`kernels`, on ``threads``
    OpenMP threads, with ``scratch_bytes`` of per-call scratch (all threads'
    buffers), ``params`` (the numbers the compiled kernel takes: its work
    split) and ``reason`` (why this kernel). ``fallback``: the plan run
    instead if the kernel declines at run time (the direct weight gradient of
    an input holding NaN or infinity)."""
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
