"""Planning arithmetic: which kernel a call's shape favours, and how a kernel
call splits its work (tile sizes, bands, blocks, unit counts, threads).

One module an operation: ``common`` (threads, tiles, scratch, im2col and
col2im), ``bands`` (the direct kernels' band layout), ``conv2d``,
``input_gradient`` and ``weight_gradient``; their thresholds are the fields
of one frozen record, ``thresholds.Thresholds``. fastim2col._planner calls
them and turns their numbers into a Plan; the kernels take the numbers as
given.

The functions of the five modules are attributes of this package too (read
only: nothing is tuned by setting them). The thresholds are tuned for a
``with`` block, context-locally, by ``tuned(NAME=value, ...)``, as tests do
to reach the kernels' splits with small shapes; ``current()`` is the record
in force, ``DEFAULTS`` the shipped one.
"""
from __future__ import annotations

from .bands import *             # noqa: F401,F403
from .common import *            # noqa: F401,F403
from .conv2d import *            # noqa: F401,F403
from .input_gradient import *    # noqa: F401,F403
from .weight_gradient import *   # noqa: F401,F403
from .thresholds import DEFAULTS, Thresholds, current, tuned   # noqa: F401
from . import bands, common, conv2d, input_gradient, thresholds, weight_gradient  # noqa: F401
