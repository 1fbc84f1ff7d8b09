#!/usr/bin/env python
"""Loader throughput: genlib's make_loader vs torchvision ImageFolder + DataLoader.

Both loaders deliver the same tensors: the corpus's train-split images as
[B, 3, H, W] float32 in [-1, 1]. The reference reads the very same PNG bytes,
written out as files (``<tmp>/png/faces/<key>.png``), through
``datasets.ImageFolder`` with ``ToTensor()`` + ``Normalize(0.5, 0.5)`` and a
stock ``DataLoader(batch_size=B, num_workers=W, shuffle=True, drop_last=True)``.

A timed repeat iterates ``--epochs`` full epochs of one loader (workers start
afresh each epoch in both: neither keeps persistent workers), after one untimed
warm-up epoch per loader. The two loaders alternate within every repeat, so
load from other processes on the machine hits both alike. Reported: median
images/s per loader, its min-max over repeats, and the ratio genlib/reference.

    .venv/bin/python benchmarks/bench_loader.py                  # demo corpus, W in {0, 2}
    .venv/bin/python benchmarks/bench_loader.py --count 10000 --workers 0 1 2 4 --json loader.json
    .venv/bin/python benchmarks/bench_loader.py --corpus corpora/demo   # an existing corpus
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from genlib.data import schema
from genlib.data.corpus import Corpus, open_corpus
from genlib.data.loader import make_loader

from _common import build_demo_corpus, machine  # benchmarks/_common.py

SPLIT = "train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; the defaults are the small size recorded in BENCHMARKS.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", help="an existing corpus folder (default: build the demo corpus in a temp dir)")
    p.add_argument("--count", type=int, default=2000, help="demo faces to draw (128 px raw -> 64 px corpus)")
    p.add_argument("--batch-size", type=int, default=64, help="B, the same for both loaders")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="W values, the same for both")
    p.add_argument("--shuffle-buffer", type=int, default=None,
                   help="make_loader's shuffle_buffer (default: genlib's own default)")
    p.add_argument("--epochs", type=int, default=2, help="full epochs per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per loader and W")
    p.add_argument("--json", metavar="PATH", help="also write all results and samples here")
    return p.parse_args(argv)




def export_pngs(corpus: Corpus, folder: Path) -> int:
    """Write the split's image PNG bytes verbatim as ``folder/faces/<key>.png``
    (the ImageFolder layout, one class); returns how many."""
    out = folder / "faces"
    out.mkdir(parents=True)
    n = 0
    for shard in corpus.shards(SPLIT):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")  # keys hold no dots; "idx.png" is not the image
                if member.isfile() and ext == schema.IMAGE_EXT:
                    (out / f"{key}.png").write_bytes(tar.extractfile(member).read())
                    n += 1
    return n


def reference_loader(folder: Path, batch_size: int, workers: int) -> DataLoader:
    """The stock torchvision pipeline producing the same [-1, 1] float CHW tensors."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=True, drop_last=True)


def check_same_tensors(corpus: Corpus, folder: Path) -> float:
    """Max |genlib - reference| over one batch of images matched by key (0 today)."""
    batch = next(iter(make_loader(corpus, SPLIT, batch_size=16, num_workers=0, train=False)))
    ref = reference_loader(folder, 1, 0).dataset
    index = {Path(path).stem: i for i, (path, _) in enumerate(ref.samples)}
    theirs = torch.stack([ref[index[key]][0] for key in batch["key"]])
    assert theirs.shape == batch["image"].shape, (theirs.shape, batch["image"].shape)
    return float((theirs - batch["image"]).abs().max())


def time_epochs(loader: DataLoader, epochs: int, images_of) -> tuple[float, int, int]:
    """Iterate ``epochs`` full epochs; returns (seconds, images, batches)."""
    images = batches = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            images += images_of(batch)
            batches += 1
    return time.perf_counter() - start, images, batches


def bench_workers(corpus: Corpus, folder: Path, workers: int, args: argparse.Namespace) -> dict:
    """Warm up, then alternate the two loaders ``args.repeats`` times."""
    extra = {} if args.shuffle_buffer is None else {"shuffle_buffer": args.shuffle_buffer}
    loaders = {
        "genlib": (make_loader(corpus, SPLIT, batch_size=args.batch_size, num_workers=workers, **extra),
                   lambda b: b["image"].shape[0]),
        "reference": (reference_loader(folder, args.batch_size, workers), lambda b: b[0].shape[0]),
    }
    for loader, count in loaders.values():
        time_epochs(loader, 1, count)
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    per_epoch = {}
    for r in range(args.repeats):
        for name in (list(loaders) if r % 2 == 0 else list(reversed(loaders))):
            loader, count = loaders[name]
            seconds, images, batches = time_epochs(loader, args.epochs, count)
            runs[name].append(images / seconds)
            per_epoch[name] = (images // args.epochs, batches // args.epochs)
    med = {name: statistics.median(v) for name, v in runs.items()}
    return {"workers": workers, "batch_size": args.batch_size, "epochs_per_repeat": args.epochs,
            "images_per_epoch": {k: v[0] for k, v in per_epoch.items()},
            "batches_per_epoch": {k: v[1] for k, v in per_epoch.items()},
            "genlib_images_per_s": med["genlib"], "reference_images_per_s": med["reference"],
            "ratio": med["genlib"] / med["reference"],
            "paired_ratios": [g / r for g, r in zip(runs["genlib"], runs["reference"])], "runs": runs}


def print_table(rows: list[dict]) -> None:
    """One line per W: median (min-max) images/s of each loader, the ratio of the
    medians, and the range of the per-repeat (back-to-back) ratios."""
    def cell(v: list[float], m: float) -> str:
        return f"{m:6.0f} ({min(v):.0f}-{max(v):.0f})"

    print(f"{'W':>2} {'B':>4} {'imgs/epoch':>10}  {'genlib img/s':<20}{'reference img/s':<20}"
          f"{'genlib/ref':>10}  paired range")
    for r in rows:
        p = r["paired_ratios"]
        print(f"{r['workers']:>2} {r['batch_size']:>4} {r['images_per_epoch']['genlib']:>10}  "
              f"{cell(r['runs']['genlib'], r['genlib_images_per_s']):<20}"
              f"{cell(r['runs']['reference'], r['reference_images_per_s']):<20}"
              f"{r['ratio']:>9.2f}x  {min(p):.2f}-{max(p):.2f}")






def main(argv: list[str] | None = None) -> int:
    """Prepare the input, run every configuration, print the table, optionally write JSON."""
    args = parse_args(argv)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        corpus = open_corpus(args.corpus or build_demo_corpus(work, args.count))
        n = export_pngs(corpus, work / "png")
        print(f"corpus {corpus.root} ({corpus.image_size} px): {n} {SPLIT} images in "
              f"{len(corpus.shards(SPLIT))} shards; prepared in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        diff = check_same_tensors(corpus, work / "png")
        print(f"same tensors check: max |genlib - reference| = {diff:.2e}", file=sys.stderr)
        if diff > 1e-5:
            sys.exit("the two loaders do not produce the same tensors; the comparison would be meaningless")
        rows = [bench_workers(corpus, work / "png", w, args) for w in args.workers]
    info["loadavg_end"] = os.getloadavg()
    print_table(rows)
    print(f"(img/s: median (min-max) of {args.repeats} repeats x {args.epochs} epochs; {info['cpus']} CPUs, "
          f"load average {info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}; "
          f"genlib {info['revision']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "loader", "args": vars(args), "machine": info,
                                               "max_abs_diff": diff, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
