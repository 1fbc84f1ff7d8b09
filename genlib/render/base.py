"""The contract every render kind implements.

A kind is a class named after the task whose ``__init__`` loads its models once
(an actor holds one instance) and whose ``__call__`` renders one input:

    renderer = StyleTransfer(device="cuda")            # loads VGG19 once
    out = renderer(content_rgb_uint8, StyleParams(...))  # -> RenderOutput

Params are typed dataclasses (loaded from a request row's JSON with
``genlib.config.from_dict``, so an unknown or mistyped parameter is an error
that fails that row only). Images cross this boundary as ``uint8 [H, W, 3]``
RGB numpy arrays; inside, tensors are float ``[1, 3, H, W]`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class RenderError(RuntimeError):
    """A render that cannot succeed for this input (bad mask size, NaN loss, ...):
    recorded as a failed manifest row, the job goes on."""


@dataclass
class RenderOutput:
    image: np.ndarray                                  # uint8 [H, W, 3]
    losses: dict[str, float] = field(default_factory=dict)  # final values of each loss term
    iterations: int = 0                                # optimiser iterations actually run
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. {"mask": ..., "raw": ...} for galleries
    info: dict[str, Any] = field(default_factory=dict)  # e.g. weights id, chosen restart
    frames: list[np.ndarray] = field(default_factory=list)  # progress snapshots, uint8 [H, W, 3], oldest first


HIDDEN_GREY = 128  # colour of unknown (hole, hidden) pixels in "masked input" pictures


def check_image(image: Any) -> np.ndarray:
    """``image`` if it is a uint8 RGB array [H, W, 3] (the contract above), else RenderError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RenderError(f"expected a uint8 RGB image [H, W, 3], got {getattr(image, 'dtype', type(image))} "
                          f"{tuple(getattr(image, 'shape', ()))}")
    return image


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    check_image(image)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255).to(device)  # copy: writable


def to_image(x: torch.Tensor) -> np.ndarray:
    """float [1, 3, H, W] (or [3, H, W]) in [0, 1] -> uint8 [H, W, 3]."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
