"""The small contract every generative model family implements.

A *family* (DCGAN, VAE, PixelRNN) owns its networks, optimisers and objective;
the training loop (single process or Ray Train DDP in ``genlib.distributed``)
only calls the methods below. Nothing here imports Ray or torch.distributed:
the distributed layer wraps the networks through :meth:`Family.wrap`.

Batches are dicts produced by ``genlib.data.loader``:

- ``"image"``: float tensor ``[B, 3, H, W]`` in ``[-1, 1]`` (DCGAN, VAE)
- ``"index"``: long tensor ``[B, H, W]`` of palette indices (PixelRNN)
- ``"key"``: list of sample keys
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable

import torch
from torch import nn

Batch = dict[str, Any]
Metrics = dict[str, float]


def unwrap(module: nn.Module) -> nn.Module:
    """Return the plain module under a DDP (or similar) wrapper."""
    return getattr(module, "module", module)


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

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

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
        """Average metrics over a validation stream (NLL in nats/image and
        bits/dim where the family has a likelihood)."""

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
        return {
            "networks": {k: unwrap(v).state_dict() for k, v in self.networks.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state["networks"].items():
            unwrap(self.networks[k]).load_state_dict(v)
        for k, v in state["optimizers"].items():
            self.optimizers[k].load_state_dict(v)
