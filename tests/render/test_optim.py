"""The shared optimisation core on problems with known answers."""

from __future__ import annotations

import pytest
import torch

from genlib.render.base import RenderError, to_image, to_tensor
from genlib.render.optim import clamp01, optimize


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
