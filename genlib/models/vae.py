"""Convolutional VAE family (Kingma & Welling 2014, *Auto-Encoding
Variational Bayes*) with a likelihood reported in nats/image and bits/dim.

Model
-----
- :class:`Encoder`: strided ``Conv2d`` stack (GroupNorm + LeakyReLU) down to
  4 x 4, then a linear head -> ``(mu, logvar)``, each ``[B, latent_dim]``.
- :class:`Decoder`: linear -> 4 x 4, ``ConvTranspose2d`` stack mirroring the
  encoder, ``tanh`` mean ``[B, nc, S, S]`` in ``(-1, 1)``.
- Prior ``p(z) = N(0, I)``; posterior ``q(z|x) = N(mu, diag(exp(logvar)))``.
- GroupNorm rather than BatchNorm: no running statistics, so train and eval
  modes compute the same ELBO and DDP needs no buffer syncing.

Likelihood (the design choice the numbers depend on)
----------------------------------------------------
``p(x|z) = N(x; mean(z), sigma^2 I)`` on data in ``[-1, 1]``, with ONE scalar
``log_scale = log sigma`` shared by all pixels, learned by default (a
"sigma-VAE", Rybkin et al. 2021) or fixed (``learn_scale=False``).

Images come from 8-bit pixels, ``x = p / 127.5 - 1``: a grid of bin width
``2/255``. With ``dequantize=True`` (default) every image is jittered uniformly
inside its bin, ``y = x + u``, ``u ~ U(-1/255, 1/255)`` per dimension, before
the encoder and the likelihood. For such ``y`` (Theis et al. 2016)::

    -log P(x) <= E_u[-log p(y)] - dims * log(2/255)
              =  E_u[-log p(y)] + dims * log(127.5)

so adding ``dims * log(127.5)`` nats converts the continuous density on
``[-1, 1]`` into a probability of the discrete 8-bit image. ``recon`` below
already includes this shift, so ``nelbo = recon + kl`` is an upper bound on the
discrete NLL in nats/image, and ``bits_per_dim = nelbo / (dims * ln 2)`` is
comparable with discrete models (PixelRNN, PixelCNN, ...). Without
dequantization the same shift is applied but the number is not a bound (the
density could concentrate on the grid points).

``beta`` weights the KL in the *training* objective (``loss = recon + beta *
kl``). ``nelbo``/``bits_per_dim`` always use weight 1, so they remain a valid
bound for any beta, but only with ``beta == 1`` is the model trained to make
that bound tight; for other betas treat bits/dim as a loose bound only.

Single-device and Ray-free. ``encoder``/``decoder`` may be wrapped (e.g. DDP)
through :meth:`Family.wrap`: ``train_step`` calls each attribute once, then one
backward. Inference helpers use the unwrapped modules (no collectives).

Mixed precision (:meth:`Family.set_precision`): encoder and decoder run under
autocast, except the decoder's output layer, which always runs in fp32 (a
16-bit mean is rounded to ~half an 8-bit bin, which would cap the likelihood
once sigma is learned small); ``mu``/``logvar``/``mean`` are upcast and the
reparameterisation, Gaussian NLL and KL are computed in fp32.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from genlib.config import Fields, is_int
from genlib.models.base import (
    Batch,
    Family,
    Metrics,
    bits_per_dim,
    full_precision,
    unwrap,
    upcast,
)

__all__ = ["IMAGE_SIZES", "VAEConfig", "Encoder", "Decoder", "VAE", "gaussian_nll", "noise", "eval_mode",
           "kl_standard_normal", "DISCRETE_SHIFT_PER_DIM"]

IMAGE_SIZES = (32, 64, 128)
# Nats per dimension turning a density on [-1, 1] into 8-bit probabilities:
# -log(bin width) = -log(2/255) = log(127.5).
DISCRETE_SHIFT_PER_DIM = math.log(127.5)
LOGVAR_RANGE = (-30.0, 20.0)  # clamp: keeps exp(logvar) finite early in training
EVAL_SEED = 0  # evaluate() noise (dequantisation, z) is seeded: calls agree


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------
@dataclass
class VAEConfig:
    """Hyper-parameters of a convolutional VAE."""

    image_size: int = 64
    """Image side in pixels: 32, 64 or 128 (square images)."""
    nc: int = 3
    """Image channels (3 = RGB)."""
    latent_dim: int = 128
    """Dimension of z (2 gives the classic 2-D latent grid, see latent_grid)."""
    nf: int = 64
    """Width of the first encoder layer (doubling at every downsampling stage;
    the decoder mirrors it)."""
    lr: float = 1e-3
    """Adam learning rate."""
    beta: float = 1.0
    """KL weight in the training loss. bits/dim is an NLL bound of the trained
    objective only when beta == 1 (nelbo is always reported with weight 1)."""
    learn_scale: bool = True
    """Learn the decoder's scalar log-scale log(sigma); False keeps it fixed."""
    init_log_scale: float = -2.0
    """Initial (or fixed) log(sigma) of the Gaussian decoder, data in [-1, 1]."""
    dequantize: bool = True
    """Add uniform noise within each 8-bit bin (width 2/255) so that the
    reported NLL bounds the discrete NLL."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.integer("image_size")
        check.choice("image_size", IMAGE_SIZES)
        for name in ("nc", "latent_dim", "nf"):
            check.integer(name, low=1)
        check.number("lr", above=0)
        check.number("beta", low=0)
        for name in ("learn_scale", "dequantize"):
            check.boolean(name)
        check.number("init_log_scale", low=-10, high=5)
        check.number("grad_clip", above=0, optional=True)


# --------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------
def n_stages(image_size: int) -> int:
    """x2 resampling stages between 4 x 4 and ``image_size`` (32 -> 3, 64 -> 4)."""
    return int(math.log2(image_size)) - 2


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class Encoder(nn.Module):
    """Images ``[B, nc, S, S]`` -> ``(mu, logvar)``, each ``[B, latent_dim]``."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, width = config.nc, config.nf
        for _ in range(n_stages(config.image_size)):
            # state: c_in x s x s -> width x s/2 x s/2
            layers += [nn.Conv2d(c_in, width, 4, 2, 1), _norm(width), nn.LeakyReLU(0.2)]
            c_in, width = width, width * 2
        self.features = nn.Sequential(*layers)
        # state: (nf*2^(n-1)) x 4 x 4 -> flattened -> 2 * latent_dim
        self.head = nn.Linear(c_in * 16, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """``z [B, latent_dim]`` -> ``(mean [B, nc, S, S] in (-1, 1), log_scale [])``."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        n = n_stages(config.image_size)
        width = config.nf * 2 ** (n - 1)  # mirrors the encoder's last width
        self.width = width
        self.fc = nn.Linear(config.latent_dim, width * 16)  # z -> width x 4 x 4
        layers: list[nn.Module] = [_norm(width), nn.ReLU()]
        for _ in range(n - 1):
            # state: width x s x s -> (width/2) x 2s x 2s
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), _norm(width // 2),
                       nn.ReLU()]
            width //= 2
        # state: nf x S/2 x S/2 -> nc x S x S, tanh keeps the mean in (-1, 1)
        layers += [nn.ConvTranspose2d(width, config.nc, 4, 2, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        # log(sigma) of the Gaussian likelihood, one scalar for all pixels
        self.log_scale = nn.Parameter(torch.tensor(float(config.init_log_scale)),
                                      requires_grad=config.learn_scale)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main[:-2](self.fc(z).view(z.size(0), self.width, 4, 4))
        # Output conv + tanh in fp32 even under autocast (module docstring);
        # without autocast this is exactly self.main(...).
        mean = self.main[-1](full_precision(self.main[-2], h))
        # log_scale goes out through forward so a DDP wrapper sees it used
        return mean, self.log_scale


# --------------------------------------------------------------------------
# Likelihood terms (per image, in nats)
# --------------------------------------------------------------------------
def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``-log N(x; mean, exp(log_scale)^2)`` summed over all but dim 0 -> ``[B]``
    (a continuous density: nats per image on the data's own scale)."""
    z = (x - mean) * torch.exp(-log_scale)
    per_dim = 0.5 * z.pow(2) + log_scale + 0.5 * math.log(2 * math.pi)
    return per_dim.flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic ``KL(N(mu, exp(logvar)) || N(0, I))`` per row -> ``[B]`` nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def noise(kind: str, shape: torch.Size, generator: torch.Generator | None,
           device: torch.device) -> torch.Tensor:
    """``randn``/``rand`` drawn on the generator's device, moved to ``device``."""
    where = generator.device if generator is not None else device
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(shape, generator=generator, device=where).to(device)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``module`` in eval mode; restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


# --------------------------------------------------------------------------
# Family
# --------------------------------------------------------------------------
class VAE(Family):
    """Convolutional VAE: networks ``encoder``/``decoder``, one Adam optimiser
    under key ``"vae"``.

    ``train_step`` metrics (per-image means, nats unless said otherwise):
    ``loss`` (= recon + beta*kl, the objective), ``nelbo`` (= recon + kl),
    ``recon`` (discrete-space reconstruction NLL), ``kl``, ``bits_per_dim``
    (of nelbo), ``grad_norm`` (before clipping), ``log_scale``; under fp16
    also ``loss_scale`` and ``overflow`` (a non-finite grad norm: the step was
    skipped).
    """

    def __init__(self, config: VAEConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.config = config
        self.encoder: nn.Module = Encoder(config).to(self.device)
        self.decoder: nn.Module = Decoder(config).to(self.device)
        self.networks = {"encoder": self.encoder, "decoder": self.decoder}
        params = [p for net in self.networks.values() for p in net.parameters()
                  if p.requires_grad]
        self.optimizers = {"vae": torch.optim.Adam(params, lr=config.lr)}

    @property
    def dims(self) -> int:
        """Dimensions per image, ``nc * S * S`` (the bits/dim denominator)."""
        return self.config.nc * self.config.image_size ** 2

    def dequantized(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` with uniform jitter inside each value's 2/255-wide bin (``config.dequantize``), else ``x``."""
        if not self.config.dequantize:
            return x
        return x + (noise("uniform", x.shape, generator, x.device) - 0.5) * (2.0 / 255.0)

    def elbo_terms(self, x: torch.Tensor, encoder: nn.Module, decoder: nn.Module,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-sample ``(recon, kl)``, each ``[B]`` nats/image, for images
        ``x [B, nc, S, S]`` in ``[-1, 1]``. ``recon`` includes the 8-bit shift
        ``dims * log(127.5)`` (module docstring); noise comes from ``generator``.
        Networks run under the family's autocast, the terms in fp32."""
        x = self.dequantized(x, generator)
        with self.autocast():
            mu, logvar = encoder(x)  # [B, latent_dim] each
        mu, logvar = upcast(mu), upcast(logvar)
        eps = noise("normal", mu.shape, generator, mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterisation
        with self.autocast():
            mean, log_scale = decoder(z)  # [B, nc, S, S] (fp32 output layer), []
        recon = gaussian_nll(x, upcast(mean), log_scale) + self.dims * DISCRETE_SHIFT_PER_DIM
        return recon, kl_standard_normal(mu, logvar)

    # -- training ---------------------------------------------------------
    def train_step(self, batch: Batch) -> Metrics:
        """One Adam step on ``recon + beta * kl`` (mean over the batch)."""
        x = batch["image"].to(self.device, non_blocking=True)  # [B, nc, S, S]
        recon, kl = self.elbo_terms(x, self.encoder, self.decoder)  # [B] each
        loss = (recon + self.config.beta * kl).mean()
        opt = self.optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        grad_norm = self.backward_step(loss, opt, clip=self.config.grad_clip)  # all of opt's params
        amp_metrics = self.end_step()
        log_scale = unwrap(self.decoder).log_scale
        vals = torch.stack([loss.detach(), recon.mean().detach(), kl.mean().detach(),
                            grad_norm, log_scale.detach()]).tolist()  # one host sync
        metrics = dict(zip(("loss", "recon", "kl", "grad_norm", "log_scale"), vals))
        return {**self._with_nelbo(metrics), **amp_metrics}

    def _with_nelbo(self, metrics: Metrics) -> Metrics:
        """Add ``nelbo = recon + kl`` and its ``bits_per_dim``."""
        metrics["nelbo"] = metrics["recon"] + metrics["kl"]
        metrics["bits_per_dim"] = bits_per_dim(metrics["nelbo"], self.dims)
        return metrics

    # -- inference ----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> Metrics:
        """Per-image means over all validation images of ``loss``, ``nelbo``,
        ``recon``, ``kl``, ``bits_per_dim``; plus ``n_images``. Single-sample
        ELBO, eval mode, noise from a fixed seed (repeated calls agree)."""
        gen = torch.Generator().manual_seed(EVAL_SEED)
        sums = torch.zeros(2, dtype=torch.float64)  # [recon, kl]
        count = 0
        with eval_mode(unwrap(self.encoder)) as enc, eval_mode(unwrap(self.decoder)) as dec:
            for batch in batches:
                x = batch["image"].to(self.device)
                recon, kl = self.elbo_terms(x, enc, dec, gen)
                sums += torch.stack([recon.sum(), kl.sum()]).double().cpu()
                count += x.size(0)
        if count == 0:
            raise ValueError("VAE.evaluate: no validation images")
        recon_m, kl_m = (sums / count).tolist()
        metrics = {"loss": recon_m + self.config.beta * kl_m, "recon": recon_m, "kl": kl_m,
                   "n_images": float(count)}
        return self._with_nelbo(metrics)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means ``[B, nc, S, S]`` in ``[-1, 1]`` for ``z [B, latent_dim]``
        (fp32; the decoder body runs under the family's autocast)."""
        with eval_mode(unwrap(self.decoder)) as dec, self.autocast():
            return upcast(dec(z.to(self.device))[0])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``z ~ N(0, I)``: ``[n, nc, S, S]`` decoder means in ``[-1, 1]``
        (no pixel noise is added, as is customary)."""
        shape = torch.Size((n, self.config.latent_dim))
        return self.decode(noise("normal", shape, generator, self.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction: decode the posterior mean of ``x``."""
        with eval_mode(unwrap(self.encoder)) as enc, self.autocast():
            mu, _ = enc(x.to(self.device))
        return self.decode(upcast(mu))

    @torch.no_grad()
    def latent_grid(self, n_per_side: int, span: float = 3.0) -> torch.Tensor:
        """Decode a regular ``n x n`` grid over ``[-span, span]^2`` (latent_dim
        == 2 only) -> ``[n*n, nc, S, S]`` in row-major order: column ``j`` has
        z1 rising left to right, row ``i`` has z2 falling top to bottom (as in a
        plot with z2 upwards)."""
        if self.config.latent_dim != 2:
            raise ValueError(f"latent_grid needs latent_dim == 2, got {self.config.latent_dim}")
        if not is_int(n_per_side) or n_per_side < 1:
            raise ValueError(f"n_per_side must be a positive integer, got {n_per_side!r}")
        axis = torch.linspace(-span, span, n_per_side)
        z2, z1 = torch.meshgrid(axis.flip(0), axis, indexing="ij")  # [n, n] each
        return self.decode(torch.stack([z1, z2], dim=-1).reshape(-1, 2))
