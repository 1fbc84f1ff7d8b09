"""Test helpers shared by the model-family tests."""

from __future__ import annotations

import torch
from torch import nn


def fixed_batch(n: int = 8, size: int = 32, seed: int = 0) -> dict:
    """Smooth random images in [-1, 1] on the 8-bit grid, as the loader gives."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    img = nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    img = torch.round((img + 1) * 127.5) / 127.5 - 1
    return {"image": img, "key": [f"k{i}" for i in range(n)]}


class PassThrough(nn.Module):
    """Stands in for DDP: holds ``.module`` and enforces DDP's rule that a
    forward with grad must get its backward before the next forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.pending = False
        self.forwards = 0

    def forward(self, *args, **kwargs):
        assert not self.pending, "second forward before the previous backward"
        out = self.module(*args, **kwargs)
        self.forwards += 1
        first = out[0] if isinstance(out, tuple) else out  # e.g. the VAE encoder's (mu, logvar)
        if torch.is_grad_enabled() and first.requires_grad:
            self.pending = True
            first.register_hook(self._done)
        return out

    def _done(self, grad):
        self.pending = False
        return grad
