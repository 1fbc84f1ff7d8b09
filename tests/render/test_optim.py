"""The shared optimisation core on problems with known answers."""

from __future__ import annotations

import pytest
import torch

from genlib.render.base import RenderError, to_image, to_tensor
from genlib.render.optim import clamp01, optimize, optimize_batch


def quadratic(target):
    return lambda p: {"loss": ((p - target) ** 2).sum(), "dist": (p - target).abs().max()}


@pytest.mark.parametrize("method, lr, iters", [("lbfgs", 1.0, 30), ("adam", 0.1, 300),
                                               ("normalized_gd", 0.01, 300), ("momentum", 0.05, 200)])
def test_methods_reach_the_minimum(method, lr, iters):
    torch.manual_seed(0)
    target = torch.rand(1, 3, 4, 4)
    res = optimize(torch.zeros_like(target), quadratic(target), method=method, lr=lr, iterations=iters)
    assert res.final["dist"] < 0.05, res.final
    assert res.history[-1] < res.history[0] and res.iterations <= iters
    assert len(res.history) == res.iterations


def test_projection_keeps_the_constraint():
    target = torch.full((1, 3, 2, 2), 2.0)  # unreachable: the projection clips to [0, 1]
    res = optimize(torch.zeros_like(target), quadratic(target), method="lbfgs", iterations=40, project=clamp01)
    assert res.param.max() <= 1.0 and res.param.min() >= 0.0
    assert torch.allclose(res.param, torch.ones_like(target), atol=1e-3)


def test_nan_loss_is_a_render_error():
    with pytest.raises(RenderError, match="loss became nan at iteration 0"):
        optimize(torch.zeros(3), lambda p: {"loss": (p * float("nan")).sum()}, method="adam")


def test_image_tensor_round_trip():
    import numpy as np

    img = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    t = to_tensor(img)
    assert t.shape == (1, 3, 5, 7) and 0 <= t.min() and t.max() <= 1
    assert (to_image(t) == img).all()
    with pytest.raises(RenderError, match="expected a uint8 RGB image"):
        to_tensor(img[..., :2])


# ----------------------------------------------------------------------------- L-BFGS-B


def _recording(objective, seen: list):
    """The objective, plus a copy of every point it is evaluated at."""
    def wrapped(p):
        seen.append(p.detach().clone())
        return objective(p)
    return wrapped


def test_lbfgsb_evaluates_only_inside_the_box_and_finds_the_box_optimum():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 6, 6) * 3 - 1  # two thirds of it outside [0, 1]
    seen: list[torch.Tensor] = []
    res = optimize(torch.full_like(target, 0.5), _recording(quadratic(target), seen), method="lbfgsb",
                   iterations=50, bounds=(0.0, 1.0))
    assert seen and all(float(p.min()) >= 0.0 and float(p.max()) <= 1.0 for p in seen)  # exactly, every evaluation
    assert torch.allclose(res.param, target.clamp(0, 1), atol=1e-5)  # the constrained minimum: the clipped target
    assert res.param.dtype == target.dtype and res.param.shape == target.shape
    assert res.final["loss"] == pytest.approx(float(((target.clamp(0, 1) - target) ** 2).sum()), rel=1e-5)
    assert len(res.history) == res.iterations == len(seen) <= 50


def test_lbfgsb_spends_exactly_the_budget_and_returns_the_best_point():
    torch.manual_seed(1)
    a = torch.randn(40, 40)
    hard = lambda p: {"loss": ((a @ p.flatten()) ** 2).sum() + (p - 0.3).pow(4).sum()}  # noqa: E731
    seen: list[torch.Tensor] = []
    res = optimize(torch.rand(40), _recording(hard, seen), method="lbfgsb", iterations=7, bounds=(-0.5, 0.5))
    assert res.iterations == 7 == len(seen) == len(res.history)
    best = min(range(7), key=lambda i: res.history[i])
    assert torch.equal(res.param, seen[best]) and res.final["loss"] == res.history[best]
    assert float(res.param.abs().max()) <= 0.5


def test_lbfgsb_without_bounds_is_plain_lbfgs():
    torch.manual_seed(2)
    target = torch.randn(2, 5) * 4
    res = optimize(torch.zeros_like(target), quadratic(target), method="lbfgsb", iterations=30)
    assert res.final["dist"] < 1e-4


def test_snapshots_keep_every_nth_evaluation_and_thin_past_the_limit():
    from genlib.render.optim import Snapshots

    snaps = Snapshots(2, lambda p: p.clone(), limit=4)
    res = optimize(torch.zeros(1), lambda p: {"loss": (p - 1).pow(2).sum()}, method="adam", lr=0.1,
                   iterations=6, callback=snaps)
    assert res.iterations == 6 and len(snaps.frames) == 3 and snaps.every == 2  # evaluations 2, 4, 6
    assert float(snaps.frames[0]) == pytest.approx(0.1)  # evaluation 2 sees the param after one Adam step
    more = Snapshots(1, lambda p: float(p), limit=4)
    for i in range(1, 11):
        more(i, {"loss": 0.0}, torch.tensor(float(i)))
    # 1..5 -> over the limit: keep 2, 4 (every 2); then 6, 8, 10 -> over again: keep 4, 8 (every 4)
    assert more.every == 4 and more.frames == [4.0, 8.0]
    assert Snapshots.maybe(0, float) is None


# ----------------------------------------------------------------------------- batches


def _rows_objective(targets: torch.Tensor, calls: list | None = None, nan_row: int | None = None, nan_at: int = 0):
    """Per-row objective of x [b, n] (rows of ``targets [B, n]``), computed one row at a time so the batch
    cannot change a single float: what optimize_batch itself does to rows is all that is tested.
    Row ``nan_row`` returns NaN from its ``nan_at``-th evaluation on; ``calls`` records each call's rows."""
    seen = [0] * len(targets)

    def objective(x, rows):
        if calls is not None:
            calls.append(list(rows))
        losses, dists = [], []
        for k, r in enumerate(rows):
            d = x[k] - targets[r]
            loss = d.pow(2).sum() + 0.1 * x[k].pow(4).sum()  # not quadratic: L-BFGS line searches do work
            seen[r] += 1
            losses.append(loss * float("nan") if r == nan_row and seen[r] > nan_at else loss)
            dists.append(d.abs().max())
        return {"loss": torch.stack(losses), "dist": torch.stack(dists)}

    return objective


METHOD_LR = {"lbfgs": 1.0, "lbfgsb": 1.0, "adam": 0.05, "normalized_gd": 0.02, "momentum": 0.02}


@pytest.mark.parametrize("method", METHOD_LR)
def test_each_row_of_a_batch_is_optimised_exactly_as_alone(method):
    torch.manual_seed(3)
    targets = torch.randn(4, 10)
    start = torch.rand(4, 10) - 0.5
    budgets = [7, 12, 9, 4]
    kw = dict(method=method, lr=METHOD_LR[method], bounds=(-0.8, 0.8), project=lambda x: x.clamp_(-0.8, 0.8))
    alone = [optimize_batch(start[j:j + 1], _rows_objective(targets[j:j + 1]), iterations=budgets[j], **kw)[0]
             for j in range(4)]
    together = optimize_batch(start, _rows_objective(targets), iterations=budgets, **kw)
    order = [2, 0, 3]  # another composition and order
    mixed = optimize_batch(start[order], _rows_objective(targets[order]), iterations=[budgets[j] for j in order], **kw)
    for j, res in [*enumerate(together), *zip(order, mixed)]:
        assert torch.equal(res.param, alone[j].param), (method, j)
        assert res.history == alone[j].history and res.final == alone[j].final
        assert res.iterations == alone[j].iterations == len(res.history) <= budgets[j] + 3  # lbfgs: burst overshoot
    if method != "lbfgs":
        assert [r.iterations for r in together] == budgets  # per-row budgets, spent exactly
    assert together[1].history[-1] < together[1].history[0]


@pytest.mark.parametrize("method", ["lbfgsb", "momentum"])
def test_a_row_with_a_nan_loss_fails_alone(method):
    torch.manual_seed(4)
    targets, start = torch.randn(3, 6), torch.zeros(3, 6)
    kw = dict(method=method, lr=METHOD_LR[method], iterations=10)
    results = optimize_batch(start, _rows_objective(targets, nan_row=1, nan_at=3), **kw)
    assert isinstance(results[1], RenderError) and str(results[1]) == "loss became nan at iteration 3"
    for j in (0, 2):
        alone = optimize_batch(start[j:j + 1], _rows_objective(targets[j:j + 1]), **kw)[0]
        assert torch.equal(results[j].param, alone.param) and results[j].history == alone.history


def test_lockstep_evaluates_the_running_rows_together():
    """Each L-BFGS-B row runs in its own thread; every objective call holds all rows still running."""
    torch.manual_seed(5)
    calls: list[list[int]] = []
    results = optimize_batch(torch.zeros(3, 8), _rows_objective(torch.randn(3, 8), calls), method="lbfgsb",
                             iterations=[3, 6, 4])
    assert calls == [[0, 1, 2]] * 3 + [[1, 2]] + [[1]] * 2
    assert [r.iterations for r in results] == [3, 6, 4]


@pytest.mark.parametrize("method", ["lbfgs", "lbfgsb", "adam"])
def test_a_deadline_stops_the_rows_still_running_and_leaves_no_thread(method):
    """Past the deadline every row still running fails with RowTimeout; a row that had
    finished keeps its result (a slow neighbour in its batch does not take it down)."""
    import threading
    import time

    from genlib.render.limits import RenderLimits, RowTimeout, row_budget

    def slow(x, rows):  # Rosenbrock per row: far from converged after a few dozen evaluations
        time.sleep(0.02)
        return {"loss": (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)}

    start = torch.full((3, 4), -1.2)
    optimize_batch(start[:1], slow, method=method, iterations=1)  # warm-up: torch.optim's first use takes ~1 s
    before = threading.active_count()
    with row_budget(RenderLimits(), seconds=0.3):
        quick, slow_row, other = optimize_batch(start, slow, method=method, iterations=[2, 10**6, 10**6], lr=1e-3)
    assert not isinstance(quick, Exception) and 2 <= quick.iterations <= 4  # L-BFGS: its line search may add one
    for row in (slow_row, other):
        assert isinstance(row, RowTimeout) and "exceeded limits.max_seconds" in str(row)
    assert threading.active_count() == before
    with row_budget(RenderLimits(), seconds=0.1), pytest.raises(RowTimeout):  # one row: raised, as before
        optimize(start[0], lambda x: {"loss": slow(x[None], [0])["loss"][0]}, method=method, iterations=10**6, lr=1e-3)
    assert threading.active_count() == before
    with pytest.raises(ZeroDivisionError):  # a bug in the objective surfaces as itself, threads joined
        optimize_batch(torch.ones(2, 4), lambda x, rows: {"loss": x.sum(1) * (1 / len(rows[2:]))},
                       method="lbfgsb", iterations=5)
    assert threading.active_count() == before


def test_batch_arguments_are_checked():
    with pytest.raises(ValueError, match="2 rows need one budget"):
        optimize_batch(torch.zeros(2, 3), _rows_objective(torch.zeros(2, 3)), iterations=[3])
    with pytest.raises(RenderError, match="iterations must be >= 1, got 0"):
        optimize_batch(torch.zeros(2, 3), _rows_objective(torch.zeros(2, 3)), iterations=[3, 0])
    with pytest.raises(RenderError, match="unknown optimisation method 'sgd'"):
        optimize_batch(torch.zeros(1, 3), _rows_objective(torch.zeros(1, 3)), method="sgd")
