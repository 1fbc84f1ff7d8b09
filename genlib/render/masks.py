"""Masks for image completion: generated kinds, mask images, contextual weights.

Convention everywhere in genlib.render: a mask is a ``bool [H, W]`` array with
**True = known** pixel (kept from the input) and **False = missing** (the hole
to fill). Mask images follow the same convention visually: white = known,
black = missing.

Generated kinds (:func:`make_mask`; ``fraction`` is always a fraction of the
image *area* that is missing, except for ``half``):

- ``center``: one centred rectangle with the image's aspect ratio whose area is
  ``fraction`` of the image, i.e. sides ``sqrt(fraction) * (H, W)``. The default
  0.25 gives a hole of half the image side, the centre mask of Yeh et al.
- ``random_blocks``: the image is cut into an about 8 x 8 grid of square blocks
  (side ``max(1, round(min(H, W) / 8))``) and ``round(fraction * n_blocks)``
  blocks, drawn from ``rng``, are missing.
- ``half``: the bottom half (rows ``H // 2`` and below) is missing;
  ``fraction`` is ignored.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from genlib.data.process import IMAGE_FORMATS
from genlib.render.base import RenderError
from genlib.render.io import read_bytes  # RenderError for unreadable paths/URIs

MASK_KINDS = ("center", "random_blocks", "half")
BLOCK_GRID = 8  # random_blocks: about this many blocks per image side


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if h < 2 or w < 2:
        raise ValueError(f"mask size must be at least 2 x 2, got {h} x {w}")
    return int(h), int(w)


def make_mask(kind: str, size: int | tuple[int, int], fraction: float = 0.25,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """A generated mask ``bool [H, W]`` (True = known) of ``kind`` (see the module doc).

    ``size`` is ``S`` (square) or ``(H, W)``; ``rng`` only matters for
    ``random_blocks`` (default: ``np.random.default_rng(0)``)."""
    h, w = _hw(size)
    if not 0 < fraction < 1:
        raise ValueError(f"mask fraction must lie in (0, 1), got {fraction!r}")
    if kind == "center":
        return _center(h, w, fraction)
    if kind == "random_blocks":
        return _random_blocks(h, w, fraction, rng if rng is not None else np.random.default_rng(0))
    if kind == "half":
        mask = np.ones((h, w), dtype=bool)
        mask[h // 2:] = False  # bottom half missing
        return mask
    raise ValueError(f"unknown mask kind {kind!r} (known: {', '.join(MASK_KINDS)})")


def _center(h: int, w: int, fraction: float) -> np.ndarray:
    """Centred hole of area ``fraction``; each side kept in [1, side - 1] so
    both the hole and the known frame are non-empty."""
    side = math.sqrt(fraction)
    hh = min(max(1, round(side * h)), h - 1)
    hw = min(max(1, round(side * w)), w - 1)
    top, left = (h - hh) // 2, (w - hw) // 2
    mask = np.ones((h, w), dtype=bool)
    mask[top:top + hh, left:left + hw] = False
    return mask


def _random_blocks(h: int, w: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Drop ``round(fraction * cells)`` grid cells (at least 1, at most all but 1)."""
    block = max(1, round(min(h, w) / BLOCK_GRID))
    gh, gw = -(-h // block), -(-w // block)  # ceil: the last row/column of cells may be cropped
    n_missing = min(max(1, round(fraction * gh * gw)), gh * gw - 1)
    cells = np.ones(gh * gw, dtype=bool)
    cells[rng.choice(gh * gw, size=n_missing, replace=False)] = False
    # [gh, gw] cell grid -> [gh*block, gw*block] pixels -> crop to [h, w]
    grid = cells.reshape(gh, gw).repeat(block, axis=0).repeat(block, axis=1)
    return np.ascontiguousarray(grid[:h, :w])


def load_mask(uri_or_path: str, size: int | tuple[int, int]) -> np.ndarray:
    """Read a mask image (a format of ``genlib.data.process.IMAGE_FORMATS``; local path or URI)
    -> ``bool [H, W]``.

    Luminance >= 128 is known (white), below is missing (black). ``size`` is the
    size the mask must have (``S`` or ``(H, W)``, normally the input image's):
    any mismatch is a :class:`RenderError` naming both sizes."""
    h, w = _hw(size)
    try:
        with Image.open(io.BytesIO(read_bytes(uri_or_path)), formats=IMAGE_FORMATS) as img:
            grey = np.asarray(img.convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise RenderError(f"mask {uri_or_path}: cannot decode image ({', '.join(IMAGE_FORMATS)} only): {exc}") from None
    if grey.shape != (h, w):
        raise RenderError(f"mask {uri_or_path} is {grey.shape[1]}x{grey.shape[0]} (WxH) "
                          f"but the image is {w}x{h}")
    return grey >= 128


def mask_image(mask: np.ndarray) -> np.ndarray:
    """``bool [H, W]`` -> ``uint8 [H, W]`` (255 known, 0 missing): the mask-file convention."""
    return np.where(mask, 255, 0).astype(np.uint8)


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``a [H, W]`` over the ``(2r+1)^2`` window around each pixel,
    truncated at the image border (integral image: O(HW) for any window)."""
    k = 2 * radius + 1
    c = np.pad(np.pad(a, radius).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # [H+k, W+k]
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def contextual_weights(mask: np.ndarray, window: int = 7) -> np.ndarray:
    """Yeh et al.'s importance weights ``float32 [H, W]`` for the contextual loss.

    ``W_i = (missing pixels in the window N(i)) / |N(i)|`` for a known pixel i
    and 0 in the hole, so known pixels next to the hole count most and pixels
    farther than ``window // 2`` from it not at all. ``|N(i)|`` counts only
    in-image pixels (the window is truncated at the border). ``window`` is odd."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    missing = (~mask).astype(np.float64)
    r = window // 2
    frac = _box_sum(missing, r) / _box_sum(np.ones_like(missing), r)
    return np.where(mask, frac, 0.0).astype(np.float32)


def center_box(shape: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred crop ``(left, top, right, bottom)`` of an image of ``shape = (H, W)``
    with the aspect ratio of ``target = (h, w)`` (what inputs are cut to before resizing to a model)."""
    (h, w), (th, tw) = shape, target
    ch, cw = (h, max(1, round(h * tw / th))) if w * th >= h * tw else (max(1, round(w * th / tw)), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return left, top, left + cw, top + ch


def fit_image(image: np.ndarray, target: tuple[int, int],
              resample: Image.Resampling = Image.Resampling.BOX) -> np.ndarray:
    """uint8 [H, W, 3] -> a new (writable) uint8 [h, w, 3]: :func:`center_box` crop, then a resize
    (default BOX, i.e. area, which keeps flat sprite colours flat when shrinking; photos use LANCZOS)."""
    left, top, right, bottom = center_box(image.shape[:2], target)
    crop = np.array(image[top:bottom, left:right])
    if crop.shape[:2] == tuple(target):
        return crop
    return np.array(Image.fromarray(crop).resize((target[1], target[0]), resample))


def fit_mask(mask: np.ndarray, box: tuple[int, int, int, int], size: int | tuple[int, int]) -> np.ndarray:
    """Crop ``mask [H, W]`` to ``box = (left, top, right, bottom)`` and resize it
    to ``size`` (``S`` or ``(h, w)``) conservatively: a model pixel is known only if
    every input pixel it covers is known (BOX-filtered "missing" > 0 -> missing)."""
    h, w = _hw(size)
    left, top, right, bottom = box
    crop = mask[top:bottom, left:right]
    if crop.shape == (h, w):
        return crop.copy()
    missing = Image.fromarray(mask_image(~crop))  # 255 = missing
    return np.asarray(missing.resize((w, h), Image.Resampling.BOX)) == 0
