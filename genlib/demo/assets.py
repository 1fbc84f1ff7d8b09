"""The demo's recipe and its procedurally painted style image."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from genlib.config import from_dict
from genlib.data.recipe import CorpusRecipe

# The demo corpus recipe (datasets/demo-faces.toml holds the same, for reading and `data build`;
# a test keeps the two equal).
DEMO_RECIPE: dict[str, Any] = {
    "name": "demo-faces",
    "recipe": "faces",
    "size": 64,
    "min_size": 32,
    "val_fraction": 0.05,
    "seed": 0,
    "shards": {"max_count": 2000, "min_shards": 8},
}


def demo_recipe() -> CorpusRecipe:
    return from_dict(CorpusRecipe, DEMO_RECIPE)


def paint_canvas(size: int, seed: int = 0) -> np.ndarray:
    """A procedurally painted canvas of swirling brush strokes (the demo's style image)."""
    rng = np.random.default_rng(seed)
    palette = [(22, 45, 110), (240, 200, 60), (70, 120, 190), (250, 240, 200), (30, 90, 70), (200, 80, 40)]
    im = Image.new("RGB", (size, size), palette[0])
    draw = ImageDraw.Draw(im)
    for _ in range(900):
        x, y = rng.uniform(0, size, 2)
        angle = np.arctan2(y - size / 2, x - size / 2) + np.pi / 2 + rng.normal(0, 0.3)  # swirl around the centre
        length, width = rng.uniform(6, 22), int(rng.integers(2, 6))
        colour = palette[int(rng.integers(len(palette)))]
        draw.line([(x, y), (x + length * np.cos(angle), y + length * np.sin(angle))], fill=colour, width=width)
    return np.asarray(im.filter(ImageFilter.SMOOTH))
