"""The eval record: what ``genlib eval`` measures, and where a run folder keeps it.

Layout inside a run folder (see :mod:`genlib.train.rundir`)::

    <run>/
        eval.json                 # the latest evaluation (one record, written last)
        eval/step_000300.json     # one record per evaluated checkpoint step
        eval/replaced/step_000300-<sha256[:12]>.json  # earlier figures a later eval of the step changed

A record is one JSON object. Scripts may rely on the key names below; more keys
may be added, none is renamed. Every metric is per image unless it says
otherwise; "nats" are natural-log units, "bpd" bits per dimension.

Common keys (every family):

    format            RECORD_FORMAT
    family            "dcgan" | "vae" | "pixelrnn"
    step              optimiser steps of the evaluated weights
    checkpoint        checkpoint folder (URI or path); None for in-memory weights (training)
    checkpoint_sha256 sha256 of state.pt (None in memory)
    corpus, corpus_id the corpus evaluated on, and its id
    trained_corpus_id the corpus the weights were trained on (differs: a cross-corpus eval)
    split, split_reason  which split, and why it was chosen
    samples, seed, device, seconds   the run's cap, seed, device and wall time

DCGAN: ``fd`` (Frechet distance of feature Gaussians), ``kid``/``kid_std`` (kernel
inception distance, unbiased, mean/std over ``kid_subsets`` subsets of
``kid_subset_size``, at most half the images), ``precision``/``recall`` (k-NN manifolds, ``pr_k``),
``n_real``, ``n_fake``, ``feature_net`` (name, tap, input size, weights id), and with
``--completion`` a ``completion`` table: ``completion.<mask>.{psnr, ssim,
psnr_mean_fill, psnr_harmonic, ssim_mean_fill, ssim_harmonic, n}`` for each mask in
``center``, ``half``, ``random_blocks``.

VAE: ``elbo_nats``, ``iwae_nats`` (``iwae_k`` importance samples), ``bits_per_dim``
(from the IWAE bound), ``elbo_bits_per_dim``, ``n_images``.

PixelRNN: ``nll_nats`` (exact), ``bits_per_dim``, ``baseline_uniform_bpd`` (log2 of the
palette size), ``baseline_unigram_bpd`` (per-position colour frequencies of the
train split, add-one smoothed), ``num_colors``, ``n_images``, ``n_train``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Iterator

from genlib.storage import Storage

RECORD_FORMAT = 1
EVAL_JSON = "eval.json"
EVAL_DIR = "eval"
REPLACED_DIR = "replaced"
# Keys that must agree for two records of one step to describe the same evaluation
# (then a later one, e.g. ``--completion`` only, is merged into the earlier one).
IDENTITY = ("family", "step", "checkpoint_sha256", "corpus_id", "split")
# Numbers in a record that are settings, not measurements (not plotted).
SETTINGS = {"format", "step", "seed", "samples", "seconds", "iterations", "iwae_k", "num_colors", "pr_k",
            "kid_subsets", "kid_subset_size", "feature_size"}
DESCRIPTIONS = {"feature_net"}  # tables that describe the measurement (sizes, ids), not results
# Report and TensorBoard: each metric with the baselines shown beside it.
BASELINES = {
    "bits_per_dim": ("baseline_uniform_bpd", "baseline_unigram_bpd"),
    "psnr": ("psnr_mean_fill", "psnr_harmonic"),
    "ssim": ("ssim_mean_fill", "ssim_harmonic"),
}


def step_file(step: int) -> str:
    """``eval/step_NNNNNN.json`` for ``step``."""
    return f"{EVAL_DIR}/step_{int(step):06d}.json"


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` on top of ``old`` when both describe the same evaluation (IDENTITY keys
    agree), else ``new`` alone: a completion-only rerun keeps the step's FD."""
    if old and all(old.get(k) == new.get(k) for k in IDENTITY):
        return {**old, **new}
    return dict(new)


def replaced_file(step: int, text: str) -> str:
    """Where a step's record is kept when a later evaluation changes its figures (named
    by its content: keeping one record twice writes one file)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{EVAL_DIR}/{REPLACED_DIR}/step_{int(step):06d}-{digest}.json"


def dumps(record: dict[str, Any]) -> str:
    """Strict JSON (no NaN/Infinity: non-finite numbers become null)."""
    return json.dumps(_finite(record), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_records(storage: Storage) -> list[dict[str, Any]]:
    """Every ``eval/step_*.json`` of a run folder, by step (unreadable files are skipped:
    a report must not fail over one bad file)."""
    records = []
    for rel in storage.glob(EVAL_DIR, "step_*.json"):
        try:
            record = json.loads(storage.read_text(rel))
        except (ValueError, OSError):
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(dotted key, value)`` for every finite number in a record, nested tables
    flattened (``completion.center.psnr``); bools, ids and bookkeeping left out."""
    for key, value in record.items():
        name = prefix + key
        if isinstance(value, dict):
            if key not in DESCRIPTIONS:
                yield from scalars(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not _bookkeeping(key):
            if math.isfinite(value):
                yield name, float(value)


def _bookkeeping(key: str) -> bool:
    """Counts and settings, not measurements."""
    return key in SETTINGS or key == "n" or key.startswith("n_")


__all__ = ["RECORD_FORMAT", "EVAL_JSON", "EVAL_DIR", "IDENTITY", "BASELINES", "step_file", "merge", "dumps",
           "read_records", "scalars"]
