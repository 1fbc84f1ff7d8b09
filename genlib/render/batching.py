"""Render several rows of one kind as batches (single-device, Ray-free).

An actor gets up to ``RenderConfig.batch_size`` request rows per call. Rendered one
after another, every row pays its own forward/backward passes; rows that can share
them are rendered together instead::

    results = render_batch(renderer, "style", [(image, params), ...])   # -> [RenderOutput | Exception]

A renderer opts in with two methods (discovered here, not declared anywhere else):

- ``batch_key(source, params) -> hashable | None``: rows with equal keys can share a
  batch (same resolved size, optimiser and the params that shape the objective);
  None = render this row alone. Cheap: no image is resized, no model run.
- ``render_many(sources, params_list) -> list[RenderOutput | Exception]``: renders
  the rows together, one result per row in order; a row that fails (unreadable style
  image, NaN loss) comes back as its exception and the others go on. The renderer's
  ``__call__`` is ``render_many`` of one row (:func:`single`), so there is one code path.

Guarantees (what the runner relies on):

- nothing a render decides depends on which rows shared its batch: targets, seeds,
  jitter, gradient normalisation, budget and early stopping stay per row
  (``genlib.render.optim``), so with a network applied one row at a time a batched row is
  bit-identical to its render alone (``tests/render/test_batching.py``). The network's
  batched kernels round differently (~1e-7 relative): a mask completion's z search damps
  that (equal outputs), while style transfer and DeepDream amplify it over a run into an
  equally good but not pixel-identical image -- as another torch thread count or device
  does. Pixel-identical reruns of those kinds need batches of one (``max_batch=1``);
- one result per item, in order; no exception escapes except those of the caller's
  own making (KeyboardInterrupt);
- a group whose batched call raises (a bug, out of memory) is rendered again one row at
  a time, so a bad row still fails alone; a RowTimeout (the deadline of the call,
  ``genlib.render.limits.row_budget``, passed) fails the whole group: every row in it
  ran that long.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

from genlib.render.base import RenderError, RenderOutput
from genlib.render.limits import RowTimeout

Item = tuple[Any, Any]  # (source: decoded image uint8 [H, W, 3] or input URI, typed params)
Result = RenderOutput | Exception
Job = TypeVar("Job")


def render_batch(renderer: Any, kind: str, items: Sequence[Item], max_batch: int | None = None) -> list[Result]:
    """Render ``items`` of kind ``kind`` with ``renderer``: compatible rows together (at most
    ``max_batch`` per batch; None = no cap), the others one by one. One result per item, in order."""
    results: list[Result | None] = [None] * len(items)
    for group in plan(renderer, items, max_batch):
        if len(group) == 1:
            rendered = [_alone(renderer, items[group[0]])]
        else:
            rendered = _together(renderer, kind, [items[i] for i in group])
        for i, result in zip(group, rendered):
            results[i] = result
    return results  # every slot is filled: the groups cover all items


def plan(renderer: Any, items: Sequence[Item], max_batch: int | None = None) -> list[list[int]]:
    """Item positions grouped by ``renderer.batch_key`` (first appearance first), groups cut into
    chunks of ``max_batch``. Items without a key (no ``render_many``, key None, or the key itself
    fails: rendering alone reports that error) are groups of one."""
    batchable = callable(getattr(renderer, "render_many", None)) and callable(getattr(renderer, "batch_key", None))
    keys: list[Hashable | None] = []
    for source, params in items:
        try:
            keys.append(renderer.batch_key(source, params) if batchable else None)
        except Exception:
            keys.append(None)
    chunks = []
    for group in groups(keys):
        step = max_batch or len(group)
        chunks += [group[i:i + step] for i in range(0, len(group), step)]
    return chunks


def groups(keys: Iterable[Hashable | None]) -> list[list[int]]:
    """Positions with equal keys together, in order of first appearance; a None key is alone."""
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(("alone", i) if key is None else ("key", key), []).append(i)
    return list(out.values())


def render_jobs(items: Sequence[Any], prepare: Callable[[Any], Job], key: Callable[[Job], Hashable],
                render: Callable[[list[Job]], list[Result]]) -> list[Result]:
    """A renderer's ``render_many`` skeleton: ``prepare`` each item into a job (an exception fails that
    row alone), then ``render`` the jobs of each ``key`` as one batch. One result per item, in order."""
    results: list[Result | None] = [None] * len(items)
    jobs: dict[int, Job] = {}
    for i, item in enumerate(items):
        try:
            jobs[i] = prepare(item)
        except Exception as exc:
            results[i] = exc
    rows = list(jobs)
    for group in groups(key(jobs[i]) for i in rows):
        for k, result in zip(group, render([jobs[rows[k]] for k in group])):
            results[rows[k]] = result
    return results  # every slot is filled: prepared or failed


def single(results: Sequence[Result]) -> RenderOutput:
    """The one result of a ``render_many`` call of one row; its exception is raised."""
    (result,) = results
    if isinstance(result, Exception):
        raise result
    return result


def _alone(renderer: Any, item: Item) -> Result:
    try:
        return renderer(*item)
    except Exception as exc:
        return exc


def _together(renderer: Any, kind: str, items: list[Item]) -> list[Result]:
    try:
        results = list(renderer.render_many([s for s, _ in items], [p for _, p in items]))
    except RowTimeout as exc:
        return [exc] * len(items)
    except Exception:  # the batch as a whole failed: isolate the row that caused it
        return [_alone(renderer, item) for item in items]
    if len(results) != len(items):
        error = RenderError(f"{kind}: render_many returned {len(results)} results for {len(items)} rows")
        return [error] * len(items)
    return results
