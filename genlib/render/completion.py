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
(one ``[R, nz]`` batch through the shared :func:`genlib.render.optim.optimize_batch`);
restarts do not interact (G and D run in eval mode, so the batch is only a
batch), and the one with the lowest final total loss wins. Rows with the same
restarts, lr, momentum and lambda (:meth:`MaskCompletion.batch_key`) search
together: ``z [B, R, nz]``, B rows x R restarts through G and D at once, each
row with its own image, mask, seed and iteration budget. Finally the hole is
filled by Poisson blending (:mod:`genlib.render.poisson`) or plain pasting.

Images go through G/D in ``[-1, 1]`` (the tanh range), i.e. ``2 * x - 1`` of the
``[0, 1]`` tensors of :mod:`genlib.render.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genlib.config import Fields
from genlib.render.base import HIDDEN_GREY, RenderError, RenderOutput, check_image, to_image, to_tensor
from genlib.render.batching import render_jobs, single
from genlib.render.masks import (MASK_KINDS, center_box, contextual_weights, fit_image, fit_mask, load_mask,
                                 make_mask, mask_image)
from genlib.render.optim import Snapshots, optimize_batch
from genlib.render.poisson import poisson_blend
from genlib.train.checkpoint import Checkpoint, load_checkpoint, load_family



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
    snapshot_every: int = 0
    """Save a progress frame every this many z-search iterations (0 = off) into
    ``RenderOutput.frames``: the currently best restart's G(z) pasted into the hole
    (no blending), the final output last."""

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
        check.integer("snapshot_every", low=0)

    def check_limits(self, limits) -> None:
        """The render config's caps (a ``genlib.render.limits.RenderLimits``); LimitError names field and cap."""
        limits.cap(self, "iterations", "max_iterations")
        limits.cap(self, "restarts", "max_restarts")


# --------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------
class MaskCompletion:
    """Loads a DCGAN's G and D once; ``__call__`` completes one image.

    Inputs of another size are centre-cropped to a square, then resized
    (Lanczos) to the generator's ``image_size``; the output has the generator's
    size (``info["original_size"]`` records the input's ``(H, W)``)."""

    def __init__(self, checkpoint: str | Path | Checkpoint, device: torch.device | str = "cpu") -> None:
        """``checkpoint``: a DCGAN run folder, checkpoint folder or state.pt (local or URI),
        or one already loaded (``genlib eval`` has read and hashed it)."""
        loaded = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
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
        return single(self.render_many([image], [params], [mask]))

    def batch_key(self, image: np.ndarray, params: CompletionParams) -> tuple:
        """Rows with equal keys share a batch: same restarts, step size, momentum and lambda.
        Image, mask, window, seed, iterations, blending and snapshots stay per row."""
        return _key(params)

    def render_many(self, images: Sequence[np.ndarray], params_list: Sequence[CompletionParams],
                    masks: Sequence[np.ndarray | None] | None = None) -> list[RenderOutput | Exception]:
        """Complete every row; rows with the same batch key search their z together, one
        ``[B, R, nz]`` batch (B rows x R restarts through G and D at once). A failing row
        (bad mask, non-finite loss) is its exception, the others go on."""
        items = list(zip(images, params_list, masks or [None] * len(images)))
        return render_jobs(items, lambda item: self._job(*item), lambda job: _key(job.params), self._render)

    def _job(self, image: np.ndarray, params: CompletionParams, mask: np.ndarray | None) -> _Completion:
        """A row checked and prepared: the image and mask at model size, its contextual weights."""
        check_image(image)
        box = center_box(image.shape[:2], (1, 1))  # the centred square
        y_img = fit_image(image, (self.image_size,) * 2, Image.Resampling.LANCZOS)  # uint8 [S, S, 3]
        known = self._mask(image.shape[:2], box, params, mask)  # bool [S, S]
        weights = torch.from_numpy(contextual_weights(known, params.window))[None, None].to(self.device)
        return _Completion(params, tuple(image.shape[:2]), y_img, known, to_tensor(y_img, self.device) * 2 - 1, weights)

    def _render(self, jobs: list[_Completion]) -> list[RenderOutput | Exception]:
        """Search z for jobs sharing a batch key, then composite each row's best restart."""
        self._search(jobs)
        done = [job for job in jobs if job.error is None]
        if done:
            best = [int(torch.argmin(job.terms["total"])) for job in done]
            with torch.no_grad():  # every row's best G(z) in one batch: [b, 3, S, S] in [-1, 1]
                g = self.netG(torch.stack([job.z[r] for job, r in zip(done, best)]))
            for job, r, generated in zip(done, best, g):
                job.output = self._output(job, r, _to_float_image(generated))
        return [job.error or job.output for job in jobs]

    def _output(self, job: _Completion, best: int, generated: np.ndarray) -> RenderOutput:
        output = _composite(job.y_img, generated, job.known, job.params.blend)
        return RenderOutput(
            image=output,
            losses={k: float(v[best]) for k, v in job.terms.items()},
            iterations=len(job.history),
            frames=[*job.snaps.frames, output] if job.snaps else [],
            extras={"mask": mask_image(job.known), "generated": _to_uint8(generated),
                    "masked_input": np.where(job.known[..., None], job.y_img, np.uint8(HIDDEN_GREY))},
            info={"weights_id": self.weights_id, "restart": best,
                  "restart_losses": job.terms["total"].tolist(), "history": job.history,
                  "original_size": job.original_size, "size": (self.image_size,) * 2,
                  "missing_fraction": float(1 - job.known.mean())})

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
        """Per-restart losses ``[b, R]`` for ``z [b, R, nz]`` (b rows x R restarts); ``y [b, 3, S, S]``
        in [-1, 1], ``weights [b, 1, S, S]``: row i's restarts are compared with row i's image."""
        b, r = z.shape[:2]
        g = self.netG(z.reshape(b * r, -1))  # [b*R, 3, S, S] in [-1, 1]
        g = g.view(b, r, *g.shape[1:])  # [b, R, 3, S, S]
        contextual = (weights[:, None] * (g - y[:, None]).abs()).flatten(2).sum(2)  # weighted L1 per restart
        perceptual = -F.softplus(self.netD(g.flatten(0, 1)).float()).view(b, r)  # log(1 - D(G(z))) from logits
        return {"contextual": contextual, "perceptual": perceptual, "total": contextual + lam * perceptual}

    def _search(self, jobs: list[_Completion]) -> None:
        """Optimise every row's restarts as one ``[B, R, nz]`` batch; sets each job's z [R, nz],
        final per-restart terms, history and snapshots (or its error)."""
        first = jobs[0].params  # restarts, lr, momentum, lam: what the key makes equal
        y = torch.cat([job.y for job in jobs])              # [B, 3, S, S]
        weights = torch.cat([job.weights for job in jobs])  # [B, 1, S, S]
        everyone, bound = list(range(len(jobs))), self.z_bound

        def objective(z: torch.Tensor, rows: list[int]) -> dict[str, torch.Tensor]:
            # rows and restarts are independent, so d(sum)/dz_(i, r) = d(total_(i, r))/dz_(i, r)
            pick = (lambda t: t) if rows == everyone else (lambda t: t[rows])
            terms = self._terms(z, pick(y), pick(weights), first.lam)  # [b, R] each
            return {"loss": terms["total"].sum(1), **{k: v.sum(1) for k, v in terms.items()}}

        def project(z: torch.Tensor) -> None:
            z.clamp_(-bound, bound)

        for job in jobs:
            job.snaps = Snapshots.maybe(job.params.snapshot_every, partial(self._frame, job))
        results = optimize_batch(torch.stack([self._init_z(job.params) for job in jobs]), objective,
                                 method="momentum", iterations=[job.params.iterations for job in jobs],
                                 lr=first.lr, momentum=first.momentum, project=project,
                                 callbacks=[job.snaps for job in jobs])
        for job, res in zip(jobs, results):
            if isinstance(res, Exception):
                job.error = res
            else:
                job.z, job.history = res.param[0], res.history
        self._final_terms([job for job in jobs if job.error is None], first.lam)

    def _final_terms(self, jobs: list[_Completion], lam: float) -> None:
        """Losses at the returned (last, projected) z, not the step before: one batched pass."""
        if not jobs:
            return
        with torch.no_grad():
            terms = self._terms(torch.stack([job.z for job in jobs]), torch.cat([job.y for job in jobs]),
                                torch.cat([job.weights for job in jobs]), lam)
        for i, job in enumerate(jobs):
            job.terms = {k: v[i].detach().cpu().double() for k, v in terms.items()}  # [R] each
            if not torch.isfinite(job.terms["total"]).all():
                job.error = RenderError(f"non-finite final loss {job.terms['total'].tolist()}")

    @torch.no_grad()
    def _frame(self, job: _Completion, z: torch.Tensor) -> np.ndarray:
        """Progress frame of row ``job`` at ``z [1, R, nz]``: its best restart so far, pasted, uint8 [S, S, 3]."""
        best = int(torch.argmin(self._terms(z, job.y, job.weights, job.params.lam)["total"][0]))
        return _composite(job.y_img, self._generate(z[0, best:best + 1]), job.known, blend=False)

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
        return _to_float_image(self.netG(z)[0])


# --------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------
@dataclass
class _Completion:
    """One row of a batch: its prepared inputs, then its search's outcome."""

    params: CompletionParams
    original_size: tuple[int, int]     # the input's (H, W)
    y_img: np.ndarray                  # uint8 [S, S, 3]: the input at model size
    known: np.ndarray                  # bool [S, S], True = known
    y: torch.Tensor                    # [1, 3, S, S] in [-1, 1]
    weights: torch.Tensor              # contextual weights [1, 1, S, S]
    snaps: Snapshots | None = None
    z: torch.Tensor | None = None      # searched z [R, nz]
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # final per-restart losses [R]
    history: list[float] = field(default_factory=list)  # summed total loss per iteration
    error: Exception | None = None
    output: RenderOutput | None = None


def _key(params: CompletionParams) -> tuple:
    """What rows sharing a batch must agree on (see ``MaskCompletion.batch_key``)."""
    return (params.restarts, params.lr, params.momentum, params.lam)


def _to_float_image(g: torch.Tensor) -> np.ndarray:
    """G's output [3, S, S] in [-1, 1] -> float64 [S, S, 3] in [0, 1]."""
    return ((g.float().cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0).double().numpy()


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> uint8 (the same rounding as ``base.to_image``)."""
    return to_image(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float())


def _composite(y_img: np.ndarray, generated: np.ndarray, known: np.ndarray, blend: bool) -> np.ndarray:
    """Fill the hole of ``y_img`` (uint8 [S, S, 3]) from ``generated`` (float [S, S, 3]
    in [0, 1]); known pixels are copied from ``y_img`` bit for bit."""
    filled = poisson_blend(generated, y_img / 255.0, known) if blend else generated
    return np.where(known[..., None], y_img, _to_uint8(np.clip(filled, 0, 1)))
