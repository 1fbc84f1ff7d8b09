"""Render one request row into one manifest row (Ray-free).

:class:`RenderRunner` holds the loaded renderers (created lazily, once per kind:
an actor that only sees style rows never loads InceptionV3) and never raises
for a bad row: any error becomes a ``failed`` manifest row and the job goes on.
The Ray Data actor in ``genlib.distributed.render`` is a thin wrapper around it,
and the benchmark's plain-loop reference calls it directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from PIL import Image

from genlib.config import ConfigError, from_dict
from genlib.images import encode_png
from genlib.render import io as rio
from genlib.render.base import RenderError, RenderOutput
from genlib.render.config import RenderConfig
from genlib.render.kinds import Renderer, kind as kind_of
from genlib.render.manifest import output_path
from genlib.storage import Storage


class RenderRunner:
    def __init__(self, config: RenderConfig, device: str | None = None) -> None:
        self.config = config
        self.device = device or ("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
        self.renderers: dict[str, Renderer] = {}
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
        spec = kind_of(kind)
        typed = from_dict(spec.params, params, prefix="params.")
        renderer = self._renderer(kind)
        result = renderer(image, typed)
        if not np.isfinite(list(result.losses.values()) or [0.0]).all():
            raise RenderError(f"non-finite final loss {result.losses}")
        return result, str(result.info.get("weights_id") or getattr(renderer, "weights_id", "unknown"))

    def _renderer(self, kind: str) -> Renderer:
        """The kind's renderer, built once per runner from its RenderConfig section."""
        if kind not in self.renderers:
            self.renderers[kind] = kind_of(kind).build(self.config, self.device)
        return self.renderers[kind]

    def _save(self, rel: str, image: np.ndarray, result: RenderOutput) -> dict[str, Any]:
        data = encode_png(result.image)
        self.storage.write_bytes(rel, data)
        # Gallery companions: the input as rendered, plus kind-specific extras (mask, raw G(z), ...).
        self.storage.write_bytes(rel.replace(".png", ".input.png"), encode_png(_thumb(image, result.image)))
        for name, extra in result.extras.items():
            self.storage.write_bytes(rel.replace(".png", f".{name}.png"), encode_png(_rgb(extra)))
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
