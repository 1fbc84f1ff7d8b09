"""Corpus recipes: how raw images become training samples.

A recipe file (``datasets/*.toml``) is an instance of :class:`CorpusRecipe`.
Two kinds exist: ``faces`` (photographs: square crop, resize) and ``sprites``
(alpha artwork: composite on a background, crop to content, pad, resize).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
        if self.colors != 0 and not 2 <= self.colors <= 256:
            raise ValueError(f"palette.colors must be 0 (off) or in 2..256, got {self.colors}")
        if self.sample_pixels < 1000:
            raise ValueError(f"palette.sample_pixels must be >= 1000, got {self.sample_pixels}")
        if self.iterations < 1:
            raise ValueError(f"palette.iterations must be >= 1, got {self.iterations}")


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
        for name in ("max_count", "max_bytes", "min_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"shards.{name} must be >= 1, got {getattr(self, name)}")


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
    palette: PaletteConfig = field(default_factory=PaletteConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ .%"):
            raise ValueError(f"name must be non-empty without '/', '\\', ' ', '.', '%': {self.name!r}")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"size must be in 8..1024, got {self.size}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")
        if self.crop is not None and self.crop < 1:
            raise ValueError(f"crop must be >= 1 or unset, got {self.crop}")
        if self.box_file is not None and self.recipe != "faces":
            raise ValueError("box_file only applies to recipe = 'faces'")
        if self.box_scale <= 0:
            raise ValueError(f"box_scale must be > 0, got {self.box_scale}")
        if not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three values in 0..255, got {self.background}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")
        if not 0 <= self.alpha_threshold < 255:
            raise ValueError(f"alpha_threshold must be in 0..254, got {self.alpha_threshold}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave some training data")
