"""Mask completion, measured: genlib's DCGAN completion against two fills that know
nothing about faces, on the same holes of the same held-out images.

- ``mean_fill``: every hole pixel gets the mean colour of the known pixels;
- ``harmonic``: Laplace interpolation from the hole's border, i.e. the smoothest
  fill (``laplacian = 0`` inside the hole, the known pixels as boundary values).
  That is Poisson blending with a flat (zero) source: :func:`genlib.render.poisson.poisson_blend`.

Scores are PSNR and SSIM *inside the hole* (:mod:`genlib.eval.metrics`), averaged over
images, per mask kind (``center``, ``half``, ``random_blocks``; the random blocks and
the z search are seeded per image with ``seed + i``). All three fills are rounded to
uint8 like a completion's output before they are scored.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from genlib.eval.metrics import psnr_in, ssim_in
from genlib.render.completion import CompletionParams, MaskCompletion
from genlib.render.masks import MASK_KINDS
from genlib.render.poisson import poisson_blend

Fill = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (uint8 image [H, W, 3], known [H, W]) -> uint8 image


def mean_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The hole painted in the mean colour of the known pixels."""
    mean = image[known].astype(np.float64).mean(axis=0)  # [3]
    return np.where(known[..., None], image, np.round(mean).astype(np.uint8))


def harmonic_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The hole filled by Laplace interpolation of its border (see the module doc)."""
    target = image.astype(np.float64)
    filled = poisson_blend(np.zeros_like(target), target, known)  # flat source: no guidance
    return np.where(known[..., None], image, np.clip(np.round(filled), 0, 255).astype(np.uint8))


BASELINES: dict[str, Fill] = {"mean_fill": mean_fill, "harmonic": harmonic_fill}


def score_image(image: np.ndarray, known: np.ndarray, completed: np.ndarray) -> dict[str, float]:
    """``psnr``/``ssim`` of ``completed`` and of each baseline, inside the hole of ``image``."""
    scores = {"psnr": psnr_in(completed, image, known), "ssim": ssim_in(completed, image, known)}
    for name, fill in BASELINES.items():
        filled = fill(image, known)
        scores[f"psnr_{name}"] = psnr_in(filled, image, known)
        scores[f"ssim_{name}"] = ssim_in(filled, image, known)
    return scores


def evaluate_completion(completer: MaskCompletion, images: list[np.ndarray], iterations: int,
                        seed: int = 0, tick: Callable[[], None] = lambda: None) -> dict[str, dict[str, float]]:
    """``{mask: {psnr, ssim, psnr_mean_fill, psnr_harmonic, ssim_mean_fill, ssim_harmonic, n}}``
    over ``images`` (uint8 ``[S, S, 3]`` at the generator's size); ``tick`` after each image."""
    size = completer.image_size
    if not images:
        raise ValueError("completion needs at least one held-out image")
    if any(im.shape != (size, size, 3) for im in images):
        raise ValueError(f"completion needs held-out images of the generator's size {size}x{size}; "
                         f"got {images[0].shape[1]}x{images[0].shape[0]} (evaluate on the training corpus)")
    table = {}
    for kind in MASK_KINDS:
        rows = []
        for i, image in enumerate(images):
            out = completer(image, CompletionParams(mask=kind, iterations=iterations, seed=seed + i))
            known = out.extras["mask"] >= 128  # 255 known, 0 missing
            rows.append(score_image(image, known, out.image))
            tick()
        table[kind] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} | {"n": len(rows)}
    return table


__all__ = ["mean_fill", "harmonic_fill", "BASELINES", "score_image", "evaluate_completion"]
