"""DeepDream (single-device, Ray-free).

Mordvintsev, Olah & Tyka (2015), "Inceptionism": gradient *ascent* on the pixels
of a photo so that chosen layers of a frozen ImageNet CNN fire harder, which
over-interprets and amplifies the patterns the network half-sees in the image.

Objective (maximised), for taps ``l`` with weights ``w_l`` (``DreamParams.layers``)::

    A(x) = sum_l w_l * mean(F_l(x) ** 2)

``mean`` over all ``B*C*h*w`` elements of the activation ``F_l`` is the squared
L2 norm divided by the number of elements, so a wide, high-resolution layer does
not drown a small deep one and ``A`` hardly depends on the image size (the Keras
example divides by the element count for the same reason).

How a render runs, and how it uses the shared :func:`genlib.render.optim.optimize`:

- **Octaves** (smallest scale first): the capped input is shrunk by
  ``octave_scale ** i``; at each larger octave the current dream is upscaled and
  the detail lost by the shrinking is re-injected:
  ``dream = up(dream) + (original_k - up(original_{k-1}))``. Bilinear resizing
  is linear, so this equals Google's ``original_k + up(dream - original_{k-1})``.
  Octaves whose shorter side falls under the backbone's minimum input (75 px for
  InceptionV3) are skipped and the visited shapes are reported in ``info``.
- **Steps**: each ascent step is one call
  ``optimize(x, objective, method="normalized_gd", lr=step, iterations=1, project=clamp01)``
  with ``loss = -A``, i.e. ``x += step * g / mean|g|`` clipped to [0, 1].
  One call per step (instead of one per octave) is what lets an octave stop
  early once ``A > max_loss``, as the Keras example does; the call costs a
  tensor copy, nothing next to a forward/backward pass.
- **Jitter and tiles live inside the objective** (:class:`DreamObjective`): each
  evaluation draws (from the seeded generator) a roll of the image by
  ``U[-jitter, jitter]`` pixels plus, when the image spans several tiles, a random
  offset of the tile grid (so tile seams move every step). The rolled image is
  cut into a grid of near-equal tiles of at most ``tile`` pixels; each tile's
  objective, weighted by its share of the image area, is back-propagated on its
  own (memory = one tile's graph), the gradients are stitched and rolled back.
  Rolling the input and rolling the gradient back is exactly the classic "roll,
  step, roll back" since the step and the clip act per pixel. ``optimize`` gets
  a *surrogate* loss ``-A + <x, -u> - <x, -u>.detach()``: its value is ``-A`` and
  its gradient ``-u``, the stitched gradient ``g`` scaled to ``mean|u| = 1``.
  The scaling changes no normalised step (``optimize`` divides by ``mean|g| + 1e-8``)
  except where ``mean|g|`` is near that absolute epsilon, as with random-init
  networks (~1e-10), which would otherwise not move. With one tile and no
  jitter, ``g`` is plain autograd of ``A``; the area weights make the tiled value
  estimate the untiled one, so ``max_loss`` and the reported losses do not
  depend on ``tile``.

Output: ``losses = {"activation": A, "act_<layer>": mean(F_l ** 2)}`` measured on
the returned uint8 image (full size, no jitter, tile grid at offset 0);
``iterations`` = steps run over all octaves; ``info`` holds ``backbone``,
``weights_id``, ``layers``, ``octave_shapes``, ``octave_iterations`` and
``activation_start`` (``A`` of the capped input). A fixed ``seed`` gives the same
image on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genlib.config import Fields, is_real
from genlib.render.backbones import load_backbone
from genlib.render.base import RenderError, RenderOutput, to_image, to_tensor
from genlib.render.optim import clamp01, optimize

# Default taps per backbone (tap -> weight).
# inception_v3: the Keras DeepDream example's classic settings (mixed2..mixed5,
#   strides 8..16, the deeper ones weighted up).
# efficientnet_lite0: the same recipe mapped by resolution: stage3 (stride 8),
#   stage4 (first stride-16 stage), stage5 (stride 16, weighted most) and stage6
#   (stride 32), with the same 0.2 / 0.5 / 2.0 / 1.5 weights.
# vgg19: the same recipe on VGG taps (conv3_3 stride 4 ... conv5_1 stride 16).
DEFAULT_LAYERS: dict[str, dict[str, float]] = {
    "inception_v3": {"mixed2": 0.2, "mixed3": 0.5, "mixed4": 2.0, "mixed5": 1.5},
    "efficientnet_lite0": {"stage3": 0.2, "stage4": 0.5, "stage5": 2.0, "stage6": 1.5},
    "vgg19": {"conv3_3": 0.2, "conv4_1": 0.5, "conv4_3": 2.0, "conv5_1": 1.5},
}
# Smallest input side each backbone accepts (InceptionV3's deep blocks fail under 75 px).
MIN_SIDE: dict[str, int] = {"inception_v3": 75}
DEFAULT_MIN_SIDE = 32


@dataclass
class DreamParams:
    """Parameters of one DeepDream render (a request row's ``params``)."""

    layers: dict[str, float] | None = None
    """Tap -> weight of its mean squared activation in the objective; None = the
    backbone's default (see ``DEFAULT_LAYERS``). Negative weights suppress a tap."""
    octaves: int = 3
    """Number of scales, processed from the smallest (``octave_scale ** (octaves-1)``
    times smaller) up to the full size."""
    octave_scale: float = 1.4
    """Size ratio between consecutive octaves (> 1)."""
    iterations: int = 20
    """Ascent steps per octave (fewer when ``max_loss`` is reached)."""
    step: float = 0.01
    """Normalised gradient step: pixels (in [0, 1]) move by ``step`` on average."""
    max_loss: float | None = None
    """Stop an octave once the objective exceeds this (Keras example); None = never."""
    jitter: int = 32
    """Random roll (pixels, each axis in [-jitter, jitter]) before each step, rolled back after."""
    tile: int = 512
    """Gradients are computed in tiles of at most this many pixels a side (random grid
    offset each step) so large images fit in memory; a smaller image is one tile."""
    size: int = 512
    """Largest side of the output: the input is resized down to it, never up."""
    seed: int = 0
    """Seed of the jitter and tile offsets: a fixed seed gives the same render."""

    def __post_init__(self) -> None:
        check = Fields(self)
        self.layers = _check_layers(self.layers, check)
        for name, low in (("octaves", 1), ("iterations", 1), ("jitter", 0), ("tile", 32), ("size", 32)):
            check.integer(name, low=low)
        check.integer("seed")
        check.number("octave_scale", above=1.0, as_float=True)
        check.number("step", above=0.0, as_float=True)
        check.number("max_loss", optional=True, as_float=True)


def _check_layers(layers: Any, check: Fields) -> dict[str, float] | None:
    """None, or a non-empty {tap name: finite weight} (weights as float) with some weight != 0."""
    if layers is None:
        return None
    check.require("layers", isinstance(layers, dict) and bool(layers), "must be a non-empty table of tap -> weight")
    out = {}
    for tap, weight in layers.items():
        if not isinstance(tap, str) or not tap:
            check.fail("layers", "tap names must be non-empty strings", tap)
        if not is_real(weight):
            check.fail("layers", f"the weight of {tap!r} must be a finite number", weight)
        out[tap] = float(weight)
    check.require("layers", any(out.values()), "at least one weight must be non-zero")
    return out


# --------------------------------------------------------------------------- geometry


def tile_spans(size: int, tile: int) -> list[slice]:
    """Split ``[0, size)`` into ``ceil(size / tile)`` near-equal spans, each <= ``tile``.

    Near-equal (not ``tile, tile, ..., remainder``) so no sliver tile falls under
    the backbone's minimum input size: every span is > tile / 2 when size > tile.
    """
    n = -(-size // tile)
    edges = [round(i * size / n) for i in range(n + 1)]
    return [slice(a, b) for a, b in pairwise(edges)]


def octave_shapes(height: int, width: int, octaves: int, scale: float, min_side: int) -> list[tuple[int, int]]:
    """(h, w) of each octave, smallest first, ending at (height, width); octaves whose
    shorter side would be under ``min_side`` are left out."""
    shapes = []
    for i in reversed(range(octaves)):
        shape = (round(height / scale**i), round(width / scale**i))
        if min(shape) >= min_side:
            shapes.append(shape)
    return shapes


def resize(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, *shape], bilinear (antialiased when shrinking: no aliasing
    of the fine detail that the octaves re-inject)."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    shrink = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=shrink)


def capped_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shape with the longer side at most ``size`` (never enlarged), aspect kept."""
    ratio = min(1.0, size / max(height, width))
    return max(1, round(height * ratio)), max(1, round(width * ratio))


# --------------------------------------------------------------------------- objective


class DreamObjective:
    """The tiled, jittered DeepDream objective ``A`` of one backbone and set of taps.

    :meth:`evaluate` gives ``A``, its per-tap terms and its gradient for an explicit
    roll; calling the object (what ``optimize`` does) draws the roll from
    ``generator`` and returns the surrogate loss described in the module docstring.
    """

    def __init__(self, backbone: torch.nn.Module, layers: dict[str, float], tile: int, jitter: int = 0,
                 generator: torch.Generator | None = None) -> None:
        self.backbone, self.layers, self.tile, self.jitter = backbone, dict(layers), tile, jitter
        self.generator = generator or torch.Generator().manual_seed(0)

    def _tile_terms(self, piece: torch.Tensor, share: float) -> dict[str, torch.Tensor]:
        """Per-tap ``share * mean(F_l(piece) ** 2)`` (scalars) for one tile [1, 3, h, w]."""
        feats = self.backbone(piece, list(self.layers))  # {tap: [1, C, h', w']}
        return {tap: f.float().pow(2).mean() * share for tap, f in feats.items()}

    def evaluate(self, x: torch.Tensor, roll: tuple[int, int] = (0, 0),
                 grad: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """x [1, 3, H, W] -> ({"activation": A, tap: term}, dA/dx [1, 3, H, W] or None).

        The image is rolled by ``roll`` (dy, dx), tiled, and each tile's weighted
        terms are summed; per-tile backward keeps one tile's graph alive at a time.
        """
        rolled = torch.roll(x.detach(), roll, dims=(2, 3))
        height, width = rolled.shape[-2:]
        gradient = torch.zeros_like(rolled) if grad else None
        terms = {tap: rolled.new_zeros(()) for tap in self.layers}
        for ys in tile_spans(height, self.tile):
            for xs in tile_spans(width, self.tile):
                piece = rolled[..., ys, xs].clone().requires_grad_(grad)  # [1, 3, h, w]
                share = piece.shape[-2] * piece.shape[-1] / (height * width)
                with torch.set_grad_enabled(grad):
                    tile_terms = self._tile_terms(piece, share)
                    total = sum(w * tile_terms[tap] for tap, w in self.layers.items())
                if grad:
                    gradient[..., ys, xs] = torch.autograd.grad(total, piece)[0]
                for tap, value in tile_terms.items():
                    terms[tap] = terms[tap] + value.detach()
        activation = sum(w * terms[tap] for tap, w in self.layers.items())
        if gradient is not None:
            gradient = torch.roll(gradient, (-roll[0], -roll[1]), dims=(2, 3))
        return {"activation": activation, **terms}, gradient

    def draw_roll(self, height: int, width: int) -> tuple[int, int]:
        """Jitter in [-jitter, jitter] plus a tile-grid offset in [0, first span) on each
        axis that spans several tiles (none on a one-tile axis: nothing to hide)."""
        roll = []
        for size in (height, width):
            shift = self._randint(-self.jitter, self.jitter) if self.jitter else 0
            spans = tile_spans(size, self.tile)
            if len(spans) > 1:
                shift += self._randint(0, spans[0].stop - 1)
            roll.append(shift)
        return roll[0], roll[1]

    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] from the seeded generator."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``optimize``'s objective: {"loss": surrogate of -A, "activation": A, "act_<tap>": ...}."""
        terms, gradient = self.evaluate(x, self.draw_roll(*x.shape[-2:]))
        # Unit mean |g|: normalized_gd divides by mean|g| + 1e-8, so this changes no step of a
        # trained network but keeps a random-init one (mean|g| ~ 1e-10) from stalling on the 1e-8.
        scale = gradient.abs().mean()
        gradient = gradient / scale if scale > 0 else gradient
        linear = (x * gradient).sum()  # value cancels below; its gradient w.r.t. x is g
        loss = -terms["activation"] + (linear.detach() - linear)
        return {"loss": loss, **_named(terms)}


def _named(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"activation": A, tap: v} -> {"activation": A, "act_<tap>": v}."""
    return {k if k == "activation" else f"act_{k}": v for k, v in terms.items()}


# --------------------------------------------------------------------------- entry point


class DeepDream:
    """DeepDream render kind: ``DeepDream(device="cuda")(image_uint8, DreamParams())``."""

    def __init__(self, backbone: str = "inception_v3", weights: str | None = "default",
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.backbone = load_backbone(backbone, weights, device=self.device)
        self.name = backbone
        self.weights_id = self.backbone.weights_id
        self.min_side = MIN_SIDE.get(backbone, DEFAULT_MIN_SIDE)

    @classmethod
    def from_settings(cls, settings: Any, device: torch.device | str = "cpu") -> DeepDream:
        """Build from a RenderConfig ``[deepdream]`` section (a ``BackboneChoice``)."""
        return cls(settings.backbone, settings.weights, device=device)

    def resolve_layers(self, params: DreamParams) -> dict[str, float]:
        """``params.layers`` or the backbone default; an unknown tap is a RenderError."""
        layers = params.layers if params.layers is not None else DEFAULT_LAYERS.get(self.name)
        if layers is None:
            raise RenderError(f"no default DeepDream layers for {self.name}; set params.layers")
        try:
            self.backbone.resolve(list(layers))
        except ValueError as e:
            raise RenderError(f"params.layers: {e}") from e
        return dict(layers)

    def plan(self, height: int, width: int, params: DreamParams) -> list[tuple[int, int]]:
        """Octave shapes for a ``height x width`` input; RenderError when nothing fits."""
        height, width = capped_shape(height, width, params.size)
        shapes = octave_shapes(height, width, params.octaves, params.octave_scale, self.min_side)
        if not shapes:
            raise RenderError(f"image {height}x{width} (after size={params.size}) is under "
                              f"{self.name}'s minimum input side of {self.min_side} px")
        for h, w in shapes:
            smallest = min(s.stop - s.start for s in tile_spans(h, params.tile) + tile_spans(w, params.tile))
            if smallest < self.min_side:
                raise RenderError(f"tile={params.tile} cuts the {h}x{w} octave into {smallest} px tiles, under "
                                  f"{self.name}'s minimum of {self.min_side} px; use a larger tile")
        return shapes

    def __call__(self, image: np.ndarray, params: DreamParams) -> RenderOutput:
        """uint8 [H, W, 3] -> dreamed uint8 [h, w, 3] (h, w = H, W capped to ``params.size``)."""
        layers = self.resolve_layers(params)
        x = to_tensor(image, self.device)  # [1, 3, H, W] in [0, 1]; RenderError unless uint8 RGB
        shapes = self.plan(x.shape[-2], x.shape[-1], params)
        original = resize(x, shapes[-1])  # [1, 3, h, w]: capped to params.size
        generator = torch.Generator().manual_seed(params.seed)
        objective = DreamObjective(self.backbone, layers, params.tile, params.jitter, generator)
        dream, counts = self._octaves(original, shapes, objective, params)
        out = to_image(dream)
        measure = DreamObjective(self.backbone, layers, params.tile)  # no jitter: offset-0 grid
        final, _ = measure.evaluate(to_tensor(out, self.device), grad=False)
        start, _ = measure.evaluate(original, grad=False)
        info = {"backbone": self.name, "weights_id": self.weights_id, "layers": layers,
                "octave_shapes": [list(s) for s in shapes], "octave_iterations": counts,
                "activation_start": float(start["activation"])}
        return RenderOutput(out, {k: float(v) for k, v in _named(final).items()}, sum(counts), info=info)

    def _octaves(self, original: torch.Tensor, shapes: list[tuple[int, int]], objective: DreamObjective,
                 params: DreamParams) -> tuple[torch.Tensor, list[int]]:
        """Ascend at each octave, smallest first, re-injecting the detail lost by shrinking."""
        dream, previous, counts = None, None, []
        for shape in shapes:
            base = resize(original, shape)  # the original at this octave [1, 3, h, w]
            if dream is None:
                dream = base
            else:  # up(dream) + (original_k - up(original_{k-1})): detail the small octave never had
                dream = (resize(dream, shape) + base - resize(previous, shape)).clamp(0, 1)
            dream, steps = self._ascend(dream, objective, params)
            counts.append(steps)
            previous = base
        return dream, counts

    @staticmethod
    def _ascend(x: torch.Tensor, objective: DreamObjective, params: DreamParams) -> tuple[torch.Tensor, int]:
        """Up to ``params.iterations`` normalised ascent steps on ``x`` [1, 3, h, w]; stops
        after the step whose objective exceeded ``max_loss``."""
        for step in range(1, params.iterations + 1):
            result = optimize(x, objective, method="normalized_gd", lr=params.step, iterations=1,
                              project=clamp01)
            x = result.param
            if params.max_loss is not None and result.final["activation"] > params.max_loss:
                break
        return x, step
