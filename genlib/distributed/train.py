"""Distributed training with Ray Train's TorchTrainer (PyTorch DDP).

The driver (:func:`run_training`) validates everything before a worker starts,
then runs :func:`train_loop_per_worker` on ``num_workers`` ranks. All Ray and
torch.distributed lines of training live in this file, under numbered banners.

Resume and exactness:
- a restarted worker group (``FailureConfig``) and an explicit ``--resume`` both
  start from ``ray.train.get_checkpoint()``, i.e. the step it stored; ``--resume``
  refuses a corpus other than the one the run was trained on unless forced;
- the data position is a pure function of the step (fixed batches per epoch,
  seeded shuffles; already-consumed batches of the epoch are skipped), and the
  global torch RNG is reseeded from (seed, rank, step) before every step, so a
  resumed run takes exactly the optimiser steps an uninterrupted run would.
- ``ray.train.report`` is a barrier: every rank calls it at the same (checkpoint) steps.

Collectives: every rank runs the same collectives in the same order. Evaluation
runs on *every* rank (its share of the validation split, the same batch count on
all ranks, results all-reduced), because on GPUs BatchNorm is SyncBatchNorm, whose
train-mode forward (the discriminator in ``DCGAN.evaluate``) is an all-gather.
Sampling runs on rank 0 alone, in eval mode, which is collective-free.

Where each rank's time goes (``metrics.csv`` columns, per-step means over the log
window, averaged over ranks; per rank in ``ranks/rank-NNN.json``)::

    time_data_s       waiting for the next batch
    time_compute_s    family.train_step: forward, backward, optimiser (includes the all-reduce wait)
    time_allreduce_s  wall time DDP gradient all-reduces were in flight (overlaps compute)
    time_report_s     metric reduction, evaluation, samples, checkpoint, ray.train.report
                      (of the previous log step: it happens after that row is written)

Per-rank record (``ranks/rank-000.json``, written by each rank at checkpoints and at
the end): rank, world size, node id, hostname, pid, the node's custom Ray resources,
device, BatchNorm classes, the train shards read in each epoch, and the phase
seconds of every log window.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from genlib.config import ConfigError, from_dict, to_dict
from genlib.data.corpus import Corpus, open_corpus
from genlib.data.loader import batches_per_worker, make_loader
from genlib.distributed.runtime import ray_session
from genlib.eval.run import EvalConfig, check_evaluable, evaluate_run
from genlib.models.base import Family, unwrap
from genlib.models.registry import build_family, resolve_model_config, spec
from genlib.storage import Storage, absolute, join
from genlib.train.checkpoint import CheckpointError, load_checkpoint, save_state
from genlib.train.config import TrainConfig
from genlib.train.report import write_report
from genlib.train.rundir import METRICS_CSV, RunDir, read_metrics

FAIL_MARKER = ".fail_at_step.done"
RANKS = "ranks"                         # per-rank records: ranks/rank-000.json, ...
PHASES = ("data", "compute", "allreduce", "report")
PROGRESS_KEYS = ("loss", "loss_d", "loss_g", "nelbo", "bits_per_dim", "val_bits_per_dim", "q_fd", "q_kid",
                 "q_bits_per_dim", "images_per_s")
# genlib eval keys copied into metrics.csv as q_<key> at eval_every steps (the full record is in eval/)
QUALITY_KEYS = ("fd", "kid", "precision", "recall", "elbo_nats", "iwae_nats", "nll_nats", "bits_per_dim",
                "baseline_unigram_bpd")


class CorpusChanged(ConfigError):
    """``--resume`` onto a corpus other than the one the weights were trained on (without ``force``)."""


@dataclass
class TrainOutcome:
    run_dir: str                # local path or URI
    step: int
    metrics: dict[str, Any]
    checkpoint: str | None
    report: str | None


def rank_record_path(rank: int) -> str:
    return f"{RANKS}/rank-{rank:03d}.json"


# ============================================================================ driver


def stored_train_config(run_dir: str, info: dict | None = None) -> dict[str, Any]:
    """The TrainConfig a run folder was started with (its run.json); ConfigError if none."""
    stored = dict(((info if info is not None else RunDir(absolute(run_dir)).info()).get("train")) or {})
    if not stored:
        raise ConfigError(f"--resume {run_dir}: not a genlib run folder (run.json missing)")
    return stored


def resume_config(run_dir: str, steps: int | None = None) -> TrainConfig:
    """The config to continue ``run_dir`` with: its stored one, trained to ``steps`` (default:
    the stored steps, i.e. finish the run)."""
    stored = stored_train_config(run_dir)
    return from_dict(TrainConfig, {**stored, "steps": stored["steps"] if steps is None else steps})


def prepare_run(cfg: TrainConfig, resume: str | None = None,
                force_corpus: bool = False) -> tuple[TrainConfig, str, dict]:
    """Validate config + corpus and pick the run folder, before any worker starts.

    ``resume``: a run folder (path or URI); its stored config is used, with ``cfg.steps``
    as the step to train to (:func:`resume_config` builds that config from the stored one).
    It must still find the corpus the run was trained on at the stored path, unless
    ``force_corpus``."""
    stored_info: dict = {}
    if resume:
        stored_info = RunDir(absolute(resume)).info()
        stored = stored_train_config(resume, stored_info)
        parent, name = absolute(resume).rstrip("/").rsplit("/", 1)
        cfg = from_dict(TrainConfig, {**stored, "steps": cfg.steps, "name": name, "storage_path": parent,
                                      "fail_at_step": 0})
    if not cfg.corpus:
        raise ConfigError("corpus: no corpus given (set corpus = \"path\" or pass --corpus)")
    corpus = open_corpus(cfg.corpus)
    model_cfg = resolve_model_config(cfg.model, corpus)
    batches_per_worker(corpus.count("train"), cfg.per_worker_batch, cfg.num_workers, cfg.loader_workers)
    if cfg.eval_every:
        check_evaluable(cfg.family, corpus, quality_config(cfg))
    name = cfg.name or f"{cfg.family}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    storage_path = absolute(cfg.storage_path)
    run_dir = join(storage_path, name)
    if not resume and Storage(run_dir).exists():
        raise ConfigError(f"run folder {run_dir} already exists: pass --resume {run_dir} to continue it, "
                          f"or choose another name")
    cfg = from_dict(TrainConfig, {**to_dict(cfg), "name": name, "corpus": str(Path(cfg.corpus).resolve()),
                                  "storage_path": storage_path})
    if resume:
        return cfg, run_dir, resumed_info(run_dir, stored_info, corpus, force_corpus)
    info = {"train": to_dict(cfg), "model_config": _jsonable(model_cfg), "corpus_id": corpus.corpus_id}
    return cfg, run_dir, info


def resumed_info(run_dir: str, info: dict, corpus: Corpus, force: bool) -> dict:
    """run.json of a resumed run: unchanged, or (forced onto another corpus) with the new
    corpus id and the earlier ones in ``previous_corpus_ids``. ConfigError when the corpus
    differs from the one the weights were trained on and ``force`` is off."""
    trained = trained_corpus_id(run_dir, info)
    if trained in (None, corpus.corpus_id):
        return info
    if not force:
        raise CorpusChanged(f"--resume {run_dir}: the run was trained on corpus {trained}, but the corpus at "
                          f"{corpus.root} is now {corpus.corpus_id}; pass --force-corpus to continue on it")
    previous = [*info.get("previous_corpus_ids", []), trained]
    return {**info, "corpus_id": corpus.corpus_id, "previous_corpus_ids": previous}


def trained_corpus_id(run_dir: str, info: dict) -> str | None:
    """The corpus id of the newest complete checkpoint (what the weights saw), else run.json's."""
    try:
        found = load_checkpoint(run_dir).corpus_id
    except CheckpointError:
        found = None
    if found in (None, "unknown"):
        found = info.get("corpus_id")
    return found


def run_training(cfg: TrainConfig, resume: str | None = None, address: str | None = None,
                 force_corpus: bool = False, progress: bool = True) -> TrainOutcome:
    """Train on the local embedded Ray (default) or the cluster at ``address``/``RAY_ADDRESS``;
    ``progress``: print a line per logged step (see :class:`ProgressPrinter`)."""
    cfg, run_dir, info = prepare_run(cfg, resume, force_corpus)
    run = RunDir(run_dir)
    if not resume or info != run.info():  # a forced corpus change is recorded before training
        run.init(info)
    trainer = make_trainer(cfg, run_dir)
    with ray_session(address), ProgressPrinter(run_dir, cfg.steps, enabled=progress) as printer, \
            _own_sigint():
        try:
            result = trainer.fit()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Ray Train aborts the run, then exits
            print(f"genlib: training stopped after step {printer.last_step}; continue it from its last "
                  f"checkpoint with: genlib train --resume {run_dir}", file=sys.stderr, flush=True)
            raise
    report = write_report(run_dir)
    checkpoint = result.checkpoint.path if result.checkpoint else None
    metrics = dict(result.metrics or {})
    return TrainOutcome(run_dir, int(metrics.get("step", 0)), metrics, checkpoint, report)


def make_trainer(cfg: TrainConfig, run_dir: str):
    """The TorchTrainer of one run (building it starts nothing)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # lazy: heavy
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg), "run_dir": run_dir},
        # timeout_s bounds every collective: a rank left waiting fails the attempt instead of hanging
        torch_config=TorchConfig(timeout_s=cfg.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources_per_worker(cfg)),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )


def resources_per_worker(cfg: TrainConfig) -> dict[str, float]:
    return {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}


class ProgressPrinter:
    """Driver side: print one progress line per new metrics.csv row (rank 0 writes it).

    The workers print nothing, so each line appears once whether or not Ray forwards
    worker output (``--verbose``), under ``ray job submit`` too. A restarted worker
    group rewinds the log to its checkpoint; the redone steps are printed again."""

    def __init__(self, run_dir: str, steps: int, interval: float = 1.0, enabled: bool = True) -> None:
        self.storage, self.steps, self.interval, self.enabled = Storage(run_dir), steps, interval, enabled
        self.last_step, self.last_size = 0, -1
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll_until_stopped, name="genlib-progress", daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self.last_step = max((int(r["step"]) for r in read_metrics(self.storage)), default=0)  # a resumed run
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.poll()  # rows written between the last poll and the end

    def _poll_until_stopped(self) -> None:
        while not self.stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        try:
            size = self.storage.size(METRICS_CSV) if self.storage.is_file(METRICS_CSV) else -1
            if size == self.last_size:
                return
            self.last_size, rows = size, read_metrics(self.storage)
        except (OSError, ValueError):  # caught mid-rename on some filesystems: next poll
            return
        last = max((int(r["step"]) for r in rows), default=0)
        self.last_step = min(self.last_step, last)  # rewound by a restart
        for row in rows:
            if int(row["step"]) > self.last_step:
                if self.enabled:
                    print(progress_line(row, self.steps), flush=True)
                self.last_step = int(row["step"])


def quality_config(cfg: TrainConfig) -> EvalConfig:
    """What ``eval_every`` measures: ``eval_samples`` images, quietly, in training-sized batches."""
    return EvalConfig(samples=cfg.eval_samples, progress=False, batch_size=cfg.per_worker_batch)


@contextmanager
def _own_sigint() -> Iterator[None]:
    """Give SIGINT back afterwards: ``trainer.fit()`` installs a handler that aborts *its* run
    and stays installed, so a later Ctrl-C in the same process (the pipeline's render stage, a
    second run) would reach a finished controller instead of raising KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def progress_line(row: dict[str, Any], steps: int) -> str:
    shown = {k: row[k] for k in PROGRESS_KEYS if isinstance(row.get(k), (int, float))}
    text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    return f"[train] step {row['step']}/{steps} ({100 * row['step'] / steps:.0f}%) {text}"


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
    comm = CommTimer(cuda=device.type == "cuda")
    if world > 1:
        family.wrap(lambda net: _ddp(convert_batchnorm(net, device, cfg), device, comm))

    # [3] Train, reporting metrics (and rank 0's checkpoint) at the same steps on every rank.
    record = RankRecord(run, rank, world, corpus, step, where_am_i(device, family))
    loop = _Loop(cfg, family, loader, run, rank, world, device, corpus, comm, record)
    try:
        loop.run(step)
    finally:
        run.close()  # flush and close this process's TensorBoard event file


def _ddp(net: nn.Module, device: torch.device, comm: "CommTimer") -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel  # lazy: torch.distributed, only multi-rank runs

    if not any(p.requires_grad for p in net.parameters()):
        return net
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    ddp.register_comm_hook(comm, timed_allreduce)  # the default all-reduce, timed
    return ddp


def convert_batchnorm(net: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    """Batch statistics over the global batch: SyncBatchNorm on GPUs (it refuses CPU
    tensors). On CPU, ``cfg.sync_bn_standin`` (a testing aid) swaps in
    :class:`CollectiveBatchNorm2d`, which performs a collective in its train-mode forward
    as SyncBatchNorm does, so CI can check the collective pattern of a GPU run."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if cfg.sync_bn_standin:
        for module in net.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = CollectiveBatchNorm2d  # same parameters and buffers, same state_dict
    return net


class CollectiveBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose train-mode forward also all-reduces its batch mean (the result is
    unused: the maths stay BatchNorm2d's). A rank that runs it while the others do not
    waits, exactly like SyncBatchNorm's all-gather."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist  # lazy, like the other torch.distributed uses here

        if self.training and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(x.detach().mean(dim=(0, 2, 3)))  # [C]
        return super().forward(x)


def batchnorm_classes(family: Family) -> list[str]:
    return sorted({type(m).__name__ for net in family.networks.values() for m in unwrap(net).modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)})


def where_am_i(device: torch.device, family: Family) -> dict[str, Any]:
    """This rank's node (id, hostname, custom Ray resources), pid, device and BatchNorm kind."""
    import ray  # lazy, as in train_loop_per_worker

    node_id = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
    standard = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = {k: v for k, v in (node.get("Resources") or {}).items()
              if k not in standard and not k.startswith(("node:", "accelerator_type:"))}
    return {"node_id": node_id, "hostname": socket.gethostname(), "node_ip": node.get("NodeManagerAddress"),
            "pid": os.getpid(), "node_resources": custom, "device": str(device),
            "batchnorm": batchnorm_classes(family)}


# ============================================================================ timing


class CommTimer:
    """Time in flight of the DDP gradient all-reduces of one step (a comm hook feeds it).

    CPU (gloo): wall time from each bucket's launch until its future completes; buckets
    overlap each other and the backward pass, so a step counts the union of the spans.
    GPU (NCCL): CUDA events around each all-reduce on its stream (serialised there, so summed)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.spans: list[tuple[Any, Any]] = []  # appended from gloo's thread: list.append is atomic

    def start(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start) -> None:
        end = time.perf_counter() if not self.cuda else torch.cuda.Event(enable_timing=True)
        if self.cuda:
            end.record()  # in the future's callback: after the all-reduce on its stream
        self.spans.append((start, end))

    def collect(self) -> float:
        """Seconds of this step's all-reduces (all have completed: DDP waits for them in backward)."""
        spans, self.spans = self.spans, []
        if self.cuda:
            for _, end in spans:
                end.synchronize()
            return sum(start.elapsed_time(end) for start, end in spans) / 1000.0
        return covered_seconds(spans)


def timed_allreduce(comm: CommTimer, bucket):
    """DDP comm hook: PyTorch's default all-reduce (average over ranks), timed by ``comm``."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook  # lazy: torch.distributed

    start = comm.start()

    def done(fut):
        comm.stop(start)
        return fut.value()

    return allreduce_hook(None, bucket).then(done)


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reached = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


class RankRecord:
    """``ranks/rank-NNN.json`` of one rank (see the module doc); a restarted rank keeps the
    windows and shards its earlier attempts recorded up to the step it resumes from."""

    def __init__(self, run: RunDir, rank: int, world: int, corpus: Corpus, step: int, where: dict) -> None:
        self.storage, self.rel = run.storage, rank_record_path(rank)
        old = json.loads(self.storage.read_text(self.rel)) if self.storage.is_file(self.rel) else {}
        self.data = {"rank": rank, "world_size": world, **where, "started_at_step": step,
                     "shards_by_epoch": old.get("shards_by_epoch", {}),
                     "windows": [w for w in old.get("windows", []) if w["step"] <= step]}
        self.corpus = corpus
        self.shard_of: dict[str, str] | None = None

    def saw(self, epoch: int, keys: list[str]) -> None:
        """Note the shards the batch ``keys`` came from."""
        if self.shard_of is None:  # key -> shard file, once per rank
            index = self.corpus.index().select(["key", "shard"]).to_pydict()
            self.shard_of = dict(zip(index["key"], index["shard"]))
        shards = self.data["shards_by_epoch"].setdefault(str(epoch), [])
        for shard in {self.shard_of.get(k, "?") for k in keys} - set(shards):
            shards.append(shard)
        shards.sort()

    def window(self, step: int, steps: int, seconds: float, phases: dict[str, float]) -> None:
        self.data["windows"].append({"step": step, "steps": steps, "seconds": seconds,
                                     **{f"{k}_s": v for k, v in phases.items()}})

    def write(self) -> None:
        self.storage.write_text(self.rel, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


# ============================================================================ loop


class _Loop:
    """The step loop of one rank (kept apart so the worker function stays a page)."""

    def __init__(self, cfg: TrainConfig, family: Family, loader, run: RunDir, rank: int, world: int,
                 device: torch.device, corpus: Corpus, comm: CommTimer, record: RankRecord) -> None:
        self.cfg, self.family, self.loader, self.run_dir = cfg, family, loader, run
        self.rank, self.world, self.device, self.corpus = rank, world, device, corpus
        self.comm, self.record = comm, record
        self.window: dict[str, list[float]] = {}
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.window_start = time.perf_counter()
        self.window_steps = 0

    def run(self, step: int) -> None:
        cfg, per_epoch = self.cfg, len(self.loader)
        while step < cfg.steps:
            epoch, done_in_epoch = divmod(step, per_epoch)
            mark = time.perf_counter()
            self.loader.dataset.set_epoch(epoch)
            batches = iter(self.loader)
            for _ in range(done_in_epoch):  # resume mid-epoch at the exact batch
                next(batches)
            for batch in batches:
                self.phases["data"] += time.perf_counter() - mark
                self.record.saw(epoch, batch["key"])
                step = self.step(batch, step)
                mark = time.perf_counter()
                if step >= cfg.steps:
                    break
        self._close_record(step)

    def step(self, batch: dict, step: int) -> int:
        cfg = self.cfg
        self._maybe_die(step + 1)
        torch.manual_seed(hash((cfg.seed, self.rank, step)) & 0x7FFFFFFF)
        start = time.perf_counter()
        metrics = self.family.train_step(batch)  # autocast / loss scaling happen inside the family
        self.phases["compute"] += time.perf_counter() - start
        self.phases["allreduce"] += self.comm.collect()
        step += 1
        for k, v in metrics.items():
            self.window.setdefault(k, []).append(float(v))
        self.window_steps += 1
        due = self.due(step)
        if any(due.values()):
            start = time.perf_counter()
            self.report(step, **due)
            self.phases["report"] += time.perf_counter() - start
            if due["checkpoint"]:
                self.record.write()
        return step

    def due(self, step: int) -> dict[str, bool]:
        """What happens after ``step``; the same answer on every rank (evaluation and
        checkpoints are collective)."""
        cfg, last = self.cfg, step == self.cfg.steps
        checkpoint = step % cfg.checkpoint_every == 0 or last
        return {"log": step % cfg.log_every == 0 or last, "checkpoint": checkpoint,
                "sample": step % cfg.sample_every == 0 or last,
                "evaluate": checkpoint and cfg.eval_batches > 0,  # validation loss: every rank, collective
                # genlib eval on rank 0, only at checkpoints: the other ranks wait in ray.train.report
                # (a Ray barrier), not in a torch collective whose timeout a long evaluation could hit
                "quality": checkpoint and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last)}

    def report(self, step: int, log: bool, checkpoint: bool, sample: bool, evaluate: bool,
               quality: bool = False) -> None:
        """Log metrics (all ranks take part in the all-reduce; rank 0 writes), evaluate on
        every rank, and at checkpoint steps only, call ``ray.train.report`` on every rank.
        Ray Train V2 collects reports every ~2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so
        reporting each log step would throttle fast (GPU) steps to one window per 2 s."""
        row = {"step": step, "epoch": (step - 1) // len(self.loader), **self._averaged(step)}
        if evaluate:
            row.update({f"val_{k}": v for k, v in self._evaluate().items() if k != "n_images"})
        if self.rank == 0:
            if sample:
                self.run_dir.save_samples(self._samples(), step)
            if quality:
                row.update(self._quality(step))
            self.run_dir.log(row)
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

    def _averaged(self, step: int) -> dict[str, float]:
        """Window means of every metric and per-step phase seconds, averaged over ranks,
        plus throughput; the window's phases also go to this rank's record."""
        keys = sorted(self.window)
        elapsed = time.perf_counter() - self.window_start
        steps = max(self.window_steps, 1)
        values = [_finite_mean(self.window[k]) for k in keys] + [self.phases[p] / steps for p in PHASES]
        local = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._all_reduce(local)
        local /= self.world
        out = dict(zip(keys + [f"time_{p}_s" for p in PHASES], local.tolist()))
        out["images_per_s"] = self.window_steps * self.cfg.batch_size / max(elapsed, 1e-9)
        self.record.window(step, self.window_steps, elapsed, self.phases)
        self.window, self.window_steps, self.window_start = {}, 0, time.perf_counter()
        self.phases = dict.fromkeys(PHASES, 0.0)
        return out

    def _evaluate(self) -> dict[str, float]:
        """Every rank evaluates its own share of the split, the same number of batches (the
        minimum over ranks, at most ``eval_batches``), and the per-image means are averaged
        weighted by image counts. Equal counts matter: a SyncBatchNorm forward is collective."""
        split = "val" if self.corpus.count("val") >= self.world else "train"  # >= 1 sample per rank
        loader = make_loader(self.corpus, split, batch_size=self.cfg.per_worker_batch, rank=self.rank,
                             world_size=self.world, num_workers=0, target=spec(self.cfg.family).target,
                             train=False)
        batches = list(islice(loader, self.cfg.eval_batches))
        count = torch.tensor([len(batches)], dtype=torch.float64, device=self.device)
        self._all_reduce(count, op="min")
        if count.item() == 0:
            return {}
        metrics = self.family.evaluate(batches[:int(count.item())])
        keys = sorted(k for k in metrics if k != "n_images")  # Family.evaluate: per-image means + their count
        n = metrics["n_images"]
        sums = torch.tensor([metrics[k] * n for k in keys] + [n], dtype=torch.float64, device=self.device)
        self._all_reduce(sums)
        return {**{k: v / sums[-1].item() for k, v in zip(keys, sums[:-1].tolist())}, "n_images": sums[-1].item()}

    def _quality(self, step: int) -> dict[str, float]:
        """``genlib eval`` of the in-memory weights on rank 0 (records eval/step_*.json). It uses
        the unwrapped networks in eval mode and a frozen feature network, so it issues no
        collective; it runs at checkpoint steps, while the other ranks wait in ray.train.report."""
        try:
            record = evaluate_run(self.run_dir, family=self.family, step=step, config=quality_config(self.cfg))
        except (ValueError, RuntimeError, OSError) as exc:  # an observer: a failed measurement never stops training
            print(f"[train] step {step}: genlib eval failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return {"q_error": 1.0}
        return {f"q_{k}": float(record[k]) for k in QUALITY_KEYS if isinstance(record.get(k), (int, float))}

    def _all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        if self.world > 1:
            import torch.distributed as dist  # lazy: only multi-rank runs use it

            dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)

    def _samples(self) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.seed)  # same z every time
        return self.family.sample(self.cfg.sample_count, generator=generator)

    def _close_record(self, step: int) -> None:
        """The last report's time has no later window: record it as a zero-step window."""
        self.record.window(step, 0, self.phases["report"], {**dict.fromkeys(PHASES, 0.0),
                                                             "report": self.phases["report"]})
        self.record.write()

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
