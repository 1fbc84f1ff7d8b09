"""DCGAN family: shapes, init, training behaviour, checkpoints, wrapping."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from genlib.config import ConfigError, from_dict, load_config
from genlib.models.base import unwrap
from genlib.models.dcgan import DCGAN, DCGANConfig, Discriminator, Generator
from genlib.train.config import TrainConfig
from tests.models.common import PassThrough, SyncRecorder, fixed_batch, reference_dcgan_step

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
METRICS = {"loss", "loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d", "grad_norm_g"}


def small_config(**kw) -> DCGANConfig:
    """A tiny 32 px DCGAN that trains in milliseconds on CPU."""
    base = dict(image_size=32, nz=16, ngf=8, ndf=8)
    base.update(kw)
    return DCGANConfig(**base)


# -- shapes -------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_discriminator_shapes(size):
    torch.manual_seed(0)
    cfg = small_config(image_size=size, ngf=4, ndf=4)
    g, d = Generator(cfg), Discriminator(cfg)
    z = torch.randn(2, cfg.nz)
    x = g(z)
    assert x.shape == (2, 3, size, size)
    assert x.abs().max() <= 1.0
    assert g(z.view(2, cfg.nz, 1, 1)).shape == x.shape  # both z layouts accepted
    assert d(x).shape == (2,)


def test_stage_count_per_size():
    # one ConvTranspose per factor 2 above 4x4, plus the 1 -> 4 projection
    for size, n_conv in [(32, 4), (64, 5), (128, 6)]:
        g = Generator(small_config(image_size=size, ngf=2, ndf=2))
        assert sum(isinstance(m, nn.ConvTranspose2d) for m in g.modules()) == n_conv
    d = Discriminator(DCGANConfig())  # default 64 px: widths 64..512, no BN on layer 1
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2


@pytest.mark.parametrize("size", [32, 64])
def test_train_step_backward_shapes(size):
    torch.manual_seed(0)
    fam = DCGAN(small_config(image_size=size))
    m = fam.train_step(fixed_batch(4, size))
    assert set(m) == METRICS
    assert all(math.isfinite(v) for v in m.values())
    for net in fam.networks.values():
        for p in net.parameters():
            assert p.grad is not None and p.grad.shape == p.shape


# -- init -----------------------------------------------------------------------
def test_weight_init_statistics():
    torch.manual_seed(0)
    fam = DCGAN(DCGANConfig())
    for net in (fam.netG, fam.netD):
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                assert abs(m.weight.std().item() - 0.02) < 0.002
                assert abs(m.weight.mean().item()) < 0.002
            elif isinstance(m, nn.BatchNorm2d):
                assert abs(m.weight.mean().item() - 1.0) < 0.01
                assert 0.01 < m.weight.std().item() < 0.03
                assert torch.all(m.bias == 0)


def test_optimizer_hyperparameters():
    fam = DCGAN(small_config())
    for opt in fam.optimizers.values():
        group = opt.param_groups[0]
        assert group["lr"] == pytest.approx(2e-4)
        assert group["betas"] == (0.5, 0.999)


# -- training behaviour -------------------------------------------------------------
def test_discriminator_only_steps_lower_d_loss():
    torch.manual_seed(0)
    fam = DCGAN(small_config())
    real = fixed_batch(16)["image"]
    with torch.no_grad():
        fake = fam.netG(fam.sample_z(16))  # fixed fakes: a plain classification task
    losses = [fam._update_d(real, fake)[0].item() for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]
    assert losses[0] == pytest.approx(2 * math.log(2), abs=0.3)  # D starts undecided


def test_generator_only_steps_lower_g_loss():
    torch.manual_seed(0)
    fam = DCGAN(small_config())
    z = fam.sample_z(16)
    d_before = [p.clone() for p in fam.netD.parameters()]
    losses = [fam._update_g(fam.netG(z))[0].item() for _ in range(20)]
    assert losses[-1] < losses[0] - 0.1
    # the G update never moves D
    assert all(torch.equal(a, b) for a, b in zip(d_before, fam.netD.parameters()))


def test_train_steps_on_fixed_batch():
    torch.manual_seed(0)
    fam = DCGAN(small_config())
    batch = fixed_batch(16)
    g0 = [p.clone() for p in fam.netG.parameters()]
    history = [fam.train_step(batch) for _ in range(30)]
    for m in history:
        assert set(m) == METRICS and all(math.isfinite(v) for v in m.values())
        assert m["loss"] == pytest.approx(m["loss_d"] + m["loss_g"])
        assert 0 <= m["d_fake"] <= 1 and 0 <= m["d_real"] <= 1
        assert m["grad_norm_d"] > 0 and m["grad_norm_g"] > 0
    # on one memorised batch, D learns to tell it from G's samples
    assert history[-1]["d_real"] > history[0]["d_real"]
    assert any(not torch.equal(a, b) for a, b in zip(g0, fam.netG.parameters()))


def _params(fam: DCGAN) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, net in fam.networks.items()
            for k, v in unwrap(net).named_parameters()}


def _train(fam: DCGAN, steps: int, reference_g_steps: int | None = None) -> dict[str, torch.Tensor]:
    """``steps`` steps on fresh batches, reseeding per step as the loop does;
    with ``reference_g_steps`` through :func:`reference_dcgan_step` instead."""
    for step in range(steps):
        torch.manual_seed(step)
        batch = fixed_batch(8, seed=step)
        if reference_g_steps is None:
            fam.train_step(batch)
        else:
            reference_dcgan_step(fam, batch, reference_g_steps)
    return _params(fam)


@pytest.mark.parametrize("g_steps", [1, 2])
def test_train_step_matches_the_reference_recipe_bit_for_bit(g_steps):
    """g_steps = 1 is the step as first written; g_steps = 2 adds a second G
    update on the same z (the completion seed's reference code)."""
    torch.manual_seed(0)
    fam = DCGAN(small_config(g_steps=g_steps))
    torch.manual_seed(0)
    ref = DCGAN(small_config())
    got, want = _train(fam, 3), _train(ref, 3, reference_g_steps=g_steps)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert fam.optimizers["netG"].state_dict()["state"][0]["step"] == 3 * g_steps
    assert fam.optimizers["netD"].state_dict()["state"][0]["step"] == 3


def test_g_steps_reuse_z_and_report_means():
    torch.manual_seed(0)
    fam = DCGAN(small_config(g_steps=3))
    seen = []
    fam.netG.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].clone()))
    m = fam.train_step(fixed_batch(8))
    assert len(seen) == 3 and all(torch.equal(z, seen[0]) for z in seen)
    assert set(m) == METRICS and all(math.isfinite(v) for v in m.values())
    assert m["loss"] == pytest.approx(m["loss_d"] + m["loss_g"])


def test_g_steps_under_fp16_close_the_scale_per_g_update():
    """GradScaler steps an optimiser once per update(): the extra G updates
    each get one; the step reports the scale it started with."""
    torch.manual_seed(0)
    fam = DCGAN(small_config(g_steps=2))
    fam.set_precision("fp16")
    fam.scaler.load_state_dict({**fam.scaler.state_dict(), "scale": 16.0, "growth_interval": 1})
    m = fam.train_step(fixed_batch(8))
    assert m["loss_scale"] == 16.0 and m["overflow"] == 0.0
    assert fam.scaler.get_scale() == 64.0  # two clean updates, each doubling
    assert fam.optimizers["netG"].state_dict()["state"][0]["step"] == 2
    assert all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("g_steps", [1, 2])
def test_each_network_is_reduced_once_per_update(g_steps):
    """Under a DDP-style wrapper, D's real-batch forward and D's forwards in
    the G updates run under no_sync (their backwards stay local); the fake
    batch's backward reduces D once, each G backward reduces G once.
    reduce_once = False restores the old pattern; the weights agree."""
    runs = {}
    for reduce_once in (True, False):
        torch.manual_seed(0)
        fam = DCGAN(small_config(g_steps=g_steps, reduce_once=reduce_once))
        fam.wrap(SyncRecorder)
        runs[reduce_once] = _train(fam, 2)
        d_pattern = [not reduce_once, True] + [not reduce_once] * g_steps
        assert fam.netD.synced == d_pattern * 2
        assert fam.netG.synced == [True] * g_steps * 2
    for k in runs[True]:
        assert torch.equal(runs[True][k], runs[False][k]), k


# -- sampling & evaluation ----------------------------------------------------------
@pytest.mark.parametrize("z_dist", ["uniform", "normal"])
def test_sample_shape_range_determinism(z_dist):
    torch.manual_seed(0)
    fam = DCGAN(small_config(z_dist=z_dist))
    fam.train_step(fixed_batch(8))
    a = fam.sample(5, generator=torch.Generator().manual_seed(1))
    b = fam.sample(5, generator=torch.Generator().manual_seed(1))
    c = fam.sample(5, generator=torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert fam.netG.training  # train mode restored
    assert not a.requires_grad


def test_sample_z_distributions():
    z = DCGAN(small_config(nz=64)).sample_z(256, torch.Generator().manual_seed(0))
    assert z.shape == (256, 64, 1, 1)
    assert z.min() >= -1 and z.max() <= 1 and z.std().item() == pytest.approx(1 / 3**0.5, abs=0.02)
    zn = DCGAN(small_config(nz=64, z_dist="normal")).sample_z(256)
    assert zn.std().item() == pytest.approx(1.0, abs=0.03)


def test_evaluate_is_cheap_deterministic_and_side_effect_free():
    torch.manual_seed(0)
    fam = DCGAN(small_config())
    fam.train_step(fixed_batch(8))
    buffers = [b.clone() for b in fam.netD.buffers()]
    batches = [fixed_batch(8, seed=1), fixed_batch(4, seed=2)]
    m1, m2 = fam.evaluate(batches), fam.evaluate(batches)
    assert m1 == m2
    assert m1["n_images"] == 12
    assert m1["loss"] == pytest.approx(m1["loss_d_real"] + m1["loss_d_fake"])
    assert m1["loss_d"] == m1["loss"]
    assert 0 < m1["d_real"] < 1 and 0 < m1["d_fake"] < 1
    assert all(math.isfinite(v) for v in m1.values())
    assert all(torch.equal(a, b) for a, b in zip(buffers, fam.netD.buffers()))
    assert fam.netD.training and fam.netG.training
    with pytest.raises(ValueError):
        fam.evaluate([])


# -- checkpoints & wrapping ---------------------------------------------------------------
def test_state_dict_round_trip():
    torch.manual_seed(0)
    fam = DCGAN(small_config())
    for _ in range(2):
        fam.train_step(fixed_batch(8))
    buf = io.BytesIO()
    torch.save(fam.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    other = DCGAN(small_config())
    other.load_state_dict(torch.load(buf))
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(fam.sample(3, gen()), other.sample(3, gen()))
    # identical optimiser state -> identical next step under the same RNG
    torch.manual_seed(7)
    m1 = fam.train_step(fixed_batch(8))
    torch.manual_seed(7)
    m2 = other.train_step(fixed_batch(8))
    assert m1 == m2
    for a, b in zip(fam.netG.parameters(), other.netG.parameters()):
        assert torch.equal(a, b)


def test_generator_loads_from_checkpoint_standalone():
    torch.manual_seed(0)
    cfg = small_config()
    fam = DCGAN(cfg)
    g = Generator(cfg)
    g.load_state_dict(fam.state_dict()["networks"]["netG"])
    g.eval()
    z = fam.sample_z(2, torch.Generator().manual_seed(0))
    assert torch.equal(g(z), fam.sample(2, torch.Generator().manual_seed(0)))


def test_wrapped_networks_keep_training():
    torch.manual_seed(0)
    fam = DCGAN(small_config())
    fam.wrap(PassThrough)
    assert isinstance(fam.netG, PassThrough) and fam.networks["netD"] is fam.netD
    m = fam.train_step(fixed_batch(8))
    assert all(math.isfinite(v) for v in m.values())
    assert fam.netD.forwards == 3 and fam.netG.forwards == 1  # real, fake, G step
    assert set(fam.state_dict()["networks"]["netG"]) == set(unwrap(fam.netG).state_dict())
    assert fam.sample(2).shape == (2, 3, 32, 32)
    assert fam.evaluate([fixed_batch(4)])["n_images"] == 4


# -- config -------------------------------------------------------------------
@pytest.mark.parametrize("field,value,reason", [
    ("image_size", 48, "must be one of 32, 64, 128"), ("image_size", 64.0, "must be an integer"),
    ("nz", 0, "must be an integer >= 1"), ("ngf", -1, "must be an integer >= 1"),
    ("ndf", True, "must be an integer >= 1"), ("nc", 0, "must be an integer >= 1"),
    ("z_dist", "gaussian", "must be one of 'uniform', 'normal'"), ("lr", 0.0, "must be a finite number > 0"),
    ("lr", float("nan"), "must be a finite number > 0"),
    ("beta1", 1.0, "must lie in [0, 1)"), ("beta2", -0.1, "must lie in [0, 1)"),
    ("g_steps", 0, "must be an integer >= 1"), ("g_steps", 1.5, "must be an integer >= 1"),
    ("reduce_once", "yes", "must be true or false"), ("reduce_once", 1, "must be true or false"),
])
def test_config_validation_names_field(field, value, reason):
    with pytest.raises(ValueError, match=f"^{re.escape(f'DCGANConfig.{field}: {reason}, got {value!r}')}$"):
        DCGANConfig(**{field: value})


def test_paper_preset_has_the_papers_widths():
    """configs/dcgan-paper.toml: G 1024 -> 512 -> 256 -> 128 -> 3 (the paper's
    Fig. 1), D 128 -> 1024; the defaults are half as wide."""
    train = load_config(TrainConfig, ROOT / "configs" / "dcgan-paper.toml")
    cfg = from_dict(DCGANConfig, {k: v for k, v in train.model.items() if k != "family"})
    g, d = Generator(cfg), Discriminator(cfg)
    assert [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)] == [1024, 512, 256, 128, 3]
    assert [m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d)] == [128, 256, 512, 1024, 1]
    assert (cfg.nz, cfg.z_dist, cfg.lr, cfg.beta1, train.batch_size) == (100, "uniform", 2e-4, 0.5, 128)


def test_config_loads_through_genlib_config():
    cfg = from_dict(DCGANConfig, {"image_size": 32, "z_dist": "normal", "lr": 1e-4})
    assert cfg.image_size == 32 and cfg.z_dist == "normal"
    assert cfg.g_steps == 1 and cfg.reduce_once is True
    cfg = from_dict(DCGANConfig, {"g_steps": 2, "reduce_once": False})
    assert cfg.g_steps == 2 and cfg.reduce_once is False
    with pytest.raises(ConfigError, match="image_size"):
        from_dict(DCGANConfig, {"image_size": 48})
