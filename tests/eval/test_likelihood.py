"""VAE ELBO/IWAE bounds and the palette baselines of PixelRNN evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from genlib.eval.likelihood import position_counts, uniform_bits, unigram_bits, vae_bounds
from genlib.models.vae import VAE, VAEConfig
from tests.models.common import fixed_batch


@pytest.fixture(scope="module")
def vae() -> VAE:
    torch.manual_seed(0)
    family = VAE(VAEConfig(image_size=32, latent_dim=4, nf=8))
    batch = fixed_batch(16, 32, seed=1)
    for _ in range(20):  # a little training: a posterior that is not the prior
        family.train_step(batch)
    return family


def bounds(vae, x, k, seed=0, **kw):
    return vae_bounds(vae, x, k, torch.Generator().manual_seed(seed), **kw)


def test_iwae_is_at_least_as_tight_as_the_elbo(vae):
    x = fixed_batch(8, 32, seed=2)["image"]
    elbo, iwae = bounds(vae, x, 32)
    assert elbo.shape == iwae.shape == (8,)
    assert torch.all(iwae <= elbo + 1e-9)  # same draws: Jensen, image by image
    assert torch.all(elbo - iwae > 0)       # and strictly tighter for a non-degenerate posterior
    e1, i1 = bounds(vae, x, 1)
    assert torch.allclose(e1, i1)            # one draw: the two bounds coincide
    assert iwae.mean() < i1.mean()           # more draws, tighter bound


def test_bounds_are_seeded_and_chunking_does_not_change_them(vae):
    x = fixed_batch(4, 32, seed=3)["image"]
    a = bounds(vae, x, 16)
    b = bounds(vae, x, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], bounds(vae, x, 16, seed=1)[1])
    elbo, iwae = bounds(vae, x, 16, chunk=4)  # 1 draw per forward instead of 16: same draws, same numbers
    assert torch.allclose(elbo, a[0]) and torch.allclose(iwae, a[1])


def test_monte_carlo_elbo_agrees_with_the_training_metric(vae):
    batch = fixed_batch(8, 32, seed=4)
    elbo, _ = bounds(vae, batch["image"], 256)
    nelbo = vae.evaluate([batch])["nelbo"]  # analytic KL, one draw: another estimate of the same bound
    assert elbo.mean().item() == pytest.approx(nelbo, rel=0.01)
    assert vae.encoder.training and vae.decoder.training  # modes restored


def test_iwae_rejects_k_below_one(vae):
    with pytest.raises(ValueError, match="k must be"):
        bounds(vae, fixed_batch(2, 32)["image"], 0)


def test_unigram_counts_and_bits_on_known_frequencies():
    # 4 training images of 1 x 2 pixels, K = 4 colours
    train = torch.tensor([[[0, 3]], [[0, 3]], [[0, 2]], [[1, 3]]])
    counts, n = position_counts([train[:3], train[3:]], 4)
    assert n == 4 and counts.shape == (1, 2, 4)
    assert counts[0, 0].tolist() == [3, 1, 0, 0] and counts[0, 1].tolist() == [0, 0, 1, 3]
    # add-one smoothing: p = (count + 1) / (4 + 4)
    held_out = torch.tensor([[[0, 3]], [[2, 0]]])
    bits = unigram_bits(held_out, counts, n)
    expected_first = (-math.log2(4 / 8) - math.log2(4 / 8)) / 2   # seen often at both positions
    expected_second = (-math.log2(1 / 8) - math.log2(1 / 8)) / 2  # never seen there: finite thanks to +1
    assert bits.tolist() == pytest.approx([expected_first, expected_second])
    assert uniform_bits(4) == 2.0 and uniform_bits(176) == pytest.approx(7.459, abs=1e-3)
