"""The small contract every generative model family implements.

A *family* (DCGAN, VAE, PixelRNN) owns its networks, optimisers and objective;
the training loop (single process or Ray Train DDP in ``genlib.distributed``)
only calls the methods below. Nothing here imports Ray or torch.distributed:
the distributed layer wraps the networks through :meth:`Family.wrap`.

Batches are dicts produced by ``genlib.data.loader``:

- ``"image"``: float tensor ``[B, 3, H, W]`` in ``[-1, 1]`` (DCGAN, VAE)
- ``"index"``: long tensor ``[B, H, W]`` of palette indices (PixelRNN)
- ``"key"``: list of sample keys

Mixed precision lives here too (:meth:`Family.set_precision`): families run
their forward passes and loss computations inside :meth:`Family.autocast` and
leave backward, unscaling, clipping and the optimiser step to
:meth:`Family.backward` / :meth:`Family.optimizer_step`, so fp16 loss scaling
is one code path for every family. With ``amp="none"`` (the default) every
helper reduces to the plain fp32 calls, bit for bit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

Batch = dict[str, Any]
Metrics = dict[str, float]
Precision = Literal["none", "bf16", "fp16"]

# autocast dtype of each precision setting (None: no autocast, plain fp32)
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def unwrap(module: nn.Module) -> nn.Module:
    """Return the plain module under any stack of DDP (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, so checkpoints never carry
    wrapper prefixes in their keys."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is a 16-bit float (an autocast output), else
    unchanged: losses and running sums then stay in fp32, while the fp32 path
    (and any fp64 model) is left exactly as it was."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def full_precision(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module(x)`` in fp32 even inside an autocast region.

    For small output layers whose rounding would bias a likelihood: a 16-bit
    output has ~3 significant digits, coarse next to a learned pixel scale or
    a confident logit, while the layer itself costs little in fp32.
    """
    with torch.autocast(x.device.type, enabled=False):
        return module(upcast(x))


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """Convert a per-image negative log-likelihood in nats to bits per dimension."""
    return nats_per_image / (dims * math.log(2.0))


class Family(ABC):
    """A model family: networks + optimisers + objective.

    Subclasses set ``self.networks`` (name -> nn.Module) and
    ``self.optimizers`` (name -> torch.optim.Optimizer) in ``__init__``.
    """

    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    # class defaults, so a family is full fp32 until set_precision says otherwise
    amp: Precision = "none"
    scaler: torch.amp.GradScaler | None = None

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    # -- mixed precision --------------------------------------------------
    def set_precision(self, amp: Precision) -> None:
        """Choose the precision of :meth:`train_step`, :meth:`evaluate` and
        :meth:`sample`: ``"none"`` (fp32), ``"bf16"`` (autocast) or ``"fp16"``
        (autocast plus a dynamic ``GradScaler``, since fp16 gradients underflow).

        Call it before :meth:`load_state_dict` so that a checkpointed loss
        scale has a scaler to go into. Raises ``ValueError`` for an unknown
        setting or one this device cannot run.
        """
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {amp!r}")
        kind = self.device.type
        if amp != "none" and not torch.amp.is_autocast_available(kind):
            raise ValueError(f"amp={amp!r}: torch has no autocast for device {kind!r}")
        scaler = torch.amp.GradScaler(kind) if amp == "fp16" else None
        if scaler is not None and not scaler.is_enabled():  # it disables itself, with a warning
            raise ValueError(f"amp='fp16': GradScaler is not available on device {kind!r}")
        self.amp, self.scaler = amp, scaler

    def autocast(self) -> AbstractContextManager:
        """Context for forward passes and losses: autocast to the chosen 16-bit
        dtype, or nothing at all with ``amp="none"``."""
        dtype = AMP_DTYPES[self.amp]
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the loss scale under fp16. Run it
        outside :meth:`autocast` (the backward ops follow the forward dtypes)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer,
                       params: Iterable[nn.Parameter] | None = None,
                       clip: float | None = None) -> torch.Tensor:
        """Measure (and with ``clip`` clip) the global gradient L2 norm of
        ``params`` (default: all of ``optimizer``'s), then step ``optimizer``.

        Under fp16 the gradients are unscaled first, so the norm and the clip
        threshold are in true units, and the step is skipped when they hold
        inf/nan (the returned norm is then non-finite too). ``params`` must
        belong to ``optimizer``. Returns the norm before clipping as a 0-dim
        tensor (no host sync). Call :meth:`end_step` once per train step after
        the last optimiser step.
        """
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        max_norm = clip if clip is not None else float("inf")  # inf: measure, never clip
        grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skips the step if unscale_ found inf/nan
        return grad_norm

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      params: Iterable[nn.Parameter] | None = None,
                      clip: float | None = None) -> torch.Tensor:
        """:meth:`backward` then :meth:`optimizer_step`; returns the grad norm."""
        self.backward(loss)
        return self.optimizer_step(optimizer, params, clip)

    def end_step(self) -> Metrics:
        """Close a train step: update the loss scale once (after every
        optimiser of the step has stepped, as GradScaler requires).

        Returns extra metrics, ``{}`` unless fp16: ``loss_scale`` (the scale
        this step used) and ``overflow`` (1.0 if its gradients held inf/nan, so
        at least one optimiser step was skipped; its grad norm is non-finite).
        The first steps of a run commonly overflow while the scale calibrates.
        """
        if self.scaler is None:
            return {}
        scale = self.scaler.get_scale()
        self.scaler.update()
        # update() backs the scale off exactly when an inf/nan was found
        return {"loss_scale": scale, "overflow": float(self.scaler.get_scale() < scale)}

    # -- training ---------------------------------------------------------
    @abstractmethod
    def train_step(self, batch: Batch) -> Metrics:
        """One optimisation step on ``batch``; returns scalar metrics
        (always including ``"loss"``)."""

    @abstractmethod
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images as float ``[n, 3, H, W]`` in ``[-1, 1]``."""

    @abstractmethod
    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> Metrics:
        """Per-image means of metrics over a validation stream (NLL in nats/image and
        bits/dim where the family has a likelihood), plus ``n_images``, their count."""

    # -- distribution hooks ---------------------------------------------
    def wrap(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """Replace every network by ``fn(network)`` (e.g. a DDP wrapper).
        Optimisers keep working: the wrapper shares the parameters."""
        self.networks = {name: fn(net) for name, net in self.networks.items()}
        for name, net in self.networks.items():
            setattr(self, name, net)

    def train(self, mode: bool = True) -> None:
        for net in self.networks.values():
            net.train(mode)

    # -- checkpoints --------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers and, under fp16, the loss scaler (``"scaler"``:
        its scale and growth tracker, needed for an exact resume)."""
        state = {
            "networks": {k: unwrap(v).state_dict() for k, v in self.networks.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`. ``"scaler"`` is optional: a checkpoint
        without one (older, or not fp16) leaves a fresh scaler; one with it is
        ignored unless :meth:`set_precision` chose fp16 first."""
        for k, v in state["networks"].items():
            unwrap(self.networks[k]).load_state_dict(v)
        for k, v in state["optimizers"].items():
            self.optimizers[k].load_state_dict(v)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
