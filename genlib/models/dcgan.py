"""DCGAN family (Radford, Metz & Chintala 2015, *Unsupervised Representation
Learning with Deep Convolutional Generative Adversarial Networks*).

- :class:`Generator`: ``z [B, nz]`` -> fractionally-strided ``ConvTranspose2d``
  stack with BatchNorm + ReLU, ``tanh`` output ``[B, nc, S, S]`` in ``[-1, 1]``.
- :class:`Discriminator`: strided ``Conv2d`` stack with LeakyReLU(0.2) and
  BatchNorm on every layer but the first; returns one *logit* per image
  ``[B]`` (the sigmoid lives inside ``BCEWithLogits`` for numerical stability).
- Image side ``S`` in {32, 64, 128}: one up/down-sampling stage per factor of
  2 over the 4 x 4 base, so ``S = 4 * 2**n_stages``.

Layer widths for the default ``S = 64`` (the pytorch/examples layout; 32 drops
the widest stage, 128 adds an ``ngf*16``/``ndf*16`` one)::

    G: nz x 1 x 1 -> (ngf*8) x 4 x 4 -> (ngf*4) x 8 x 8 -> (ngf*2) x 16 x 16
       -> ngf x 32 x 32 -> nc x 64 x 64
    D: nc x 64 x 64 -> ndf x 32 x 32 -> (ndf*2) x 16 x 16 -> (ndf*4) x 8 x 8
       -> (ndf*8) x 4 x 4 -> 1 x 1 x 1

The default widths (``ngf = ndf = 64``, G from 512 channels) are those of
pytorch/examples, half the paper's: the paper's 64 px generator starts at
1024 channels (its Fig. 1: ``ngf = 128``), and the authors' released code
uses ``ndf = 128`` too. ``configs/dcgan-paper.toml`` trains at those widths.

Single-device and Ray-free. The distributed layer may wrap ``netG``/``netD``
(e.g. in DDP) through :meth:`Family.wrap`; ``train_step`` therefore always
calls the attributes and runs every forward's backward before the next forward
of the same network. ``sample``/``evaluate`` use the *unwrapped* modules so that
they never trigger collectives (safe to call on one rank only).

Gradient reduction under DDP (``reduce_once``, default on): each network's
gradients are all-reduced once per update. D's real-batch forward/backward run
under the wrapper's ``no_sync()``, so the fake-batch backward reduces the sum
of both once; and D's forward/backward inside the G update run under
``netD.no_sync()`` too, so G's backward reduces G's gradients only (the local D
gradients it leaves are discarded by the next D update's ``zero_grad``). The
wrapper is found by duck typing (a ``no_sync`` attribute): this file never
imports torch.distributed, and unwrapped networks run exactly as before.

Mixed precision (:meth:`Family.set_precision`): the forwards run under
autocast, D's logits are upcast to fp32 before the BCE losses and the
probability metrics, and both updates share the family's one GradScaler
(updated once per step, as PyTorch prescribes for several optimisers).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlib.config import Fields
from genlib.models.base import Batch, Family, Metrics, unwrap, upcast

__all__ = ["IMAGE_SIZES", "Z_DISTS", "DCGANConfig", "Generator", "Discriminator", "DCGAN",
           "weights_init", "n_stages"]

IMAGE_SIZES = (32, 64, 128)
Z_DISTS = ("uniform", "normal")
EVAL_SEED = 0  # evaluate() draws its z from this seed: repeated calls agree


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------
@dataclass
class DCGANConfig:
    """Hyper-parameters of a DCGAN. The optimiser, prior and batch recipe
    follow the paper; the widths are pytorch/examples' (half the paper's, see
    the module docstring and ``configs/dcgan-paper.toml``)."""

    image_size: int = 64
    """Image side in pixels: 32, 64 or 128 (square images)."""
    nc: int = 3
    """Image channels (3 = RGB; the loaders deliver RGB)."""
    nz: int = 100
    """Latent dimension of z."""
    ngf: int = 64
    """Generator width: channels of the last hidden layer (doubling inwards;
    the paper's 1024-channel 64 px generator is ``ngf = 128``)."""
    ndf: int = 64
    """Discriminator width: channels of the first layer (doubling inwards)."""
    z_dist: Literal["uniform", "normal"] = "uniform"
    """Prior of z: "uniform" on [-1, 1]^nz (the paper) or "normal" N(0, I)."""
    lr: float = 2e-4
    """Adam learning rate for both networks."""
    beta1: float = 0.5
    """Adam beta1 (0.5 stabilises GAN training, as in the paper)."""
    beta2: float = 0.999
    """Adam beta2."""
    g_steps: int = 1
    """Generator updates per train step, all on the step's z (1 = the paper;
    the completion seed's reference code runs 2 so that D's loss does not go
    to zero)."""
    reduce_once: bool = True
    """Under DDP, all-reduce each network's gradients once per update (module
    docstring); False restores the old pattern (D reduced three times per
    step), kept for the training benchmark's "before" row. The weights agree
    to rounding (tests/distributed/test_dcgan_ddp.py)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.integer("image_size")
        check.choice("image_size", IMAGE_SIZES)
        for name in ("nc", "nz", "ngf", "ndf"):
            check.integer(name, low=1)
        check.choice("z_dist", Z_DISTS)
        check.number("lr", above=0)
        for name in ("beta1", "beta2"):
            check.number(name, low=0, below=1)
        check.integer("g_steps", low=1)
        check.boolean("reduce_once")


# --------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------
def n_stages(image_size: int) -> int:
    """Number of x2 resampling stages between 4 x 4 and ``image_size``
    (32 -> 3, 64 -> 4, 128 -> 5)."""
    return int(math.log2(image_size)) - 2


def weights_init(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02),
    bias 0. Use with ``net.apply(weights_init)``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """``z [B, nz] or [B, nz, 1, 1]`` -> images ``[B, nc, S, S]`` in ``[-1, 1]``."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.nz = config.nz
        n = n_stages(config.image_size)
        width = config.ngf * 2 ** (n - 1)  # 64 px: ngf*8
        layers: list[nn.Module] = [
            # input: nz x 1 x 1 -> state: width x 4 x 4
            nn.ConvTranspose2d(config.nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(n - 1):
            # state: width x s x s -> (width/2) x 2s x 2s
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        # state: ngf x S/2 x S/2 -> output: nc x S x S; no BN on the output layer
        layers += [nn.ConvTranspose2d(width, config.nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.reshape(z.size(0), self.nz, 1, 1))


class Discriminator(nn.Module):
    """Images ``[B, nc, S, S]`` -> real/fake logits ``[B]``."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        n = n_stages(config.image_size)
        width = config.ndf
        layers: list[nn.Module] = [
            # input: nc x S x S -> state: ndf x S/2 x S/2; no BN on the input layer
            nn.Conv2d(config.nc, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n - 1):
            # state: width x s x s -> (width*2) x s/2 x s/2
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        # state: (ndf*2^(n-1)) x 4 x 4 -> 1 x 1 x 1 logit (sigmoid is in the loss)
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()  # [B, 1, 1, 1] -> [B]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _bce(logits: torch.Tensor, target: float, reduction: str = "mean") -> torch.Tensor:
    """BCE-with-logits against a constant label (1 = real, 0 = fake)."""
    return F.binary_cross_entropy_with_logits(
        logits, torch.full_like(logits, target), reduction=reduction)


def _local_grads(net: nn.Module, enabled: bool) -> AbstractContextManager:
    """``net.no_sync()`` if ``enabled`` and ``net`` is a DDP-style wrapper,
    else a no-op. Forwards run inside it (and their backwards) accumulate
    gradients locally instead of all-reducing them; duck-typed so that this
    file needs no torch.distributed import."""
    no_sync = getattr(net, "no_sync", None)
    return no_sync() if enabled and no_sync is not None else nullcontext()


def _merge_amp(first: Metrics, later: Metrics) -> Metrics:
    """AMP metrics of a train step closed in several scaler updates: the
    scale it started with, and an overflow if any part overflowed."""
    if not first:
        return later
    return {"loss_scale": first["loss_scale"],
            "overflow": max(first["overflow"], later.get("overflow", 0.0))}


@contextmanager
def _mode(module: nn.Module, training: bool, keep_buffers: bool = False) -> Iterator[nn.Module]:
    """Temporarily set train/eval mode; with ``keep_buffers`` also restore the
    BatchNorm running statistics, so a train-mode forward has no side effect."""
    was_training = module.training
    saved = [b.clone() for b in module.buffers()] if keep_buffers else []
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)
        with torch.no_grad():
            for buf, old in zip(module.buffers(), saved):
                buf.copy_(old)


# --------------------------------------------------------------------------
# Family
# --------------------------------------------------------------------------
class DCGAN(Family):
    """DCGAN: networks ``netG``/``netD``, Adam optimisers under the same keys.

    ``train_step`` metrics: ``loss`` (= loss_d + loss_g), ``loss_d``,
    ``loss_g``, ``d_real``/``d_fake`` (mean D probabilities before the D
    update), ``grad_norm_d``, ``grad_norm_g`` (G's two: means over the
    ``g_steps`` G updates); under fp16 also ``loss_scale`` and ``overflow`` (a
    non-finite grad norm: that network's step, or one of G's, was skipped).
    """

    def __init__(self, config: DCGANConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.config = config
        self.netG: nn.Module = Generator(config).to(self.device)
        self.netD: nn.Module = Discriminator(config).to(self.device)
        self.networks = {"netG": self.netG, "netD": self.netD}
        betas = (config.beta1, config.beta2)
        self.optimizers = {
            "netG": torch.optim.Adam(self.netG.parameters(), lr=config.lr, betas=betas),
            "netD": torch.optim.Adam(self.netD.parameters(), lr=config.lr, betas=betas),
        }

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent codes ``[n, nz, 1, 1]`` on ``self.device`` from the configured
        prior; drawn on the generator's device so seeded draws are reproducible."""
        device = generator.device if generator is not None else self.device
        shape = (n, self.config.nz, 1, 1)
        if self.config.z_dist == "uniform":
            z = torch.rand(shape, generator=generator, device=device) * 2 - 1
        else:
            z = torch.randn(shape, generator=generator, device=device)
        return z.to(self.device)

    # -- training ---------------------------------------------------------
    def train_step(self, batch: Batch) -> Metrics:
        """One D update on real + fake, then ``g_steps`` non-saturating G
        updates on the same z. With ``g_steps > 1``, ``loss_g`` and
        ``grad_norm_g`` are means over the G updates."""
        real = batch["image"].to(self.device, non_blocking=True)  # [B, nc, S, S]
        z = self.sample_z(real.size(0))                            # [B, nz, 1, 1]
        with self.autocast():
            fake = self.netG(z)  # [B, nc, S, S], graph kept for the first G update
        loss_d, d_real, d_fake, gn_d = self._update_d(real, fake.detach())
        loss_g, gn_g, amp_metrics = self._update_g_steps(z, fake)
        # one host sync for all scalars
        vals = torch.stack([loss_d, loss_g, d_real, d_fake, gn_d, gn_g]).tolist()
        metrics = dict(zip(("loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d",
                            "grad_norm_g"), vals))
        metrics["loss"] = metrics["loss_d"] + metrics["loss_g"]
        return {**metrics, **amp_metrics}

    def _d_logits(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits ``[B]`` through the (possibly wrapped) ``netD`` under
        autocast, upcast to fp32 for the losses and probability means."""
        with self.autocast():
            return upcast(self.netD(images))

    def _update_d(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Minimise BCE(D(x), 1) + BCE(D(fake), 0). ``fake`` must be detached.
        Returns detached (loss_d, mean D(x), mean D(fake), grad norm)."""
        opt = self.optimizers["netD"]
        opt.zero_grad(set_to_none=True)
        # Real-batch grads stay local under DDP: the fake backward below
        # all-reduces their sum once (no_sync covers the forward, so the
        # backward follows it inside; backward before the next netD forward).
        with _local_grads(self.netD, self.config.reduce_once):
            logits_real = self._d_logits(real)  # [B]
            err_real = _bce(logits_real, 1.0)
            self.backward(err_real)
        logits_fake = self._d_logits(fake)  # [B]
        err_fake = _bce(logits_fake, 0.0)
        self.backward(err_fake)  # gradients accumulate: d(err_real + err_fake)
        grad_norm = self.optimizer_step(opt, list(self.netD.parameters()))
        return ((err_real + err_fake).detach(), torch.sigmoid(logits_real).mean().detach(),
                torch.sigmoid(logits_fake).mean().detach(), grad_norm)

    def _update_g(self, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-saturating G loss BCE(D(G(z)), 1) against the freshly updated D.
        ``fake`` carries G's graph. Returns detached (loss_g, grad norm)."""
        opt = self.optimizers["netG"]
        opt.zero_grad(set_to_none=True)
        # This backward also fills netD's grads; they are discarded by the
        # zero_grad of the next D update (as in pytorch/examples), so under
        # DDP they are not all-reduced either: only G's are.
        with _local_grads(self.netD, self.config.reduce_once):
            err_g = _bce(self._d_logits(fake), 1.0)
            self.backward(err_g)
        # Only G's optimiser is unscaled and stepped; the scaled netD grads
        # this leaves behind are never read.
        grad_norm = self.optimizer_step(opt, list(self.netG.parameters()))
        return err_g.detach(), grad_norm

    def _update_g_steps(self, z: torch.Tensor,
                        fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        """``g_steps`` G updates: the first on ``fake`` (= G(z) from before the
        D update), each later one on a fresh G(z), since G has moved. Closes
        the train step's loss scale (:meth:`end_step`) after the first G
        update and after each later one: GradScaler steps an optimiser at most
        once per scale update. Returns (mean loss_g, mean grad norm, AMP metrics)."""
        loss, norm = self._update_g(fake)
        losses, norms, amp_metrics = [loss], [norm], self.end_step()  # after both optimisers
        for _ in range(self.config.g_steps - 1):
            with self.autocast():
                fake = self.netG(z)  # [B, nc, S, S]
            loss, norm = self._update_g(fake)
            losses.append(loss)
            norms.append(norm)
            amp_metrics = _merge_amp(amp_metrics, self.end_step())
        return torch.stack(losses).mean(), torch.stack(norms).mean(), amp_metrics

    # -- inference ----------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images ``[n, nc, S, S]`` in ``[-1, 1]`` from G in eval mode
        (BatchNorm running statistics); G's previous mode is restored.
        Runs under the family's autocast; the images are returned as fp32."""
        with _mode(unwrap(self.netG), training=False) as netG, self.autocast():
            return upcast(netG(self.sample_z(n, generator)))

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> Metrics:
        """Cheap GAN monitoring on validation images (a GAN has no likelihood).

        Per-image means of: ``loss_d_real`` = BCE(D(x), 1), ``loss_d_fake`` =
        BCE(D(G(z)), 0), ``loss_d`` (their sum; also returned as ``loss``),
        ``d_real``/``d_fake`` (mean probabilities); plus ``n_images``. G runs in
        eval mode (as in :meth:`sample`), z from a fixed seed. D runs with batch
        statistics, as in training, and its running stats are restored after.
        Forwards run under the family's autocast; the sums are taken in fp32+.
        """
        gen = torch.Generator().manual_seed(EVAL_SEED)
        sums = torch.zeros(4, dtype=torch.float64)
        count = 0
        with _mode(unwrap(self.netG), False) as netG, \
                _mode(unwrap(self.netD), True, keep_buffers=True) as netD:
            for batch in batches:
                real = batch["image"].to(self.device)
                with self.autocast():
                    fake = netG(self.sample_z(real.size(0), gen))
                    logits_real, logits_fake = netD(real), netD(fake)
                sums += self._eval_sums(upcast(logits_real), upcast(logits_fake))
                count += real.size(0)
        if count == 0:
            raise ValueError("DCGAN.evaluate: no validation images")
        loss_d_real, loss_d_fake, d_real, d_fake = (sums / count).tolist()
        return {"loss": loss_d_real + loss_d_fake, "loss_d": loss_d_real + loss_d_fake,
                "loss_d_real": loss_d_real, "loss_d_fake": loss_d_fake,
                "d_real": d_real, "d_fake": d_fake, "n_images": float(count)}

    @staticmethod
    def _eval_sums(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """Batch sums [bce_real, bce_fake, p_real, p_fake] as float64 on CPU."""
        return torch.stack([
            _bce(logits_real, 1.0, "sum"), _bce(logits_fake, 0.0, "sum"),
            torch.sigmoid(logits_real).sum(), torch.sigmoid(logits_fake).sum(),
        ]).double().cpu()
