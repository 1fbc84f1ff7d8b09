"""Latent-space exploration of a trained DCGAN or VAE (single-device, Ray-free).

The ``explore`` kind's input is a training run or checkpoint folder
(``Kind.input = "uri"``); each request renders one grid image:

- ``interpolate``: ``steps`` points from the latent of ``seeds[0]`` to that of
  ``seeds[1]`` (for a VAE, or from the encodings of ``images[0]`` to
  ``images[1]``, shown at both ends), on a straight line (``path = "linear"``,
  Radford et al. 2015) or a great circle (``"slerp"``, White 2016: Gaussian
  latents concentrate near a sphere, so a straight line between two of them
  passes through the unlikely middle);
- ``traverse``: one row per dimension in ``dims``, that coordinate set to
  ``steps`` values across ``[-span, span]``, the others held at the base latent
  (``seeds[0]``, or the encoding of ``images[0]``);
- ``grid``: a 2-D VAE's ``steps x steps`` latent grid over ``[-span, span]^2``
  (``VAE.latent_grid``: z1 left to right, z2 bottom to top);
- ``arithmetic``: the DCGAN paper's vector arithmetic. Each group's row shows
  its members and then the decoding of their mean latent; the last row shows
  ``sum_g signs[g] * mean_g``. Members are seeds, or with ``images`` (VAE)
  indices into ``images``.

A seed's latent is drawn from the model's prior with its own CPU generator
(DCGAN: ``DCGAN.sample_z``, uniform or normal; VAE: N(0, I)), so a seed names the
same latent in every request and on every device. Images are encoded to the
posterior mean of the VAE's encoder after a centre crop and an area (BOX) resize.
``span`` defaults to 1 for a uniform DCGAN prior and 3 (standard deviations)
for normal ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from genlib.config import Fields, is_int, is_real
from genlib.images import grid_shape, image_grid, zoom
from genlib.models.base import Family
from genlib.models.dcgan import DCGAN
from genlib.models.vae import VAE
from genlib.render import io as rio
from genlib.render.base import RenderError, RenderOutput, to_image
from genlib.render.limits import check_output
from genlib.render.masks import fit_image
from genlib.train.checkpoint import FamilyCache

MODES = ("interpolate", "traverse", "grid", "arithmetic")
CACHE_SIZE = 4  # loaded models kept per renderer
TRAVERSE_DIMS = 4  # traverse rows when dims is not given: the first latent dimensions


@dataclass
class ExploreSettings:
    """The ``[explore]`` section of a RenderConfig (nothing to set yet: the input names the model)."""


@dataclass
class ExploreParams:
    """Parameters of one latent exploration (a request row's ``params``)."""

    mode: Literal["interpolate", "traverse", "grid", "arithmetic"] = "interpolate"
    """"interpolate", "traverse", "grid" (2-D VAE) or "arithmetic" (module doc)."""
    seeds: list[int] | None = None
    """Seeds of prior latents: the two ends of an interpolation (default [0, 1]), the base of a
    traversal (default [0]); arithmetic groups name seeds directly."""
    images: list[str] | None = None
    """VAE only: image paths/URIs to encode instead of seeds (interpolate: two; traverse: the base;
    arithmetic: groups index them)."""
    path: Literal["linear", "slerp"] = "linear"
    """Interpolation path: straight line or spherical (slerp)."""
    steps: int = 8
    """Points of an interpolation, values per traversed dimension, grid points per side."""
    dims: list[int] | None = None
    """Latent dimensions to traverse (one row each); None = the first 4."""
    span: float | None = None
    """Traverse/grid range [-span, span]; None = 1 for a uniform DCGAN prior, else 3."""
    groups: list[list[int]] | None = None
    """Arithmetic: groups of seeds (or of ``images`` indices), e.g. [[1, 2, 3], [4, 5, 6], [7, 8, 9]]."""
    signs: list[float] | None = None
    """Arithmetic: one coefficient per group, e.g. [1, -1, 1]."""
    zoom: int = 1
    """Each tile is enlarged this many times (nearest neighbour)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.choice("mode", MODES)
        check.choice("path", ("linear", "slerp"))
        check.integer("steps", low=2)
        check.integer("zoom", low=1)
        check.number("span", above=0, optional=True, as_float=True)
        _int_list(check, "seeds", self.seeds, low=0)
        _int_list(check, "dims", self.dims, low=0)
        check.require("images", self.images is None or (isinstance(self.images, list) and bool(self.images) and all(
            isinstance(i, str) and i for i in self.images)), "must be a non-empty list of image URIs (or None)")
        if self.mode == "interpolate":
            ends = self.images if self.images is not None else self.seeds
            check.require("images" if self.images is not None else "seeds", ends is None or len(ends) == 2,
                          "must name exactly two ends for mode 'interpolate'")
        if self.mode == "arithmetic":
            self._check_arithmetic(check)

    def _check_arithmetic(self, check: Fields) -> None:
        groups, signs = self.groups, self.signs
        check.require("groups", isinstance(groups, list) and bool(groups) and all(
            isinstance(g, list) and g and all(is_int(m) and m >= 0 for m in g) for g in groups),
            "must be a non-empty list of non-empty lists of seeds (or image indices) for mode 'arithmetic'")
        check.require("signs", isinstance(signs, list) and len(signs) == len(groups)
                      and all(is_real(v) for v in signs), f"must give one number per group ({len(groups)})")
        if self.images is not None:
            check.require("groups", max(max(g) for g in groups) < len(self.images),
                          f"must index into images (0 .. {len(self.images) - 1})")

    def check_limits(self, limits) -> None:
        """The render config's caps (a ``genlib.render.limits.RenderLimits``); LimitError names field and cap.
        ``limits.max_samples`` caps the decoded images of the row (reported against steps or groups)."""
        tiles = {"interpolate": self.steps + 2, "grid": self.steps ** 2,
                 "traverse": self.steps * len(self.dims or range(TRAVERSE_DIMS)),
                 "arithmetic": sum(len(g) + 1 for g in self.groups or []) + 1}[self.mode]
        limits.cap(self, "groups" if self.mode == "arithmetic" else "steps", "max_samples", tiles)


def _int_list(check: Fields, name: str, value: Any, low: int) -> None:
    check.require(name, value is None or (isinstance(value, list) and bool(value) and all(
        is_int(v) and v >= low for v in value)), f"must be a non-empty list of integers >= {low} (or None)")


# ----------------------------------------------------------------------------- latent geometry


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation ``[d], [d], [n] -> [n, d]`` (norms interpolated linearly);
    falls back to the straight line when a and b are (anti)parallel or zero."""
    na, nb = a.norm(), b.norm()
    cos = torch.dot(a, b) / (na * nb).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-4 or (torch.pi - omega) < 1e-4 or min(na, nb) < 1e-12:
        return lerp(a, b, t)
    ua, ub = a / na, b / nb
    t = t[:, None]
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return direction * ((1 - t) * na + t * nb)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line ``[d], [d], [n] -> [n, d]``."""
    return a[None] + t[:, None] * (b - a)[None]


def traverse(base: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """``[d]`` base, k dims, ``[n]`` values -> ``[k * n, d]``: row i sets dim ``dims[i]`` to each value."""
    z = base.repeat(len(dims) * len(values), 1)
    for i, dim in enumerate(dims):
        z[i * len(values):(i + 1) * len(values), dim] = values
    return z


# ----------------------------------------------------------------------------- renderer


class LatentExplorer:
    """The ``explore`` kind: ``LatentExplorer()(run_folder_uri, ExploreParams(...))``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.weights_id = "unknown"  # of the last model used; each row records its own in info
        self._models = FamilyCache(self.device, expect=("dcgan", "vae"), size=CACHE_SIZE)

    @classmethod
    def from_settings(cls, settings: ExploreSettings, device: torch.device | str = "cpu") -> LatentExplorer:
        return cls(device)

    def model(self, uri: str) -> tuple[Family, str]:
        """(DCGAN or VAE with networks in eval mode, weights id) of a run/checkpoint folder, loaded once."""
        if not isinstance(uri, str) or not uri:
            raise RenderError("kind 'explore' takes a DCGAN/VAE run or checkpoint folder as its input")
        return self._models.get(uri)  # eval mode: BatchNorm on running statistics, decodes do not interact

    def __call__(self, uri: str, params: ExploreParams) -> RenderOutput:
        """Render ``params.mode`` for the model in ``uri`` as one grid image."""
        family, weights_id = self.model(uri)
        self.weights_id = weights_id
        if params.images is not None and not isinstance(family, VAE):
            raise RenderError("images: only a VAE can encode images; use seeds with a DCGAN")
        modes = {"interpolate": self._interpolate, "traverse": self._traverse, "grid": self._grid,
                 "arithmetic": self._arithmetic}
        rows = modes[params.mode](family, params)  # rows of uint8 [S, S, 3] tiles
        width = max(len(r) for r in rows)
        side = rows[0][0].shape[0] * params.zoom
        check_output(params, "zoom", grid_shape((side, side), len(rows) * width, width))
        blank = np.full_like(rows[0][0], 255)
        tiles = [zoom(t, params.zoom) for row in rows for t in row + [blank] * (width - len(row))]
        info = {"weights_id": weights_id, "family": "vae" if isinstance(family, VAE) else "dcgan",
                "mode": params.mode, "latent_dim": _latent_dim(family), "rows": len(rows), "columns": width}
        return RenderOutput(image=image_grid(tiles, columns=width), info=info)

    # -- modes: each returns rows of uint8 [S, S, 3] tiles ------------------------------------
    def _interpolate(self, family: Family, params: ExploreParams) -> list[list[np.ndarray]]:
        keys = [0, 1] if params.images is not None else params.seeds or [0, 1]
        ends, shown = self._latents(family, params, keys)  # [2, d], the fitted images (VAE inputs)
        t = torch.linspace(0, 1, params.steps)
        z = (slerp if params.path == "slerp" else lerp)(ends[0].cpu(), ends[1].cpu(), t)
        row = self._decode(family, z)
        return [[shown[0], *row, shown[1]] if shown else row]  # encoded images shown at both ends

    def _traverse(self, family: Family, params: ExploreParams) -> list[list[np.ndarray]]:
        d = _latent_dim(family)
        dims = params.dims if params.dims is not None else list(range(min(TRAVERSE_DIMS, d)))
        if max(dims) >= d:
            raise RenderError(f"dims: the model's latent has {d} dimensions (0 .. {d - 1}), got {dims}")
        keys = [0] if params.images is not None else (params.seeds or [0])[:1]
        base = self._latents(family, params, keys)[0][0].cpu()  # [d]
        span = self._span(family, params)
        tiles = self._decode(family, traverse(base, dims, torch.linspace(-span, span, params.steps)))
        return [tiles[i * params.steps:(i + 1) * params.steps] for i in range(len(dims))]

    def _grid(self, family: Family, params: ExploreParams) -> list[list[np.ndarray]]:
        if not isinstance(family, VAE) or family.config.latent_dim != 2:
            raise RenderError("mode 'grid' needs a VAE with latent_dim = 2 "
                              f"(this is a {_latent_dim(family)}-D {type(family).__name__})")
        images = family.latent_grid(params.steps, self._span(family, params))  # [n*n, nc, S, S] in [-1, 1]
        tiles = [_to_uint8(x) for x in images]
        return [tiles[i * params.steps:(i + 1) * params.steps] for i in range(params.steps)]

    def _arithmetic(self, family: Family, params: ExploreParams) -> list[list[np.ndarray]]:
        rows, result = [], None
        for group, sign in zip(params.groups, params.signs):
            z, _ = self._latents(family, params, group)                      # [m, d]
            mean = z.mean(0, keepdim=True)                                    # [1, d]
            rows.append(self._decode(family, torch.cat([z, mean])))
            result = sign * mean if result is None else result + sign * mean
        rows.append(self._decode(family, result))
        return rows

    # -- latents and decoding ---------------------------------------------------------------
    def _latents(self, family: Family, params: ExploreParams, keys: list[int]) -> tuple[torch.Tensor, list]:
        """(``[len(keys), d]``, shown images): prior latents of seeds ``keys`` (no images), or with
        ``params.images`` the encodings of ``images[k]`` and those images fitted to the model."""
        if params.images is None:
            return torch.cat([self._prior(family, seed) for seed in keys]), []
        fitted = [fit_image(rio.load_image(params.images[k])[0], (family.config.image_size,) * 2) for k in keys]
        return self._encode(family, fitted), fitted

    def _prior(self, family: Family, seed: int) -> torch.Tensor:
        """``[1, d]`` latent of ``seed`` from the model's prior (its own CPU generator)."""
        gen = torch.Generator().manual_seed(seed)
        if isinstance(family, DCGAN):
            return family.sample_z(1, generator=gen).reshape(1, -1)
        return torch.randn(1, family.config.latent_dim, generator=gen).to(self.device)

    @torch.no_grad()
    def _encode(self, family: VAE, images: list[np.ndarray]) -> torch.Tensor:
        """Posterior means ``[n, d]`` of uint8 [S, S, 3] images already fitted to the model."""
        x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])  # copies: writable
        x = (x.float() / 127.5 - 1).to(self.device)                        # [n, 3, S, S] in [-1, 1]
        if family.config.nc == 1:
            x = x.mean(1, keepdim=True)
        mu, _ = family.encoder(x)
        return mu.float()

    @torch.no_grad()
    def _decode(self, family: Family, z: torch.Tensor) -> list[np.ndarray]:
        """Latents ``[n, d]`` -> n uint8 [S, S, 3] tiles."""
        z = z.to(self.device)
        images = family.decode(z) if isinstance(family, VAE) else family.netG(z)  # [n, nc, S, S] in [-1, 1]
        return [_to_uint8(x) for x in images.float()]

    @staticmethod
    def _span(family: Family, params: ExploreParams) -> float:
        if params.span is not None:
            return params.span
        return 1.0 if isinstance(family, DCGAN) and family.config.z_dist == "uniform" else 3.0


def _latent_dim(family: Family) -> int:
    return family.config.nz if isinstance(family, DCGAN) else family.config.latent_dim


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[nc, S, S]`` in [-1, 1] (nc = 1 or 3) -> uint8 [S, S, 3]."""
    x = (x.detach().float().cpu() + 1) / 2
    return to_image(x.expand(3, -1, -1) if x.shape[0] == 1 else x)
