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
from PIL import Image

from genlib.data.build import image_grid

RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
SAMPLES = "samples"


class RunDir:
    """Rank 0's view of the run folder (a local path; cloud storage paths are
    handled by Ray Train's checkpoint upload, and logs are written to a local
    mirror given by ``--storage-path`` when it is local)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.rows: list[dict[str, Any]] = []

    def init(self, run_info: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RUN_JSON).write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")

    def resume_metrics(self, step: int) -> None:
        """Load the log and drop rows past ``step`` (logged after the checkpoint we
        resume from), so a resumed run has no duplicated steps."""
        self.rows = [r for r in read_metrics(self.root) if int(r["step"]) <= step]
        self._write()

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        if not self.rows:
            (self.root / METRICS_CSV).unlink(missing_ok=True)
            return
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        tmp = self.root / (METRICS_CSV + ".tmp")
        tmp.write_text(buf.getvalue())
        tmp.replace(self.root / METRICS_CSV)  # never a half-written log

    def save_samples(self, images: torch.Tensor, step: int) -> Path:
        """``images [N, 3, H, W]`` in [-1, 1] -> ``samples/step_NNNNNN.png``."""
        path = self.root / SAMPLES / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path)
        return path


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a.permute(1, 2, 0).numpy() for a in arr]


def save_grid(images: torch.Tensor, path: Path, columns: int | None = None, scale: int = 0) -> None:
    """Tile ``images [N, 3, H, W]`` (in [-1, 1]) into a PNG; small images are
    upscaled (nearest) so the grid is at least ~512 px wide."""
    tiles = to_uint8(images)
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    grid = image_grid(tiles, columns=columns)
    scale = scale or max(1, 512 // grid.shape[1])
    im = Image.fromarray(grid)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    im.save(path)


def read_metrics(root: str | Path) -> list[dict[str, Any]]:
    path = Path(root) / METRICS_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


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
