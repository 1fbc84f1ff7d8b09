"""A training run's folder: config, metrics log, sample grids, report.

Layout (Ray Train adds its ``checkpoint_*`` folders beside these)::

    run.json                 # TrainConfig, resolved model config, corpus id
    metrics.csv              # one row per logged step (averaged over ranks)
    samples/step_000200.png  # sample grids
    eval.json, eval/step_000200.json   # eval records (genlib.eval.record)
    events.out.tfevents.*    # TensorBoard: the same scalars, sample grids and eval metrics
    plots/*.png, report.html # written by genlib.train.report

TensorBoard files are written by whoever logs (rank 0 of training, ``genlib eval``),
one file per process, so ``tensorboard --logdir runs`` shows every run by its folder
name. For a run folder behind a URI the file is written to a local temp folder and
uploaded whole after each write (it stays small: scalars and a few grids).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlib.eval import record as eval_record
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
        self._events: Events | None = None  # opened by the first log/save_* call (rank 0 only)
        self._purge_step: int | None = None

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
        self._purge_step = step + 1  # TensorBoard hides the old events from here on
        self._write()

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()
        self.events.scalars({f"train/{k}": v for k, v in row.items() if k != "step"}, int(row["step"]))

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
        grid = sample_grid(images)
        self.storage.write_bytes(rel, encode_png(upscale_nearest(grid, 512)))
        self.events.image("samples", grid, step)
        return rel

    def save_eval(self, record: dict[str, Any]) -> str:
        """Write an eval record (:mod:`genlib.eval.record`) to ``eval/step_NNNNNN.json``
        (merged into an earlier record of the same evaluation) and ``eval.json``. An earlier
        record whose figures would change (other weights, corpus, split or sample count) is
        kept in ``eval/replaced/``: a later ``genlib eval`` of the checkpoint does not erase
        what was measured during training."""
        rel = eval_record.step_file(record["step"])
        old_text = self.storage.read_text(rel) if self.storage.is_file(rel) else None
        old = _json_object(old_text)
        merged = eval_record.merge(old, record)
        if old_text is not None and (old is None or any(merged.get(k) != v for k, v in old.items())):
            self.storage.write_text(eval_record.replaced_file(record["step"], old_text), old_text)
        text = eval_record.dumps(merged)
        self.storage.write_text(rel, text)
        self.storage.write_text(eval_record.EVAL_JSON, text)  # last: the latest evaluation
        self.events.scalars({f"eval/{k}": v for k, v in eval_record.scalars(record)}, int(record["step"]))
        return rel

    def evals(self) -> list[dict[str, Any]]:
        """Every eval record of the run, by step."""
        return eval_record.read_records(self.storage)

    @property
    def events(self) -> Events:
        if self._events is None:
            self._events = Events(self.storage, self._purge_step)
        return self._events

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


class Events:
    """This process's TensorBoard event file in a run folder (local, or uploaded to a URI)."""

    def __init__(self, storage: Storage, purge_step: int | None = None) -> None:
        # lazy: torch.utils.tensorboard imports tensorboard, needed only by processes that log
        from torch.utils.tensorboard import SummaryWriter

        self.storage = storage
        local = storage.local_path()
        self.tmp = None if local else Path(tempfile.mkdtemp(prefix="genlib-tb-"))
        if local:
            local.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(local or self.tmp), purge_step=purge_step)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        for tag, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.flush()

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image`` uint8 ``[H, W, 3]``."""
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.flush()

    def flush(self) -> None:
        """Flush to disk; behind a URI, upload the event file(s) whole."""
        self.writer.flush()
        if self.tmp is not None:
            for path in sorted(self.tmp.iterdir()):
                self.storage.write_bytes(path.name, path.read_bytes())

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a.permute(1, 2, 0).numpy() for a in arr]


def sample_grid(images: torch.Tensor) -> np.ndarray:
    """Tile ``images [N, 3, H, W]`` (in [-1, 1]) into a near-square uint8 grid; the PNG of
    it is upscaled (nearest) to at least ~512 px wide."""
    tiles = to_uint8(images)
    return image_grid(tiles, columns=int(np.ceil(np.sqrt(len(tiles)))))


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


def _json_object(text: str | None) -> dict[str, Any] | None:
    """``text`` parsed when it is a JSON object, else None (a broken record is replaced, kept aside)."""
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
