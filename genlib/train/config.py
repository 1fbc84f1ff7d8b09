"""The typed configuration of a training run (``genlib train --config run.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from genlib.config import Fields


@dataclass
class TrainConfig:
    """One training run. ``[model]`` holds ``family`` plus that family's config fields
    (``DCGANConfig``, ``VAEConfig``, ``PixelRNNConfig``); fields the corpus determines
    (image size, palette) are filled in from it."""

    corpus: str = ""
    """Corpus folder built by ``genlib data build``."""
    model: dict[str, Any] = field(default_factory=lambda: {"family": "dcgan"})
    steps: int = 1000
    """Total optimiser steps (a resumed run continues to this count)."""
    batch_size: int = 64
    """Global batch: split evenly over ``num_workers`` ranks."""
    num_workers: int = 1
    """DDP ranks (Ray Train workers)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    """CPUs each Ray Train worker reserves (fractional is fine on small machines)."""
    loader_workers: int = 1
    """DataLoader processes per rank."""
    log_every: int = 10
    """Average metrics across ranks and log them every N steps."""
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    sample_every: int = 200
    """Write a sample grid every N steps (and at the end)."""
    sample_count: int = 64
    eval_batches: int = 4
    """Validation batches per rank per evaluation (at each checkpoint; every rank evaluates its
    own share, the same number of batches); 0 disables evaluation."""
    eval_every: int = 0
    """Measure quality with ``genlib eval`` (DCGAN: FD/KID/precision/recall; VAE: IWAE bound;
    PixelRNN: bits/dim with baselines) on rank 0 every N steps and at the last step, into
    ``eval.json``, ``eval/step_*.json``, metrics.csv (``q_*`` columns) and report.html; 0 = off.
    A multiple of ``checkpoint_every``: it runs at checkpoints, while the other ranks wait."""
    eval_samples: int = 256
    """Images generated and compared (held-out images evaluated) per ``eval_every`` evaluation."""
    seed: int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision autocast on GPU (ignored on CPU)."""
    compile: bool = False
    """``torch.compile`` the networks."""
    max_failures: int = 2
    """Worker-group restarts from the latest checkpoint before the run fails."""
    collective_timeout_s: int = 1800
    """Seconds a rank may wait in one collective (all-reduce, barrier) before the attempt
    fails (then ``max_failures`` applies): a rank left waiting never hangs the run forever."""
    storage_path: str = "runs"
    """Folder or URI (s3://, gs://, ...) holding run folders."""
    name: str = ""
    """Run folder name; empty: ``{family}-{timestamp}``."""
    fail_at_step: int = 0
    """Testing aid: the first attempt of rank 0 dies at this step (0 = never)."""
    sync_bn_standin: bool = False
    """Testing aid: on CPU with several workers, BatchNorm layers perform a collective in
    their train-mode forward, as SyncBatchNorm does on GPUs (which refuses CPU tensors)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        positive = ("steps", "batch_size", "num_workers", "log_every", "checkpoint_every", "keep_checkpoints",
                    "sample_every", "sample_count")
        for name in positive:
            check.integer(name, low=1)
        check.require("batch_size", self.batch_size % self.num_workers == 0,
                      f"must be divisible by num_workers = {self.num_workers}")
        check.integer("eval_samples", low=2)
        for name in ("loader_workers", "eval_batches", "eval_every", "max_failures", "fail_at_step"):
            check.integer(name, low=0)
        check.integer("collective_timeout_s", low=1)
        check.integer("seed", low=0)
        for name in ("use_gpu", "compile", "sync_bn_standin"):
            check.boolean(name)
        check.require("eval_every", self.eval_every % self.checkpoint_every == 0,
                      f"must be a multiple of checkpoint_every = {self.checkpoint_every} (evaluation runs at "
                      f"checkpoints, while the other ranks wait)")
        check.number("cpus_per_worker", above=0)
        check.require("model", isinstance(self.model, dict) and "family" in self.model,
                      "must be a table with a 'family' key (dcgan, vae or pixelrnn)")

    @property
    def family(self) -> str:
        return str(self.model["family"])

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers
