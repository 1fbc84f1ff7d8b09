"""Learn a k-colour palette with k-means and map images to palette indices.

PixelRNN predicts one categorical colour per pixel (a softmax over k palette
colours, as in the classic 176-colour Pokémon experiment) instead of three RGB
intensities, which otherwise regress to grey.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_CHUNK = 65536  # pixels per distance block: bounds memory at CHUNK x k floats


def sample_pixels(images: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """Draw ``n`` RGB pixels uniformly over all pixels of ``images`` ([H, W, 3] uint8)."""
    flat = np.concatenate([im.reshape(-1, 3) for im in images])
    rng = np.random.default_rng(seed)
    if len(flat) <= n:
        return flat.astype(np.float32)
    return flat[rng.choice(len(flat), size=n, replace=False)].astype(np.float32)


def sample_pixels_lazy(count: int, per_image: int, load: Callable[[int], np.ndarray], n: int,
                       seed: int) -> np.ndarray:
    """What :func:`sample_pixels` draws (same seed, same order; uint8 ``[<= n, 3]``) from
    ``count`` images of ``per_image`` pixels each, loading (``load(i) -> [per_image, 3]``)
    only the images the draw falls in, one at a time, instead of holding them all."""
    if count * per_image <= n:
        return np.concatenate([load(i) for i in range(count)])
    picks = np.random.default_rng(seed).choice(count * per_image, size=n, replace=False)
    image_of, pixel_of = np.divmod(picks, per_image)
    order = np.argsort(image_of, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(image_of[order]) != 0])
    out = np.empty((n, 3), np.uint8)
    for group in np.split(order, starts[1:]):
        out[group] = load(int(image_of[group[0]]))[pixel_of[group]]
    return out


def kmeans(pixels: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding. Returns [k, 3] float32 centres,
    sorted by luminance so palette order is stable and meaningful."""
    rng = np.random.default_rng(seed)
    unique = np.unique(pixels, axis=0)
    if len(unique) <= k:
        # Fewer distinct colours than k: the palette is exact; pad with repeats.
        centres = np.concatenate([unique, np.repeat(unique[-1:], k - len(unique), axis=0)])
        return _sort(centres.astype(np.float32))
    centres = _kmeans_pp(pixels, k, rng)
    for _ in range(iterations):
        labels = assign(pixels, centres)
        sums = np.zeros_like(centres, dtype=np.float64)
        np.add.at(sums, labels, pixels)
        counts = np.bincount(labels, minlength=k)
        empty = counts == 0
        new = centres.copy()
        new[~empty] = (sums[~empty] / counts[~empty, None]).astype(np.float32)
        # Re-seed empty clusters at the pixels farthest from their centre.
        if empty.any():
            far = np.argsort(-_min_dist(pixels, new))[: int(empty.sum())]
            new[empty] = pixels[far]
        moved = np.abs(new - centres).max()
        centres = new
        if moved < 1e-3:
            break
    return _sort(centres)


def _kmeans_pp(pixels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [pixels[rng.integers(len(pixels))]]
    dist = ((pixels - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        probs = dist / dist.sum() if dist.sum() > 0 else None
        centres.append(pixels[rng.choice(len(pixels), p=probs)])
        dist = np.minimum(dist, ((pixels - centres[-1]) ** 2).sum(axis=1))
    return np.stack(centres).astype(np.float32)


def _min_dist(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    labels = assign(pixels, centres)
    return ((pixels - centres[labels]) ** 2).sum(axis=1)


def assign(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean in RGB) for each pixel [N, 3]."""
    pixels = pixels.astype(np.float32, copy=False)
    c2 = (centres.astype(np.float32) ** 2).sum(axis=1)
    out = np.empty(len(pixels), dtype=np.int64)
    for start in range(0, len(pixels), _CHUNK):
        block = pixels[start:start + _CHUNK]
        # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is constant per row.
        d = c2[None, :] - 2.0 * block @ centres.T.astype(np.float32)
        out[start:start + _CHUNK] = d.argmin(axis=1)
    return out


def _sort(centres: np.ndarray) -> np.ndarray:
    luma = centres @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    order = np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0], luma))
    return centres[order]


def learn_palette(images: list[np.ndarray], k: int, sample: int, iterations: int, seed: int) -> np.ndarray:
    """Palette [k, 3] uint8 learned from RGB uint8 images."""
    return palette_from_pixels(sample_pixels(images, sample, seed), k, iterations, seed)


def palette_from_pixels(pixels: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Palette [k, 3] uint8: k-means of sampled RGB ``pixels [n, 3]``."""
    centres = kmeans(pixels.astype(np.float32), k, iterations, seed)
    return np.clip(np.rint(centres), 0, 255).astype(np.uint8)


def quantize(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> palette indices uint8 [H, W]."""
    h, w, _ = image.shape
    return assign(image.reshape(-1, 3), palette.astype(np.float32)).reshape(h, w).astype(np.uint8)


def dequantize(indices: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Palette indices [..., H, W] -> RGB uint8 [..., H, W, 3]."""
    return palette[indices]
