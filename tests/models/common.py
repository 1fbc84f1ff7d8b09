"""Test helpers shared by the model-family tests."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
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


class SyncRecorder(PassThrough):
    """PassThrough with DDP's ``no_sync()``: records, for every forward with
    grad, whether its backward would all-reduce (DDP decides at forward time,
    from ``require_backward_grad_sync``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.require_backward_grad_sync = True
        self.synced: list[bool] = []

    @contextmanager
    def no_sync(self):
        old, self.require_backward_grad_sync = self.require_backward_grad_sync, False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            self.synced.append(self.require_backward_grad_sync)
        return super().forward(*args, **kwargs)


def reference_dcgan_step(fam, batch: dict, g_steps: int = 1) -> None:
    """The DCGAN step as first written (pytorch/examples' recipe), fp32, in
    plain torch on ``fam``'s (possibly DDP-wrapped) networks and optimisers:
    D on real, then on fake, each backward all-reducing under DDP; then
    ``g_steps`` G updates on the same z, each backward running through D
    (and, under DDP, all-reducing D's gradients as well)."""
    netG, netD = fam.netG, fam.netD
    opt_g, opt_d = fam.optimizers["netG"], fam.optimizers["netD"]
    real = batch["image"]
    z = fam.sample_z(real.size(0))
    fake = netG(z)
    opt_d.zero_grad(set_to_none=True)
    for images, label in ((real, 1.0), (fake.detach(), 0.0)):
        logits = netD(images)
        F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label)).backward()
    opt_d.step()
    for k in range(g_steps):
        if k:
            fake = netG(z)
        opt_g.zero_grad(set_to_none=True)
        logits = netD(fake)
        F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
        opt_g.step()
