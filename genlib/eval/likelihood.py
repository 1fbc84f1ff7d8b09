"""Likelihood bounds for VAEs and reference points for PixelRNN bits/dim.

VAE (Burda, Grosse & Salakhutdinov 2016, *Importance Weighted Autoencoders*): with
``k`` draws ``z_i ~ q(z|x)`` and weights ``log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)``::

    ELBO_k = mean_i log w_i                    (a k-sample estimate of the ELBO)
    IWAE_k = logsumexp_i log w_i - log k       (>= ELBO_k for the same draws, by Jensen)

Both are lower bounds on ``log p(x)``; we report their negatives in nats/image, so
``iwae_nats <= elbo_nats`` for every image (the same draws feed both). ``log p(x|z)``
includes the VAE's 8-bit shift (``dims * log 127.5``, :mod:`genlib.models.vae`) and,
when the model was trained with dequantisation, the image is jittered once per image
inside its bin, so the numbers bound the *discrete* NLL as the training metrics do.

PixelRNN baselines, in bits per pixel (one palette index = one dimension):

- uniform: every colour equally likely, ``log2 K``;
- unigram: an independent categorical per position, its probabilities the colour
  counts of the train split at that position with add-one (Laplace) smoothing,
  ``p(c | h, w) = (count[h, w, c] + 1) / (n_train + K)``, so an unseen colour costs
  finite bits. A model that does not beat it has learned no more than "which colours
  go where on average".
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor, nn

from genlib.models.base import unwrap, upcast
from genlib.models.vae import DISCRETE_SHIFT_PER_DIM, VAE, eval_mode, gaussian_nll, noise

LOG_2PI = math.log(2 * math.pi)


def _log_normal(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """``log N(x; mean, exp(logvar))`` summed over the last dim: ``[..., L] -> [...]``."""
    return (-0.5 * ((x - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)).sum(-1)


@torch.no_grad()
def vae_bounds(vae: VAE, x: Tensor, k: int, generator: torch.Generator | None = None,
               chunk: int = 256) -> tuple[Tensor, Tensor]:
    """``(elbo_nats, iwae_nats)``, each ``[B]``, for images ``x [B, nc, S, S]`` in [-1, 1].

    ``chunk`` bounds the decoder batch (images x draws per forward)."""
    if k < 1:
        raise ValueError(f"iwae k must be an integer >= 1, got {k!r}")
    x = vae.dequantized(x.to(vae.device), generator)  # one jitter per image, shared by its k draws
    with eval_mode(unwrap(vae.encoder)) as enc, eval_mode(unwrap(vae.decoder)) as dec:
        with vae.autocast():
            mu, logvar = enc(x)  # [B, L] each
        mu, logvar = upcast(mu), upcast(logvar)
        # all draws first (tiny: [B, k, L]), so the chunk size cannot change the numbers
        eps = noise("normal", (mu.shape[0], k, mu.shape[1]), generator, mu.device)
        per_chunk = max(1, chunk // x.shape[0])
        log_w = torch.cat([_log_weights(vae, dec, x, mu, logvar, part)
                           for part in eps.split(per_chunk, dim=1)], dim=1)  # [B, k]
    elbo = -log_w.mean(dim=1)
    iwae = -(torch.logsumexp(log_w, dim=1) - math.log(k))
    return elbo, iwae


def _log_weights(vae: VAE, dec: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """``log w`` for the standard-normal draws ``eps [B, draws, L]`` -> ``[B, draws]``."""
    (b, draws, latent) = eps.shape
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps  # [B, draws, L]
    with vae.autocast():
        mean, log_scale = dec(z.reshape(b * draws, latent))  # [B*draws, nc, S, S], []
    x_rep = x.repeat_interleave(draws, dim=0)  # [B*draws, nc, S, S], image-major like z
    log_px = -(gaussian_nll(x_rep, upcast(mean), log_scale) + vae.dims * DISCRETE_SHIFT_PER_DIM)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))     # [B, draws]
    log_qz = _log_normal(z, mu[:, None], logvar[:, None].expand_as(z))    # [B, draws]
    return log_px.view(b, draws) + log_pz - log_qz


# ----------------------------------------------------------------------------- palette baselines


def position_counts(indices: Iterable[Tensor], num_colors: int) -> tuple[Tensor, int]:
    """Colour counts per position ``[H, W, K]`` (int64) over batches ``[B, H, W]``, and
    the number of images counted."""
    counts, n = None, 0
    for index in indices:
        onehot = torch.nn.functional.one_hot(index.long(), num_colors)  # [B, H, W, K]
        counts = onehot.sum(0) if counts is None else counts + onehot.sum(0)
        n += index.shape[0]
    if counts is None:
        raise ValueError("no images to count colours from")
    return counts, n


def unigram_bits(index: Tensor, counts: Tensor, n_train: int) -> Tensor:
    """Bits per pixel of each image ``index [B, H, W]`` under the add-one-smoothed
    per-position frequencies ``counts [H, W, K]`` of ``n_train`` images -> ``[B]``."""
    k = counts.shape[-1]
    log_p = torch.log((counts.double() + 1) / (n_train + k))  # [H, W, K]
    index = index.long().cpu().unsqueeze(-1)  # [B, H, W, 1]
    picked = log_p.expand(index.shape[0], *log_p.shape).gather(-1, index).squeeze(-1)  # [B, H, W]
    return -picked.flatten(1).mean(1) / math.log(2)


def uniform_bits(num_colors: int) -> float:
    """Bits per pixel of the uniform model over ``num_colors`` colours."""
    return math.log2(num_colors)


__all__ = ["vae_bounds", "position_counts", "unigram_bits", "uniform_bits"]
