"""Corpus recipes: how raw images become training samples.

A recipe file (``datasets/*.toml``) is an instance of :class:`CorpusRecipe`.
Two kinds exist: ``faces`` (photographs: square crop, resize) and ``sprites``
(alpha artwork: composite on a background, crop to content, pad, resize).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genlib.config import Fields, is_int

Resample = Literal["lanczos", "bicubic", "bilinear", "box", "nearest"]


@dataclass
class PaletteConfig:
    """Optional k-colour palette (PixelRNN models predict palette indices)."""

    colors: int = 0
    """Palette size k; 0 disables the palette. The classic Pokémon experiment uses 176."""
    sample_pixels: int = 200_000
    """How many training pixels (drawn with ``seed``) k-means learns from."""
    iterations: int = 40
    """Maximum Lloyd iterations of k-means."""
    seed: int = 0

    def __post_init__(self) -> None:
        check = Fields(self)
        check.integer("seed", low=0)
        check.require("colors", is_int(self.colors) and (self.colors == 0 or 2 <= self.colors <= 256),
                      "must be 0 (off) or an integer in [2, 256]")
        check.integer("sample_pixels", low=1000)
        check.integer("iterations", low=1)


@dataclass
class ShardConfig:
    """How samples are packed into WebDataset tar shards."""

    max_count: int = 2000
    """At most this many samples per shard."""
    max_bytes: int = 256 * 2**20
    """Start a new shard once a shard holds this many bytes."""
    min_shards: int = 8
    """Spread a split over at least this many shards when it has enough samples, so
    DDP ranks x DataLoader workers can each own whole shards."""

    def __post_init__(self) -> None:
        check = Fields(self)
        for name in ("max_count", "max_bytes", "min_shards"):
            check.integer(name, low=1)


@dataclass
class CorpusRecipe:
    """Everything that determines a corpus's content (its hash is part of the corpus id)."""

    name: str = "corpus"
    """Corpus name; shard files are ``{name}-{split}-NNNNNN.tar``."""
    recipe: Literal["faces", "sprites"] = "faces"
    size: int = 64
    """Output side length in pixels (square RGB)."""
    min_size: int = 32
    """Reject images whose shorter original side is below this."""
    crop: int | None = None
    """faces: side of the centred square crop in source pixels (CelebA aligned: 108);
    None takes the largest centred square."""
    box_file: str | None = None
    """faces: a face-box file like CelebA's ``list_bbox_celeba.txt`` (image_id x y w h);
    when set, crop a square around each file's box instead of the centre."""
    box_scale: float = 1.2
    """faces with box_file: square side = box_scale x the longer box side."""
    background: tuple[int, int, int] = (255, 255, 255)
    """sprites: RGB the alpha channel is composited onto (and padding colour)."""
    margin: float = 0.05
    """sprites: padding around the content box, as a fraction of its longer side."""
    alpha_threshold: int = 8
    """sprites: alpha above this counts as content when finding the bounding box."""
    resample: Resample = "lanczos"
    label: Literal["none", "parent_dir"] = "none"
    """``parent_dir`` labels each sample with its folder name (LFW: the person)."""
    val_fraction: float = 0.05
    test_fraction: float = 0.0
    seed: int = 0
    """Seeds the split assignment (and nothing else)."""
    max_file_bytes: int = 64 * 2**20
    """Refuse (``too_large``) any input file or archive member over this many bytes, without
    reading more than one byte past it: a 400 KB zip member that inflates to 400 MB costs
    64 MiB at most. Not part of the recipe hash: what it refuses is in the inputs fingerprint."""
    palette: PaletteConfig = field(default_factory=PaletteConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def __post_init__(self) -> None:
        check = Fields(self)
        check.integer("seed", low=0)
        check.text("name")
        check.require("name", not any(c in self.name for c in "/\\ .%"),
                      "must not contain '/', '\\', ' ', '.' or '%'")
        check.integer("size", low=8, high=1024)
        check.integer("min_size", low=1)
        check.integer("crop", low=1, optional=True)
        check.require("box_file", self.box_file is None or self.recipe == "faces",
                      "only applies to recipe = 'faces'")
        check.number("box_scale", above=0)
        bg = self.background
        check.require("background", isinstance(bg, (tuple, list)) and len(bg) == 3
                      and all(is_int(c) and 0 <= c <= 255 for c in bg), "must be three integers in [0, 255]")
        check.number("margin", low=0, below=1)
        check.integer("max_file_bytes", low=1)
        check.integer("alpha_threshold", low=0, high=254)
        for name in ("val_fraction", "test_fraction"):
            check.number(name, low=0, below=1)
        total = self.val_fraction + self.test_fraction
        check.require("test_fraction", total < 1,
                      f"must leave some training data (val_fraction + test_fraction = {total:g} >= 1)")
