"""Distributed training with Ray Train's TorchTrainer (PyTorch DDP).

The driver (:func:`run_training`) validates everything before a worker starts,
then runs :func:`train_loop_per_worker` on ``num_workers`` ranks. All Ray and
torch.distributed lines of training live in this file, under numbered banners.

Resume and exactness:
- a restarted worker group (``FailureConfig``) and an explicit ``--resume`` both
  start from ``ray.train.get_checkpoint()``, i.e. the step it stored;
- the data position is a pure function of the step (fixed batches per epoch,
  seeded shuffles; already-consumed batches of the epoch are skipped), and the
  global torch RNG is reseeded from (seed, rank, step) before every step, so a
  resumed run takes exactly the optimiser steps an uninterrupted run would.
- ``ray.train.report`` is a barrier: every rank calls it at the same (checkpoint) steps.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from genlib.config import ConfigError, from_dict, to_dict
from genlib.data.corpus import open_corpus
from genlib.data.loader import batches_per_worker, make_loader
from genlib.distributed.runtime import ray_session
from genlib.models.base import Family
from genlib.models.registry import build_family, resolve_model_config, spec
from genlib.storage import Storage, absolute, join
from genlib.train.checkpoint import load_checkpoint, save_state
from genlib.train.config import TrainConfig
from genlib.train.report import write_report
from genlib.train.rundir import RunDir

FAIL_MARKER = ".fail_at_step.done"


@dataclass
class TrainOutcome:
    run_dir: str                # local path or URI
    step: int
    metrics: dict[str, Any]
    checkpoint: str | None
    report: str | None


# ============================================================================ driver


def prepare_run(cfg: TrainConfig, resume: str | None = None) -> tuple[TrainConfig, str, dict]:
    """Validate config + corpus and pick the run folder, before any worker starts.

    ``resume``: a run folder (path or URI); its stored config is used, except
    ``steps`` when given (to extend a finished run)."""
    if resume:
        stored = RunDir(absolute(resume)).info().get("train")
        if stored is None:
            raise ConfigError(f"--resume {resume}: not a genlib run folder (run.json missing)")
        parent, name = absolute(resume).rstrip("/").rsplit("/", 1)
        stored.update(steps=cfg.steps if cfg.steps != TrainConfig.steps else stored["steps"])
        cfg = from_dict(TrainConfig, {**stored, "name": name, "storage_path": parent, "fail_at_step": 0})
    if not cfg.corpus:
        raise ConfigError("corpus: no corpus given (set corpus = \"path\" or pass --corpus)")
    corpus = open_corpus(cfg.corpus)
    model_cfg = resolve_model_config(cfg.model, corpus)
    batches_per_worker(corpus.count("train"), cfg.per_worker_batch, cfg.num_workers, cfg.loader_workers)
    name = cfg.name or f"{cfg.family}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    storage_path = absolute(cfg.storage_path)
    run_dir = join(storage_path, name)
    if not resume and Storage(run_dir).exists():
        raise ConfigError(f"run folder {run_dir} already exists: pass --resume {run_dir} to continue it, "
                          f"or choose another name")
    cfg = from_dict(TrainConfig, {**to_dict(cfg), "name": name, "corpus": str(Path(cfg.corpus).resolve()),
                                  "storage_path": storage_path})
    info = {"train": to_dict(cfg), "model_config": _jsonable(model_cfg), "corpus_id": corpus.corpus_id}
    return cfg, run_dir, info


def run_training(cfg: TrainConfig, resume: str | None = None, address: str | None = None) -> TrainOutcome:
    """Train on the local embedded Ray (default) or the cluster at ``address``/``RAY_ADDRESS``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # lazy: heavy
    from ray.train.torch import TorchTrainer

    cfg, run_dir, info = prepare_run(cfg, resume)
    if not resume:
        RunDir(run_dir).init(info)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg), "run_dir": run_dir},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )
    with ray_session(address):
        result = trainer.fit()
    report = write_report(run_dir)
    checkpoint = result.checkpoint.path if result.checkpoint else None
    metrics = dict(result.metrics or {})
    return TrainOutcome(run_dir, int(metrics.get("step", 0)), metrics, checkpoint, report)


# ============================================================================ worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train  # lazy: heavy; this module is imported by drivers that may never start Ray
    import ray.train.torch

    cfg = from_dict(TrainConfig, config["train"])
    run = RunDir(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, math.floor(cfg.cpus_per_worker)))
    corpus = open_corpus(cfg.corpus)

    # [1] Prepare the data: this rank's disjoint stream, equal batches on every rank.
    target = spec(cfg.family).target
    loader = make_loader(corpus, "train", batch_size=cfg.per_worker_batch, rank=rank, world_size=world,
                         num_workers=cfg.loader_workers, target=target, seed=cfg.seed)

    # [2] Build the family, restore the checkpoint, wrap the networks for DDP.
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    family = build_family(cfg.model, corpus, device)
    family.set_precision(cfg.amp if device.type == "cuda" else "none")  # before restore: the loss scale is state
    step = restore(family, ray.train.get_checkpoint())
    if rank == 0:
        run.resume_metrics(step)
    if cfg.compile:
        family.wrap(torch.compile)
    if world > 1:
        family.wrap(lambda net: _ddp(net, device))

    # [3] Train, reporting metrics (and rank 0's checkpoint) at the same steps on every rank.
    loop = _Loop(cfg, family, loader, run, rank, world, device, corpus)
    loop.run(step)


def _ddp(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in net.parameters()):
        return net
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # batch stats over the global batch
        return DistributedDataParallel(net, device_ids=[device.index])
    return DistributedDataParallel(net)


class _Loop:
    """The step loop of one rank (kept apart so the worker function stays a page)."""

    def __init__(self, cfg: TrainConfig, family: Family, loader, run: RunDir, rank: int, world: int,
                 device: torch.device, corpus) -> None:
        self.cfg, self.family, self.loader, self.run_dir = cfg, family, loader, run
        self.rank, self.world, self.device, self.corpus = rank, world, device, corpus
        self.window: dict[str, list[float]] = {}
        self.window_start = time.perf_counter()
        self.window_steps = 0

    def run(self, step: int) -> None:
        cfg, per_epoch = self.cfg, len(self.loader)
        while step < cfg.steps:
            epoch, done_in_epoch = divmod(step, per_epoch)
            self.loader.dataset.set_epoch(epoch)
            batches = iter(self.loader)
            for _ in range(done_in_epoch):  # resume mid-epoch at the exact batch
                next(batches)
            for batch in batches:
                step = self.step(batch, step)
                if step >= cfg.steps:
                    break

    def step(self, batch: dict, step: int) -> int:
        cfg = self.cfg
        self._maybe_die(step + 1)
        torch.manual_seed(hash((cfg.seed, self.rank, step)) & 0x7FFFFFFF)
        metrics = self.family.train_step(batch)  # autocast / loss scaling happen inside the family
        step += 1
        for k, v in metrics.items():
            self.window.setdefault(k, []).append(float(v))
        self.window_steps += 1
        last = step == cfg.steps
        if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step % cfg.sample_every == 0 or last:
            self.report(step, checkpoint=step % cfg.checkpoint_every == 0 or last,
                        sample=step % cfg.sample_every == 0 or last)
        return step

    def report(self, step: int, checkpoint: bool, sample: bool) -> None:
        """Log metrics (all ranks take part in the all-reduce; rank 0 writes) and, at
        checkpoint steps only, call ``ray.train.report`` on every rank. Ray Train V2
        collects reports every ~2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so reporting
        each log step would throttle fast (GPU) steps to one window per 2 s."""
        row = {"step": step, "epoch": (step - 1) // len(self.loader), **self._averaged()}
        if self.rank == 0:
            if checkpoint and self.cfg.eval_batches:
                row.update({f"val_{k}": v for k, v in self._evaluate().items() if k != "n_images"})
            if sample:
                self.run_dir.save_samples(self._samples(), step)
            self.run_dir.log(row)
            _print_progress(row, self.cfg.steps)
        if checkpoint:
            self._checkpoint(step, row)

    def _checkpoint(self, step: int, row: dict) -> None:
        """Barrier: every rank reports at the same steps; only rank 0 attaches the checkpoint."""
        import ray.train  # lazy: heavy (see train_loop_per_worker)

        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_state(self.family, step, to_dict(self.cfg), self.corpus.corpus_id,
                           _jsonable(getattr(self.family, "config", None)), tmp)
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(row, checkpoint=None)

    def _averaged(self) -> dict[str, float]:
        """Window means of every metric, averaged over ranks, plus throughput."""
        keys = sorted(self.window)
        local = torch.tensor([_finite_mean(self.window[k]) for k in keys], dtype=torch.float64, device=self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(local)
            local /= self.world
        elapsed = time.perf_counter() - self.window_start
        images = self.window_steps * self.cfg.batch_size
        out = dict(zip(keys, local.tolist()))
        out["images_per_s"] = images / max(elapsed, 1e-9)
        self.window, self.window_steps, self.window_start = {}, 0, time.perf_counter()
        return out

    def _evaluate(self) -> dict[str, float]:
        from itertools import islice

        val = "val" if self.corpus.count("val") else "train"
        loader = make_loader(self.corpus, val, batch_size=self.cfg.per_worker_batch, num_workers=0,
                             target=spec(self.cfg.family).target, train=False)
        return self.family.evaluate(islice(loader, self.cfg.eval_batches))

    def _samples(self) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.seed)  # same z every time
        return self.family.sample(self.cfg.sample_count, generator=generator)

    def _maybe_die(self, step: int) -> None:
        """Testing aid: simulate a worker crash once (the marker survives restarts)."""
        storage = self.run_dir.storage
        if self.cfg.fail_at_step == step and self.rank == 0 and not storage.exists(FAIL_MARKER):
            storage.write_text(FAIL_MARKER, str(step))
            os._exit(1)


def _finite_mean(values: list[float]) -> float:
    """Mean over finite values (fp16 steps skipped for overflow report inf grad norms)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _print_progress(row: dict[str, Any], steps: int) -> None:
    shown = {k: v for k, v in row.items() if k in ("loss", "loss_d", "loss_g", "nelbo", "bits_per_dim",
                                                   "val_bits_per_dim", "images_per_s")}
    text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    print(f"[train] step {row['step']}/{steps} ({100 * row['step'] / steps:.0f}%) {text}", flush=True)


# ============================================================================ checkpoints


def restore(family: Family, checkpoint) -> int:
    """Load a Ray checkpoint into ``family``; returns the step to continue from (0 if none)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        loaded = load_checkpoint(folder)
    family.load_state_dict(loaded.state["family"])
    return loaded.step


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    try:
        return json.loads(json.dumps(to_dict(obj)))
    except TypeError:
        return str(obj)
