"""One optimisation core for every render kind.

Style transfer, DeepDream and latent search differ only in the parameter they
optimise (pixels or z) and the objective; all of them call :func:`optimize`.

``objective(param) -> dict`` returns named scalar tensors, one of them ``"loss"``
(minimised). Methods:

- ``lbfgs``: L-BFGS with strong-Wolfe line search (Gatys et al.); iterations
  count objective evaluations, as classic implementations do.
- ``adam``: Adam with learning rate ``lr``.
- ``normalized_gd``: ``p -= lr * g / mean|g|`` (DeepDream's normalised gradient
  step; DeepDream passes ``-activation`` as the loss to ascend).
- ``momentum``: projected gradient descent with momentum (Yeh et al.'s z search).

``project(param)`` (in place, under no_grad) runs after every update, e.g.
clamping pixels to [0, 1] or z to [-1, 1]. A non-finite loss raises RenderError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from genlib.render.base import RenderError

Objective = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Method = Literal["lbfgs", "adam", "normalized_gd", "momentum"]


@dataclass
class OptimResult:
    param: torch.Tensor
    iterations: int
    final: dict[str, float]
    history: list[float] = field(default_factory=list)  # loss per iteration


def optimize(param: torch.Tensor, objective: Objective, *, method: Method = "lbfgs", iterations: int = 100,
             lr: float = 1.0, momentum: float = 0.9, project: Callable[[torch.Tensor], None] | None = None,
             callback: Callable[[int, dict[str, float]], None] | None = None) -> OptimResult:
    """Minimise ``objective(param)["loss"]`` over ``param`` (a leaf tensor)."""
    if iterations < 1:
        raise RenderError(f"iterations must be >= 1, got {iterations}")
    param = param.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)  # L-BFGS views grads flat
    run = _Run(objective, callback)
    if method == "lbfgs":
        _lbfgs(param, run, iterations, lr, project)
    elif method in ("adam", "normalized_gd", "momentum"):
        _first_order(param, run, method, iterations, lr, momentum, project)
    else:
        raise RenderError(f"unknown optimisation method {method!r}")
    return OptimResult(param.detach(), run.count, run.last, run.history)


class _Run:
    """Evaluates the objective, checks it, and keeps the history."""

    def __init__(self, objective: Objective, callback) -> None:
        self.objective, self.callback = objective, callback
        self.count, self.history, self.last = 0, [], {}

    def __call__(self, param: torch.Tensor) -> torch.Tensor:
        terms = self.objective(param)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise RenderError(f"loss became {loss.item()} at iteration {self.count}")
        self.count += 1
        self.last = {k: float(v.detach()) for k, v in terms.items()}
        self.history.append(self.last["loss"])
        if self.callback:
            self.callback(self.count, self.last)
        return loss


def _lbfgs(param, run: _Run, iterations: int, lr: float, project) -> None:
    opt = torch.optim.LBFGS([param], lr=lr, max_iter=iterations, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = run(param)
        loss.backward()
        return loss

    # Several outer steps so `project` (e.g. clamping) runs between L-BFGS bursts.
    while run.count < iterations:
        before = run.count
        opt.param_groups[0]["max_iter"] = min(20, iterations - run.count)
        opt.param_groups[0]["max_eval"] = opt.param_groups[0]["max_iter"]  # the budget counts evaluations
        opt.step(closure)
        if project:
            with torch.no_grad():
                project(param)
        if run.count == before:  # converged: L-BFGS made no evaluation
            break


def _first_order(param, run: _Run, method: str, iterations: int, lr: float, momentum: float, project) -> None:
    adam = torch.optim.Adam([param], lr=lr) if method == "adam" else None
    velocity = torch.zeros_like(param)
    for _ in range(iterations):
        if adam:
            adam.zero_grad()
        param.grad = None
        run(param).backward()
        with torch.no_grad():
            if adam:
                adam.step()
            elif method == "normalized_gd":
                # Relative floor: tiny gradients (e.g. random-init networks, ~1e-10) still step.
                param -= lr * param.grad / param.grad.abs().mean().clamp_min(1e-30)
            else:  # momentum
                velocity.mul_(momentum).add_(param.grad)
                param -= lr * velocity
            if project:
                project(param)


def clamp01(x: torch.Tensor) -> None:
    x.clamp_(0.0, 1.0)
