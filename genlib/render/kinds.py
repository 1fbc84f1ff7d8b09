"""The render kinds, in one table.

A kind is one file in ``genlib/render/`` with one entry point (a renderer class whose
``__init__`` loads models once and whose ``__call__(image, params)`` renders one
input) and one line below. Everything that needs the set of kinds reads this table:
the CLI's ``--kind`` choices, request validation (``genlib.render.requests``), the
runner's dispatch and the manifest. The names are wire names, stored in request
tables and manifests: never rename one (``"complete"`` stays ``"complete"``).

Each kind names the :class:`~genlib.render.config.RenderConfig` section (a field
holding a small settings dataclass) that configures its renderer, and builds the
renderer from it with ``Renderer.from_settings(settings, device)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from genlib.render.base import RenderError, RenderOutput
from genlib.render.completion import CompletionParams, MaskCompletion
from genlib.render.deepdream import DeepDream, DreamParams
from genlib.render.explore import ExploreParams, LatentExplorer
from genlib.render.pixel_complete import PixelCompleteParams, PixelCompletion
from genlib.render.style import StyleParams, StyleTransfer


class Renderer(Protocol):
    weights_id: str

    @classmethod
    def from_settings(cls, settings: Any, device: torch.device | str) -> Renderer: ...

    def __call__(self, image: np.ndarray, params: Any) -> RenderOutput: ...


@dataclass(frozen=True)
class Kind:
    name: str            # wire name (request rows, manifest rows, output folder images/<name>/)
    params: type         # dataclass of a request row's params
    section: str         # RenderConfig field whose settings configure the renderer
    renderer: type       # class with from_settings(settings, device) and __call__(input, params)
    summary: str         # one line for --help and docs
    input: Literal["image", "uri"] = "image"
    """What the renderer's ``__call__`` receives: the decoded input image (uint8 [H, W, 3]), or
    the row's input URI as a string (kinds whose input is not an image, e.g. a run folder)."""

    def build(self, config: Any, device: torch.device | str) -> Renderer:
        return self.renderer.from_settings(getattr(config, self.section), device)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("style", StyleParams, "style", StyleTransfer, "Gatys neural style transfer"),
    Kind("deepdream", DreamParams, "deepdream", DeepDream, "DeepDream on a backbone's layers"),
    Kind("complete", CompletionParams, "complete", MaskCompletion, "DCGAN mask completion (Yeh et al. 2016)"),
    Kind("pixel_complete", PixelCompleteParams, "pixel_complete", PixelCompletion,
         "PixelRNN/PixelCNN sprite completion"),
    Kind("explore", ExploreParams, "explore", LatentExplorer,
         "DCGAN/VAE latent interpolation, traversal, grid and arithmetic", input="uri"),
)}


def kind(name: str) -> Kind:
    """The kind called ``name``; RenderError naming the known kinds otherwise."""
    if name not in KINDS:
        raise RenderError(f"unknown render kind {name!r} (known: {', '.join(KINDS)})")
    return KINDS[name]
