"""Small image utilities shared by corpora, training reports and renders (numpy + Pillow only).

Arrays are ``uint8 [H, W, 3]`` RGB (or ``[H, W]`` grey) unless said otherwise.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

PNG_LEVEL = 6  # fixed zlib level: identical pixels always give identical PNG bytes


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """PNG bytes with fixed options and no metadata (identical pixels -> identical bytes)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def image_grid(images: list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized ``[H, W, 3]`` uint8 images into one grid with white gutters."""
    if not images:
        raise ValueError("image_grid: no images")
    h, w, _ = images[0].shape
    grid = np.full((*grid_shape((h, w), len(images), columns, pad), 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = im
    return grid


def grid_shape(tile: tuple[int, int], count: int, columns: int, pad: int = 2) -> tuple[int, int]:
    """(H, W) of the :func:`image_grid` of ``count`` tiles of ``tile = (h, w)`` in ``columns``."""
    rows, cols = math.ceil(count / columns), min(columns, count)
    return rows * (tile[0] + pad) + pad, cols * (tile[1] + pad) + pad


def zoom(image: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge ``image [h, w, ...]`` ``factor`` times, nearest neighbour (crisp pixels)."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def upscale_nearest(image: np.ndarray, min_width: int) -> np.ndarray:
    """Enlarge by an integer factor (nearest neighbour) until at least ``min_width`` wide."""
    return zoom(image, max(1, min_width // image.shape[1]))
