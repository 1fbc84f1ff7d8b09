#!/usr/bin/env python
"""Corpus build throughput: build_corpus with LocalMapper(1) vs LocalMapper(N) (and Ray).

Input is the embedded demo corpus (``generate_demo_faces``, 128 px raw, one
untimed draw) built with the demo recipe at 64 px, unless ``--input`` names a
folder or archive. Every timed build starts from an empty output folder
(``force=True``, no progress bar) and is timed end to end: read + sha256
fingerprint, per-image work through the mapper, de-duplication, split, shard
writing and index. The mapper's own time (the parallel part) is reported
separately, so the serial remainder caps the speedup (Amdahl). The reference is
``LocalMapper(1)`` in the same run; speedup = median images/s / its median.
Configurations rotate within every repeat so machine load hits each alike.

    .venv/bin/python benchmarks/bench_build.py                       # 2000 faces, LocalMapper 1 vs 2
    .venv/bin/python benchmarks/bench_build.py --ray --json build.json   # also embedded local Ray
    .venv/bin/python benchmarks/bench_build.py --count 20000 --workers 1 2 4 --repeats 5
"""

# genlib.data.build (which pulls in torch via webdataset) is imported inside
# functions on purpose: LocalMapper spawns workers, and a spawned worker
# re-imports this script, which should cost it nothing.
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import machine  # benchmarks/_common.py


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; the defaults are the small size recorded in BENCHMARKS.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", help="raw images (folder/zip/tar); default: draw demo faces in a temp dir")
    p.add_argument("--count", type=int, default=2000, help="demo faces to draw")
    p.add_argument("--raw-size", type=int, default=128, help="demo face side in pixels")
    p.add_argument("--size", type=int, default=64, help="corpus image side (recipe size)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="LocalMapper process counts; the first is the reference")
    p.add_argument("--ray", action="store_true", help="also build with RayMapper on an embedded local Ray")
    p.add_argument("--ray-cpus", type=float, default=None,
                   help="RayMapper(num_cpus=...) per task (default: genlib's own default)")
    p.add_argument("--repeats", type=int, default=3, help="timed builds per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed builds per configuration first")
    p.add_argument("--json", metavar="PATH", help="also write all results and samples here")
    return p.parse_args(argv)


class TimedMapper:
    """Wraps a mapper and records the seconds its ``map_chunks`` ran (the parallel phase)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds = 0.0

    def map_chunks(self, fn, chunks):
        start = time.perf_counter()
        yield from self.inner.map_chunks(fn, chunks)
        self.seconds = time.perf_counter() - start


def make_mapper(name: str, ray_cpus: float | None = None):
    """``local-N`` -> LocalMapper(N); ``ray`` -> RayMapper() (genlib's defaults unless ``ray_cpus``)."""
    if name == "ray":
        from genlib.distributed.build import RayMapper

        return RayMapper() if ray_cpus is None else RayMapper(num_cpus=ray_cpus)
    from genlib.data.build import LocalMapper

    return LocalMapper(int(name.split("-")[1]))


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (pool workers, not Ray's)."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def build_once(raw: Path, out: Path, recipe, name: str, ray_cpus: float | None = None) -> dict:
    """One full build into an empty ``out``; returns its timings and the cores it got."""
    from genlib.data.build import build_corpus

    shutil.rmtree(out, ignore_errors=True)
    mapper = TimedMapper(make_mapper(name, ray_cpus))
    cpu, start = cpu_seconds(), time.perf_counter()
    result = build_corpus(raw, out, recipe, force=True, mapper=mapper, progress=False)
    total = time.perf_counter() - start
    if result.up_to_date:
        raise RuntimeError("build_corpus skipped an up-to-date corpus; nothing was measured")
    n = result.manifest["input_files"]
    return {"seconds": total, "process_seconds": mapper.seconds, "inputs": n, "images_per_s": n / total,
            "cores_used": (cpu_seconds() - cpu) / total}


def summarize(name: str, runs: list[dict]) -> dict:
    """Medians over repeats for one configuration."""
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    n = runs[0]["inputs"]
    return {"mapper": name, "inputs": n, "images_per_s": med("images_per_s"),
            "min_images_per_s": min(r["images_per_s"] for r in runs),
            "max_images_per_s": max(r["images_per_s"] for r in runs),
            "process_images_per_s": n / med("process_seconds"),
            "serial_seconds": med("seconds") - med("process_seconds"),
            "cores_used": None if name == "ray" else med("cores_used"), "runs": runs}


def bench(raw: Path, work: Path, recipe, names: list[str], args: argparse.Namespace) -> list[dict]:
    """Warm up each configuration, then rotate through them ``args.repeats`` times."""
    for name in names:
        for _ in range(args.warmup):
            build_once(raw, work / "out", recipe, name, args.ray_cpus)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(build_once(raw, work / "out", recipe, name, args.ray_cpus))
    rows = [summarize(name, runs[name]) for name in names]
    for row in rows:
        row["speedup"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def start_ray() -> float:
    """Start the embedded local Ray the way ``genlib data build --ray`` does; returns seconds."""
    from genlib.distributed.runtime import init_ray

    start = time.perf_counter()
    init_ray()
    return time.perf_counter() - start




def print_table(rows: list[dict]) -> None:
    """One line per mapper: end-to-end and parallel-phase throughput, serial rest,
    CPU cores the build actually got (n/a for Ray: its workers are not our children), speedup."""
    print(f"{'mapper':<9}{'inputs':>7}  {'img/s (min-max)':<20}{'process img/s':>14}"
          f"{'serial s':>10}{'cores used':>11}{'speedup':>9}")
    for r in rows:
        span = f"{r['images_per_s']:6.0f} ({r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f})"
        cores = "n/a" if r["cores_used"] is None else f"{r['cores_used']:.2f}"
        print(f"{r['mapper']:<9}{r['inputs']:>7}  {span:<20}{r['process_images_per_s']:>14.0f}"
              f"{r['serial_seconds']:>10.2f}{cores:>11}{r['speedup']:>8.2f}x")


def prepare_input(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    """The raw input folder and the seconds it took to draw (0 for ``--input``)."""
    if args.input:
        return Path(args.input), 0.0
    from genlib.demo.faces import generate_demo_faces

    start = time.perf_counter()
    generate_demo_faces(work / "raw", count=args.count, size=args.raw_size)
    return work / "raw", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Prepare the input, run every configuration, print the table, optionally write JSON."""
    args = parse_args(argv)
    from genlib.demo.assets import DEMO_RECIPE
    from genlib.config import from_dict
    from genlib.data.recipe import CorpusRecipe

    recipe = from_dict(CorpusRecipe, {**DEMO_RECIPE, "size": args.size})
    names = [f"local-{w}" for w in args.workers] + (["ray"] if args.ray else [])
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        raw, drew = prepare_input(args, Path(tmp))
        print(f"input {raw} ready in {drew:.0f}s", file=sys.stderr)
        if args.ray:
            info["ray_init_seconds"] = start_ray()
        rows = bench(raw, Path(tmp), recipe, names, args)
    info["loadavg_end"] = os.getloadavg()
    print_table(rows)
    print(f"(median of {args.repeats} builds each, {recipe.size} px output; {info['cpus']} CPUs, "
          f"load average {info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}"
          + (f"; ray.init took {info['ray_init_seconds']:.1f}s, not counted" if args.ray else "")
          + f"; genlib {info['revision']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "build", "args": vars(args), "machine": info,
                                               "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
