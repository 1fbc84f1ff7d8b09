"""One optimisation core for every render kind.

Style transfer, DeepDream and latent search differ only in the parameter they
optimise (pixels or z) and the objective; all of them call :func:`optimize_batch`
(or :func:`optimize`, its batch of one).

A *batch* is ``B`` independent problems stacked along dim 0 of ``param [B, ...]``
(row ``j`` = one render). ``objective(x, rows) -> dict`` gets the rows still
running, ``x [b, ...]`` (``b <= B``; ``rows[k]`` is the row of ``x[k]``), and returns
named per-row tensors ``[b]``, one of them ``"loss"`` (minimised). Rows must not
interact (frozen networks in eval mode, per-row targets), so the gradient of the
summed loss w.r.t. ``x[k]`` is row ``rows[k]``'s own gradient, and every row runs
exactly the optimisation it would run alone -- its own budget (``iterations`` per
row), optimiser state, stopping, non-finite-loss error and callback -- so its result
differs from the unbatched one only by how the objective's batched kernels round.
Methods:

- ``lbfgs``: L-BFGS with strong-Wolfe line search (Gatys et al.); iterations
  count objective evaluations, as classic implementations do. ``project`` runs
  between bursts of at most 20 evaluations, so after a projection that moved
  the iterate the curvature history describes a point L-BFGS is no longer at.
- ``lbfgsb``: scipy's L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995; what Gatys' and
  the Keras example use) on the flattened parameter in float64, with the box
  ``bounds``: every evaluated point lies inside the box, so no projection is
  needed and the curvature history stays valid. Iterations count objective
  evaluations exactly (scipy's own ``maxfun`` may overshoot inside a line
  search; the budget is enforced here), and the best evaluated point is returned.
- ``adam``: Adam (Kingma & Ba 2015, Algorithm 1: betas 0.9 / 0.999, eps 1e-8)
  with learning rate ``lr``.
- ``normalized_gd``: ``p -= lr * g / mean|g|`` per row (DeepDream's normalised
  gradient step; DeepDream passes ``-activation`` as the loss to ascend).
- ``momentum``: projected gradient descent with momentum (Yeh et al.'s z search).

How a batch runs. The first-order methods are elementwise: each step gathers the
rows still running into one ``[b, ...]`` tensor (with their optimiser state),
evaluates and updates them together, and a row leaves the batch once its budget
is spent. L-BFGS couples all coordinates of its parameter (line search, curvature
history), so a joint ``[B, ...]`` run would make rows depend on each other; instead
each row runs its own, unchanged single-image L-BFGS in a thread, and
:class:`_Lockstep` answers their objective requests together: it waits until every
row still running has asked for ``f`` and ``grad f`` at its own point, evaluates
them as one batch, and hands each row its answer (one thread runs at a time, so
this is a plain loop over the rows in all but name). A batch of one is the same code.

``project(x)`` (in place, under no_grad, ``x [b, ...]``) runs after every update,
e.g. clamping pixels to [0, 1] or z to [-1, 1] (``lbfgsb``: once, on the result).
A non-finite loss fails its row with a RenderError (the other rows go on).
``callbacks[j](count, terms, x)`` sees every evaluation of row ``j``: its 1-based
number, the float terms and the evaluated parameter ``[1, ...]`` (detached;
:class:`Snapshots` turns that into progress frames). The render's deadline
(:func:`genlib.render.limits.check_deadline`) is checked before every batched
evaluation: past it, every row still running fails with RowTimeout (rows that finished keep
their results) and the batch ends.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits

from genlib.render.base import RenderError
from genlib.render.limits import RowTimeout, check_deadline

Objective = Callable[[torch.Tensor], dict[str, torch.Tensor]]
BatchObjective = Callable[[torch.Tensor, list[int]], dict[str, torch.Tensor]]
Callback = Callable[[int, dict[str, float], torch.Tensor], None]
Project = Callable[[torch.Tensor], None]
Method = Literal["lbfgs", "lbfgsb", "adam", "normalized_gd", "momentum"]
METHODS = ("lbfgs", "lbfgsb", "adam", "normalized_gd", "momentum")
MAX_FRAMES = 64  # Snapshots keeps at most this many frames (thinning evenly past it)
# lbfgsb's history (scipy's maxcor): scipy's default, as the Keras example runs it. Its per-evaluation
# vector work grows with it (~20 ms at 50 vs ~6 ms at 10 for a 128 px image, one thread).
LBFGSB_HISTORY = 10
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass
class OptimResult:
    param: torch.Tensor
    iterations: int
    final: dict[str, float]
    history: list[float] = field(default_factory=list)  # loss per iteration


def optimize(param: torch.Tensor, objective: Objective, *, method: Method = "lbfgs", iterations: int = 100,
             lr: float = 1.0, momentum: float = 0.9, project: Project | None = None,
             bounds: tuple[float, float] | None = None, callback: Callback | None = None) -> OptimResult:
    """Minimise ``objective(param)["loss"]`` (scalar terms) over ``param``: a batch of one.

    ``bounds = (low, high)`` is the box of ``lbfgsb`` (None: unbounded); other methods use ``project``."""

    def batched(x: torch.Tensor, rows: list[int]) -> dict[str, torch.Tensor]:  # x [1, *param.shape]
        return {k: v.reshape(1) for k, v in objective(x[0]).items()}

    (result,) = optimize_batch(param[None], batched, method=method, iterations=iterations, lr=lr,
                               momentum=momentum, project=project and (lambda x: project(x[0])), bounds=bounds,
                               callbacks=[callback and (lambda n, terms, x: callback(n, terms, x[0]))])
    if isinstance(result, Exception):
        raise result
    result.param = result.param[0]
    return result


def optimize_batch(param: torch.Tensor, objective: BatchObjective, *, method: Method = "lbfgs",
                   iterations: int | Sequence[int] = 100, lr: float = 1.0, momentum: float = 0.9,
                   project: Project | None = None, bounds: tuple[float, float] | None = None,
                   callbacks: Sequence[Callback | None] | None = None) -> list[OptimResult | Exception]:
    """Minimise each row of ``param [B, ...]`` on its own (module doc); ``iterations`` is one budget for
    every row or one per row. Returns one OptimResult (``param [1, ...]``) per row, or the row's error
    (RenderError for a non-finite loss, RowTimeout for a row still running at the deadline)."""
    count = param.shape[0]
    budgets = [iterations] * count if isinstance(iterations, int) else list(iterations)
    if len(budgets) != count or len(callbacks or [None] * count) != count:
        raise ValueError(f"optimize_batch: {count} rows need one budget and one callback each")
    for budget in budgets:
        if budget < 1:
            raise RenderError(f"iterations must be >= 1, got {budget}")
    if method not in METHODS:
        raise RenderError(f"unknown optimisation method {method!r}")
    batch = _Batch(objective, [_Row(n, cb) for n, cb in zip(budgets, callbacks or [None] * count)])
    start = param.detach().clone(memory_format=torch.contiguous_format)  # L-BFGS views grads flat
    if method in ("lbfgs", "lbfgsb"):
        _lockstep(start, batch, method, lr, bounds, project)
    else:
        _first_order(start, batch, method, lr, momentum, project)
    return [row.result() for row in batch.rows]


class _Row:
    """One row's bookkeeping: its budget, evaluation count, loss history, last terms, error."""

    def __init__(self, budget: int, callback: Callback | None) -> None:
        self.budget, self.callback = budget, callback
        self.count, self.history, self.last = 0, [], {}
        self.error: Exception | None = None
        self.param: torch.Tensor | None = None  # [1, ...] once finished

    @property
    def running(self) -> bool:
        return self.error is None and self.count < self.budget

    def record(self, terms: dict[str, float], x: torch.Tensor) -> None:
        self.count += 1
        self.last = terms
        self.history.append(terms["loss"])
        if self.callback:
            self.callback(self.count, terms, x)

    def fail(self, error: Exception) -> None:
        if self.error is None:  # the first error is the row's story
            self.error = error

    def result(self) -> OptimResult | Exception:
        return self.error or OptimResult(self.param, self.count, self.last, self.history)


class _Batch:
    """Evaluates the objective on some rows, checks each row's loss, keeps the rows' records."""

    def __init__(self, objective: BatchObjective, rows: list[_Row]) -> None:
        self.objective, self.rows = objective, rows

    def __call__(self, x: torch.Tensor, rows: list[int]) -> list[int]:
        """Evaluate ``rows`` at ``x [b, ...]`` (a leaf) and back-propagate into ``x.grad``; returns the
        positions ``k`` whose loss was finite (the other rows are failed)."""
        try:
            check_deadline()  # the render's max_seconds, between evaluations
        except RowTimeout as exc:  # the rows still running stop; rows already finished keep their results
            for row in rows:
                self.rows[row].fail(exc)
            return []
        with torch.enable_grad():
            terms = self.objective(x, rows)
            names = list(terms)
            # one device -> host copy for every term of every row: [terms][b]
            table = torch.stack([terms[k].detach().reshape(len(rows)).double() for k in names]).cpu().tolist()
            good = []
            for k, row in enumerate(rows):
                values = {name: table[i][k] for i, name in enumerate(names)}
                if math.isfinite(values["loss"]):
                    self.rows[row].record(values, x[k:k + 1].detach())
                    good.append(k)
                else:
                    count = self.rows[row].count
                    self.rows[row].fail(RenderError(f"loss became {values['loss']} at iteration {count}"))
            if good:  # a failed row's NaN stays out of the sum (rows do not interact, but be safe)
                loss = terms["loss"] if len(good) == len(rows) else terms["loss"][good]
                loss.sum().backward()
        return good


# ----------------------------------------------------------------------------- first-order methods


def _first_order(param: torch.Tensor, batch: _Batch, method: str, lr: float, momentum: float,
                 project: Project | None) -> None:
    """Adam / normalised GD / momentum on the running rows of ``param [B, ...]``, in place."""
    state = [torch.zeros_like(param) for _ in range(2 if method == "adam" else 1)]  # per-row moments
    running, step = list(range(len(batch.rows))), 0
    while running:
        step += 1
        index = torch.tensor(running, device=param.device)
        x = param.index_select(0, index).requires_grad_(True)  # [b, ...]: a fresh leaf
        good = batch(x, running)
        if good:
            keep = index[good]
            with torch.no_grad():
                moved = x.detach()[good]
                moments = [s.index_select(0, keep) for s in state]
                _step(method, moved, x.grad[good], moments, step, lr, momentum)
                if project:
                    project(moved)
                param.index_copy_(0, keep, moved)
                for s, m in zip(state, moments):
                    s.index_copy_(0, keep, m)
        running = [running[k] for k in good if batch.rows[running[k]].running]
    for j, row in enumerate(batch.rows):
        row.param = param[j:j + 1]


def _step(method: str, x: torch.Tensor, g: torch.Tensor, moments: list[torch.Tensor], step: int, lr: float,
          momentum: float) -> None:
    """One update of ``x [b, ...]`` in place from its gradient ``g`` and its rows' ``moments``
    (every row in a step has taken the same number of steps: rows only ever leave)."""
    if method == "adam":
        (b1, b2), (m, v) = ADAM_BETAS, moments
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2 ** step)).sqrt_().add_(ADAM_EPS)  # bias-corrected second moment
        x.addcdiv_(m, denom, value=-lr / (1 - b1 ** step))
    elif method == "normalized_gd":
        # Per-row mean |g|; the relative floor lets tiny gradients (random-init networks, ~1e-10) still step.
        scale = g.abs().flatten(1).mean(1).clamp_min(1e-30).view(-1, *[1] * (g.dim() - 1))
        x.sub_(lr * g / scale)
    else:  # momentum
        (velocity,) = moments
        velocity.mul_(momentum).add_(g)
        x.sub_(lr * velocity)


# ----------------------------------------------------------------------------- L-BFGS in lockstep


def _lockstep(param: torch.Tensor, batch: _Batch, method: str, lr: float, bounds: tuple[float, float] | None,
              project: Project | None) -> None:
    """One single-image L-BFGS per row of ``param [B, ...]``, their evaluations batched."""

    def solve(j: int, evaluate: _Evaluate) -> None:
        row = batch.rows[j]
        x = param[j:j + 1].clone()  # [1, ...]: this row's own parameter
        if method == "lbfgs":
            _lbfgs(x, evaluate, row, lr, project)
        else:
            _lbfgsb(x, evaluate, row, bounds, project)
        row.param = x.detach()

    # lbfgsb: one BLAS thread for the whole batch (threadpoolctl's limit is process-wide, so it is set
    # once here, not per row). L-BFGS-B's work between evaluations is vector ops over N pixels, which
    # multithreaded OpenBLAS makes 3-10x slower (thread hand-offs; worse on a busy machine).
    limit = threadpool_limits(limits=1, user_api="blas") if method == "lbfgsb" else nullcontext()
    with limit:
        _Lockstep(batch).run(solve)


_Evaluate = Callable[[torch.Tensor], tuple[float, torch.Tensor]]  # x [1, ...] -> (loss, grad [1, ...])


class _Stop(Exception):
    """Ends a row's optimiser thread when the batch as a whole stops (RowTimeout, a bug)."""


class _Lockstep:
    """Rows optimised by their own single-image optimisers, one thread each, whose objective
    requests are answered together by the calling thread (module doc).

    A round: every running row has asked (``_ask`` blocks its thread) -> one batched
    evaluation and backward -> the rows get their ``(loss, grad)`` (or RenderError) one at a
    time, each running its optimiser to its next request (or its end) before the next row is
    answered. So exactly one thread runs at any moment, as in a plain loop: no thread fights
    another for the GIL or the CPU, and the schedule is deterministic. If the evaluation
    raises, every row is stopped (``_Stop``), the threads are joined and the error is raised
    in the calling thread."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.cond = threading.Condition()
        self.asked: dict[int, torch.Tensor] = {}
        self.answers: dict[int, tuple[float, torch.Tensor] | Exception] = {}
        self.running: set[int] = set()
        self.stopped = False

    def run(self, solve: Callable[[int, _Evaluate], None]) -> None:
        threads = []
        try:
            for j in range(len(self.batch.rows)):  # each runs to its first request before the next starts
                threads.append(threading.Thread(target=self._work, args=(j, solve), name=f"genlib-optim-row{j}",
                                                daemon=True))
                with self.cond:
                    self.running.add(j)
                threads[-1].start()
                self._wait_for(j)
            while self.running:
                with self.cond:
                    asked, self.asked = self.asked, {}
                for j, answer in self._evaluate(asked).items():
                    with self.cond:
                        self.answers[j] = answer
                        self.cond.notify_all()
                    self._wait_for(j)
        finally:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()
            for t in threads:
                t.join()

    def _wait_for(self, j: int) -> None:
        """Until row ``j`` has asked again or finished."""
        with self.cond:
            self.cond.wait_for(lambda: j in self.asked or j not in self.running)

    def _work(self, j: int, solve: Callable[[int, _Evaluate], None]) -> None:
        try:
            solve(j, lambda x: self._ask(j, x))
        except _Stop:
            pass
        except Exception as exc:  # a non-finite loss (its RenderError), or a bug in this row's optimiser
            self.batch.rows[j].fail(exc)
        finally:
            with self.cond:
                self.running.discard(j)
                self.cond.notify_all()

    def _ask(self, j: int, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Row ``j``'s thread: f and grad f at ``x [1, ...]`` (blocks until the round is evaluated)."""
        with self.cond:
            if self.stopped:
                raise _Stop
            self.asked[j] = x
            self.cond.notify_all()
            self.cond.wait_for(lambda: j in self.answers or self.stopped)
            if j not in self.answers:
                raise _Stop
            answer = self.answers.pop(j)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _evaluate(self, asked: dict[int, torch.Tensor]) -> dict[int, tuple[float, torch.Tensor] | Exception]:
        rows = sorted(asked)
        x = torch.cat([asked[j] for j in rows]).requires_grad_(True)  # [b, ...]
        good = set(self.batch(x, rows))
        rec = self.batch.rows
        return {j: (rec[j].last["loss"], x.grad[k:k + 1].clone()) if k in good else rec[j].error
                for k, j in enumerate(rows)}


def _lbfgs(param: torch.Tensor, evaluate: _Evaluate, row: _Row, lr: float, project: Project | None) -> None:
    """torch L-BFGS on one row's ``param [1, ...]`` (in place) within ``row.budget`` evaluations."""
    param.requires_grad_(True)
    opt = torch.optim.LBFGS([param], lr=lr, max_iter=row.budget, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> float:
        loss, param.grad = evaluate(param.detach().clone())
        return loss

    # Several outer steps so `project` (e.g. clamping) runs between L-BFGS bursts.
    while row.count < row.budget:
        before = row.count
        opt.param_groups[0]["max_iter"] = min(20, row.budget - row.count)
        opt.param_groups[0]["max_eval"] = opt.param_groups[0]["max_iter"]  # the budget counts evaluations
        opt.step(closure)
        if project:
            with torch.no_grad():
                project(param)
        if row.count == before:  # converged: L-BFGS made no evaluation
            break


class _BudgetSpent(Exception):
    """Raised inside scipy's loop when the evaluation budget is used up."""


def _lbfgsb(param: torch.Tensor, evaluate: _Evaluate, row: _Row, bounds: tuple[float, float] | None,
            project: Project | None) -> None:
    """scipy L-BFGS-B over one row's ``param [1, ...]`` flattened to float64 ``[N]``; leaves the best
    evaluated point in ``param``."""
    low, high = bounds if bounds is not None else (-math.inf, math.inf)
    shape = param.shape
    x0 = np.clip(param.detach().double().cpu().numpy().ravel(), low, high)
    best = {"loss": math.inf, "x": x0, "terms": {}}

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        if row.count >= row.budget:
            raise _BudgetSpent
        with torch.no_grad():  # float64 x in [low, high] -> param's dtype stays in the box (bounds are exact)
            param.copy_(torch.from_numpy(x).view(shape))
        loss, grad = evaluate(param.clone())
        if loss < best["loss"]:
            best.update(loss=loss, x=x.copy(), terms=row.last)
        return loss, grad.double().cpu().numpy().ravel()

    # ftol = gtol = 0: stop on the budget (or a failed line search), as the lbfgs method's tiny tolerances do
    options = {"maxfun": row.budget, "maxiter": row.budget, "maxcor": LBFGSB_HISTORY, "ftol": 0.0, "gtol": 0.0}
    box = scipy.optimize.Bounds(np.full_like(x0, low), np.full_like(x0, high))
    try:
        scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options, bounds=box)
    except _BudgetSpent:
        pass
    with torch.no_grad():
        param.copy_(torch.from_numpy(best["x"]).view(shape))
        if project:
            project(param)
    row.last = best["terms"] or row.last


def clamp01(x: torch.Tensor) -> None:
    x.clamp_(0.0, 1.0)


class Snapshots:
    """Progress frames for ``RenderOutput.frames``, taken from :func:`optimize`'s callback.

    Every ``every``-th call (counted here, so callers that run ``optimize`` once per step,
    as DeepDream does, count steps too) renders the evaluated parameter with
    ``render(param) -> uint8 [H, W, 3]``. Past ``limit`` frames every other frame is
    dropped and the interval doubled, so memory stays bounded and frames evenly spaced.
    """

    def __init__(self, every: int, render: Callable[[torch.Tensor], np.ndarray], limit: int = MAX_FRAMES) -> None:
        self.every, self.render, self.limit = every, render, limit
        self.calls, self.frames = 0, []

    def __call__(self, count: int, terms: dict[str, float], param: torch.Tensor) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        self.frames.append(self.render(param))
        if len(self.frames) > self.limit:  # frames were taken at k * every, k = 1..n: keep even k
            self.frames, self.every = self.frames[1::2], self.every * 2

    @classmethod
    def maybe(cls, every: int, render: Callable[[torch.Tensor], np.ndarray]) -> Snapshots | None:
        """A Snapshots for ``every`` > 0, None (no callback) for 0."""
        return cls(every, render) if every else None
