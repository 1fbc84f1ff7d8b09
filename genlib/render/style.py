"""Gatys et al. neural style transfer (single-device, Ray-free).

"A Neural Algorithm of Artistic Style" (Gatys, Ecker, Bethge 2015): optimise the
*pixels* of an image so that its deep features match a content photo at one
deep layer and the *style* (Gram matrices of feature maps: which channels fire
together, wherever they are) of one or more paintings at several layers:

    total = content_weight * MSE(F_c(x), F_c(content))
          + style_weight   * mean_l MSE(G_l(x), sum_k w_k G_l(style_k))
          + tv_weight      * TV(x)

Normalisation (it sets the scale of the default weights):

- ``G_l = F F^T / (C*H*W)`` for features ``F`` of shape ``[C, H*W]``: a Gram
  entry is a mean product over positions, independent of the image size, and
  divided by C so wide layers do not dominate (as in the PyTorch tutorial).
- per layer, ``gram_norm = "chw"`` (default) takes the MSE of the Grams;
  ``"gatys"`` takes the paper's ``E_l = 1/(4 N^2 M^2) sum (G - A)^2`` of the raw
  Grams (N = C channels, M = H*W positions), which is ``sum (g - a)^2 / 4`` of
  the normalised ones, i.e. ``C^2 / 4`` times the MSE: wide (deep) layers weigh
  up to C^2 more than under "chw", as in the paper. Its default weights are in
  ``DEFAULT_STYLE_WEIGHT_GATYS``.
- the style term is the *mean* over style layers (Gatys' w_l = 1/L), so adding
  a layer does not change the overall style strength.
- TV is the mean squared difference of neighbouring pixels in [0, 1].
- the content term is the MSE over the content layer's features.

The default ``style_weight`` depends on the backbone (``DEFAULT_STYLE_WEIGHT``):
Gram entries of different networks differ by orders of magnitude.

Several styles are blended by mixing their Gram *targets* with the normalised
``style_weights``. With weights summing to 1 this has exactly the gradient of
the weighted sum of per-style losses (sum_k w_k |G - A_k|^2 = |G - sum_k w_k A_k|^2
+ const), but its value goes to 0 when the blend is matched.

``preserve_color`` is Gatys et al. 2016's luminance-only transfer: content and
style go through the network as luminance (the style's luminance mean/std
matched to the content's), then the result's Y is recombined with the content's
U/V chroma (BT.601 YUV).

Pixels are optimised directly in [0, 1] with the shared
:func:`genlib.render.optim.optimize`: ``optimizer = "lbfgsb"`` keeps every
evaluated image inside the box (L-BFGS-B, as Gatys and the Keras example do),
"lbfgs" clamps between bursts (``optim.clamp01``), "adam" after every step.
Rows that agree on :meth:`StyleTransfer.batch_key` (scale shapes, optimiser, layers,
loss weights) are optimised as one batch ``[B, 3, H, W]`` with per-row targets
(:mod:`genlib.render.batching`); each row is optimised exactly as alone, its pixels
differing only by how batched kernels round (amplified over a run: see that module).
``pooling = "avg"`` swaps VGG19's max pooling for average pooling (Gatys et al.:
"slightly more appealing results"); the renderer builds that second backbone on
first use and keeps it. ``snapshot_every`` records progress frames
(``RenderOutput.frames``, at the output size, the result last).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genlib.config import Fields, is_real
from genlib.render import io as rio
from genlib.render.backbones import load_backbone
from genlib.render.base import RenderError, RenderOutput, check_image, to_image, to_tensor
from genlib.render.batching import render_jobs, single
from genlib.render.optim import BatchObjective, OptimResult, Snapshots, clamp01, optimize_batch

# Per-backbone default layers: (content layer, style layers).
# vgg19: Gatys et al.'s choice (conv4_2; the first conv of each block).
# efficientnet_lite0: the last block of the stride-16 stage for content and the
# output of each of the first five stages (strides 2..16) for style, mirroring
# VGG's "one tap per resolution" pattern.
DEFAULT_LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vgg19": ("conv4_2", ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")),
    "efficientnet_lite0": ("stage5", ("stage1", "stage2", "stage3", "stage4", "stage5")),
}
# Per-backbone default style_weight (the scale of Gram entries differs by network):
# vgg19 1e6 is the PyTorch tutorial's calibration of this very normalisation (Gram / (C*H*W), MSE);
# efficientnet_lite0 1e4 was picked by eye on Tuebingen x Starry Night at 256 px, 150 L-BFGS steps
# (1e2 light, 1e3-1e4 strong with the content intact, 1e5 heavy): its BN'd activations are larger.
DEFAULT_STYLE_WEIGHT = {"vgg19": 1e6, "efficientnet_lite0": 1e4}
# The same for gram_norm = "gatys" (per layer C^2/4 x the "chw" MSE), chosen so that the weighted style
# term at the start equals the "chw" default's. efficientnet_lite0: measured on 5 content/style pairs of
# /work/shared/corpora/art at 128 px (chw/gatys ratios 3.4e-3 .. 4.6e-3, geometric mean 4.0e-3 -> 1e4 x
# 4.0e-3 = 40). vgg19 (no weights offline to measure): the "chw" default over mean_l C_l^2/4 = 30515 of the
# default layers, i.e. equal per-layer MSEs assumed -> 33; an estimate (for lite0 that rule gives 9.4, not 40).
DEFAULT_STYLE_WEIGHT_GATYS = {"vgg19": 33.0, "efficientnet_lite0": 40.0}
GRAM_NORMS = ("chw", "gatys")
DEFAULT_LR = {"lbfgs": 1.0, "lbfgsb": 1.0, "adam": 0.02}  # adam on [0, 1] pixels: ~5/255 per step; lbfgsb ignores lr
MIN_SIDE = 16  # VGG's conv5_1 / Lite0's stage5 are at stride 16: one feature pixel at least
_STYLE_CACHE_SIZE = 8  # decoded style images kept per renderer (many rows share a painting)

# BT.601 RGB -> YUV (rows: Y, U, V); the inverse is exact to float precision.
_RGB2YUV = torch.tensor([[0.299, 0.587, 0.114],
                         [-0.14713, -0.28886, 0.436],
                         [0.615, -0.51499, -0.10001]], dtype=torch.float64)
_YUV2RGB = torch.linalg.inv(_RGB2YUV)


@dataclass
class StyleParams:
    """Parameters of one style-transfer render (a request row's ``params``)."""

    style: list[str]
    """Style image URIs/paths (one or more paintings), read with ``genlib.render.io.load_image``."""
    style_weights: list[float] | None = None
    """Blend weights of the styles (normalised to sum 1); None = equal. A weight may be 0."""
    content_layer: str | None = None
    """Content layer; None = backbone default (vgg19 ``conv4_2``, efficientnet_lite0 ``stage5``)."""
    style_layers: list[str] | None = None
    """Style layers; None = backbone default (vgg19 ``conv1_1 .. conv5_1`` first conv of each block,
    efficientnet_lite0 ``stage1 .. stage5``)."""
    content_weight: float = 1.0
    """Weight of the content MSE."""
    style_weight: float | None = None
    """Weight of the style term (mean over layers of the per-layer Gram loss, see ``gram_norm``).
    None = backbone default (``DEFAULT_STYLE_WEIGHT``: vgg19 1e6, efficientnet_lite0 1e4 for "chw";
    ``DEFAULT_STYLE_WEIGHT_GATYS``: vgg19 33, efficientnet_lite0 40 for "gatys"), which puts the
    weighted style and content terms at the same order (~1-30) after a few hundred steps."""
    gram_norm: Literal["chw", "gatys"] = "chw"
    """Per-layer style loss: "chw" = MSE of Grams normalised by C*H*W; "gatys" = the paper's
    1/(4 N^2 M^2) sum (G - A)^2, which weighs wide layers C^2/4 times more (module doc)."""
    pooling: Literal["max", "avg"] = "max"
    """Pooling of the backbone: "avg" replaces max pooling by average pooling (Gatys et al.; vgg19 only)."""
    tv_weight: float = 10.0
    """Weight of the total-variation term (mean squared neighbour difference of [0, 1] pixels,
    ~0.005-0.05): 10 is a mild smoother (~1% of the total at default weights); 100+ visibly smooths."""
    optimizer: Literal["lbfgs", "lbfgsb", "adam"] = "lbfgsb"
    """"lbfgsb" (scipy's box-constrained L-BFGS-B: pixels never leave [0, 1], as in Gatys et al. and
    seed 000; the default: 0.80x the clamped L-BFGS's loss at equal evaluations in
    benchmarks/bench_lbfgs.py), "lbfgs" (torch L-BFGS, clamped to [0, 1] between bursts of 20
    evaluations; genlib 0.1's default) or "adam". For both L-BFGS variants iterations count
    objective evaluations."""
    iterations: int = 300
    """Optimiser iterations *per scale* (the output's ``iterations`` is the sum over scales; L-BFGS's
    line search may overshoot a burst by a few evaluations, the count reported is the real one)."""
    lr: float | None = None
    """Learning rate; None = per optimiser default (lbfgs 1.0, adam 0.02 on [0, 1] pixels)."""
    init: Literal["content", "style", "noise"] = "content"
    """Start image: the content (fastest), the (heaviest) style resized, or uniform noise (seeded)."""
    size: int = 512
    """Max side of the output in pixels (the content is downscaled to it, never upscaled)."""
    style_scale: float = 1.0
    """Styles are resized (up or down) so their max side is ``style_scale`` x the output's max side:
    larger values give larger brush strokes."""
    preserve_color: bool = False
    """Luminance-only transfer: keep the content's colours (Y from the result, U/V from the content)."""
    scales: int = 1
    """Coarse-to-fine: optimise at size / 2**(scales-1) first, upsample the result as the next init."""
    seed: int = 0
    """Seed of the noise init (the only random part)."""
    snapshot_every: int = 0
    """Save a progress frame every this many objective evaluations (0 = off) into
    ``RenderOutput.frames``, resized to the output size, the result appended last; past 64
    frames every other one is dropped and the interval doubled."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.integer("seed", low=0)
        self._check_styles(check)
        check.number("content_weight", low=0)
        check.number("style_weight", low=0, optional=True)
        check.number("tv_weight", low=0)
        check.choice("optimizer", DEFAULT_LR)
        check.choice("gram_norm", GRAM_NORMS)
        check.choice("pooling", ("max", "avg"))
        check.integer("snapshot_every", low=0)
        check.choice("init", ("content", "style", "noise"))
        check.integer("iterations", low=1)
        check.number("lr", above=0, optional=True)
        check.integer("size", low=MIN_SIDE)
        check.number("style_scale", above=0)
        check.integer("scales", low=1)
        check.require("scales", self.size / 2 ** (self.scales - 1) >= MIN_SIDE,
                      f"must keep size / 2**(scales-1) >= {MIN_SIDE} (size = {self.size})")
        layer = self.content_layer
        check.require("content_layer", layer is None or (isinstance(layer, str) and layer != ""),
                      "must be a layer name (or None)")
        layers = self.style_layers
        check.require("style_layers", layers is None or (not isinstance(layers, str) and bool(layers)),
                      "must be a non-empty list of layer names (or None)")

    def check_limits(self, limits) -> None:
        """The render config's caps (a ``genlib.render.limits.RenderLimits``); LimitError names field and cap."""
        limits.cap(self, "size", "max_side")
        limits.cap(self, "iterations", "max_iterations")
        limits.cap(self, "style", "max_styles", len(self.style))
        limits.require(self, "style_scale", self.style_scale * self.size <= limits.max_side,
                       f"must keep style_scale x size <= {limits.max_side} (limits.max_side)")

    def _check_styles(self, check: Fields) -> None:
        style = self.style
        check.require("style", not isinstance(style, str) and bool(style)
                      and all(isinstance(s, str) and s for s in style), "must be a non-empty list of image URIs")
        w = self.style_weights
        if w is None:
            return
        check.require("style_weights", isinstance(w, (list, tuple)) and len(w) == len(style),
                      f"must have one weight per style image ({len(style)})")
        check.require("style_weights", all(is_real(v) and v >= 0 for v in w) and sum(w) > 0,
                      "must be finite numbers >= 0, not all 0")

    @property
    def blend(self) -> list[float]:
        """Style blend weights normalised to sum 1."""
        w = self.style_weights or [1.0] * len(self.style)
        return [float(v) / sum(w) for v in w]


# ----------------------------------------------------------------------------- losses


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C], normalised by C*H*W (size-independent; see module doc)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def gram_loss(gram: torch.Tensor, target: torch.Tensor, norm: str = "chw") -> torch.Tensor:
    """Style loss of one layer per image ``[B]`` from normalised Grams ``[B, C, C]`` (see the module doc):
    "chw" = their MSE; "gatys" = 1/(4 N^2 M^2) sum (G - A)^2 of the raw Grams = sum (g - a)^2 / 4."""
    squared = (gram - target).pow(2).flatten(1)
    return squared.sum(1) / 4 if norm == "gatys" else squared.mean(1)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical and horizontal neighbours of [B, 3, H, W], per image ``[B]``."""
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dy.pow(2).flatten(1).mean(1) + dx.pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------- colour


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB -> [B, 3, H, W] BT.601 YUV (Y in [0, 1], U/V around 0)."""
    return torch.einsum("ij,bjhw->bihw", _RGB2YUV.to(x), x)


def yuv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_yuv` (not clamped)."""
    return torch.einsum("ij,bjhw->bihw", _YUV2RGB.to(x), x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB -> its Y as a grey RGB image [B, 3, H, W] (what the network sees)."""
    return rgb_to_yuv(x)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Shift/scale the grey ``style`` so its mean/std match the grey ``content`` (Gatys 2016, eq. 1)."""
    s_mean, s_std = style.mean(), style.std().clamp_min(1e-6)
    return ((style - s_mean) * (content.std() / s_std) + content.mean()).clamp(0, 1)


def recombine_color(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Y of ``result`` + U/V of ``content`` (same [B, 3, H, W] shape) -> RGB in [0, 1]."""
    yuv = torch.cat([rgb_to_yuv(result)[:, :1], rgb_to_yuv(content)[:, 1:]], dim=1)
    return yuv_to_rgb(yuv).clamp(0, 1)


# ----------------------------------------------------------------------------- geometry


def resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] (Lanczos, up or down)."""
    h, w = shape
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))


def fit_max_side(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) scaled (up or down) so that the longer side is ``max_side``."""
    h, w = shape
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def scale_shapes(shape: tuple[int, int], scales: int) -> list[tuple[int, int]]:
    """Coarse-to-fine (H, W) per scale: the full shape divided by 2**k, k = scales-1 .. 0."""
    h, w = shape
    return [(max(1, round(h / 2 ** k)), max(1, round(w / 2 ** k))) for k in range(scales - 1, -1, -1)]


def _check_side(shape: Sequence[int], what: str) -> None:
    if min(shape) < MIN_SIDE:
        raise RenderError(f"{what} is {shape[0]}x{shape[1]} px: the shorter side must be >= {MIN_SIDE} "
                          "(the deepest default layers are at stride 16); raise size or lower scales")


# ----------------------------------------------------------------------------- renderer


@dataclass
class Setup:
    """A request's parameters resolved against the backbone (defaults filled, names checked)."""

    content_layer: str
    style_layers: list[str]
    style_weight: float
    lr: float
    gram_norm: str = "chw"
    pooling: str = "max"

    @property
    def wanted(self) -> list[str]:
        """Every tap one objective evaluation needs (one forward for both terms)."""
        return list(dict.fromkeys([*self.style_layers, self.content_layer]))


@dataclass
class Targets:
    """What one scale optimises towards (no grad)."""

    content: torch.Tensor                 # content-layer features of the content [1, C, h, w]
    grams: dict[str, torch.Tensor]        # blended style Gram per style layer [1, C_l, C_l]
    content_image: torch.Tensor           # the network's view of the content at this scale [1, 3, H, W]
    style_images: list[torch.Tensor]      # the network's view of each style at this scale


class StyleTransfer:
    """Gatys style transfer with a feature backbone loaded once.

    >>> st = StyleTransfer("vgg19", device="cuda")
    >>> out = st(content_rgb_uint8, StyleParams(style=["starry_night.jpg"]))
    >>> outs = st.render_many([photo_a, photo_b], [params_a, params_b])  # one batch when batch_key agrees

    Rows with the same :meth:`batch_key` are optimised as one batch ``[B, 3, H, W]``: per-row
    targets (content features, blended style Grams) are stacked, the objective returns per-row
    terms, and :func:`genlib.render.optim.optimize_batch` keeps every row's trajectory its own
    (L-BFGS in lockstep, Adam elementwise; each row its own budget, start image and snapshots).
    """

    def __init__(self, backbone: str = "vgg19", weights: str | None = "default", device="cpu") -> None:
        self.device = torch.device(device)
        self.backbone = load_backbone(backbone, weights, device=self.device).eval().requires_grad_(False)
        self.name, self._weights = backbone, weights
        self.weights_id = self.backbone.weights_id
        self._networks = {"max": self.backbone}  # pooling -> backbone; "avg" is built on first use
        self._style_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Any, device: torch.device | str = "cpu") -> StyleTransfer:
        """Build from a RenderConfig ``[style]`` section (a ``BackboneChoice``)."""
        return cls(settings.backbone, settings.weights, device=device)

    def __call__(self, content: np.ndarray, params: StyleParams,
                 styles: list[np.ndarray] | None = None) -> RenderOutput:
        """Stylise uint8 [H, W, 3] ``content``; ``styles`` = already-loaded style images, else read
        ``params.style``. Returns the image at max side ``params.size`` and the final weighted losses."""
        return single(self.render_many([content], [params], None if styles is None else [styles]))

    def batch_key(self, content: np.ndarray, params: StyleParams) -> tuple:
        """Rows with equal keys share a batch: same scale shapes, optimiser, lr, layers and loss
        weights. Content, styles (and their blend, scale, colour handling), init, seed, iterations
        and snapshots stay per row."""
        setup = self.setup(params)
        shapes = scale_shapes(rio.capped_shape(*content.shape[:2], params.size), params.scales)
        return _key(shapes, params, setup)

    def render_many(self, contents: Sequence[np.ndarray], params_list: Sequence[StyleParams],
                    styles_list: Sequence[list[np.ndarray] | None] | None = None) -> list[RenderOutput | Exception]:
        """Render every row, rows with the same batch key as one batch; a failing row (unreadable
        style, bad layer, NaN loss) is its exception, the others go on."""
        items = list(zip(contents, params_list, styles_list or [None] * len(contents)))
        return render_jobs(items, lambda item: self._job(*item), lambda job: job.key, self._render)

    def _job(self, content: np.ndarray, params: StyleParams, styles: list[np.ndarray] | None) -> _Job:
        """A row checked and prepared: setup, content at the output size, styles loaded."""
        setup = self.setup(params)
        check_image(content)  # dtype/shape (the contract's message) before any resizing
        content = rio.resize_max(content, params.size)
        styles = self._load_styles(params, styles)
        full = to_tensor(content, self.device)  # [1, 3, H, W]: output shape, and the chroma of preserve_color
        shapes = scale_shapes(content.shape[:2], params.scales)
        snaps = Snapshots.maybe(params.snapshot_every,
                                lambda x: self._finish(_upsample(x, full.shape[2:]), full, params))
        return _Job(content, styles, params, setup, full, shapes, _key(shapes, params, setup), snaps)

    def _render(self, jobs: list[_Job]) -> list[RenderOutput | Exception]:
        """Jobs with one batch key, coarse to fine: each scale is one optimize_batch call."""
        objective, live = None, jobs
        for shape in jobs[0].shapes:
            live, objective = self._scale([job for job in live if job.error is None], shape)
        done = [k for k, job in enumerate(live) if job.error is None]
        if done:
            with torch.no_grad():  # losses of the returned images themselves (after the last clamp)
                final = objective(torch.cat([live[k].x for k in done]), done)
            for n, k in enumerate(done):
                live[k].final = {name: float(v[n]) for name, v in final.items()}
        return [job.error or self._output(job) for job in jobs]

    def _scale(self, jobs: list[_Job], shape: tuple[int, int]) -> tuple[list[_Job], BatchObjective | None]:
        """Optimise ``jobs`` at ``shape``; -> (the jobs that had targets, their objective)."""
        targets = []
        for job in jobs:
            try:
                targets.append(self.targets(job.content, job.styles, job.params, shape, job.setup))
            except Exception as exc:
                job.error = exc
        jobs = [job for job in jobs if job.error is None]
        if not jobs:
            return jobs, None
        first, setup = jobs[0].params, jobs[0].setup  # what the key makes equal
        start = torch.cat([self._init(t, job.params) if job.x is None else _upsample(job.x, shape)
                           for job, t in zip(jobs, targets)])  # [b, 3, H, W]
        objective = self.objective(targets, first, setup)
        # contiguous: to_tensor's permuted view would break L-BFGS's flat gradient view
        results = optimize_batch(start.contiguous(), objective, method=first.optimizer,
                                 iterations=[job.params.iterations for job in jobs], lr=setup.lr, project=clamp01,
                                 bounds=(0.0, 1.0), callbacks=[job.snaps for job in jobs])
        for job, res in zip(jobs, results):
            job.advance(res)
        return jobs, objective

    def _output(self, job: _Job) -> RenderOutput:
        image = self._finish(job.x, job.full, job.params)
        final, setup = job.final, job.setup
        losses = {"content": final["content"], "style": final["style"], "tv": final["tv"], "total": final["loss"]}
        info = {"weights_id": self.weights_id, "backbone": self.name, "content_layer": setup.content_layer,
                "style_layers": setup.style_layers, "style_weight": setup.style_weight,
                "gram_norm": setup.gram_norm, "pooling": setup.pooling,
                "history": job.history}  # total loss per objective evaluation, all scales
        frames = [*job.snaps.frames, image] if job.snaps else []
        return RenderOutput(image=image, losses=losses, iterations=job.iterations, info=info, frames=frames)

    @staticmethod
    def _finish(x: torch.Tensor, content: torch.Tensor, params: StyleParams) -> np.ndarray:
        """Optimised pixels [1, 3, H, W] -> the uint8 output (content colours back with preserve_color)."""
        return to_image(recombine_color(x, content) if params.preserve_color else x)

    def network(self, pooling: str = "max"):
        """The backbone with max or average pooling (built once, vgg19 only); RenderError otherwise."""
        if pooling not in self._networks:
            if self.name != "vgg19":
                raise RenderError(f"pooling: 'avg' needs the vgg19 backbone, this renderer uses {self.name}")
            bb = load_backbone(self.name, self._weights, device=self.device, avg_pool=True)
            self._networks[pooling] = bb.eval().requires_grad_(False)
        return self._networks[pooling]

    def setup(self, params: StyleParams) -> Setup:
        """Fill the backbone's defaults into ``params`` and check its layer names (RenderError naming the field)."""
        content_layer = params.content_layer or self._default("content_layer", 0)
        style_layers = list(params.style_layers or self._default("style_layers", 1))
        style_weight = params.style_weight
        if style_weight is None:
            style_weight = self._default("style_weight", None, params.gram_norm)
        for field_name, names in (("content_layer", [content_layer]), ("style_layers", style_layers)):
            try:
                self.backbone.resolve(names)  # aliases (inception's mixedN) are fine too
            except ValueError as exc:
                raise RenderError(f"{field_name}: {exc}") from None
        self.network(params.pooling)  # RenderError now for avg pooling on another backbone
        return Setup(content_layer, style_layers, float(style_weight), params.lr or DEFAULT_LR[params.optimizer],
                     params.gram_norm, params.pooling)

    def _default(self, field_name: str, index: int | None, gram_norm: str = "chw"):
        """The backbone's default for ``field_name``; backbones without one need it set explicitly."""
        weights = DEFAULT_STYLE_WEIGHT_GATYS if gram_norm == "gatys" else DEFAULT_STYLE_WEIGHT
        table = weights if index is None else DEFAULT_LAYERS
        if self.name not in table:
            raise RenderError(f"{field_name}: backbone {self.name} has no default, set it "
                              f"(taps: {', '.join(self.backbone.layers)})")
        return table[self.name] if index is None else table[self.name][index]

    def targets(self, content: np.ndarray, styles: list[np.ndarray], params: StyleParams,
                shape: tuple[int, int], setup: Setup) -> Targets:
        """Content features and blended style Grams at output ``shape`` (H, W)."""
        _check_side(shape, "the image at the coarsest scale")
        c = to_tensor(resize_to(content, shape), self.device)                      # [1, 3, H, W]
        side = max(1, round(params.style_scale * max(shape)))
        s = [to_tensor(resize_to(img, fit_max_side(img.shape[:2], side)), self.device) for img in styles]
        if params.preserve_color:  # the network sees luminance only; style luminance matched to the content's
            c = luminance(c)
            s = [match_luminance(luminance(t), c) for t in s]
        network = self.network(setup.pooling)
        with torch.no_grad():
            content_feats = network(c, [setup.content_layer])[setup.content_layer]
            grams = self._blended_grams(network, s, params.blend, setup.style_layers)
        return Targets(content_feats, grams, c, s)

    @staticmethod
    def _blended_grams(network, styles: list[torch.Tensor], blend: list[float],
                       style_layers: list[str]) -> dict[str, torch.Tensor]:
        """sum_k w_k G_l(style_k) per layer; zero-weight styles are not even run through the network."""
        grams: dict[str, torch.Tensor] = {}
        for img, w in zip(styles, blend):
            if w == 0:
                continue
            _check_side(img.shape[2:], "a style image after resizing")
            feats = network(img, style_layers)
            for layer in style_layers:
                g = w * gram_matrix(feats[layer])
                grams[layer] = grams[layer] + g if layer in grams else g
        return grams

    def objective(self, targets: Sequence[Targets], params: StyleParams, setup: Setup) -> BatchObjective:
        """Rows' images x [b, 3, H, W] -> per-row weighted loss terms [b]; "loss" is their sum
        (minimised). ``targets[r]`` are row r's; the weights are ``params``' (shared by a batch)."""
        network = self.network(setup.pooling)
        content = torch.cat([t.content for t in targets])  # [n, C, h, w]
        grams = {layer: torch.cat([t.grams[layer] for t in targets]) for layer in setup.style_layers}  # [n, C, C]
        everyone = list(range(len(targets)))

        def objective(x: torch.Tensor, rows: list[int]) -> dict[str, torch.Tensor]:
            pick = (lambda t: t) if rows == everyone else (lambda t: t[rows])  # this evaluation's rows
            feats = network(x, setup.wanted)
            c = (feats[setup.content_layer] - pick(content)).pow(2).flatten(1).mean(1)  # per-row MSE [b]
            style = torch.stack([gram_loss(gram_matrix(feats[layer]), pick(grams[layer]), setup.gram_norm)
                                 for layer in setup.style_layers]).mean(0)  # [layers, b] -> [b]
            terms = {"content": params.content_weight * c, "style": setup.style_weight * style,
                     "tv": params.tv_weight * tv_loss(x)}
            return {"loss": terms["content"] + terms["style"] + terms["tv"], **terms}

        return objective

    def _init(self, targets: Targets, params: StyleParams) -> torch.Tensor:
        """The first scale's start image [1, 3, H, W] in [0, 1]."""
        c = targets.content_image
        if params.init == "content":
            return c.clone()
        if params.init == "style":  # the heaviest style, stretched to the content's shape
            heaviest = int(np.argmax(params.blend))
            return F.interpolate(targets.style_images[heaviest], size=c.shape[2:], mode="bilinear",
                                 align_corners=False, antialias=True).clamp(0, 1)
        gen = torch.Generator().manual_seed(params.seed)  # CPU generator: same noise on every device
        noise = torch.rand(c.shape, generator=gen).to(c)
        return luminance(noise) if params.preserve_color else noise

    def _load_styles(self, params: StyleParams, styles: list[np.ndarray] | None) -> list[np.ndarray]:
        """The style images as uint8 [H, W, 3], from the caller or read (and cached) by URI."""
        if styles is not None:
            if len(styles) != len(params.style):
                raise RenderError(f"got {len(styles)} style image(s) for {len(params.style)} style URI(s)")
            for img in styles:
                to_tensor(img[:1, :1])  # dtype/shape check only
            return list(styles)
        return [self._read_style(uri) for uri in params.style]

    def _read_style(self, uri: str) -> np.ndarray:
        """io.load_image with a small LRU cache: a batch often reuses one painting for many rows."""
        if uri in self._style_cache:
            self._style_cache.move_to_end(uri)
            return self._style_cache[uri]
        image, _ = rio.load_image(uri)
        self._style_cache[uri] = image
        if len(self._style_cache) > _STYLE_CACHE_SIZE:
            self._style_cache.popitem(last=False)
        return image


@dataclass
class _Job:
    """One row of a batch: its inputs, resolved setup and progress over the scales."""

    content: np.ndarray                 # uint8 [H, W, 3] at the output size
    styles: list[np.ndarray]            # uint8 style images as loaded
    params: StyleParams
    setup: Setup
    full: torch.Tensor                  # the content [1, 3, H, W]: output shape, chroma of preserve_color
    shapes: list[tuple[int, int]]       # (H, W) per scale, coarse to fine
    key: tuple                          # StyleTransfer.batch_key
    snaps: Snapshots | None = None
    x: torch.Tensor | None = None       # current image [1, 3, h, w]
    iterations: int = 0                 # evaluations over the scales so far
    history: list[float] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    error: Exception | None = None

    def advance(self, result: OptimResult | Exception) -> None:
        """Take one scale's optimisation result (or the row's error)."""
        if isinstance(result, Exception):
            self.error = result
            return
        self.x = result.param
        self.iterations += result.iterations
        self.history = self.history + result.history


def _key(shapes: list[tuple[int, int]], params: StyleParams, setup: Setup) -> tuple:
    """What rows sharing a batch must agree on (see ``StyleTransfer.batch_key``)."""
    return (tuple(shapes), params.optimizer, setup.lr, setup.content_layer, tuple(setup.style_layers),
            setup.style_weight, setup.gram_norm, setup.pooling, params.content_weight, params.tv_weight)


def _upsample(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Previous scale's result [1, 3, h, w] -> [1, 3, H, W] as the next scale's init."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=shape, mode="bicubic", align_corners=False).clamp(0, 1)
