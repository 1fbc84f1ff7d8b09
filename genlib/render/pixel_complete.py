"""PixelRNN / PixelCNN completion of palette sprites (single-device, Ray-free).

The seed lecture's headline experiment (van den Oord et al. 2016, on Pokemon
sprites with a 176-colour palette): show a trained autoregressive model the top
half, or the first 25 % of the pixels, of a sprite it never saw, and let it draw
the rest several times.

One render:

1. the input (any image, or a ``corpus://`` sample) is cut to the model's aspect,
   area-resized to its ``H x W`` (:func:`genlib.render.masks.fit_image`) and mapped
   to the nearest palette colour (:func:`genlib.data.palette.quantize`);
2. the mask says which pixels are *given* (True): ``top_half`` (rows < H // 2),
   ``rows`` (the first ``round(fraction * H)`` rows), ``pixels`` (the first
   ``round(fraction * H * W)`` pixels in raster order), or a mask image (white =
   given) of the input's size (cut and resized conservatively, as for ``complete``)
   or of the model's;
3. ``PixelRNN.complete`` samples the hidden pixels ``samples`` times (one batch,
   seeded CPU generator, ``temperature``);
4. the output is one grid: quantised input, masked input (hidden pixels grey),
   then the completions, each enlarged ``zoom`` times (nearest neighbour).

Losses (nats per image, teacher-forced: each pixel's cross-entropy given every
pixel before it in raster order):

- ``nll_given``: the given pixels of the quantised input. For prefix masks
  (``top_half``, ``rows``, ``pixels``) this is exactly ``-log p(given)``.
- ``nll_hidden_input``: the input's own hidden pixels (how plausible the model
  finds the real completion).
- ``nll_samples``: the hidden pixels of each completion, averaged over samples.

Loaded models are cached per resolved checkpoint folder (a run folder resolves
to its newest complete checkpoint, so a run that saved a newer one is reloaded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genlib.config import Fields
from genlib.data.palette import quantize
from genlib.images import grid_shape, image_grid, zoom
from genlib.models.pixelrnn import PixelRNN
from genlib.render.base import HIDDEN_GREY, RenderError, RenderOutput, check_image
from genlib.render.limits import check_output
from genlib.render.masks import center_box, fit_image, fit_mask, load_mask, mask_image
from genlib.train.checkpoint import FamilyCache

MASKS = ("top_half", "rows", "pixels")
MAX_COLUMNS = 10   # grid width in tiles (input, masked input, then samples; wraps after this)
CACHE_SIZE = 4     # loaded models kept per renderer


@dataclass
class PixelCompleteSettings:
    """The ``[pixel_complete]`` section of a RenderConfig."""

    checkpoint: str = ""
    """Default PixelRNN/PixelCNN run or checkpoint folder (local or URI), used by rows whose
    params do not name one."""


@dataclass
class PixelCompleteParams:
    """Parameters of one sprite completion (a request row's ``params``)."""

    checkpoint: str | None = None
    """PixelRNN/PixelCNN run folder (its newest complete checkpoint), checkpoint folder or
    state.pt; None = the ``[pixel_complete] checkpoint`` setting."""
    mask: str = "top_half"
    """Given pixels: "top_half", "rows" / "pixels" (the first ``fraction`` of rows / of pixels
    in raster order), or a mask image path/URI (white = given) of the input's or the model's size."""
    fraction: float = 0.5
    """Given share for ``mask = "rows"`` or ``"pixels"``, in (0, 1) (0.25: the seed's 25 %)."""
    samples: int = 4
    """Completions drawn (one batch)."""
    temperature: float = 1.0
    """Softmax temperature of the sampled pixels (0 = greedy, the same completion every time)."""
    seed: int = 0
    """Seed of the sampling (CPU generator: the same completions on every device)."""
    zoom: int = 4
    """Each tile of the output grid is enlarged this many times (nearest neighbour)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.require("checkpoint", self.checkpoint is None or (isinstance(self.checkpoint, str)
                                                                and self.checkpoint.strip() != ""),
                      "must be a run or checkpoint folder (or None)")
        check.require("mask", isinstance(self.mask, str) and self.mask.strip() != "",
                      f"must be one of {MASKS} or a mask image path/URI")
        check.number("fraction", above=0, below=1, as_float=True)
        check.integer("samples", low=1)
        check.number("temperature", low=0, as_float=True)
        check.integer("seed", low=0)
        check.integer("zoom", low=1)

    def check_limits(self, limits) -> None:
        """The render config's caps (a ``genlib.render.limits.RenderLimits``); LimitError names field and cap."""
        limits.cap(self, "samples", "max_samples")


class PixelCompletion:
    """The ``pixel_complete`` kind: ``PixelCompletion(default_checkpoint)(image_uint8, params)``."""

    def __init__(self, checkpoint: str = "", device: torch.device | str = "cpu") -> None:
        self.default_checkpoint = checkpoint
        self.device = torch.device(device)
        self.weights_id = "unknown"  # of the last model used; each row records its own in info
        self._models = FamilyCache(self.device, expect=("pixelrnn",), size=CACHE_SIZE)

    @classmethod
    def from_settings(cls, settings: PixelCompleteSettings, device: torch.device | str = "cpu") -> PixelCompletion:
        return cls(settings.checkpoint, device)

    def model(self, checkpoint: str | None) -> tuple[PixelRNN, str]:
        """(family in eval mode, weights id) of ``checkpoint`` or the default, loaded once."""
        path = checkpoint or self.default_checkpoint
        if not path:
            raise RenderError("kind 'pixel_complete' needs a PixelRNN checkpoint: set params.checkpoint "
                              "or pixel_complete.checkpoint (a training run or checkpoint folder)")
        entry = self._models.get(path)  # (family, weights id), the cached pair
        if entry[0].config.palette is None:
            raise RenderError(f"{path}: the PixelRNN has no palette (train it on a palette corpus)")
        return entry

    def __call__(self, image: np.ndarray, params: PixelCompleteParams) -> RenderOutput:
        """Complete uint8 [H, W, 3] ``image``; the output is the grid described in the module doc."""
        check_image(image)
        family, weights_id = self.model(params.checkpoint)
        self.weights_id = weights_id
        shape = (family.config.height, family.config.width)
        tiles = 2 + params.samples  # input, masked input, completions
        check_output(params, "zoom", grid_shape((shape[0] * params.zoom, shape[1] * params.zoom), tiles,
                                                min(tiles, MAX_COLUMNS)))
        palette = np.asarray(family.config.palette, dtype=np.uint8)              # [K, 3]
        index = torch.from_numpy(quantize(fit_image(image, shape), palette).astype(np.int64))  # [h, w]
        given = torch.from_numpy(self._mask(image.shape[:2], shape, params))       # bool [h, w]
        gen = torch.Generator().manual_seed(params.seed)
        samples = family.complete(index.expand(params.samples, -1, -1), given, params.temperature, gen).cpu()
        rgb = palette[index.numpy()]                                              # [h, w, 3]
        masked = np.where(given.numpy()[..., None], rgb, np.uint8(HIDDEN_GREY))
        tiles = [rgb, masked, *palette[samples.numpy()]]
        grid = image_grid([zoom(t, params.zoom) for t in tiles], columns=min(len(tiles), MAX_COLUMNS))
        return RenderOutput(
            image=grid, losses=self._losses(family, index, samples, given),
            extras={"mask": mask_image(given.numpy()), "quantized": rgb},
            info={"weights_id": weights_id, "variant": family.config.variant, "size": list(shape),
                  "given_fraction": float(given.float().mean()), "samples": params.samples})

    def _mask(self, input_shape: tuple[int, int], shape: tuple[int, int], params: PixelCompleteParams) -> np.ndarray:
        """Given pixels ``bool [h, w]`` at the model's size; RenderError when none is hidden."""
        h, w = shape
        if params.mask in MASKS:
            given = np.zeros(h * w, dtype=bool)
            count = {"top_half": (h // 2) * w, "rows": round(params.fraction * h) * w,
                     "pixels": round(params.fraction * h * w)}[params.mask]
            given[:count] = True  # a prefix in raster order
            given = given.reshape(h, w)
        else:
            given = self._mask_image(params.mask, input_shape, shape)
        if given.all():
            raise RenderError(f"mask {params.mask!r} hides no pixel of the {h}x{w} model image: nothing to complete")
        return given

    @staticmethod
    def _mask_image(uri: str, input_shape: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """A mask file of the model's size as is, or of the input's size cut and resized like the input."""
        try:
            return load_mask(uri, shape)
        except RenderError:
            pass  # not the model's size: it must then be the input's (that error names both sizes)
        return fit_mask(load_mask(uri, input_shape), center_box(input_shape, shape), shape)

    @torch.no_grad()
    def _losses(self, family: PixelRNN, index: torch.Tensor, samples: torch.Tensor,
                given: torch.Tensor) -> dict[str, float]:
        """Teacher-forced NLLs in nats (module doc): index [h, w], samples [n, h, w], given [h, w]."""
        batch = torch.cat([index[None], samples]).to(self.device)        # [1 + n, h, w]
        nll = F.cross_entropy(family.net(batch).float(), batch, reduction="none").cpu()  # [1 + n, h, w]
        hidden = ~given
        return {"nll_given": float(nll[0][given].sum()), "nll_hidden_input": float(nll[0][hidden].sum()),
                "nll_samples": float(nll[1:][:, hidden].sum(1).mean())}
