"""Operator-set caps on what one render row may ask for, and its wall-clock budget.

A request table comes from users; a nightly job must not let one row ask for
``iterations = 1e9`` or ``size = 100000`` and hold an actor for days. The
``[limits]`` section of a RenderConfig (:class:`RenderLimits`) caps the params
(each params class checks its own fields in ``check_limits(limits)``), the input
file (bytes, pixels) and the seconds a row may run. A row over a cap fails alone
with a message naming the param and the cap::

    StyleParams.iterations: must be <= 10000 (limits.max_iterations), got 1000000000

The time limit is cooperative first: :func:`row_budget` sets a deadline for the
current row that :func:`check_deadline` (called by the optimisation core before
every objective evaluation) turns into :class:`RowTimeout`. A row stuck outside
that loop (C code, I/O) is the hard watchdog's job (``genlib.render.runner``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

from genlib.config import Fields
from genlib.render.base import RenderError


class LimitError(ValueError):
    """A row's params or input exceed a cap of ``[limits]`` (the row fails, the job goes on)."""


class RowTimeout(RenderError):
    """A row ran past ``limits.max_seconds``."""


@dataclass
class RenderLimits:
    """The ``[limits]`` section of a RenderConfig: caps checked when a row is read."""

    max_side: int = 4096
    """Largest output/working side in pixels (``size``, ``tile``, ``jitter``, style images after
    ``style_scale``)."""
    max_pixels: int = 64_000_000
    """Largest input image (width x height) decoded; bigger files fail before decoding."""
    max_input_bytes: int = 256 * 1024 * 1024
    """Largest input file read (the row's input, style images, mask files)."""
    max_iterations: int = 10_000
    """Optimiser iterations (per scale / per octave, as each kind counts them)."""
    max_restarts: int = 64
    """Batched restarts of a completion's z search."""
    max_octaves: int = 12
    """DeepDream octaves."""
    max_styles: int = 16
    """Style images per style-transfer row."""
    max_samples: int = 1024
    """Samples per row for kinds that draw samples."""
    max_seconds: float = 3600.0
    """Wall-clock seconds one row may render; past it the row fails ("exceeded max_seconds")."""
    grace_seconds: float = 30.0
    """Seconds past ``max_seconds`` before the watchdog kills an actor whose row did not stop
    by itself (stuck in C code or I/O); the row is then failed without a retry."""

    def __post_init__(self) -> None:
        check = Fields(self)
        for name in ("max_side", "max_pixels", "max_input_bytes", "max_iterations", "max_restarts",
                     "max_octaves", "max_styles", "max_samples"):
            check.integer(name, low=1)
        check.number("max_seconds", above=0, as_float=True)
        check.number("grace_seconds", above=0, as_float=True)

    def cap(self, params: Any, name: str, cap: str, value: Any = None) -> None:
        """LimitError unless ``params.<name>`` (or ``value`` derived from it) <= ``limits.<cap>``."""
        value = getattr(params, name) if value is None else value
        limit = getattr(self, cap)
        if value is not None and value > limit:
            raise LimitError(f"{type(params).__name__}.{name}: must be <= {limit} (limits.{cap}), got {value!r}")

    def require(self, params: Any, name: str, ok: bool, message: str) -> None:
        """LimitError ``<Params>.<name>: <message>, got <value>`` unless ``ok``."""
        if not ok:
            raise LimitError(f"{type(params).__name__}.{name}: {message}, got {getattr(params, name)!r}")


# The current row's limits and deadline: set by the runner around one row, read by the
# optimisation core (deadline) and genlib.render.io (input caps) without threading them
# through every renderer's signature.
_BUDGET: ContextVar[tuple[RenderLimits, float | None]] = ContextVar("genlib_row_budget",
                                                                    default=(RenderLimits(), None))


@contextmanager
def row_budget(limits: RenderLimits, seconds: float | None = None) -> Iterator[None]:
    """Apply ``limits`` (and a deadline ``seconds`` from now) to the code run in the block."""
    deadline = None if seconds is None else time.monotonic() + seconds
    token = _BUDGET.set((limits, deadline))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def check_output(params: Any, name: str, shape: tuple[int, int]) -> None:
    """LimitError naming ``params.<name>`` when an output of ``shape`` (H, W), which that field
    scales, would be larger than ``limits.max_side`` (checked before anything is allocated)."""
    cap = current_limits().max_side
    if max(shape) > cap:
        raise LimitError(f"{type(params).__name__}.{name}: the output would be {shape[1]}x{shape[0]} px, over "
                         f"limits.max_side ({cap}), got {getattr(params, name)!r}")


def current_limits() -> RenderLimits:
    """The limits of the row being rendered (defaults outside a row)."""
    return _BUDGET.get()[0]


def check_deadline() -> None:
    """RowTimeout when the current row's deadline has passed (no-op outside a row)."""
    limits, deadline = _BUDGET.get()
    if deadline is not None and time.monotonic() > deadline:
        raise RowTimeout(f"exceeded limits.max_seconds ({limits.max_seconds:g} s)")
