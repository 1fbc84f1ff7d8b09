#!/usr/bin/env python
"""Training throughput: genlib's Ray Train DDP trainer vs a plain PyTorch loop.

Both train the same DCGAN (genlib's ``DCGAN(DCGANConfig(...))``, the same
``train_step``) on the same ``make_loader`` batches with the same torch thread
count; the trainer is ``genlib.distributed.train.run_training`` on an embedded
local Ray, started once before anything is timed. Throughput is steady state:
the trainer logs ``images_per_s`` per ``log_every`` window in the run's
``metrics.csv``; the plain loop is timed over the same windows; the first
``--warmup-windows`` windows of both are dropped.

CPU (default): trainer (1 worker, ``cpus_per_worker`` = ``--threads``) vs the
plain loop, ratio trainer/plain; then 1 -> 2 worker scaling at the same global
batch (1 worker x 1 thread vs 2 workers x 1 thread each; efficiency =
img/s(2) / (2 x img/s(1))), plus the 2-worker DCGAN with the models' ``reduce_once``
knob off (D all-reduced three times per step instead of once; ratio on/off, and the
all-reduce seconds per step from metrics.csv's ``time_allreduce_s``). ``--gpu``: the plain loop and the trainer
(``use_gpu=True``) with ``amp`` "none" and "bf16", plus the plain loop on one
fixed on-device batch (the model's ceiling without the loader).

Every run ends by checking that no process of its Ray session outlived ``ray.shutdown()``
(stragglers are killed and reported; the JSON's ``machine.ray_cleanup``): exit 1 if any remain.

    .venv/bin/python benchmarks/bench_train.py                        # CPU: ~5 min idle 2-core box
    .venv/bin/python benchmarks/bench_train.py --steps 120 --repeats 2 --json train.json
    .venv/bin/python benchmarks/bench_train.py --gpu --json train-gpu.json   # on a GPU machine
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

import torch

from _common import build_demo_corpus, machine  # benchmarks/_common.py
from genlib.distributed.train import PHASES

CPU_DEFAULTS = {"batch_size": 64, "width": 32, "steps": 40, "log_every": 5, "loader_workers": 0, "count": 2000}
GPU_DEFAULTS = {"batch_size": 128, "width": 64, "steps": 400, "log_every": 50, "loader_workers": 4, "count": 8000}
RAY_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train v2: how often its controller takes reports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="GPU mode (amp none vs bf16) instead of the CPU suite")
    p.add_argument("--corpus", help="an existing 64 px corpus (default: build the demo corpus in a temp dir)")
    p.add_argument("--count", type=int, help=f"demo faces to draw (CPU {CPU_DEFAULTS['count']}, "
                                             f"GPU {GPU_DEFAULTS['count']})")
    p.add_argument("--batch-size", type=int, help="global batch (CPU 64, GPU 128)")
    p.add_argument("--width", type=int, help="DCGAN ngf = ndf (CPU 32, GPU 64)")
    p.add_argument("--steps", type=int, help="optimiser steps per measurement (CPU 40, GPU 400)")
    p.add_argument("--log-every", type=int, help="window length in steps (CPU 5, GPU 50)")
    p.add_argument("--warmup-windows", type=int, default=1, help="leading windows left out of the figures")
    p.add_argument("--loader-workers", type=int, help="DataLoader processes per rank (CPU 0, GPU 4)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads of the 1-worker comparison (= the trainer's cpus_per_worker)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="trainer checkpoint (+ eval) interval")
    p.add_argument("--sample-every", type=int, default=200, help="trainer sample-grid interval")
    p.add_argument("--no-scaling", action="store_true", help="CPU: skip the 1 -> 2 worker scaling part")
    p.add_argument("--reduce-knob", default="reduce_once",
                   help="DCGANConfig flag measured on vs off at 2 workers ('' to skip)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per case (order alternates)")
    p.add_argument("--ray-poll-interval", type=float, metavar="S",
                   help=f"set {RAY_POLL_ENV} before Ray starts (Ray's default: 2 s)")
    p.add_argument("--ray-logs", action="store_true", help="show the Ray workers' output")
    p.add_argument("--json", metavar="PATH", help="also write all windows and results here")
    args = p.parse_args(argv)
    for key, value in (GPU_DEFAULTS if args.gpu else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args




# ============================================================================ measurements


def steady(windows: list[tuple[int, float]], warmup: int) -> dict:
    """``windows``: (images, seconds) per log window. Steady images/s = images /
    seconds over the windows after ``warmup``, plus the per-window min, median, max."""
    kept = windows[warmup:] or windows[-1:]
    rates = [i / s for i, s in kept]
    return {"images_per_s": sum(i for i, _ in kept) / sum(s for _, s in kept), "window_min": min(rates),
            "window_median": statistics.median(rates), "window_max": max(rates), "windows": windows}


def trainer_case(args, corpus: Path, storage: Path, name: str, workers: int, cpus: float,
                 amp: str = "none", model: dict | None = None) -> dict:
    """One ``run_training`` call; its windows (and per-step phase seconds) come from the run's metrics.csv."""
    from genlib.distributed.train import run_training
    from genlib.train.config import TrainConfig
    from genlib.train.rundir import read_metrics

    cfg = TrainConfig(corpus=str(corpus), model={"family": "dcgan", "ngf": args.width, "ndf": args.width,
                                                 **(model or {})},
                      steps=args.steps, batch_size=args.batch_size, num_workers=workers, use_gpu=args.gpu,
                      cpus_per_worker=cpus, loader_workers=args.loader_workers, log_every=args.log_every,
                      checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, amp=amp,
                      max_failures=0, storage_path=str(storage), name=name)
    start = time.perf_counter()
    outcome = run_training(cfg, progress=False)  # keep this table's stdout clean
    wall = time.perf_counter() - start
    windows, prev = [], 0
    rows = read_metrics(outcome.run_dir)
    for row in rows:
        images = (int(row["step"]) - prev) * args.batch_size
        windows.append((images, images / float(row["images_per_s"])))
        prev = int(row["step"])
    out = steady(windows, args.warmup_windows)
    out["phases_s_per_step"] = {p: statistics.median(float(r[f"time_{p}_s"]) for r in rows[args.warmup_windows:]
                                                     or rows[-1:]) for p in PHASES if f"time_{p}_s" in rows[-1]}
    out["outside_windows_s"] = wall - sum(s for _, s in windows)  # Ray Train start/stop, final ckpt, report
    return out


def _batches(loader, steps: int):
    """The trainer's data order: ``set_epoch`` + a fresh iterator per epoch."""
    epoch, given = 0, 0
    while True:
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            yield batch
            given += 1
            if given == steps:
                return
        epoch += 1


def plain_case(args, corpus: Path, threads: int, amp: str = "none", fixed: bool = False) -> dict:
    """A single-process loop: ``family.train_step`` over ``make_loader`` batches
    (``fixed``: one batch, already on the device, over and over)."""
    from genlib.data.corpus import open_corpus
    from genlib.data.loader import make_loader
    from genlib.models.dcgan import DCGAN, DCGANConfig

    size = open_corpus(corpus).image_size
    device = torch.device("cuda" if args.gpu else "cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    loader = make_loader(str(corpus), "train", batch_size=args.batch_size, num_workers=args.loader_workers)
    torch.manual_seed(0)
    family = DCGAN(DCGANConfig(image_size=size, ngf=args.width, ndf=args.width), device)
    family.set_precision(amp)
    batches = _batches(loader, args.steps)
    if fixed:
        first = {"image": next(batches)["image"].to(device)}
        batches = (first for _ in range(args.steps))
    windows, mark = [], time.perf_counter()
    for step, batch in enumerate(batches, 1):
        family.train_step(batch)  # ends in a host sync (.tolist()), as in the trainer
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            windows.append((((step - 1) % args.log_every + 1) * args.batch_size, now - mark))
            mark = now
    torch.set_num_threads(previous)
    return steady(windows, args.warmup_windows)


# ============================================================================ suites


def cases(args) -> list[dict]:
    """What to measure: label, kind and settings of each case."""
    if args.gpu:
        out = []
        for amp in ("none", "bf16"):
            base = {"amp": amp, "workers": 1, "threads": args.threads}
            out += [{**base, "label": f"plain amp={amp}", "kind": "plain"},
                    {**base, "label": f"trainer amp={amp}", "kind": "trainer", "cpus": args.threads}]
        return out + [{"label": f"plain fixed batch amp={amp}", "kind": "fixed", "amp": amp, "workers": 1,
                       "threads": args.threads} for amp in ("none", "bf16")]
    out = []
    for threads in dict.fromkeys((args.threads, 1)):  # all cores, then 1 thread (the robust pair)
        out += [{"label": f"plain {threads} thr", "kind": "plain", "workers": 1, "threads": threads},
                {"label": f"trainer 1 worker x {threads} thr", "kind": "trainer", "workers": 1, "cpus": threads,
                 "threads": threads}]
    if not args.no_scaling:
        out.append({"label": "trainer 2 workers x 1 thr", "kind": "trainer", "workers": 2, "cpus": 1,
                    "threads": 1})
        if reduce_knob(args):  # the label above runs the default (on)
            out.append({"label": f"trainer 2 workers x 1 thr, {args.reduce_knob}=off", "kind": "trainer",
                        "workers": 2, "cpus": 1, "threads": 1, "model": {args.reduce_knob: False}})
    return out


def reduce_knob(args) -> bool:
    """Whether the models engineer's DDP reduce-once flag exists in DCGANConfig (a note if not)."""
    from dataclasses import fields

    from genlib.models.dcgan import DCGANConfig

    if not args.reduce_knob:
        return False
    if args.reduce_knob not in {f.name for f in fields(DCGANConfig)}:
        print(f"note: DCGANConfig has no '{args.reduce_knob}' flag yet: its on/off case is skipped", file=sys.stderr)
        return False
    return True


def measure(args, corpus: Path, storage: Path, case: dict, repeat: int) -> dict:
    """Run one case once; prints a progress line to stderr."""
    amp = case.get("amp", "none")
    if case["kind"] == "trainer":
        name = f"{case['label'].replace(', ', '_').replace(' ', '_').replace('=', '-')}-r{repeat}"
        result = trainer_case(args, corpus, storage, name, case["workers"], case["cpus"], amp, case.get("model"))
    else:
        result = plain_case(args, corpus, case["threads"], amp, fixed=case["kind"] == "fixed")
    print(f"  {case['label']} (repeat {repeat}): {result['images_per_s']:.1f} img/s", file=sys.stderr)
    return result


def run_suite(args, corpus: Path, storage: Path) -> list[dict]:
    """Every case ``args.repeats`` times; the order reverses on odd repeats so
    load from elsewhere on the machine hits all cases alike."""
    todo = cases(args)
    for case in todo:
        case["runs"] = []
    for r in range(args.repeats):
        for case in (todo if r % 2 == 0 else list(reversed(todo))):
            case["runs"].append(measure(args, corpus, storage, case, r))
    for case in todo:
        for key in ("images_per_s", "window_median"):
            case[key] = statistics.median(run[key] for run in case["runs"])
        case["window_min"] = min(run["window_min"] for run in case["runs"])
        case["window_max"] = max(run["window_max"] for run in case["runs"])
    return todo


def ratios(args, rows: list[dict], key: str = "images_per_s") -> dict[str, float]:
    """The figures that matter, from the cases' medians (over repeats) of ``key``."""
    r = {row["label"]: row[key] for row in rows}
    if args.gpu:
        out = {f"trainer/plain amp={a}": r[f"trainer amp={a}"] / r[f"plain amp={a}"] for a in ("none", "bf16")}
        for kind in ("plain", "trainer", "plain fixed batch"):
            out[f"{kind}: bf16/none"] = r[f"{kind} amp=bf16"] / r[f"{kind} amp=none"]
        return out
    out = {f"trainer/plain, 1 worker x {t} thr (target >= 0.9)":
           r[f"trainer 1 worker x {t} thr"] / r[f"plain {t} thr"] for t in dict.fromkeys((args.threads, 1))}
    if not args.no_scaling:
        out["scaling efficiency 1 -> 2 workers x 1 thr"] = (r["trainer 2 workers x 1 thr"]
                                                            / (2 * r["trainer 1 worker x 1 thr"]))
        off = f"trainer 2 workers x 1 thr, {args.reduce_knob}=off"
        if off in r:
            out[f"2 workers: {args.reduce_knob} on / off"] = r["trainer 2 workers x 1 thr"] / r[off]
    return out


# ============================================================================ report


def print_table(args, rows: list[dict]) -> None:
    """One line per case: steady img/s, its per-window min / median / max, s/step;
    then each ratio from the steady img/s and, as a check on noise, from the
    window medians."""
    print(f"{'case':<30}{'workers':>7}{'thr/wkr':>8}{'batch':>6}{'img/s':>9}   {'windows: min / median / max':<29}"
          f"{'s/step':>7}")
    for row in rows:
        ips = row["images_per_s"]
        spread = f"{row['window_min']:.1f} / {row['window_median']:.1f} / {row['window_max']:.1f}"
        print(f"{row['label']:<30}{row['workers']:>7}{row['threads']:>8}{args.batch_size:>6}{ips:9.1f}   "
              f"{spread:<29}{args.batch_size / ips:7.3f}")
    phased = [row for row in rows if row["runs"][0].get("phases_s_per_step")]
    if phased:
        print(f"\n{'per-step seconds (metrics.csv, median window)':<50}" + "".join(f"{p:>10}" for p in PHASES))
        for row in phased:
            phases = row["runs"][0]["phases_s_per_step"]
            print(f"{row['label']:<50}" + "".join(f"{phases.get(p, float('nan')):10.4f}" for p in PHASES))
    print(f"\n{'ratio':<50}{'img/s':>7}{'window medians':>16}")
    robust = ratios(args, rows, "window_median")
    for name, value in ratios(args, rows).items():
        print(f"{name:<50}{value:7.3f}{robust[name]:16.3f}")


def warn_short_windows(rows: list[dict]) -> None:
    """Ray Train (v2) keeps one unconsumed ``ray.train.report`` per worker and its
    controller takes one every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default),
    so a trainer reporting more often than that waits in ``report``: windows then
    last about that interval. Say so when they come close (within 25 %)."""
    poll = ray_poll_interval()
    for row in rows:
        median = statistics.median(s for run in row["runs"] for _, s in run["windows"])
        if row["kind"] == "trainer" and median < 1.25 * poll:
            print(f"note: {row['label']}: median window {median:.2f}s, close to Ray Train's poll interval "
                  f"{poll:g}s: ray.train.report (every --log-every steps) probably blocked and throttled it")


def ray_poll_interval() -> float:
    return float(os.environ.get(RAY_POLL_ENV, "2"))


def start_ray(args) -> tuple[float, str]:
    """Start the embedded Ray the trainer will join (not timed in any figure); returns
    (seconds, its session folder)."""
    import ray

    from genlib.distributed.runtime import current_session_dir

    if args.ray_poll_interval is not None:  # read by Ray Train's controller, which inherits this environment
        os.environ[RAY_POLL_ENV] = str(args.ray_poll_interval)
    cpus = max(os.cpu_count() or 1, args.threads, 2)  # logical CPUs: the scaling part needs 2 x 1
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=args.ray_logs,
             logging_level="INFO" if args.ray_logs else "ERROR")
    return time.perf_counter() - start, current_session_dir()


def stop_ray(session_dir: str) -> dict:
    """ray.shutdown() and genlib's clean-up (``shutdown_session``, as in ``ray_session``):
    processes of this session still alive after the grace period are killed. Reports what it found."""
    from genlib.distributed.runtime import session_processes, shutdown_session

    killed = shutdown_session(session_dir)
    left = [p.pid for p in session_processes(session_dir)]
    print(f"Ray clean-up: {len(killed)} process(es) of the session outlived ray.shutdown() and were killed, "
          f"{len(left)} left", file=sys.stderr)
    return {"killed_after_shutdown": killed, "left": left}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu: torch sees no CUDA device")
    info = machine(gpu=args.gpu)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        corpus = Path(args.corpus) if args.corpus else build_demo_corpus(work, args.count)
        print(f"corpus {corpus} prepared in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        info["ray_start_s"], session_dir = start_ray(args)
        try:
            rows = run_suite(args, corpus, work / "runs")
        finally:
            info["ray_cleanup"] = stop_ray(session_dir)
    info["loadavg_end"] = os.getloadavg()
    info["ray_poll_interval_s"] = ray_poll_interval()
    figures = {"images_per_s": ratios(args, rows), "window_median": ratios(args, rows, "window_median")}
    print_table(args, rows)
    print(f"(steady img/s over steps {args.warmup_windows * args.log_every + 1}-{args.steps}, windows of "
          f"{args.log_every}; median of {args.repeats}; {info['cpus']} CPUs, load average "
          f"{info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}; genlib {info['revision']})")
    warn_short_windows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "train", "args": vars(args), "machine": info,
                                               "ratios": figures, "results": rows}, indent=2))
    return 1 if info["ray_cleanup"]["left"] else 0


if __name__ == "__main__":
    sys.exit(main())
