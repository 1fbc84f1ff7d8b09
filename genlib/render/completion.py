"""Semantic image completion with a trained DCGAN (Yeh et al. 2016, "Semantic
Image Inpainting with Deep Generative Models"; the "Perceptual and Contextual
Losses" preprint).

Given an image ``y`` and a mask ``M`` (True = known), search the generator's
latent space for the ``z`` whose ``G(z)`` best explains the known pixels and
looks real to the discriminator, then paste ``G(z)``'s hole into ``y``:

    z^ = argmin_{z in [-1, 1]^nz}  L_c(z) + lam * L_p(z)
    L_c(z) = || W * (G(z) - y) ||_1          contextual loss (weighted L1, summed)
    L_p(z) = log(1 - D(G(z)))                perceptual loss

``W`` are the paper's importance weights (:func:`genlib.render.masks.contextual_weights`):
known pixels weighted by the fraction of missing pixels in a ``window`` around
them, 0 in the hole. **Sign convention**: ``L_p`` is *minimised*, i.e.
``D(G(z))`` -> 1 ("looks real"); it is <= 0 and computed stably from D's logit
``l`` as ``log(1 - sigmoid(l)) = -softplus(l)``. The search is projected
gradient descent with momentum on all ``restarts`` initialisations at once
(one ``[R, nz]`` batch through the shared :func:`genlib.render.optim.optimize`);
restarts do not interact (G and D run in eval mode, so the batch is only a
batch), and the one with the lowest final total loss wins. Finally the hole is
filled by Poisson blending (:mod:`genlib.render.poisson`) or plain pasting.

Images go through G/D in ``[-1, 1]`` (the tanh range), i.e. ``2 * x - 1`` of the
``[0, 1]`` tensors of :mod:`genlib.render.base`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genlib.config import Fields
from genlib.render.base import RenderError, RenderOutput, to_image, to_tensor
from genlib.render.masks import MASK_KINDS, contextual_weights, fit_mask, load_mask, make_mask, mask_image
from genlib.render.optim import optimize
from genlib.render.poisson import poisson_blend
from genlib.train.checkpoint import load_checkpoint, load_family

GREY = 128  # placeholder value of hole pixels in the "masked_input" extra


@dataclass
class CompletionSettings:
    """The ``[complete]`` section of a RenderConfig."""

    checkpoint: str = ""
    """A DCGAN's training run folder (its newest complete checkpoint is used) or
    checkpoint folder, local or a URI."""


@dataclass
class CompletionParams:
    """Parameters of one completion (defaults follow Yeh et al. / bamos' implementation)."""

    mask: str = "center"
    """Which pixels are missing: "center", "random_blocks", "half" (bottom half
    missing) -- see :mod:`genlib.render.masks` -- or a path/URI of a mask image
    of the input's size (white = known, black = missing)."""
    mask_fraction: float = 0.25
    """Fraction of the image area that is missing, in (0, 1): "center" -> a
    centred hole with sides sqrt(fraction) of the image's (0.25 = half the side);
    "random_blocks" -> that fraction of the ~8 x 8 blocks. Ignored otherwise."""
    lam: float = 0.1
    """lambda >= 0: weight of the perceptual (discriminator) loss."""
    window: int = 7
    """Side of the neighbourhood of the contextual weights: odd, >= 3."""
    iterations: int = 1000
    """z-search iterations (every restart runs all of them, batched)."""
    lr: float = 0.01
    """Step size of the momentum gradient descent on z."""
    momentum: float = 0.9
    """Momentum in [0, 1)."""
    restarts: int = 4
    """Independent z initialisations, optimised as one batch; the best total loss wins."""
    blend: bool = True
    """Poisson-blend G(z)'s hole into the input (False: paste it as is)."""
    seed: int = 0
    """Seeds the z initialisations and the random_blocks mask (>= 0)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.require("mask", isinstance(self.mask, str) and self.mask.strip() != "",
                      f"must be one of {MASK_KINDS} or a mask image path/URI")
        check.number("mask_fraction", above=0, below=1)
        check.number("lam", low=0)
        check.integer("window", low=3)
        check.require("window", self.window % 2 == 1, "must be odd")
        check.integer("iterations", low=1)
        check.integer("restarts", low=1)
        check.number("lr", above=0)
        check.number("momentum", low=0, below=1)
        check.boolean("blend")
        check.integer("seed", low=0)


# --------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------
class MaskCompletion:
    """Loads a DCGAN's G and D once; ``__call__`` completes one image.

    Inputs of another size are centre-cropped to a square, then resized
    (Lanczos) to the generator's ``image_size``; the output has the generator's
    size (``info["original_size"]`` records the input's ``(H, W)``)."""

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu") -> None:
        """``checkpoint``: a DCGAN run folder, checkpoint folder or state.pt (local or URI)."""
        loaded = load_checkpoint(checkpoint)
        family = load_family(loaded, expect=("dcgan",))
        self.config = family.config
        self.device = torch.device(device)
        # eval mode: BatchNorm uses running statistics, so the R restarts of a
        # batch never interact; no parameter needs a gradient (only z does).
        self.netG, self.netD = (n.to(self.device).eval().requires_grad_(False) for n in (family.netG, family.netD))
        self.corpus_id = loaded.corpus_id
        self.weights_id = loaded.weights_id  # dcgan:<sha256[:16]>@<corpus id>
        # projection box of z: the uniform prior's support, +-3 sigma for a normal prior
        self.z_bound = 1.0 if self.config.z_dist == "uniform" else 3.0

    @classmethod
    def from_settings(cls, settings: CompletionSettings, device: torch.device | str = "cpu") -> MaskCompletion:
        if not settings.checkpoint:
            raise RenderError("kind 'complete' needs a DCGAN checkpoint: set complete.checkpoint "
                              "(a training run or checkpoint folder)")
        return cls(settings.checkpoint, device)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def __call__(self, image: np.ndarray, params: CompletionParams,
                 mask: np.ndarray | None = None) -> RenderOutput:
        """Complete ``image`` (uint8 RGB ``[H, W, 3]``). ``mask`` (bool or 0/nonzero
        ``[H, W]`` of the input's size, True = known) overrides ``params.mask``."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RenderError(f"expected a uint8 RGB image [H, W, 3], got {getattr(image, 'dtype', type(image))} "
                              f"{tuple(getattr(image, 'shape', ()))}")
        box = _square_box(*image.shape[:2])
        y_img = _fit_image(image, box, self.image_size)  # uint8 [S, S, 3]
        known = self._mask(image.shape[:2], box, params, mask)  # bool [S, S]
        z, terms, history = self._search(y_img, known, params)
        best = int(torch.argmin(terms["total"]))
        generated = self._generate(z[best:best + 1])  # float64 [S, S, 3] in [0, 1]
        output = _composite(y_img, generated, known, params.blend)
        return RenderOutput(
            image=output,
            losses={k: float(v[best]) for k, v in terms.items()},
            iterations=len(history),
            extras={"mask": mask_image(known), "generated": _to_uint8(generated),
                    "masked_input": np.where(known[..., None], y_img, np.uint8(GREY))},
            info={"weights_id": self.weights_id, "restart": best,
                  "restart_losses": terms["total"].tolist(), "history": history,
                  "original_size": tuple(image.shape[:2]), "size": (self.image_size,) * 2,
                  "missing_fraction": float(1 - known.mean())})

    # -- mask ------------------------------------------------------------------
    def _mask(self, shape: tuple[int, int], box: tuple[int, int, int, int], params: CompletionParams,
              mask: np.ndarray | None) -> np.ndarray:
        """The mask at model size ``bool [S, S]``; RenderError if unusable."""
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim != 2 or mask.shape != tuple(shape):
                raise RenderError(f"mask is {tuple(mask.shape)} but the image is {tuple(shape)} (H, W)")
            known = fit_mask(mask.astype(bool), box, self.image_size)
        elif params.mask in MASK_KINDS:
            rng = np.random.default_rng(params.seed)
            known = make_mask(params.mask, self.image_size, params.mask_fraction, rng)
        else:
            known = fit_mask(load_mask(params.mask, shape), box, self.image_size)
        if known.all():
            raise RenderError("mask has no missing pixel: nothing to complete")
        if not known.any():
            raise RenderError("mask has no known pixel: nothing to complete from")
        return known

    # -- z search ----------------------------------------------------------------
    def _terms(self, z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
        """Per-restart losses ``[R]`` for ``z [R, nz]``; ``y [1, 3, S, S]`` in [-1, 1],
        ``weights [1, 1, S, S]``."""
        g = self.netG(z)  # [R, 3, S, S] in [-1, 1]
        contextual = (weights * (g - y).abs()).flatten(1).sum(1)  # weighted L1 per restart
        perceptual = -F.softplus(self.netD(g).float())  # log(1 - D(G(z))) from logits [R]
        return {"contextual": contextual, "perceptual": perceptual, "total": contextual + lam * perceptual}

    def _search(self, y_img: np.ndarray, known: np.ndarray,
                params: CompletionParams) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[float]]:
        """Optimise all restarts as one batch; -> (z [R, nz], final per-restart terms, history)."""
        y = to_tensor(y_img, self.device) * 2 - 1  # [1, 3, S, S] in [-1, 1]
        weights = torch.from_numpy(contextual_weights(known, params.window))[None, None].to(self.device)
        bound = self.z_bound

        def objective(z: torch.Tensor) -> dict[str, torch.Tensor]:
            # the restarts are independent, so d(sum)/dz_r = d(total_r)/dz_r
            terms = self._terms(z, y, weights, params.lam)
            return {"loss": terms["total"].sum(), **{k: v.sum() for k, v in terms.items()}}

        def project(z: torch.Tensor) -> None:
            z.clamp_(-bound, bound)

        res = optimize(self._init_z(params), objective, method="momentum", iterations=params.iterations,
                       lr=params.lr, momentum=params.momentum, project=project)
        with torch.no_grad():  # losses at the returned (last, projected) z, not the step before
            final = {k: v.detach().cpu().double() for k, v in self._terms(res.param, y, weights, params.lam).items()}
        if not torch.isfinite(final["total"]).all():
            raise RenderError(f"non-finite final loss {final['total'].tolist()}")
        return res.param, final, res.history

    def _init_z(self, params: CompletionParams) -> torch.Tensor:
        """``[R, nz]`` from the model's prior (seeded on the CPU: device independent)."""
        gen = torch.Generator().manual_seed(params.seed)
        shape = (params.restarts, self.config.nz)
        if self.config.z_dist == "uniform":
            z = torch.rand(shape, generator=gen) * 2 - 1
        else:
            z = torch.randn(shape, generator=gen).clamp(-self.z_bound, self.z_bound)
        return z.to(self.device)

    @torch.no_grad()
    def _generate(self, z: torch.Tensor) -> np.ndarray:
        """``z [1, nz]`` -> G(z) as float64 ``[S, S, 3]`` in [0, 1]."""
        g = (self.netG(z)[0].float().cpu() + 1) / 2
        return g.clamp(0, 1).permute(1, 2, 0).double().numpy()


# --------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------
def _square_box(h: int, w: int) -> tuple[int, int, int, int]:
    """Centred square crop ``(left, top, right, bottom)`` of an ``h x w`` image."""
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return left, top, left + side, top + side


def _fit_image(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Centre-crop to ``box`` and resize (Lanczos) to ``size x size``; a new
    (writable) uint8 [S, S, 3] array."""
    left, top, right, bottom = box
    crop = np.array(image[top:bottom, left:right])
    if crop.shape[:2] == (size, size):
        return crop
    return np.array(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> uint8 (the same rounding as ``base.to_image``)."""
    return to_image(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float())


def _composite(y_img: np.ndarray, generated: np.ndarray, known: np.ndarray, blend: bool) -> np.ndarray:
    """Fill the hole of ``y_img`` (uint8 [S, S, 3]) from ``generated`` (float [S, S, 3]
    in [0, 1]); known pixels are copied from ``y_img`` bit for bit."""
    filled = poisson_blend(generated, y_img / 255.0, known) if blend else generated
    return np.where(known[..., None], y_img, _to_uint8(np.clip(filled, 0, 1)))
