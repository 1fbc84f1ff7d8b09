"""Mixed precision inside the families: Family.set_precision / autocast /
backward / optimizer_step / end_step, exercised on CPU (bf16 autocast and the
fp16 GradScaler both run there), for every family."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlib.models.base import Family, full_precision, unwrap, upcast
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.models.pixelrnn import PixelRNN, PixelRNNConfig
from genlib.models.vae import VAE, VAEConfig

torch.set_num_threads(1)

FAMILIES = ("dcgan", "vae", "row_lstm", "diagonal_bilstm", "pixelcnn")
PIXELRNN_VARIANTS = ("row_lstm", "diagonal_bilstm", "pixelcnn")
INIT_SCALE = 2.0 ** 16  # GradScaler's default


def make(name: str, amp: str | None = None) -> Family:
    """A tiny family, seeded; ``amp=None`` leaves the default precision."""
    torch.manual_seed(0)
    if name == "dcgan":
        fam = DCGAN(DCGANConfig(image_size=32, nz=16, ngf=8, ndf=8))
    elif name == "vae":
        fam = VAE(VAEConfig(image_size=32, latent_dim=16, nf=8))
    else:
        fam = PixelRNN(PixelRNNConfig(num_colors=8, height=6, width=6, hidden=16, layers=2,
                                      embed=8, variant=name))
    if amp is not None:
        fam.set_precision(amp)
    return fam


def batch_for(name: str, n: int = 8) -> dict:
    """A fixed batch: smooth 8-bit images in [-1, 1], or palette indices."""
    g = torch.Generator().manual_seed(0)
    if name in PIXELRNN_VARIANTS:
        return {"index": torch.randint(0, 8, (n, 6, 6), generator=g)}
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    img = F.interpolate(low, size=32, mode="bilinear", align_corners=False)
    return {"image": torch.round((img + 1) * 127.5) / 127.5 - 1}


def train(fam: Family, batch: dict, steps: int) -> list[dict]:
    """``steps`` train steps, reseeding the global RNG per step as the loop does."""
    out = []
    for step in range(steps):
        torch.manual_seed(step)
        out.append(fam.train_step(batch))
    return out


def params(fam: Family) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, net in fam.networks.items()
            for k, v in unwrap(net).named_parameters()}


def main_loss(metrics: dict) -> float:
    return metrics.get("loss_d", metrics["loss"])  # DCGAN: D's loss is the stable one


def poison(param: nn.Parameter):
    """Make every gradient of ``param`` inf (as an fp16 overflow would)."""
    return param.register_hook(lambda g: torch.full_like(g, math.inf))


def first_param(fam: Family, net: str) -> nn.Parameter:
    return next(unwrap(fam.networks[net]).parameters())


def start_scale(fam: Family, scale: float) -> None:
    """Start the loss scale at ``scale`` (through the checkpoint API), low
    enough that no family overflows by itself: these tests then see only the
    overflows they inject, not the scaler's calibration at 2**16."""
    fam.scaler.load_state_dict({**fam.scaler.state_dict(), "scale": scale})


# -- setting --------------------------------------------------------------------
def test_default_is_full_precision():
    fam = make("vae")
    assert fam.amp == "none" and fam.scaler is None
    assert "scaler" not in fam.state_dict()  # checkpoint format unchanged


@pytest.mark.parametrize("bad", ["fp32", "bfloat16", "", None, 16])
def test_unknown_precision_rejected(bad):
    with pytest.raises(ValueError, match="amp must be one of"):
        make("vae").set_precision(bad)


def test_set_precision_switches_scaler():
    fam = make("vae", "fp16")
    assert isinstance(fam.scaler, torch.amp.GradScaler) and fam.scaler.is_enabled()
    fam.set_precision("bf16")
    assert fam.amp == "bf16" and fam.scaler is None


def test_helpers_upcast_and_full_precision():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
        assert full_precision(lin, x.bfloat16()).dtype == torch.float32
    assert upcast(x.bfloat16()).dtype == upcast(x.half()).dtype == torch.float32
    assert upcast(x) is x and upcast(x.double()).dtype == torch.float64


# -- amp = "none" is the old fp32 path, bit for bit ------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_none_is_identical_to_default(name):
    batch = batch_for(name)
    default, explicit = make(name), make(name, "bf16")
    explicit.set_precision("none")  # switching back must leave no trace
    assert train(default, batch, 3) == train(explicit, batch, 3)
    for (k, a), b in zip(params(default).items(), params(explicit).values()):
        assert torch.equal(a, b), k
    assert torch.equal(default.sample(2, torch.Generator().manual_seed(1)),
                       explicit.sample(2, torch.Generator().manual_seed(1)))
    assert default.evaluate([batch]) == explicit.evaluate([batch])


def test_none_matches_handwritten_fp32_step():
    """PixelRNN's step through the helpers equals the plain torch recipe."""
    batch = batch_for("row_lstm")
    fam, ref = make("row_lstm"), make("row_lstm")
    m = fam.train_step(batch)
    opt = ref.optimizers["net"]
    loss = F.cross_entropy(ref.net(batch["index"]), batch["index"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(ref.net.parameters(), ref.config.grad_clip)
    opt.step()
    assert m["loss"] == loss.item() and m["grad_norm"] == float(norm)
    for a, b in zip(fam.net.parameters(), ref.net.parameters()):
        assert torch.equal(a, b)


# -- bf16 ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_trains_with_finite_metrics(name):
    fam, batch = make(name, "bf16"), batch_for(name)
    before = params(fam)
    history = train(fam, batch, 8)
    for m in history:
        assert all(math.isfinite(v) for v in m.values()), m
        assert "loss_scale" not in m  # only fp16 scales the loss
    assert main_loss(history[-1]) < main_loss(history[0])
    after = params(fam)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_really_autocasts_training_forward(name):
    """Hidden convs run in bf16 during train_step; likelihood output layers
    (VAE decoder output, PixelRNN logits) stay fp32."""
    fam = make(name, "bf16")
    seen: dict[str, torch.dtype] = {}
    convs = [m for net in fam.networks.values() for m in unwrap(net).modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    def record(k: int):
        def hook(module, inputs, out) -> None:  # None: leave the output as it is
            seen.setdefault(k, out.dtype)
        return hook

    hooks = [c.register_forward_hook(record(k)) for k, c in enumerate(convs)]
    fam.train_step(batch_for(name))
    for h in hooks:
        h.remove()
    assert seen[0] == torch.bfloat16 or seen[1] == torch.bfloat16
    if name != "dcgan":
        assert seen[len(convs) - 1] == torch.float32  # the output layer


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_evaluate_and_sample_are_fp32_and_finite(name):
    fam, batch = make(name, "bf16"), batch_for(name)
    train(fam, batch, 2)
    ev = fam.evaluate([batch])
    assert all(math.isfinite(v) for v in ev.values())
    ref = make(name)
    ref.load_state_dict(fam.state_dict())
    assert ev["loss"] == pytest.approx(ref.evaluate([batch])["loss"], rel=0.05)
    images = fam.sample(2, torch.Generator().manual_seed(0))
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert images.abs().max() <= 1


# -- fp16 + GradScaler ----------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_fp16_calibrates_from_default_scale_and_trains(name):
    """From 2**16 the scale backs off on every overflowing step (reported as
    ``overflow``) until gradients fit; then training proceeds and learns."""
    fam, batch = make(name, "fp16"), batch_for(name)
    history = train(fam, batch, 16)
    assert history[0]["loss_scale"] == INIT_SCALE
    for m, nxt in itertools.pairwise(history):
        assert m["overflow"] == float(nxt["loss_scale"] < m["loss_scale"])
        assert math.isfinite(m["loss"])
    assert history[-1]["overflow"] == 0.0
    assert main_loss(history[-1]) < main_loss(history[0])


@pytest.mark.parametrize("name", FAMILIES)
def test_fp16_inf_gradient_skips_step_and_halves_scale(name):
    fam, batch = make(name, "fp16"), batch_for(name)
    start_scale(fam, 16.0)
    hooks = [poison(first_param(fam, net)) for net in fam.networks]
    before = params(fam)
    m = fam.train_step(batch)
    for hook in hooks:
        hook.remove()
    assert m["loss_scale"] == 16.0 and m["overflow"] == 1.0
    assert fam.scaler.get_scale() == 8.0
    assert not any(math.isfinite(v) for k, v in m.items() if k.startswith("grad_norm"))
    for k, v in params(fam).items():
        assert torch.equal(before[k], v), f"{k} moved on a skipped step"
    # the next, clean step goes through at the reduced scale
    m = fam.train_step(batch)
    assert m["loss_scale"] == 8.0 and m["overflow"] == 0.0
    assert all(math.isfinite(v) for v in m.values())
    assert any(not torch.equal(before[k], v) for k, v in params(fam).items())


def test_fp16_dcgan_skips_only_the_overflowing_network():
    """One scaler, two optimisers: an inf in D's grads skips D's step only;
    G still steps, and the scale backs off once for the whole train step."""
    fam = make("dcgan", "fp16")
    start_scale(fam, 16.0)
    hook = poison(first_param(fam, "netD"))
    before = params(fam)
    m = fam.train_step(batch_for("dcgan"))
    hook.remove()
    after = params(fam)
    assert not math.isfinite(m["grad_norm_d"]) and math.isfinite(m["grad_norm_g"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("netD."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("netG."))
    assert m["loss_scale"] == 16.0 and fam.scaler.get_scale() == 8.0


def test_fp16_norm_and_clip_are_in_unscaled_units():
    """The reported norm is the true one (not times the loss scale), and the
    clip threshold applies to it: after the step the gradients left in
    ``.grad`` (unscaled, clipped) have norm ``grad_clip`` exactly."""
    batch = batch_for("pixelcnn")
    fp16, fp32 = make("pixelcnn", "fp16"), make("pixelcnn")
    start_scale(fp16, 16.0)
    for fam in (fp16, fp32):
        fam.config.grad_clip = 0.05  # well below the ~0.2 norm: clipping is active
    n16, n32 = fp16.train_step(batch)["grad_norm"], fp32.train_step(batch)["grad_norm"]
    assert n16 == pytest.approx(n32, rel=0.05) and n16 > 0.1
    left = nn.utils.get_total_norm([p.grad for p in fp16.net.parameters()])
    assert left.item() == pytest.approx(0.05, rel=1e-3)


# -- checkpoints --------------------------------------------------------------------------
def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: the scaler state is plain numbers


def test_scaler_state_round_trips():
    fam, batch = make("vae", "fp16"), batch_for("vae")
    hook = poison(first_param(fam, "encoder"))
    fam.train_step(batch)
    hook.remove()
    fam.train_step(batch)
    state = _round_trip(fam.state_dict())
    assert state["scaler"]["scale"] == fam.scaler.get_scale() < INIT_SCALE
    other = make("vae", "fp16")  # set_precision before load_state_dict
    other.load_state_dict(state)
    assert other.scaler.state_dict() == fam.scaler.state_dict()


def test_checkpoints_without_scaler_still_load():
    old = _round_trip(make("vae").state_dict())  # a pre-AMP / fp32 checkpoint
    fam = make("vae", "fp16")
    fam.load_state_dict(old)
    assert fam.scaler.get_scale() == INIT_SCALE  # fresh scaler
    plain = make("vae")
    plain.load_state_dict(_round_trip(make("vae", "fp16").state_dict()))  # key ignored
    assert plain.scaler is None


@pytest.mark.parametrize("name", ["dcgan", "row_lstm", "diagonal_bilstm"])
def test_fp16_resume_is_exact(name):
    """Save after 2 steps, restore into a fresh fp16 family, train on: same
    parameters and loss scale as 4 uninterrupted steps."""
    batch = batch_for(name)
    straight = make(name, "fp16")
    train(straight, batch, 4)
    first = make(name, "fp16")
    train(first, batch, 2)
    resumed = make(name, "fp16")
    resumed.load_state_dict(_round_trip(first.state_dict()))
    for step in (2, 3):  # the loop reseeds from the step number
        torch.manual_seed(step)
        resumed.train_step(batch)
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for (k, a), b in zip(params(straight).items(), params(resumed).values()):
        assert torch.equal(a, b), k
