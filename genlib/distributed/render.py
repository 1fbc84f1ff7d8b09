"""Batch rendering with Ray Data: request rows fanned out over an actor pool.

    requests -> skip the ones already done (manifest) -> ray.data.from_items
             -> map_batches(_RenderActor, compute=ActorPoolStrategy(size=actors))
             -> manifest part files written as results stream back -> gallery.html

Each actor loads its models once (GPU share per actor with ``use_gpu``; a
fractional CPU locally so Ray Data's own tasks are never starved). A bad row
fails alone (RenderRunner catches it); the manifest is appended part by part,
so a job that dies keeps every finished row and a rerun resumes.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from genlib.config import from_dict, to_dict
from genlib.distributed.runtime import ray_session
from genlib.render.config import RenderConfig
from genlib.render.gallery import write_gallery
from genlib.render.manifest import is_done, read_manifest, write_manifest_part
from genlib.render.runner import RenderRunner
from genlib.storage import Storage


@dataclass
class RenderSummary:
    output: str
    submitted: int
    skipped: int
    ok: int
    failed: int
    seconds: float
    gallery: str

    def __str__(self) -> str:
        return (f"rendered {self.submitted} request(s) in {self.seconds:.1f}s: {self.ok} ok, {self.failed} failed; "
                f"skipped {self.skipped} already done\nmanifest: {self.output}/manifest/\ngallery:  {self.gallery}")


class _RenderActor:
    """Ray Data actor: one RenderRunner per actor; ``__call__`` renders a batch of rows."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.runner = RenderRunner(from_dict(RenderConfig, config))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        results = self.runner.render_rows([{k: _plain(v) for k, v in r.items()} for r in rows])
        return {k: [r.get(k) for r in results] for k in _RESULT_KEYS}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


_RESULT_KEYS = ("request_id", "kind", "input_uri", "input_sha256", "params", "params_hash", "output_uri",
                "output_sha256", "status", "error", "losses", "iterations", "seconds", "worker", "weights_id",
                "finished_at")


def run_render(requests: list[dict[str, Any]], config: RenderConfig, address: str | None = None,
               progress: bool = True) -> RenderSummary:
    """Render every request not already done into ``config.output``."""
    start = time.perf_counter()
    storage = Storage(config.output)
    done = read_manifest(config.output)
    todo = [r for r in requests if config.force or not is_done(r, done, storage)]
    ok = failed = 0
    if todo:
        for part in _fan_out(todo, to_dict(config), config, address, progress):
            ok += sum(r["status"] == "ok" for r in part)
            failed += sum(r["status"] != "ok" for r in part)
    gallery = write_gallery(config.output)
    return RenderSummary(storage.root, len(todo), len(requests) - len(todo), ok, failed,
                         time.perf_counter() - start, gallery)


def _fan_out(todo: list[dict], config_dict: dict, config: RenderConfig, address: str | None, progress: bool):
    """Yield lists of manifest rows as they finish, after appending each to the manifest."""
    import ray  # lazy: heavy, and a run with nothing to do never needs it
    from ray.data import ActorPoolStrategy, DataContext

    with ray_session(address):
        DataContext.get_current().enable_progress_bars = progress
        blocks = max(1, math.ceil(len(todo) / config.batch_size))
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
        ds = ds.map_batches(
            _RenderActor, fn_constructor_kwargs={"config": config_dict}, batch_size=config.batch_size,
            compute=ActorPoolStrategy(size=min(config.actors, len(todo))), num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor if config.use_gpu else 0, batch_format="numpy")
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        buffer, parts, last_flush = [], 0, time.monotonic()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()  # pyarrow keeps missing strings as None (numpy batches make them NaN)
            buffer += rows
            for r in rows:
                if r["status"] != "ok":
                    print(f"[render] {r['request_id']} failed: {r['error']}", file=sys.stderr)
            # Few, larger parts (reruns read them all) but bounded loss: flush every 64 rows or 15 s.
            if len(buffer) >= 64 or time.monotonic() - last_flush > 15:
                write_manifest_part(config.output, buffer, f"{run_id}-{parts:05d}")
                buffer, parts, last_flush = [], parts + 1, time.monotonic()
            yield rows
        if buffer:
            write_manifest_part(config.output, buffer, f"{run_id}-{parts:05d}")
