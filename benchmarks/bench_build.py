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

``--memory`` (issue 13) instead builds 4k and 16k demo faces, each build in its own
child process, with this checkout and with a reference revision of genlib
(``git archive``, default HEAD: run it before committing, or pass the commit
before the change), and reports each build's peak RSS (the driver's own, and the
largest pool worker's), the slope of the driver's peak against the input's
megabytes (target: at most 0.25 MB per MB) and the throughput ratio.

    nice .venv/bin/python benchmarks/bench_build.py --memory --json /tmp/build-memory.json
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
import subprocess
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
    p.add_argument("--repeats", type=int, default=3, help="timed builds per configuration (--memory: per size)")
    p.add_argument("--warmup", type=int, default=1, help="untimed builds per configuration first")
    p.add_argument("--json", metavar="PATH", help="also write all results and samples here")
    p.add_argument("--memory", action="store_true",
                   help="peak memory vs input size: --sizes builds in child processes, this checkout "
                        "vs --reference-rev")
    p.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000], help="--memory: input counts")
    p.add_argument("--reference-rev", default="HEAD", help="--memory: git revision of the reference genlib")
    p.add_argument("--raw-dir", help="--memory: keep the drawn faces here and reuse them on the next run")
    p.add_argument("--child", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)  # one measured build
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


# --------------------------------------------------------------------------- --memory


def demo_recipe(size: int):
    from genlib.demo.assets import DEMO_RECIPE
    from genlib.config import from_dict
    from genlib.data.recipe import CorpusRecipe

    return from_dict(CorpusRecipe, {**DEMO_RECIPE, "size": size})


def child_build(args: argparse.Namespace) -> int:
    """One build in this (child) process; prints its seconds and peak memory as JSON. The
    driver's peak is ru_maxrss (a high-water mark: hence one build per process); the pool
    workers' peaks are their VmHWM, polled while they live (RUSAGE_CHILDREN would also count
    short-lived forks made after torch is imported, which start at the driver's full size)."""
    import threading

    from genlib.data.build import LocalMapper, build_corpus

    import genlib

    peaks = {"worker": 0.0, "tree": 0.0}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_workers, args=(peaks, stop), daemon=True)
    poller.start()
    cpu, start = cpu_seconds(), time.perf_counter()
    result = build_corpus(args.child[0], args.child[1], demo_recipe(args.size), force=True,
                          mapper=LocalMapper(max(args.workers)), progress=False)
    seconds = time.perf_counter() - start
    stop.set()
    poller.join()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu, "inputs": result.manifest["input_files"],
                      "accepted": result.manifest["accepted"], "genlib": genlib.__file__,
                      "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_mb": peaks["worker"] / 1024, "tree_peak_mb": peaks["tree"] / 1024}))
    return 0


def _poll_workers(peaks: dict, stop) -> None:
    """Every 0.1 s: the largest VmHWM of this process's pool workers, and the largest sum of
    the driver's and the workers' VmRSS (kB)."""
    me = os.getpid()
    while not stop.wait(0.1):
        workers = [pid for pid in _children(me) if b"spawn_main" in _read(f"/proc/{pid}/cmdline")]
        for pid in workers:
            peaks["worker"] = max(peaks["worker"], _status_kb(pid, "VmHWM"))
        peaks["tree"] = max(peaks["tree"], _status_kb(me, "VmRSS") + sum(_status_kb(p, "VmRSS") for p in workers))


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        fields = _read(f"/proc/{entry}/stat").rsplit(b")", 1)[-1].split() if entry.isdigit() else []
        if fields[1:2] == [str(pid).encode()]:  # after "pid (comm)": state, ppid
            found.append(int(entry))
    return found


def _status_kb(pid: int, field: str) -> float:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(field.encode() + b":"):
            return float(line.split()[1])
    return 0.0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # the process ended meanwhile
        return b""


def reference_tree(rev: str, work: Path) -> tuple[Path, bool]:
    """genlib/ at ``rev`` extracted under ``work``; also whether it equals this checkout's genlib/."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "genlib"], capture_output=True, check=True)
    (work / "ref").mkdir()
    subprocess.run(["tar", "-x", "-C", str(work / "ref")], input=archive.stdout, check=True)
    same = subprocess.run(["git", "-C", str(root), "diff", "--quiet", rev, "--", "genlib"]).returncode == 0
    return work / "ref", same


def memory_inputs(args: argparse.Namespace, work: Path) -> dict[int, tuple[Path, float]]:
    """count -> (folder holding the first ``count`` drawn faces as hard links, input MB)."""
    from genlib.demo.faces import generate_demo_faces

    raw = Path(args.raw_dir) if args.raw_dir else work / "raw"
    files = sorted(p for p in raw.rglob("*.png")) if raw.is_dir() else []
    if len(files) < max(args.sizes):
        files = generate_demo_faces(raw, count=max(args.sizes), size=args.raw_size)
    inputs = {}
    for count in args.sizes:
        folder = work / f"in-{count}"
        for path in files[:count]:
            link = folder / path.relative_to(raw)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)  # hard links: regular files, and no copy of the bytes
        inputs[count] = (folder, sum(p.stat().st_size for p in files[:count]) / 2**20)
    return inputs


def run_child(code_root: Path | None, raw: Path, out: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(raw), str(out), "--size", str(args.size),
           "--workers", str(max(args.workers))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child build failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_bench(args: argparse.Namespace) -> dict:
    """Both implementations at every size, ``--repeats`` times, alternating which goes first;
    slopes and ratios from the medians."""
    with tempfile.TemporaryDirectory(prefix="bench-build-mem-") as tmp:
        work = Path(tmp)
        ref_root, same = reference_tree(args.reference_rev, work)
        if same:
            print(f"warning: genlib/ at {args.reference_rev} equals this checkout; the reference measures "
                  f"the same code (pass --reference-rev <commit before the change>)", file=sys.stderr)
        inputs = memory_inputs(args, work)
        rows = []
        for r, (i, (count, (raw, mb))) in ((r, x) for r in range(args.repeats) for x in enumerate(inputs.items())):
            impls = [("genlib", None), ("reference", ref_root)]
            for name, root in impls if (r + i) % 2 == 0 else impls[::-1]:
                row = run_child(root, raw, work / "out", args)
                rows.append({"impl": name, "count": count, "input_mb": mb, **row})
                print(f"  {name:<10}{count:>7} inputs {mb:7.1f} MB: {row['seconds']:6.1f}s, driver peak "
                      f"{row['driver_peak_mb']:6.0f} MB, worker peak {row['worker_peak_mb']:5.0f} MB, "
                      f"driver + workers {row['tree_peak_mb']:6.0f} MB", file=sys.stderr)
    medians = [median_row([r for r in rows if (r["impl"], r["count"]) == key])
               for key in sorted({(r["impl"], r["count"]) for r in rows})]
    return {"runs": rows, "rows": medians, "summary": memory_summary(medians)}


def median_row(runs: list[dict]) -> dict:
    """One configuration's runs: median seconds and CPU seconds, largest peaks."""
    row = dict(runs[0])
    for key in ("seconds", "cpu_seconds"):
        row[key] = statistics.median(r[key] for r in runs)
    for key in ("driver_peak_mb", "worker_peak_mb", "tree_peak_mb"):
        row[key] = max(r[key] for r in runs)
    return row


def memory_summary(rows: list[dict]) -> dict:
    """Per implementation: the slope of driver peak MB per input MB between the smallest and
    largest size, and images/s; then genlib's throughput over the reference's."""
    out = {}
    for impl in ("genlib", "reference"):
        mine = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["count"])
        lo, hi = mine[0], mine[-1]
        slope = lambda key: (hi[key] - lo[key]) / (hi["input_mb"] - lo["input_mb"])  # noqa: E731
        out[impl] = {"slope_mb_per_mb": slope("driver_peak_mb"), "sum_slope_mb_per_mb": slope("tree_peak_mb"),
                     "images_per_s": {r["count"]: r["inputs"] / r["seconds"] for r in mine},
                     "cpu_seconds": {r["count"]: r["cpu_seconds"] for r in mine}}
    mine, ref = out["genlib"], out["reference"]
    out["throughput_ratio"] = {c: mine["images_per_s"][c] / ref["images_per_s"][c] for c in mine["images_per_s"]}
    # CPU seconds per build: what a busy shared machine distorts least (wall time waits for other jobs)
    out["cpu_ratio"] = {c: ref["cpu_seconds"][c] / mine["cpu_seconds"][c] for c in mine["cpu_seconds"]}
    return out


def print_memory(result: dict, args: argparse.Namespace) -> None:
    print(f"{'impl':<11}{'inputs':>7}{'input MB':>10}{'driver peak MB':>16}{'worker peak MB':>16}"
          f"{'sum peak MB':>13}{'img/s':>8}{'CPU s':>7}")
    for r in result["rows"]:
        print(f"{r['impl']:<11}{r['count']:>7}{r['input_mb']:>10.1f}{r['driver_peak_mb']:>16.0f}"
              f"{r['worker_peak_mb']:>16.0f}{r['tree_peak_mb']:>13.0f}{r['inputs'] / r['seconds']:>8.0f}"
              f"{r['cpu_seconds']:>7.1f}")
    s = result["summary"]
    for impl in ("genlib", "reference"):
        print(f"{impl}: driver peak grows {s[impl]['slope_mb_per_mb']:.3f} MB per input MB "
              f"(driver + workers: {s[impl]['sum_slope_mb_per_mb']:.3f})")
    ratios = ", ".join(f"{c}: {v:.2f}x" for c, v in s["throughput_ratio"].items())
    cpu = ", ".join(f"{c}: {v:.2f}x" for c, v in s["cpu_ratio"].items())
    print(f"throughput genlib / reference ({args.reference_rev}): {ratios}  (LocalMapper({max(args.workers)}), "
          f"{args.size} px, median of {args.repeats}); CPU efficiency (reference CPU s / genlib CPU s): {cpu}")


def main(argv: list[str] | None = None) -> int:
    """Prepare the input, run every configuration, print the table, optionally write JSON."""
    args = parse_args(argv)
    if args.child:
        return child_build(args)
    if args.memory:
        info = machine()
        result = memory_bench(args)
        info["loadavg_end"] = os.getloadavg()
        print_memory(result, args)
        if args.json:
            record = {"benchmark": "build-memory", "args": vars(args), "machine": info, **result}
            Path(args.json).write_text(json.dumps(record, indent=2))
        return 0
    recipe = demo_recipe(args.size)
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
