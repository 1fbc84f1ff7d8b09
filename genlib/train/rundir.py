"""A training run's folder: config, metrics log, sample grids, report.

Layout (Ray Train adds its ``checkpoint_*`` folders beside these)::

    run.json                 # TrainConfig, resolved model config, corpus id
    metrics.csv              # one row per logged step (averaged over ranks)
    samples/step_000200.png  # sample grids
    plots/*.png, report.html # written by genlib.train.report
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlib.images import encode_png, image_grid, upscale_nearest
from genlib.storage import Storage

RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
SAMPLES = "samples"


class RunDir:
    """Rank 0's (and the driver's) view of a run folder, local or behind a URI."""

    def __init__(self, root: str | Path) -> None:
        self.storage = Storage(root)
        self.rows: list[dict[str, Any]] = []

    @property
    def uri(self) -> str:
        return self.storage.root

    def init(self, run_info: dict[str, Any]) -> None:
        self.storage.write_text(RUN_JSON, json.dumps(run_info, indent=2, sort_keys=True) + "\n")

    def info(self) -> dict[str, Any]:
        return json.loads(self.storage.read_text(RUN_JSON)) if self.storage.is_file(RUN_JSON) else {}

    def resume_metrics(self, step: int) -> None:
        """Load the log and drop rows past ``step`` (logged after the checkpoint we
        resume from), so a resumed run has no duplicated steps."""
        self.rows = [r for r in read_metrics(self.storage) if int(r["step"]) <= step]
        self._write()

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        if not self.rows:
            self.storage.delete(METRICS_CSV)
            return
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        self.storage.write_text(METRICS_CSV, buf.getvalue())  # atomic: never a half-written log

    def save_samples(self, images: torch.Tensor, step: int) -> str:
        """``images [N, 3, H, W]`` in [-1, 1] -> ``samples/step_NNNNNN.png``."""
        rel = f"{SAMPLES}/step_{step:06d}.png"
        self.storage.write_bytes(rel, grid_png(images))
        return rel


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a.permute(1, 2, 0).numpy() for a in arr]


def grid_png(images: torch.Tensor, columns: int | None = None, scale: int = 0) -> bytes:
    """Tile ``images [N, 3, H, W]`` (in [-1, 1]) into PNG bytes; small images are
    upscaled (nearest) so the grid is at least ~512 px wide."""
    tiles = to_uint8(images)
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    grid = image_grid(tiles, columns=columns)
    if scale:
        return encode_png(upscale_nearest(grid, grid.shape[1] * scale))
    return encode_png(upscale_nearest(grid, 512))


def read_metrics(root: str | Path | Storage) -> list[dict[str, Any]]:
    storage = root if isinstance(root, Storage) else Storage(root)
    if not storage.is_file(METRICS_CSV):
        return []
    rows = csv.DictReader(io.StringIO(storage.read_text(METRICS_CSV)))
    return [{k: _num(v) for k, v in row.items()} for row in rows]


def _num(value: str) -> Any:
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
