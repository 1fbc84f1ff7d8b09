"""VAE family: shapes, likelihood numbers, training, sampling, checkpoints."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from genlib.config import ConfigError, from_dict
from genlib.models.vae import (DISCRETE_SHIFT_PER_DIM, VAE, Decoder, Encoder, VAEConfig,
                               gaussian_nll, kl_standard_normal)
from tests.models.common import PassThrough, fixed_batch

torch.set_num_threads(1)

METRICS = {"loss", "nelbo", "recon", "kl", "bits_per_dim", "grad_norm", "log_scale"}


def small_config(**kw) -> VAEConfig:
    """A tiny 32 px VAE that trains in milliseconds on CPU."""
    base = dict(image_size=32, latent_dim=16, nf=8)
    base.update(kw)
    return VAEConfig(**base)


# -- shapes -------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64, 128])
def test_encoder_decoder_shapes(size):
    torch.manual_seed(0)
    cfg = small_config(image_size=size, nf=4)
    mu, logvar = Encoder(cfg)(torch.rand(2, 3, size, size) * 2 - 1)
    assert mu.shape == logvar.shape == (2, 16)
    mean, log_scale = Decoder(cfg)(mu)
    assert mean.shape == (2, 3, size, size) and mean.abs().max() <= 1
    assert log_scale.shape == () and log_scale.item() == pytest.approx(-2.0)


@pytest.mark.parametrize("size", [32, 64])
def test_train_step_backward_shapes(size):
    torch.manual_seed(0)
    fam = VAE(small_config(image_size=size))
    m = fam.train_step(fixed_batch(4, size))
    assert set(m) == METRICS and all(math.isfinite(v) for v in m.values())
    for net in fam.networks.values():
        for p in net.parameters():
            assert p.grad is not None and p.grad.shape == p.shape


# -- likelihood terms -------------------------------------------------------------
def test_gaussian_nll_and_kl_match_torch_distributions():
    torch.manual_seed(0)
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    log_scale = torch.tensor(-0.7)
    ref = -Normal(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_nll(x, mean, log_scale), ref, atol=1e-4)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    ref_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_standard_normal(mu, logvar), ref_kl, atol=1e-4)


def test_recon_is_pinned_discrete_space_nll():
    """Mean forced to 0 and sigma fixed: recon has a closed form in nats."""
    torch.manual_seed(0)
    fam = VAE(small_config(dequantize=False, learn_scale=False, init_log_scale=-1.0))
    last = fam.decoder.main[-2]  # ConvTranspose2d before tanh
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    x = fixed_batch(4)["image"]
    m = fam.evaluate([{"image": x, "key": []}])
    dims = 3 * 32 * 32
    per_image = 0.5 * (x / math.exp(-1.0)).pow(2).flatten(1).sum(1) \
        + dims * (-1.0 + 0.5 * math.log(2 * math.pi) + math.log(127.5))
    assert DISCRETE_SHIFT_PER_DIM == pytest.approx(math.log(127.5))
    assert m["recon"] == pytest.approx(per_image.mean().item(), rel=1e-5)


def test_evaluate_formulas_and_determinism():
    torch.manual_seed(0)
    fam = VAE(small_config(beta=0.5))
    batches = [fixed_batch(8, seed=1), fixed_batch(4, seed=2)]
    m1, m2 = fam.evaluate(batches), fam.evaluate(batches)
    assert m1 == m2 and m1["n_images"] == 12
    assert all(math.isfinite(v) for v in m1.values())
    assert m1["nelbo"] == pytest.approx(m1["recon"] + m1["kl"])
    assert m1["loss"] == pytest.approx(m1["recon"] + 0.5 * m1["kl"])
    assert m1["bits_per_dim"] == pytest.approx(m1["nelbo"] / (3 * 32 * 32 * math.log(2)))
    assert m1["kl"] >= 0
    assert 0 < m1["bits_per_dim"] < 30  # a sane scale at init (8-bit space)
    assert fam.encoder.training and fam.decoder.training
    with pytest.raises(ValueError):
        fam.evaluate([])


# -- training -------------------------------------------------------------------------
def test_train_steps_lower_nelbo_on_fixed_batch():
    torch.manual_seed(0)
    fam = VAE(small_config())
    batch = fixed_batch(8)
    before = fam.evaluate([batch])["nelbo"]
    history = [fam.train_step(batch) for _ in range(40)]
    after = fam.evaluate([batch])["nelbo"]
    assert after < 0.8 * before
    assert history[-1]["nelbo"] < history[0]["nelbo"]
    for m in history:
        assert set(m) == METRICS and all(math.isfinite(v) for v in m.values())
        assert m["loss"] == pytest.approx(m["nelbo"])  # beta == 1
        assert m["bits_per_dim"] == pytest.approx(m["nelbo"] / (3 * 32 * 32 * math.log(2)))
    assert history[-1]["log_scale"] != pytest.approx(-2.0)  # sigma is learned


def test_fixed_scale_stays_fixed():
    torch.manual_seed(0)
    fam = VAE(small_config(learn_scale=False, init_log_scale=-3.0))
    for _ in range(3):
        m = fam.train_step(fixed_batch(4))
    assert m["log_scale"] == pytest.approx(-3.0)
    opt_params = {id(p) for g in fam.optimizers["vae"].param_groups for p in g["params"]}
    assert id(fam.decoder.log_scale) not in opt_params


def test_grad_clip_reports_norm_before_clipping():
    torch.manual_seed(0)
    fam = VAE(small_config(grad_clip=1e-3))
    m = fam.train_step(fixed_batch(4))
    assert m["grad_norm"] > 1e-3
    grads = [p.grad.flatten() for net in fam.networks.values() for p in net.parameters()]
    assert torch.cat(grads).norm().item() <= 1e-3 * 1.01


# -- sampling & decoding ---------------------------------------------------------------
def test_sample_shape_range_determinism():
    torch.manual_seed(0)
    fam = VAE(small_config())
    a = fam.sample(5, generator=torch.Generator().manual_seed(1))
    b = fam.sample(5, generator=torch.Generator().manual_seed(1))
    c = fam.sample(5, generator=torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not a.requires_grad


def test_reconstruct_is_deterministic():
    torch.manual_seed(0)
    fam = VAE(small_config())
    x = fixed_batch(3)["image"]
    r = fam.reconstruct(x)
    assert r.shape == x.shape and torch.equal(r, fam.reconstruct(x))


def test_latent_grid_layout():
    torch.manual_seed(0)
    fam = VAE(small_config(latent_dim=2))
    grid = fam.latent_grid(3, span=2.0)
    assert grid.shape == (9, 3, 32, 32)
    assert torch.allclose(grid[4], fam.decode(torch.zeros(1, 2))[0], atol=1e-6)
    assert torch.allclose(grid[0], fam.decode(torch.tensor([[-2.0, 2.0]]))[0], atol=1e-6)
    assert torch.allclose(grid[8], fam.decode(torch.tensor([[2.0, -2.0]]))[0], atol=1e-6)
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(small_config()).latent_grid(3)


# -- checkpoints & wrapping ---------------------------------------------------------------
def test_state_dict_round_trip():
    torch.manual_seed(0)
    fam = VAE(small_config())
    for _ in range(2):
        fam.train_step(fixed_batch(4))
    buf = io.BytesIO()
    torch.save(fam.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    other = VAE(small_config())
    other.load_state_dict(torch.load(buf))
    x = fixed_batch(3, seed=5)["image"]
    assert torch.equal(fam.reconstruct(x), other.reconstruct(x))
    assert fam.evaluate([fixed_batch(4)]) == other.evaluate([fixed_batch(4)])
    torch.manual_seed(7)
    m1 = fam.train_step(fixed_batch(4))
    torch.manual_seed(7)
    m2 = other.train_step(fixed_batch(4))
    assert m1 == m2  # same Adam moments -> same step


def test_wrapped_networks_keep_training():
    torch.manual_seed(0)
    fam = VAE(small_config())
    fam.wrap(PassThrough)
    assert isinstance(fam.encoder, PassThrough) and fam.networks["decoder"] is fam.decoder
    before = fam.evaluate([fixed_batch(4)])["nelbo"]
    for _ in range(3):
        m = fam.train_step(fixed_batch(4))
    assert all(math.isfinite(v) for v in m.values())
    assert fam.encoder.forwards == 3 and fam.decoder.forwards == 3
    assert fam.evaluate([fixed_batch(4)])["nelbo"] < before
    assert "log_scale" in fam.state_dict()["networks"]["decoder"]
    assert fam.sample(2).shape == (2, 3, 32, 32)


# -- config -------------------------------------------------------------------
@pytest.mark.parametrize("field,value,reason", [
    ("image_size", 48, "must be one of 32, 64, 128"), ("latent_dim", 0, "must be an integer >= 1"),
    ("nf", 2.5, "must be an integer >= 1"), ("nc", -3, "must be an integer >= 1"),
    ("lr", -1e-3, "must be a finite number > 0"), ("beta", -0.5, "must be a finite number >= 0"),
    ("beta", float("inf"), "must be a finite number >= 0"), ("learn_scale", 1, "must be true or false"),
    ("dequantize", "yes", "must be true or false"), ("init_log_scale", 50.0, "must lie in [-10, 5]"),
    ("grad_clip", 0.0, "must be a finite number > 0 (or None)"),
])
def test_config_validation_names_field(field, value, reason):
    with pytest.raises(ValueError, match=f"^{re.escape(f'VAEConfig.{field}: {reason}, got {value!r}')}$"):
        VAEConfig(**{field: value})


def test_config_loads_through_genlib_config():
    cfg = from_dict(VAEConfig, {"latent_dim": 2, "beta": 4.0, "grad_clip": 10.0})
    assert cfg.latent_dim == 2 and cfg.grad_clip == 10.0
    with pytest.raises(ConfigError, match="latent_dim"):
        from_dict(VAEConfig, {"latent_dim": -1})
