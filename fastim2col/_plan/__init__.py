"""Planning arithmetic: which kernel a call's shape favours, and how a kernel
call splits its work (tile sizes, bands, blocks, unit counts, threads).

One module an operation: ``common`` (threads, tiles, scratch, im2col and
col2im), ``bands`` (the direct kernels' band layout), ``conv2d``,
``input_gradient`` and ``weight_gradient``. fastim2col._planner calls them
and turns their numbers into a Plan; the kernels take the numbers as given.

Every name of the five modules is also an attribute of this package, and
setting one here sets it in the module that defines it (where the planner
reads it): ``_plan.TILE_BYTES = 1`` tunes the planner, as a test does.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from . import bands, common, conv2d, input_gradient, weight_gradient

PARTS = (common, bands, conv2d, input_gradient, weight_gradient)


def home(name: str) -> types.ModuleType:
    """The module of PARTS that defines `name`."""
    for part in PARTS:
        if name in vars(part) and not isinstance(vars(part)[name], types.ModuleType):
            return part
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package's own attributes mirror its modules' names (tools such as
    pytest's monkeypatch read and restore them through the package's
    __dict__); setting or deleting one does so where it is defined too."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("__") and not isinstance(value, types.ModuleType):
            try:
                setattr(home(name), name, value)
            except AttributeError:
                pass
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        try:
            delattr(home(name), name)
        except AttributeError:
            pass


for _part in reversed(PARTS):   # (the first part that defines a name wins)
    globals().update({name: value for name, value in vars(_part).items()
                      if not name.startswith("__") and not isinstance(value, types.ModuleType)
                      and name != "annotations"})
del _part
sys.modules[__name__].__class__ = _Package
