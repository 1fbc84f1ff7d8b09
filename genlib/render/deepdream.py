"""DeepDream (single-device, Ray-free).

Mordvintsev, Olah & Tyka (2015), "Inceptionism": gradient *ascent* on the pixels
of a photo so that chosen layers of a frozen ImageNet CNN fire harder, which
over-interprets and amplifies the patterns the network half-sees in the image.

Objective (maximised), for taps ``l`` with weights ``w_l`` (``DreamParams.layers``)::

    A(x) = sum_l w_l * mean(F_l(x) ** 2)

``mean`` over the ``C*h*w`` elements of one image's activation ``F_l`` is the squared
L2 norm divided by the number of elements, so a wide, high-resolution layer does
not drown a small deep one and ``A`` hardly depends on the image size (the Keras
example divides by the element count for the same reason).

How a render runs, and how it uses the shared :func:`genlib.render.optim.optimize_batch`:

- **Octaves** (smallest scale first): the capped input is shrunk by
  ``octave_scale ** i``; at each larger octave the current dream is upscaled and
  the detail lost by the shrinking is re-injected:
  ``dream = up(dream) + (original_k - up(original_{k-1}))``. Bilinear resizing
  is linear, so this equals Google's ``original_k + up(dream - original_{k-1})``.
  Octaves whose shorter side falls under the backbone's minimum input (75 px for
  InceptionV3) are skipped and the visited shapes are reported in ``info``.
- **Steps**: each ascent step is one call
  ``optimize_batch(x, objective, method="normalized_gd", lr=step, iterations=1, project=clamp01)``
  with ``loss = -A``, i.e. ``x += step * g / mean|g|`` (per image) clipped to [0, 1].
  One call per step (instead of one per octave) is what lets an octave stop
  early once ``A > max_loss``, as the Keras example does; the call costs a
  tensor copy, nothing next to a forward/backward pass.
- **Batches** (:meth:`DeepDream.render_many`): rows with the same octave shapes,
  taps, tile, border, blur and step size dream together, ``x [B, 3, h, w]``: each
  step is one forward/backward for the rows still ascending in the octave. The
  jitter (each row's own seeded :class:`Jitter`), the normalisation, the step
  count and the ``max_loss`` stop are per row, so a row dreams exactly as alone
  (up to how batched kernels round, which the ascent amplifies: see
  :mod:`genlib.render.batching`); a row that stopped early waits for the octave's end.
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
  The scaling changes no normalised step (``optimize`` divides by ``mean|g|``)
  but keeps random-init networks (``mean|g|`` ~1e-10) well inside float range. With one tile and no
  jitter, ``g`` is plain autograd of ``A``; the area weights make the tiled value
  estimate the untiled one, so ``max_loss`` and the reported losses do not
  depend on ``tile``.

Options from the seeds ("visualise a layer", Keras' border handling):

- ``init = "noise"``: start from seeded grey noise (0.5 +- 0.1 uniform) of the
  input's (capped) size instead of the input itself; octaves then only upscale
  the dream (no detail to re-inject), as Google's ``render_multiscale`` does.
- ``blur_sigma``: Gaussian blur (sigma in pixels of the current octave) of the
  image after every step (``blur = "image"``, inside the step's ``project``) or
  of the stitched gradient before the step (``blur = "gradient"``, inside the
  objective): it suppresses the high-frequency patterns ascent favours.
- ``border``: activations within ``border`` feature pixels of a tile's edge are
  left out of ``mean(F_l ** 2)`` (the Keras example drops 2, which the padded
  convolutions near the edge exaggerate); it is capped so one row/column stays.
- ``snapshot_every``: every this many ascent steps (counted over all octaves),
  the image being evaluated is saved, resized to the output, into
  ``RenderOutput.frames`` (the result last).

Output: ``losses = {"activation": A, "act_<layer>": mean(F_l ** 2)}`` measured on
the returned uint8 image (full size, no jitter, tile grid at offset 0);
``iterations`` = steps run over all octaves; ``info`` holds ``backbone``,
``weights_id``, ``layers``, ``octave_shapes``, ``octave_iterations`` and
``activation_start`` (``A`` of the capped input). A fixed ``seed`` gives the same
image on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from genlib.config import Fields, is_real
from genlib.render.backbones import load_backbone
from genlib.render.base import RenderError, RenderOutput, to_image, to_tensor
from genlib.render.batching import render_jobs, single
from genlib.render.io import capped_shape
from genlib.render.optim import OptimResult, Snapshots, clamp01, optimize_batch

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
NOISE_GREY, NOISE_AMPLITUDE = 0.5, 0.1  # init="noise": grey +- uniform noise, in [0, 1] pixels


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
    """Seed of the jitter, tile offsets and noise init: a fixed seed gives the same render."""
    init: Literal["image", "noise"] = "image"
    """Start from the input ("image") or from seeded grey noise of the input's size capped to
    ``size`` ("noise": the seed's "visualise a layer"; the input then only gives the size)."""
    blur_sigma: float = 0.0
    """Gaussian blur sigma in pixels (of the current octave) applied between steps; 0 = none."""
    blur: Literal["image", "gradient"] = "image"
    """What ``blur_sigma`` blurs: the image after each step, or the gradient before it."""
    border: int = 0
    """Leave activations within this many feature pixels of a tile's edge out of the objective."""
    snapshot_every: int = 0
    """Save a progress frame every this many ascent steps (0 = off) into ``RenderOutput.frames``."""

    def __post_init__(self) -> None:
        check = Fields(self)
        self.layers = _check_layers(self.layers, check)
        for name, low in (("octaves", 1), ("iterations", 1), ("jitter", 0), ("tile", 32), ("size", 32),
                          ("border", 0), ("snapshot_every", 0)):
            check.integer(name, low=low)
        check.integer("seed", low=0)
        check.number("octave_scale", above=1.0, as_float=True)
        check.number("step", above=0.0, as_float=True)
        check.number("max_loss", optional=True, as_float=True)
        check.number("blur_sigma", low=0.0, as_float=True)
        check.choice("init", ("image", "noise"))
        check.choice("blur", ("image", "gradient"))

    def check_limits(self, limits) -> None:
        """The render config's caps (a ``genlib.render.limits.RenderLimits``); LimitError names field and cap."""
        for name in ("size", "tile", "jitter", "border", "blur_sigma"):  # blur: a (6 sigma + 1)-tap kernel
            limits.cap(self, name, "max_side")
        limits.cap(self, "octaves", "max_octaves")
        limits.cap(self, "iterations", "max_iterations")


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


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, C, H, W] blurred by a separable Gaussian of ``sigma`` px (radius 3 sigma, reflected
    at the borders; the radius is capped below H and W, which reflection needs)."""
    radius = min(math.ceil(3 * sigma), x.shape[-2] - 1, x.shape[-1] - 1)
    if sigma <= 0 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()                                            # [2r+1], sums to 1
    c = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")   # [B, C, H+2r, W+2r]
    rows = F.conv2d(padded, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # [B, C, H+2r, W]
    return F.conv2d(rows, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)   # [B, C, H, W]


def trim_border(f: torch.Tensor, border: int) -> torch.Tensor:
    """Activation [B, C, h, w] without ``border`` pixels at each edge (capped: one row/column stays)."""
    if border <= 0:
        return f
    bh, bw = min(border, (f.shape[-2] - 1) // 2), min(border, (f.shape[-1] - 1) // 2)
    return f[..., bh:f.shape[-2] - bh, bw:f.shape[-1] - bw]


# --------------------------------------------------------------------------- objective


class Jitter:
    """One row's random roll per step, from the row's own seeded generator (so it does not depend
    on the rows sharing its batch): jitter in [-jitter, jitter] plus a tile-grid offset in
    [0, first span) on each axis that spans several tiles (none on a one-tile axis: nothing to hide)."""

    def __init__(self, jitter: int, tile: int, generator: torch.Generator | None = None) -> None:
        self.jitter, self.tile = jitter, tile
        self.generator = generator or torch.Generator().manual_seed(0)

    def draw(self, height: int, width: int) -> tuple[int, int]:
        """(dy, dx) for an image of ``height x width``."""
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


class DreamObjective:
    """The tiled, jittered DeepDream objective ``A`` of one backbone and set of taps, per row of a batch.

    :meth:`evaluate` gives each row's ``A``, its per-tap terms and its gradient for explicit
    rolls; calling the object (what ``optimize_batch`` does) draws each row's roll from its
    own :class:`Jitter` (``jitters[row]``; none given = no roll) and returns the surrogate
    loss described in the module docstring.
    """

    def __init__(self, backbone: torch.nn.Module, layers: dict[str, float], tile: int,
                 jitters: Sequence[Jitter] = (), border: int = 0, grad_sigma: float = 0.0) -> None:
        self.backbone, self.layers, self.tile, self.jitters = backbone, dict(layers), tile, list(jitters)
        self.border, self.grad_sigma = border, grad_sigma  # DreamParams.border; blur_sigma when blur="gradient"

    def _tile_terms(self, piece: torch.Tensor, share: float) -> dict[str, torch.Tensor]:
        """Per-tap ``share * mean(F_l(piece) ** 2)`` per row ``[B]`` for tiles [B, 3, h, w], without the border."""
        feats = self.backbone(piece, list(self.layers))  # {tap: [B, C, h', w']}
        return {tap: trim_border(f, self.border).float().pow(2).flatten(1).mean(1) * share
                for tap, f in feats.items()}

    def evaluate(self, x: torch.Tensor, rolls: Sequence[tuple[int, int]] | None = None,
                 grad: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """x [B, 3, H, W] -> ({"activation": A [B], tap: term [B]}, dA/dx [B, 3, H, W] or None).

        Row i is rolled by ``rolls[i]`` (dy, dx; None = no roll), the batch is cut into tiles
        (the same grid for every row) and each tile's weighted terms are summed; per-tile
        backward keeps one tile's graph alive at a time. Rows never mix.
        """
        rolled = _roll(x.detach(), rolls)
        height, width = rolled.shape[-2:]
        gradient = torch.zeros_like(rolled) if grad else None
        terms = {tap: rolled.new_zeros(rolled.shape[0]) for tap in self.layers}
        for ys in tile_spans(height, self.tile):
            for xs in tile_spans(width, self.tile):
                piece = rolled[..., ys, xs].clone().requires_grad_(grad)  # [B, 3, h, w]
                share = piece.shape[-2] * piece.shape[-1] / (height * width)
                with torch.set_grad_enabled(grad):
                    tile_terms = self._tile_terms(piece, share)
                    total = sum(w * tile_terms[tap] for tap, w in self.layers.items())  # [B]
                if grad:  # the rows' graphs are disjoint: d(sum)/d(row i) = d(total_i)/d(row i)
                    gradient[..., ys, xs] = torch.autograd.grad(total.sum(), piece)[0]
                for tap, value in tile_terms.items():
                    terms[tap] = terms[tap] + value.detach()
        activation = sum(w * terms[tap] for tap, w in self.layers.items())
        if gradient is not None and rolls is not None:
            gradient = _roll(gradient, [(-dy, -dx) for dy, dx in rolls])
        return {"activation": activation, **terms}, gradient

    def __call__(self, x: torch.Tensor, rows: list[int]) -> dict[str, torch.Tensor]:
        """``optimize_batch``'s objective for rows ``rows`` at x [b, 3, H, W]:
        {"loss": surrogate of -A, "activation": A, "act_<tap>": ...}, each [b]."""
        rolls = [self.jitters[r].draw(*x.shape[-2:]) for r in rows] if self.jitters else None
        terms, gradient = self.evaluate(x, rolls)
        gradient = gaussian_blur(gradient, self.grad_sigma)
        # Unit mean |g| per row: normalized_gd divides by mean|g|, so this changes no step of a
        # trained network but keeps a random-init one (mean|g| ~ 1e-10) well inside float range.
        scale = gradient.abs().flatten(1).mean(1)
        gradient = gradient / torch.where(scale > 0, scale, torch.ones_like(scale)).view(-1, 1, 1, 1)
        linear = (x * gradient).flatten(1).sum(1)  # [b]: value cancels below; its gradient w.r.t. x is g
        loss = -terms["activation"] + (linear.detach() - linear)
        return {"loss": loss, **_named(terms)}


def _roll(x: torch.Tensor, rolls: Sequence[tuple[int, int]] | None) -> torch.Tensor:
    """Row i of x [B, C, H, W] rolled by ``rolls[i]`` = (dy, dx) (None: x itself)."""
    if rolls is None:
        return x
    return torch.cat([torch.roll(x[i:i + 1], roll, dims=(2, 3)) for i, roll in enumerate(rolls)])


def _named(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"activation": A, tap: v} -> {"activation": A, "act_<tap>": v}."""
    return {k if k == "activation" else f"act_{k}": v for k, v in terms.items()}


# --------------------------------------------------------------------------- entry point


class DeepDream:
    """DeepDream render kind: ``DeepDream(device="cuda")(image_uint8, DreamParams())``.

    Rows with the same :meth:`batch_key` dream as one batch ``[B, 3, h, w]`` per octave:
    every ascent step is one forward/backward for all rows still ascending, while jitter
    (each row's own seeded generator), gradient normalisation, the step count and the
    ``max_loss`` stop stay per row; a row that stopped waits for the octave's end.
    """

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
        return single(self.render_many([image], [params]))

    def batch_key(self, image: np.ndarray, params: DreamParams) -> tuple:
        """Rows with equal keys share a batch: same octave shapes, taps, tile, border, blur and step
        size. The image, init, seed, jitter, iterations, max_loss and snapshots stay per row."""
        return _key(self.plan(*image.shape[:2], params), self.resolve_layers(params), params)

    def render_many(self, images: Sequence[np.ndarray],
                    params_list: Sequence[DreamParams]) -> list[RenderOutput | Exception]:
        """Dream every row, rows with the same batch key as one batch; a failing row is its exception."""
        return render_jobs(list(zip(images, params_list)), lambda item: self._job(*item), lambda job: job.key,
                           self._render)

    def _job(self, image: np.ndarray, params: DreamParams) -> _Dream:
        """A row checked and prepared: taps, octave plan, start image, jitter, snapshots."""
        layers = self.resolve_layers(params)
        x = to_tensor(image, self.device)  # [1, 3, H, W] in [0, 1]; RenderError unless uint8 RGB
        shapes = self.plan(x.shape[-2], x.shape[-1], params)
        original = self._start(x, shapes[-1], params)  # [1, 3, h, w]: capped to params.size
        jitter = Jitter(params.jitter, params.tile, torch.Generator().manual_seed(params.seed))
        snaps = Snapshots.maybe(params.snapshot_every, lambda t: to_image(resize(t, shapes[-1])))
        return _Dream(params, layers, shapes, original, jitter, snaps, _key(shapes, layers, params))

    def _render(self, jobs: list[_Dream]) -> list[RenderOutput | Exception]:
        """Jobs with one batch key: all octaves, then the losses of the uint8 results."""
        first = jobs[0].params  # tile, border, blur, step: what the key makes equal
        grad_sigma = first.blur_sigma if first.blur == "gradient" else 0.0
        for slot, job in enumerate(jobs):
            job.slot = slot  # its row in the objective (its jitter) for the whole render
        objective = DreamObjective(self.backbone, jobs[0].layers, first.tile, [job.jitter for job in jobs],
                                   first.border, grad_sigma)
        self._octaves(jobs, objective)
        done = [job for job in jobs if job.error is None]
        if done:
            measure = DreamObjective(self.backbone, jobs[0].layers, first.tile, border=first.border)  # offset-0 grid
            outs = [to_image(job.dream) for job in done]
            final, _ = measure.evaluate(torch.cat([to_tensor(o, self.device) for o in outs]), grad=False)
            start, _ = measure.evaluate(torch.cat([job.original for job in done]), grad=False)
            for n, (job, out) in enumerate(zip(done, outs)):
                job.output = self._output(job, out, {k: float(v[n]) for k, v in _named(final).items()},
                                          float(start["activation"][n]))
        return [job.error or job.output for job in jobs]

    def _output(self, job: _Dream, out: np.ndarray, losses: dict[str, float], start: float) -> RenderOutput:
        info = {"backbone": self.name, "weights_id": self.weights_id, "layers": job.layers,
                "octave_shapes": [list(s) for s in job.shapes], "octave_iterations": job.counts,
                "activation_start": start, "init": job.params.init}
        return RenderOutput(out, losses, sum(job.counts), info=info,
                            frames=[*job.snaps.frames, out] if job.snaps else [])

    def _start(self, x: torch.Tensor, shape: tuple[int, int], params: DreamParams) -> torch.Tensor:
        """The start image [1, 3, *shape]: the input resized, or seeded grey noise (init="noise")."""
        if params.init == "image":
            return resize(x, shape)
        gen = torch.Generator().manual_seed(params.seed)  # its own generator: the jitter draws stay the same
        noise = torch.rand((1, 3, *shape), generator=gen)  # CPU draw: the same noise on every device
        return (NOISE_GREY + NOISE_AMPLITUDE * (2 * noise - 1)).to(self.device)

    def _octaves(self, jobs: list[_Dream], objective: DreamObjective) -> None:
        """Ascend at each octave, smallest first, every row entering it from its own previous dream."""
        for shape in jobs[0].shapes:
            live = [job for job in jobs if job.error is None]
            if not live:
                return
            for job in live:
                job.enter(shape)
            self._ascend(live, objective)

    @staticmethod
    def _ascend(jobs: list[_Dream], objective: DreamObjective) -> None:
        """Up to ``iterations`` normalised ascent steps per row on the rows' dreams [b, 3, h, w], one
        batched step for the rows still going; a row stops after the step whose objective exceeded
        its ``max_loss``."""
        project = _step_projection(jobs[0].params)
        running, step = list(jobs), 0
        while running:
            step += 1
            rows = [job.slot for job in running]  # the objective's rows (their jitters)
            results = optimize_batch(torch.cat([job.dream for job in running]),
                                     lambda x, sub: objective(x, [rows[k] for k in sub]), method="normalized_gd",
                                     lr=jobs[0].params.step, iterations=1, project=project,
                                     callbacks=[job.snaps for job in running])
            running = [job for job, res in zip(running, results) if job.step(res, step)]
        for job in jobs:
            job.counts.append(job.steps)


@dataclass
class _Dream:
    """One row of a batch: its prepared inputs and its progress through the octaves."""

    params: DreamParams
    layers: dict[str, float]
    shapes: list[tuple[int, int]]        # octaves, smallest first
    original: torch.Tensor               # the start image at full size [1, 3, h, w]
    jitter: Jitter
    snaps: Snapshots | None
    key: tuple                           # DeepDream.batch_key
    slot: int = 0                        # its row in the batch's DreamObjective
    dream: torch.Tensor | None = None    # the current dream [1, 3, h, w] at the current octave
    previous: torch.Tensor | None = None  # the original at the previous octave
    steps: int = 0                       # steps run in the current octave
    counts: list[int] = field(default_factory=list)  # steps per finished octave
    error: Exception | None = None
    output: RenderOutput | None = None

    def enter(self, shape: tuple[int, int]) -> None:
        """Move to the next octave: up(dream) + (original_k - up(original_{k-1})), the detail the
        small octave never had (a noise start has no detail to re-inject: only upscaled)."""
        base = resize(self.original, shape)  # the original at this octave [1, 3, h, w]
        if self.dream is None:
            self.dream = base
        elif self.params.init == "noise":
            self.dream = resize(self.dream, shape)
        else:
            self.dream = (resize(self.dream, shape) + base - resize(self.previous, shape)).clamp(0, 1)
        self.previous, self.steps = base, 0

    def step(self, result: OptimResult | Exception, step: int) -> bool:
        """Take one ascent step's result; -> whether the row keeps ascending in this octave."""
        if isinstance(result, Exception):
            self.error = result
            return False
        self.dream, self.steps = result.param, step
        max_loss = self.params.max_loss
        return step < self.params.iterations and not (max_loss is not None and result.final["activation"] > max_loss)


def _key(shapes: list[tuple[int, int]], layers: dict[str, float], params: DreamParams) -> tuple:
    """What rows sharing a batch must agree on (see ``DeepDream.batch_key``)."""
    return (tuple(shapes), tuple(layers.items()), params.tile, params.border, params.blur, params.blur_sigma,
            params.step)


def _step_projection(params: DreamParams):
    """What runs after each step: clip to [0, 1], after a Gaussian blur of the image when asked."""
    if params.blur_sigma <= 0 or params.blur != "image":
        return clamp01

    def blur_and_clip(x: torch.Tensor) -> None:
        x.copy_(gaussian_blur(x, params.blur_sigma))
        clamp01(x)

    return blur_and_clip
