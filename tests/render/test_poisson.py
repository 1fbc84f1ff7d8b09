"""Poisson blending on problems with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from genlib.render.base import RenderError
from genlib.render.masks import make_mask
from genlib.render.poisson import poisson_blend, poisson_system

H = W = 24


def _target(seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((H, W, channels))


def _ramp(offset: float) -> np.ndarray:
    """A linear ramp [H, W, 3] with a different slope per channel."""
    i, j = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([0.03 * i + 0.01 * j, -0.02 * i + 0.04 * j, 0.005 * (i + j)], axis=-1) + offset


MASKS = {"center": make_mask("center", (H, W), 0.25),
         "half": make_mask("half", (H, W)),  # the hole touches the image border (Neumann there)
         "blocks": make_mask("random_blocks", (H, W), 0.4, np.random.default_rng(3))}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_source_equal_to_target_returns_the_target(kind):
    target = _target()
    out = poisson_blend(target, target, MASKS[kind])
    np.testing.assert_allclose(out, target, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_constant_offset_source_gives_the_target(kind):
    # Only the source's gradients matter: an offset copy of the target (offset
    # everywhere, so the gradients across the hole's edge match too) gives the target back.
    target = _target(1)
    out = poisson_blend(target + 0.7, target, MASKS[kind])
    np.testing.assert_allclose(out, target, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_known_pixels_never_change(kind):
    mask = MASKS[kind]
    target, source = _target(2), _target(3) * 5 - 2  # unrelated source, another range
    out = poisson_blend(source, target, mask)
    assert (out[mask] == target[mask]).all()  # bit for bit
    assert not np.allclose(out[~mask], target[~mask])  # the hole did change


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_linear_ramp_is_reproduced(kind):
    # Known pixels: a ramp; hole of the target: garbage; source: the same ramp
    # at another offset -> the ramp, continued exactly through the hole.
    mask = MASKS[kind]
    expected = _ramp(0.2)
    target = np.where(mask[..., None], expected, _target(4))
    out = poisson_blend(_ramp(-3.0), target, mask)
    np.testing.assert_allclose(out, expected, atol=1e-9)


def test_membrane_interpolation_of_a_ramp():
    # A flat source (zero guidance) in an interior hole: the harmonic
    # interpolant of linear boundary values is that linear function.
    mask = MASKS["center"]
    expected = _ramp(0.5)
    out = poisson_blend(np.zeros_like(expected), np.where(mask[..., None], expected, 0.0), mask)
    np.testing.assert_allclose(out, expected, atol=1e-9)


def test_single_channel_and_degenerate_masks():
    mask = MASKS["center"]
    target = _target(5, channels=1)[..., 0]  # [H, W]
    out = poisson_blend(target + 1, target, mask)
    assert out.shape == (H, W)
    np.testing.assert_allclose(out, target, atol=1e-9)
    full = np.ones((H, W), dtype=bool)
    assert (poisson_blend(target * 0, target, full) == target).all()  # nothing to solve
    with pytest.raises(RenderError, match="no known pixel"):
        poisson_blend(target, target, ~full)
    with pytest.raises(RenderError, match="shapes differ"):
        poisson_blend(target[:-1], target, mask)


def test_system_is_symmetric_with_one_unknown_per_hole_pixel():
    mask = MASKS["blocks"]
    a, b = poisson_system(_target(6), _target(7), mask)
    n = int((~mask).sum())
    assert a.shape == (n, n) and b.shape == (n, 3)
    assert abs(a - a.T).max() == 0
    assert (a.diagonal() >= 2).all()  # every pixel has >= 2 in-image neighbours
