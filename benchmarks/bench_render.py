#!/usr/bin/env python
"""Render speed: genlib's StyleTransfer vs a textbook L-BFGS loop, and run_render vs a plain loop.

Parts (``--parts``; CPU default: ``style pipeline``; ``--gpu`` default: ``style dream``):

- **style**: ``genlib.render.style.StyleTransfer`` against a reference written here in plain
  PyTorch: the same backbone module, layers, Gram matrices (normalised by C*H*W), content /
  style / TV losses and weights, the same content init and images, and ``torch.optim.LBFGS``
  run the textbook way (one closure, one ``step()`` with ``max_iter = max_eval = N``; strong-Wolfe
  line search, history 50 and lr 1 as genlib uses), clamped to [0, 1] once at the end.
  Reported: evaluations/s, seconds to reach a target loss (what the reference reaches after
  half of its evaluations), the optimiser's last loss and the loss of the returned (clamped) image
  of both, and the ratios. Both run with ``--threads`` torch threads (default 1: on a busy shared
  2-core machine, 2-thread ops stall waiting for a descheduled thread, 4-12x slower and erratic).
- **pipeline**: the same N deepdream rows (efficientnet_lite0, real weights) through
  ``genlib.distributed.render.run_render`` (Ray Data actor pool, one run per ``--ray-configs``
  entry ACTORSxCPUS) and through a plain ``RenderRunner(config).render_rows(rows)`` loop in this
  process. Ray start-up (``init_ray`` + ``import ray.data``) is timed once and excluded.
  Every run writes a fresh output folder (reruns would be skipped as done).
- **dream**: DeepDream images/s (inception_v3, 512 px, default DreamParams); meant for ``--gpu``.

    .venv/bin/python benchmarks/bench_render.py --json /tmp/render.json
    .venv/bin/python benchmarks/bench_render.py --parts style --backbone vgg19 --weights none
    .venv/bin/python benchmarks/bench_render.py --gpu --weights ~/vgg19-dcbb9e9d.pth \\
        --dream-weights ~/inception_v3_google-0cc3c7bd.pth --json gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from _common import machine  # benchmarks/_common.py

ART_STYLE = Path("/work/shared/corpora/art/styles/starry_night.jpg")
CPU_DEFAULTS = {"device": "cpu", "backbone": "efficientnet_lite0", "size": 128, "iterations": 100,
                "parts": ["style", "pipeline"]}
GPU_DEFAULTS = {"device": "cuda", "backbone": "vgg19", "size": 512, "iterations": 500, "parts": ["style", "dream"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; unset ones take the CPU defaults, or the GPU ones with ``--gpu``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU mode: vgg19, 512 px, 500 iterations, cuda; + dream")
    p.add_argument("--parts", nargs="+", choices=["style", "pipeline", "dream"], help="what to run")
    p.add_argument("--device", help="torch device of the style/dream parts (cpu; cuda with --gpu)")
    p.add_argument("--backbone", choices=["efficientnet_lite0", "vgg19"], help="style backbone")
    p.add_argument("--weights", default="default", help='style backbone weights: "default", "none" or a path')
    p.add_argument("--size", type=int, help="style output max side, px (128; 512 with --gpu)")
    p.add_argument("--iterations", type=int, help="L-BFGS objective evaluations (100; 500 with --gpu)")
    p.add_argument("--style", help=f"style painting (default: {ART_STYLE} if present, else skimage coffee)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per candidate (alternating)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the style/dream parts (1: a busy shared machine stalls 2-thread ops)")
    p.add_argument("--rows", type=int, default=16, help="pipeline: deepdream request rows")
    p.add_argument("--row-size", type=int, default=64, help="pipeline: DreamParams.size of the rows")
    p.add_argument("--row-iterations", type=int, default=10, help="pipeline: DreamParams.iterations (1 octave)")
    p.add_argument("--ray-configs", nargs="+", default=["2x0.5", "2x1", "1x1"], help="ACTORSxCPUS_PER_ACTOR")
    p.add_argument("--dream-size", type=int, default=512, help="dream part: DreamParams.size")
    p.add_argument("--dream-weights", default="default", help='dream part: inception_v3 weights ("default", path)')
    p.add_argument("--json", metavar="PATH", help="also write all results and samples here")
    args = p.parse_args(argv)
    for key, value in (GPU_DEFAULTS if args.gpu else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------- images


def resize_max(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W, 3] resized (Lanczos, up or down) so its longer side is ``side``."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def style_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """(content, style, style name), both already at ``args.size`` max side, so neither
    genlib nor the reference resizes anything (identical inputs)."""
    from skimage import data

    path = args.style or (str(ART_STYLE) if ART_STYLE.is_file() else None)
    style = np.asarray(Image.open(path).convert("RGB")) if path else data.coffee()
    return resize_max(data.astronaut(), args.size), resize_max(style, args.size), path or "skimage coffee"


def as_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [H, W, 3] -> contiguous float [1, 3, H, W] in [0, 1] (the reference's own conversion)."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(255).contiguous().to(device)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (timings on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- style: reference


def gram(features: torch.Tensor) -> torch.Tensor:
    """[1, C, H, W] -> [1, C, C] / (C*H*W): Gatys' Gram matrix, size-normalised."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2) / f[0].numel()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertical plus horizontal neighbour pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).square().mean() + (x[..., :, 1:] - x[..., :, :-1]).square().mean()


def reference_losses(backbone, x, content_target, gram_targets, p, setup) -> dict[str, torch.Tensor]:
    """Weighted content, style (mean over layers) and TV terms of image ``x`` and their sum."""
    content_layer, style_layers = setup.content_layer, setup.style_layers
    feats = backbone(x, list(dict.fromkeys([*style_layers, content_layer])))
    content = p.content_weight * F.mse_loss(feats[content_layer], content_target)
    style = sum(F.mse_loss(gram(feats[l]), gram_targets[l]) for l in style_layers) / len(style_layers)
    style = setup.style_weight * style
    tv = p.tv_weight * total_variation(x)
    return {"content": content, "style": style, "tv": tv, "total": content + style + tv}


def reference_style(backbone, content: torch.Tensor, style: torch.Tensor, p, setup, device) -> dict:
    """Textbook Gatys: targets, then one LBFGS.step(closure) with max_iter = max_eval = N.
    ``setup`` (genlib's resolved defaults) only supplies the layer names, style weight and lr."""
    history, stamps = [], []
    start = time.perf_counter()
    with torch.no_grad():
        content_target = backbone(content, [setup.content_layer])[setup.content_layer]
        style_feats = backbone(style, setup.style_layers)
        gram_targets = {l: gram(style_feats[l]) for l in setup.style_layers}
    x = content.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=setup.lr, max_iter=p.iterations, max_eval=p.iterations, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = reference_losses(backbone, x, content_target, gram_targets, p, setup)["total"]
        history.append(loss.item())
        stamps.append(time.perf_counter() - start)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        x.clamp_(0, 1)
        final = reference_losses(backbone, x, content_target, gram_targets, p, setup)
    final = {k: v.item() for k, v in final.items()}
    sync(device)
    return {"seconds": time.perf_counter() - start, "history": history, "stamps": stamps, "final": final}


# ----------------------------------------------------------------------------- style: genlib


def genlib_style(st, content: np.ndarray, style: np.ndarray, p) -> dict:
    """One StyleTransfer call; a forward hook on its backbone time-stamps every objective
    evaluation (grad-enabled forwards only: the no-grad target and final passes are skipped)."""
    stamps: list[float] = []
    start = 0.0

    def hook(module, inputs, output):
        if torch.is_grad_enabled():
            sync(st.device)
            stamps.append(time.perf_counter() - start)

    handle = st.backbone.register_forward_hook(hook)
    try:
        start = time.perf_counter()
        out = st(content, p, styles=[style])
        sync(st.device)
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    history = out.info["history"]
    assert len(history) == len(stamps), (len(history), len(stamps))
    return {"seconds": seconds, "history": history, "stamps": stamps, "final": out.losses}


def time_to(target: float, run: dict) -> tuple[float | None, int | None]:
    """(seconds, evaluations) until the run's loss first got <= target; (None, None) if never."""
    for i, (loss, stamp) in enumerate(zip(run["history"], run["stamps"])):
        if loss <= target:
            return stamp, i + 1
    return None, None


def style_repeat(st, images, params, setup, device, genlib_first: bool = False) -> dict:
    """One genlib run and one reference run, back to back, and their figures."""
    content, style = images
    candidates = {"reference": lambda: reference_style(st.backbone, as_tensor(content, device),
                                                       as_tensor(style, device), params, setup, device),
                  "genlib": lambda: genlib_style(st, content, style, params)}
    order = ["genlib", "reference"] if genlib_first else ["reference", "genlib"]
    runs = {name: candidates[name]() for name in order}
    ref = runs["reference"]["history"]
    target = ref[len(ref) // 2 - 1]  # the reference's loss after half of its evaluations
    out = {"target_loss": target}
    for name, run in runs.items():
        evals = len(run["history"])
        seconds_to, evals_to = time_to(target, run)
        out[name] = {"seconds": run["seconds"], "evaluations": evals, "evals_per_s": evals / run["seconds"],
                     "seconds_to_target": seconds_to, "evals_to_target": evals_to, "final": run["final"],
                     "history": run["history"]}
    return out


def bench_style(args: argparse.Namespace) -> dict:
    """Warm up both, then ``args.repeats`` genlib/reference pairs (who goes first alternates)."""
    from genlib.render.style import StyleParams, StyleTransfer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    content, style, style_name = style_images(args)
    st = StyleTransfer(args.backbone, args.weights, device=device)
    params = StyleParams(style=["in-memory"], size=args.size, iterations=args.iterations, optimizer="lbfgs")
    setup = st.setup(params)
    warm = StyleParams(style=["in-memory"], size=args.size, iterations=5)
    style_repeat(st, (content, style), warm, setup, device)
    repeats = [style_repeat(st, (content, style), params, setup, device, genlib_first=r % 2 == 1)
               for r in range(args.repeats)]
    print(f"style: {args.backbone} ({st.weights_id}) on {device}, content astronaut {content.shape[1]}x"
          f"{content.shape[0]}, style {style_name} {style.shape[1]}x{style.shape[0]}, {args.iterations} "
          f"evaluations, {torch.get_num_threads()} torch threads", file=sys.stderr)
    return {"backbone": args.backbone, "weights_id": st.weights_id, "device": str(device), "size": args.size,
            "iterations": args.iterations, "style": style_name, "threads": args.threads,
            "setup": dataclasses.asdict(setup), "repeats": repeats}


# ----------------------------------------------------------------------------- pipeline


def write_inputs(folder: Path, side: int) -> list[str]:
    """A few skimage photos as PNG files (``side`` px max) for the request rows."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"{name}.png"
        Image.fromarray(resize_max(getattr(data, name)(), side)).save(path)
        paths.append(str(path))
    return paths


def dream_rows(folder: Path, args: argparse.Namespace) -> list[dict]:
    """``args.rows`` deepdream request rows (1 octave, small), normalised like a request table."""
    from genlib.render.requests import normalise_requests

    inputs = write_inputs(folder, 2 * args.row_size)
    rows = [{"request_id": f"dream-{i:03d}", "kind": "deepdream", "input": inputs[i % len(inputs)],
             "params": {"size": args.row_size, "octaves": 1, "iterations": args.row_iterations, "seed": i}}
            for i in range(args.rows)]
    return normalise_requests(rows, "bench_render")


def render_config(output: Path, actors: int = 1, cpus: float = 0.5):
    """The one RenderConfig of every pipeline run (deepdream on efficientnet_lite0, real weights)."""
    from genlib.render.config import BackboneChoice, RenderConfig

    return RenderConfig(output=str(output), actors=actors, cpus_per_actor=cpus,
                        deepdream=BackboneChoice("efficientnet_lite0", "default"))


def first_done(rows: list[dict], start_wall: float) -> float:
    """Seconds from the run's start to its first finished row (actor start-up + model load + 1 row)."""
    return min(datetime.fromisoformat(r["finished_at"]).timestamp() for r in rows) - start_wall


def run_plain(rows: list[dict], output: Path) -> dict:
    """RenderRunner(config).render_rows(rows) in this process (model load included)."""
    from genlib.render.runner import RenderRunner

    start_wall, start = time.time(), time.perf_counter()
    out = RenderRunner(render_config(output)).render_rows(rows)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ok": sum(r["status"] == "ok" for r in out),
            "first_done_s": first_done(out, start_wall), "row_seconds": [r["seconds"] for r in out]}


def run_ray(rows: list[dict], output: Path, spec: str) -> dict:
    """run_render over an ACTORSxCPUS actor pool on the already started Ray."""
    from genlib.distributed.render import run_render
    from genlib.render.manifest import read_manifest

    actors, cpus = spec.split("x")
    start_wall, start = time.time(), time.perf_counter()
    summary = run_render(rows, render_config(output, int(actors), float(cpus)), progress=False)
    seconds = time.perf_counter() - start
    out = list(read_manifest(str(output)).values())
    return {"seconds": seconds, "ok": summary.ok, "first_done_s": first_done(out, start_wall),
            "row_seconds": [r["seconds"] for r in out]}


def start_ray() -> float:
    """``import ray.data`` + genlib's ``init_ray()`` (embedded local Ray); returns seconds."""
    start = time.perf_counter()
    import ray.data  # noqa: F401  (run_render imports it; keep the import out of the timed runs)

    from genlib.distributed.runtime import init_ray

    init_ray()
    return time.perf_counter() - start


def bench_pipeline(args: argparse.Namespace, work: Path) -> dict:
    """Plain loop and each Ray config, ``args.repeats`` rounds (rotating order), fresh outputs."""
    import ray

    rows = dream_rows(work / "inputs", args)
    run_plain(rows[:2], work / "warmup")  # page cache, lazy imports
    ray_s = start_ray()
    names = ["plain", *args.ray_configs]
    samples: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = work / f"out-{name}-{r}"
                samples[name].append(run_plain(rows, out) if name == "plain" else run_ray(rows, out, name))
                print(f"pipeline {name} round {r}: {samples[name][-1]['seconds']:.1f}s", file=sys.stderr)
    finally:
        ray.shutdown()
    bad = {n: s["ok"] for n, runs in samples.items() for s in runs if s["ok"] != len(rows)}
    if bad:
        sys.exit(f"pipeline: some rows failed ({bad} ok of {len(rows)}); figures would be meaningless")
    return {"rows": len(rows), "row_size": args.row_size, "row_iterations": args.row_iterations,
            "ray_startup_s": ray_s, "samples": samples}


# ----------------------------------------------------------------------------- dream (GPU)


def bench_dream(args: argparse.Namespace) -> dict:
    """DeepDream (inception_v3, default DreamParams at ``--dream-size`` px) images/s after one warm-up."""
    from skimage import data

    from genlib.render.deepdream import DeepDream, DreamParams

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dream = DeepDream("inception_v3", args.dream_weights, device=device)
    image, params = data.astronaut(), DreamParams(size=args.dream_size)
    dream(image, params)
    seconds, steps = [], 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        steps = dream(image, params).iterations
        sync(device)
        seconds.append(time.perf_counter() - start)
    return {"device": str(device), "weights_id": dream.weights_id, "size": args.dream_size,
            "steps_per_image": steps, "seconds": seconds, "images_per_s": 1 / statistics.median(seconds)}


# ----------------------------------------------------------------------------- report


def spread(values: list[float], fmt: str = ".2f") -> str:
    """'median (min-max)'."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def print_style(res: dict) -> None:
    """Per candidate: evals/s, seconds, seconds/evals to the target, the optimiser's last loss and the
    loss of the returned (clamped) image; then the ratios. The reference clamps only at the end, so its
    final loss can be well above its last one: the last losses are the like-for-like check."""
    reps = res["repeats"]
    print(f"\nStyle transfer: {res['backbone']} ({res['weights_id']}), {res['size']} px, {res['iterations']} "
          f"L-BFGS evaluations, {res['device']}; target loss = reference's after half its evaluations "
          f"({spread([r['target_loss'] for r in reps], '.4g')})")
    print(f"{'':10} {'evals':<7}{'evals/s':<20}{'s/image':<20}{'s to target':<20}{'evals to target':<16}"
          f"{'last loss':<11}{'final loss (clamped)'}")
    for name in ("genlib", "reference"):
        runs = [r[name] for r in reps]
        to = [r["seconds_to_target"] for r in runs]
        print(f"{name:10} {statistics.median(r['evaluations'] for r in runs):<7g}"
              f"{spread([r['evals_per_s'] for r in runs], '.1f'):<20}{spread([r['seconds'] for r in runs]):<20}"
              f"{spread(to) if None not in to else 'not reached':<20}"
              f"{[r['evals_to_target'] for r in runs]!s:<16}"
              f"{statistics.median(r['history'][-1] for r in runs):<11.4g}"
              f"{statistics.median(r['final']['total'] for r in runs):.4g}")
    speed = [r["genlib"]["evals_per_s"] / r["reference"]["evals_per_s"] for r in reps]
    print(f"genlib/reference evals/s: {spread(speed)} (higher = genlib faster)")
    if all(r["genlib"]["seconds_to_target"] for r in reps):
        ttt = [r["genlib"]["seconds_to_target"] / r["reference"]["seconds_to_target"] for r in reps]
        print(f"genlib/reference seconds to target: {spread(ttt)} (lower = genlib faster)")
    last = [r["genlib"]["history"][-1] / r["reference"]["history"][-1] for r in reps]
    final = [r["genlib"]["final"]["total"] / r["reference"]["final"]["total"] for r in reps]
    print(f"genlib/reference last loss: {spread(last, '.3f')}"
          + ("" if 0.8 <= statistics.median(last) <= 1.25 else "  ** not comparable: check the algorithms **")
          + f"; final loss (clamped to [0, 1]): {spread(final, '.3f')}")


def print_pipeline(res: dict) -> None:
    """Per mode: wall seconds, wall/row, median in-actor row seconds, first row done, the rows after
    the first (wall - first row done) / (N - 1), ratio to plain."""
    n, samples = res["rows"], res["samples"]
    plain = statistics.median(s["seconds"] for s in samples["plain"])
    print(f"\nRender pipeline: {n} deepdream rows (efficientnet_lite0, {res['row_size']} px, 1 octave, "
          f"{res['row_iterations']} steps); Ray start-up {res['ray_startup_s']:.1f}s (excluded)")
    print(f"{'mode':12} {'wall s':<18}{'wall s/row':<12}{'row s (median)':<20}{'first row done s':<18}"
          f"{'then s/row':<12}{'wall / plain':>12}")
    for name, runs in samples.items():
        label = "plain loop" if name == "plain" else f"ray {name}"
        wall = [s["seconds"] for s in runs]
        rows = [statistics.median(s["row_seconds"]) for s in runs]
        first = [s["first_done_s"] for s in runs]
        then = [(s["seconds"] - s["first_done_s"]) / max(1, n - 1) for s in runs]
        print(f"{label:12} {spread(wall, '.1f'):<18}{statistics.median(wall) / n:<12.3f}{spread(rows, '.3f'):<20}"
              f"{spread(first, '.1f'):<18}{statistics.median(then):<12.3f}{statistics.median(wall) / plain:>11.2f}x")


def print_dream(res: dict) -> None:
    """DeepDream images/s."""
    print(f"\nDeepDream: inception_v3 ({res['weights_id']}) {res['size']} px on {res['device']}, "
          f"{res['steps_per_image']} steps/image: {res['images_per_s']:.3f} images/s "
          f"(s/image {spread(res['seconds'])})")




def main(argv: list[str] | None = None) -> int:
    """Run the selected parts, print their tables, optionally write JSON."""
    args = parse_args(argv)
    info, results = machine(gpu=True), {}
    if "style" in args.parts:
        results["style"] = bench_style(args)
    if "dream" in args.parts:
        results["dream"] = bench_dream(args)
    if "pipeline" in args.parts:
        with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
            results["pipeline"] = bench_pipeline(args, Path(tmp))
    info["loadavg_end"] = os.getloadavg()
    for part, show in (("style", print_style), ("dream", print_dream), ("pipeline", print_pipeline)):
        if part in results:
            show(results[part])
    print(f"\n(median (min-max) of {args.repeats} repeats; {info['cpus']} CPUs, load average "
          f"{info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}; genlib {info['revision']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "render", "args": vars(args), "machine": info,
                                               "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
