"""``genlib eval``: measure a checkpoint (or in-memory weights) on its corpus's held-out split.

One line from the CLI or from rank 0 of a training run::

    record = evaluate_run("runs/dcgan-x")                                    # latest checkpoint
    record = evaluate_run(run, family=family, step=step, config=EvalConfig(samples=512, progress=False))
    record = evaluate_checkpoint("runs/dcgan-x/checkpoint_...", config=EvalConfig(completion=True))

``evaluate_run`` also writes the record to ``RUN_DIR/eval.json`` and
``RUN_DIR/eval/step_NNNNNN.json`` (and TensorBoard); ``evaluate_checkpoint`` only
returns it. Keys: :mod:`genlib.eval.record`. Everything is seeded (``seed``): the same
weights and corpus give the same numbers, and the caller's RNG state is left as it was,
so an evaluation inside training does not change the training run.

Training evaluates at every checkpoint: only the weights change. What does not (the
feature network, the held-out images' features, the train split's colour counts) is
computed once per process and kept (:class:`_Kept`), keyed by everything it depends on.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from tqdm import tqdm

from genlib.config import Fields
from genlib.data.corpus import Corpus, open_corpus
from genlib.data.loader import make_loader
from genlib.eval.completion import evaluate_completion
from genlib.eval.features import FEATURE_NETS, FeatureNet, load_feature_net
from genlib.eval.likelihood import position_counts, uniform_bits, unigram_bits, vae_bounds
from genlib.eval.metrics import frechet_distance, kernel_distance, kid_subset, precision_recall
from genlib.eval.record import RECORD_FORMAT
from genlib.models.base import Family, bits_per_dim
from genlib.models.registry import FAMILIES
from genlib.render.completion import MaskCompletion
from genlib.train.checkpoint import Checkpoint, load_checkpoint, load_family
from genlib.train.rundir import RunDir, to_uint8

SPLIT_ORDER = ("test", "val", "train")  # the default: the first non-empty one
IWAE_K = {"cuda": 64, "cpu": 16}        # default importance samples per image, by device type


@dataclass
class EvalConfig:
    """What ``genlib eval`` measures and how much of it (defaults suit a GPU; on a CPU
    ``samples=64, iterations=50`` gives a check in about a minute)."""

    split: str | None = None
    """Held-out split; None: "test" if non-empty, else "val", else "train"."""
    samples: int = 2048
    """Cap on the images generated and compared (DCGAN), evaluated (VAE, PixelRNN)
    and completed (with ``completion``, also capped by ``completion_images``)."""
    iterations: int = 1000
    """z-search iterations of each completion."""
    completion: bool = False
    """DCGAN: also measure mask completion against the mean-fill and harmonic baselines."""
    completion_images: int = 32
    """Most held-out images completed per mask (each is a full z search)."""
    feature_net: str = "efficientnet_lite0"
    """Feature network of FD/KID/precision/recall: efficientnet_lite0 or inception_v3."""
    feature_weights: str = "default"
    """Its weights: "default", "none" (random: plumbing tests only) or a state-dict path."""
    feature_size: int | None = None
    """Input side of the feature network; None: what it was trained at (224 / 299)."""
    pr_k: int = 3
    """Neighbours of the precision/recall manifold balls."""
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    """KID: subsets drawn and their size (capped at half the number of images)."""
    iwae_k: int | None = None
    """VAE importance samples per image; None: 64 on a GPU, 16 on a CPU."""
    batch_size: int = 64
    seed: int = 0
    progress: bool = True
    """Progress bars and the chosen split on stderr."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.require("split", self.split is None or self.split in SPLIT_ORDER,
                      f"must be one of {', '.join(SPLIT_ORDER)} (or None)")
        for name in ("samples", "iterations", "completion_images", "pr_k", "kid_subsets", "batch_size"):
            check.integer(name, low=1)
        check.integer("kid_subset_size", low=2)
        check.integer("feature_size", low=32, optional=True)
        check.integer("iwae_k", low=1, optional=True)
        check.integer("seed", low=0)
        check.choice("feature_net", FEATURE_NETS)
        check.text("feature_weights")
        for name in ("completion", "progress"):
            check.boolean(name)


# ----------------------------------------------------------------------------- entry points


def evaluate_run(run: str | Path | RunDir, *, family: Family | None = None, step: int | None = None,
                 checkpoint: str | None = None, corpus: str | Path | None = None,
                 config: EvalConfig | None = None, device: torch.device | str | None = None) -> dict[str, Any]:
    """Evaluate and record in the run folder. Without ``family``: the run's newest
    complete checkpoint (or ``checkpoint``). With ``family`` (in-memory weights, e.g.
    rank 0 of a training run): ``step`` is required and the corpus is the run's."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    if family is None:
        record = evaluate_checkpoint(checkpoint or run.uri, corpus, config, device)
    else:
        if step is None:
            raise ValueError("evaluate_run(family=...) needs the step of those weights")
        info = run.info()
        record = evaluate_family(family, corpus or info.get("train", {}).get("corpus", ""), step, config,
                                 device or family.device, trained_corpus_id=info.get("corpus_id"))
    run.save_eval(record)
    return record


def evaluate_checkpoint(checkpoint: str | Path, corpus: str | Path | None = None,
                        config: EvalConfig | None = None,
                        device: torch.device | str | None = None) -> dict[str, Any]:
    """Load ``checkpoint`` (run folder, checkpoint folder or state.pt) and evaluate it on
    ``corpus`` (default: the corpus it was trained on)."""
    device = resolve_device(device)
    loaded = load_checkpoint(checkpoint)
    with _own_rng(device):  # building the networks draws their (overwritten) initial weights
        family = load_family(loaded, device)
    corpus = corpus or (loaded.state.get("train") or {}).get("corpus")
    if not corpus:
        raise ValueError(f"checkpoint {loaded.uri} does not name its corpus: pass --corpus DIR")
    return evaluate_family(family, corpus, loaded.step, config, device, checkpoint=loaded,
                           trained_corpus_id=loaded.corpus_id)


def evaluate_family(family: Family, corpus: str | Path | Corpus, step: int, config: EvalConfig | None = None,
                    device: torch.device | str | None = None, checkpoint: Checkpoint | None = None,
                    trained_corpus_id: str | None = None) -> dict[str, Any]:
    """The record for ``family`` (its weights at ``step``) on ``corpus``; files untouched."""
    config = config or EvalConfig()
    device = torch.device(resolve_device(device))
    if not corpus:
        raise ValueError("no corpus to evaluate on: pass --corpus DIR")
    corpus = corpus if isinstance(corpus, Corpus) else open_corpus(corpus)
    name = family_name(family)
    split, reason = check_evaluable(name, corpus, config)
    if config.progress:
        print(f"genlib eval: {name} at step {step} on {corpus.root}, split '{split}' ({reason})", file=sys.stderr)
    start = time.perf_counter()
    with _own_rng(device):
        metrics = MEASURES[name](family, corpus, split, config, device, checkpoint)
    return {"format": RECORD_FORMAT, "family": name, "step": int(step),
            "checkpoint": checkpoint.uri if checkpoint else None,
            "checkpoint_sha256": checkpoint.sha256 if checkpoint else None,
            "corpus": str(corpus.root), "corpus_id": corpus.corpus_id, "trained_corpus_id": trained_corpus_id,
            "split": split, "split_reason": reason, "samples": config.samples, "seed": config.seed,
            "device": str(device), **metrics, "seconds": round(time.perf_counter() - start, 3)}


def _own_rng(device: torch.device):
    """Leave the caller's global RNG state (CPU and ``device``) as it was."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``None``: the GPU when there is one, else the CPU; ValueError for a device this
    machine does not have (``--device cuda`` on a CPU-only machine, a misspelt name)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: torch sees no CUDA device on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: genlib eval runs on cpu or cuda")
    return resolved


def check_evaluable(family: str, corpus: Corpus, config: EvalConfig) -> tuple[str, str]:
    """``choose_split``'s ``(split, why)``; ValueError, before any work, when that split is too
    small for ``family``'s measures (DCGAN: precision/recall need more than ``pr_k`` images, FD/KID two)."""
    split, reason = choose_split(corpus, config.split)
    least = config.pr_k + 1 if family == "dcgan" else 1
    n = min(config.samples, corpus.count(split))
    if n < least:
        raise ValueError(f"genlib eval of a {family} needs at least {least} held-out images; split '{split}' of "
                         f"{corpus.root} gives {n} (samples = {config.samples}): build the corpus with a larger "
                         f"test_fraction or val_fraction")
    return split, reason


def family_name(family: Family) -> str:
    for name, spec in FAMILIES.items():
        if isinstance(family, spec.family):
            return name
    raise ValueError(f"cannot evaluate a {type(family).__name__}: not a registered model family")


def choose_split(corpus: Corpus, split: str | None) -> tuple[str, str]:
    """``(split, why)``: the asked-for split (it must hold samples), else the first non-empty
    of test, val, train."""
    if split is not None:
        if corpus.count(split) == 0:
            raise ValueError(f"corpus {corpus.root} has no '{split}' samples")
        return split, "asked for"
    for candidate, why in (("test", "the held-out test split"), ("val", "the corpus has no test split"),
                           ("train", "no test or val split: these images were trained on")):
        if corpus.count(candidate):
            return candidate, why
    raise ValueError(f"corpus {corpus.root} holds no samples")


# ----------------------------------------------------------------------------- data


def held_out(corpus: Corpus, split: str, target: str, limit: int, batch_size: int) -> Iterator[Tensor]:
    """The first ``limit`` samples of ``split`` in corpus order, as batches: images
    ``[B, 3, S, S]`` in [-1, 1] (``target="image"``) or indices ``[B, S, S]``."""
    loader = make_loader(corpus, split, batch_size=batch_size, num_workers=0, target=target, train=False)
    left = limit
    for batch in loader:
        values = batch[target][:left]
        left -= len(values)
        yield values
        if left <= 0:
            return


def _bar(total: int, desc: str, config: EvalConfig) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not config.progress,
                dynamic_ncols=True, leave=False)


# ----------------------------------------------------------------------------- per family


def measure_dcgan(family: Family, corpus: Corpus, split: str, config: EvalConfig, device: torch.device,
                  checkpoint: Checkpoint | None) -> dict[str, Any]:
    """FD, KID, precision/recall of ``n`` samples against the first ``n`` held-out images
    (``n = min(samples, split size)``: equal sets, so FD's small-sample bias is the
    same on both sides); optionally completion."""
    if config.completion and checkpoint is None:
        raise ValueError("completion evaluation needs a checkpoint (MaskCompletion loads its own G and D)")
    net = _KEPT.get(("net", config.feature_net, config.feature_weights, str(device), config.feature_size),
                    lambda: load_feature_net(config.feature_net, config.feature_weights, device, config.feature_size))
    n = min(config.samples, corpus.count(split))
    with _bar(2 * n, "features", config) as bar:
        real = _KEPT.get(("real", json.dumps(net.describe(), sort_keys=True), str(device), _corpus_key(corpus), split,
                          n, config.batch_size),
                         lambda: _features(net, held_out(corpus, split, "image", n, config.batch_size), bar))
        bar.update(len(real) - bar.n)  # kept from an earlier evaluation: nothing was computed
        gen = torch.Generator().manual_seed(config.seed)  # CPU generator: the same z on every device
        fake = _features(net, (family.sample(b, generator=gen) for b in _chunks(len(real), config.batch_size)), bar)
    kid, kid_std = kernel_distance(real, fake, config.kid_subsets, config.kid_subset_size, config.seed)
    precision, recall = precision_recall(real, fake, config.pr_k)
    out = {"fd": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, "precision": precision,
           "recall": recall, "pr_k": config.pr_k, "kid_subsets": config.kid_subsets,
           "kid_subset_size": kid_subset(config.kid_subset_size, len(real), len(fake)), "n_real": len(real),
           "n_fake": len(fake), "feature_net": net.describe()}
    if config.completion:
        out["completion"] = _completion(checkpoint, corpus, split, config, device)
    return out


class _Kept:
    """The last few results of costly computations whose inputs a key names in full."""

    def __init__(self, size: int = 8) -> None:
        self.size, self.items = size, OrderedDict()

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = compute()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_KEPT = _Kept()


def _corpus_key(corpus: Corpus) -> tuple[str, str]:
    """A corpus's contents: its id (a hash of its inputs and recipe) and where it is."""
    return str(corpus.root), corpus.corpus_id


def _chunks(n: int, size: int) -> Iterator[int]:
    """Batch sizes that add up to ``n``."""
    for start in range(0, n, size):
        yield min(size, n - start)


@torch.no_grad()
def _features(net: FeatureNet, batches: Iterator[Tensor], bar: tqdm) -> Tensor:
    """Pooled features ``[N, D]`` (float64, CPU) of a stream of image batches."""
    out = []
    for images in batches:
        out.append(net(images.to(next(net.parameters()).device)).double().cpu())
        bar.update(len(images))
    if not out:
        raise ValueError("no images to compute features of")
    return torch.cat(out)


def _completion(checkpoint: Checkpoint, corpus: Corpus, split: str, config: EvalConfig,
                device: torch.device) -> dict[str, dict[str, float]]:
    completer = MaskCompletion(checkpoint, device)  # the loaded checkpoint: not read and hashed again
    n = min(config.samples, config.completion_images, corpus.count(split))
    images = [im for batch in held_out(corpus, split, "image", n, config.batch_size) for im in to_uint8(batch)]
    with _bar(3 * len(images), "completion", config) as bar:
        return evaluate_completion(completer, images, config.iterations, config.seed, tick=lambda: bar.update(1))


def measure_vae(family: Family, corpus: Corpus, split: str, config: EvalConfig, device: torch.device,
                checkpoint: Checkpoint | None) -> dict[str, Any]:
    """ELBO and IWAE bounds (nats/image) over up to ``samples`` held-out images."""
    k = config.iwae_k or IWAE_K.get(device.type, IWAE_K["cpu"])
    gen = torch.Generator().manual_seed(config.seed)
    sums, count = torch.zeros(2, dtype=torch.float64), 0  # [elbo, iwae]
    n = min(config.samples, corpus.count(split))
    with _bar(n, f"iwae k={k}", config) as bar:
        for x in held_out(corpus, split, "image", n, config.batch_size):
            elbo, iwae = vae_bounds(family, x, k, gen)
            sums += torch.stack([elbo.sum(), iwae.sum()]).double().cpu()
            count += len(x)
            bar.update(len(x))
    elbo_nats, iwae_nats = (sums / count).tolist()
    return {"elbo_nats": elbo_nats, "iwae_nats": iwae_nats, "iwae_k": k,
            "bits_per_dim": bits_per_dim(iwae_nats, family.dims),
            "elbo_bits_per_dim": bits_per_dim(elbo_nats, family.dims), "n_images": count}


def measure_pixelrnn(family: Family, corpus: Corpus, split: str, config: EvalConfig, device: torch.device,
                     checkpoint: Checkpoint | None) -> dict[str, Any]:
    """Exact NLL over up to ``samples`` held-out images, next to the uniform and unigram baselines."""
    k = family.config.num_colors
    if corpus.palette is None or len(corpus.palette) != k:
        have = "no palette" if corpus.palette is None else f"a {len(corpus.palette)}-colour palette"
        raise ValueError(f"the model predicts {k} palette colours but corpus {corpus.root} has {have}")
    n = min(config.samples, corpus.count(split))
    with _bar(n, "nll", config) as bar:
        batches = list(held_out(corpus, split, "index", n, config.batch_size))
        metrics = family.evaluate({"index": b} for b in batches)
        bar.update(n)
    counts, n_train = _KEPT.get(("counts", _corpus_key(corpus), k), lambda: position_counts(
        held_out(corpus, "train", "index", corpus.count("train"), 256), k))
    unigram = torch.cat([unigram_bits(b, counts, n_train) for b in batches]).mean()
    return {"nll_nats": metrics["nll_nats"], "bits_per_dim": metrics["bits_per_dim"],
            "baseline_uniform_bpd": uniform_bits(k), "baseline_unigram_bpd": float(unigram),
            "num_colors": k, "n_images": int(metrics["n_images"]), "n_train": n_train}


MEASURES = {"dcgan": measure_dcgan, "vae": measure_vae, "pixelrnn": measure_pixelrnn}  # by family name


__all__ = ["EvalConfig", "evaluate_run", "evaluate_checkpoint", "evaluate_family", "choose_split",
           "resolve_device", "SPLIT_ORDER"]
