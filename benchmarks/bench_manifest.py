#!/usr/bin/env python
"""Nightly-size manifests: the time a rerun takes to decide what to skip, before and after compaction.

Builds an output folder as a nightly job leaves it after many runs: ``--rows`` requests
(default 100000), each with an ``ok`` manifest row, appended as ``--per-part`` rows a part
(default 64, as the driver flushes: 1563 parts), an output file per row in ``images/style/``
(plus its ``.input.png`` companion) and ``--inputs`` distinct input files (default 10000).
Then it times, in the same run:

- **legacy**: what a rerun did before format 2 (reference): every part read whole
  (``pq.read_table`` + ``to_pylist``), latest row per request in Python, one stat per output.
- **before**: ``genlib.render.resume.plan_run`` on the same folder: only the DONE_COLUMNS of
  each part, one listing per kind instead of a stat per output, one stat per distinct input.
- **compaction**: ``genlib.render.manifest.compact_manifest`` (once).
- **after**: ``plan_run`` again, now on one part.
- **gallery**: ``genlib.render.gallery.write_gallery`` of all rows (200 a page), after compaction.

Each timing is the median of ``--repeats`` (default 3) after one untimed warm-up (page cache
warm for all). Every plan must skip all ``--rows`` requests (checked). Reported: seconds and
rows/s of each, and the ratios legacy/before and before/after.

    .venv/bin/python benchmarks/bench_manifest.py --json /tmp/manifest.json
    .venv/bin/python benchmarks/bench_manifest.py --rows 20000 --per-part 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from _common import machine  # benchmarks/_common.py

from genlib.render.config import BackboneChoice, RenderConfig
from genlib.render.gallery import write_gallery
from genlib.render.identity import renderer_id
from genlib.render.manifest import compact_manifest, list_parts, output_path, write_manifest_part
from genlib.render.requests import normalise_requests
from genlib.render.resume import plan_run
from genlib.storage import Storage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="requests (one ok manifest row each)")
    p.add_argument("--per-part", type=int, default=64, help="rows per manifest part (the driver's flush size)")
    p.add_argument("--inputs", type=int, default=10_000, help="distinct input files the requests share")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", help="where to build the folder (default: a temp dir, removed after)")
    p.add_argument("--json", help="write all samples and the machine info here")
    return p.parse_args(argv)


def build(work: Path, args: argparse.Namespace) -> tuple[list[dict], RenderConfig]:
    """Inputs, requests, outputs and a manifest of ``rows`` ok rows in parts of ``per_part``."""
    inputs = work / "inputs"
    inputs.mkdir(parents=True)
    for i in range(args.inputs):
        (inputs / f"in{i:06d}.png").write_bytes(i.to_bytes(4, "little"))
    config = RenderConfig(output=str(work / "out"), style=BackboneChoice("efficientnet_lite0", "none"))
    requests = normalise_requests([{"request_id": f"night-{i:07d}", "kind": "style",
                                    "input": str(inputs / f"in{i % args.inputs:06d}.png"),
                                    "params": {"style": ["starry.jpg"], "seed": i}} for i in range(args.rows)])
    rid = renderer_id(config, "style")
    images = work / "out" / "images" / "style"
    images.mkdir(parents=True)
    rows = []
    for n, r in enumerate(requests):
        stat = os.stat(r["input"])
        rel = output_path("style", r["request_id"], r["params_hash"])
        for name in (rel, rel.replace(".png", ".input.png")):
            (work / "out" / name).write_bytes(b"png")
        rows.append({"request_id": r["request_id"], "kind": "style", "input_uri": r["input"],
                     "input_sha256": hashlib.sha256(Path(r["input"]).read_bytes()).hexdigest(),
                     "input_fingerprint": f"{stat.st_size}:{stat.st_mtime_ns}", "params": r["params"],
                     "params_hash": r["params_hash"], "output_uri": rel, "output_sha256": "0" * 64, "status": "ok",
                     "losses": '{"total": 1.0}', "iterations": 300, "seconds": 20.0, "worker": "host:1",
                     "weights_id": "random", "renderer_id": rid, "run_id": f"run{n // 5000}",
                     "extras": json.dumps({"input": rel.replace(".png", ".input.png")}),
                     "finished_at": f"2026-11-{1 + n // 5000:02d}T00:00:00.{n:06d}+00:00"})
    for p in range(0, len(rows), args.per_part):
        write_manifest_part(config.output, rows[p:p + args.per_part], f"night-{p // args.per_part:05d}")
    return requests, config


def legacy_skip(requests: list[dict], config: RenderConfig) -> int:
    """Format 1's rerun: whole parts read, latest row per id in Python, one stat per output."""
    storage = Storage(config.output)
    latest: dict[str, dict] = {}
    for rel in storage.glob("manifest", "part-*.parquet"):
        for row in pq.read_table(pa.BufferReader(storage.read_bytes(rel))).to_pylist():
            old = latest.get(row["request_id"])
            if old is None or (row["finished_at"] or "") >= (old["finished_at"] or ""):
                latest[row["request_id"]] = row
    done = [r for r in requests if (row := latest.get(r["request_id"])) is not None and row["status"] == "ok"
            and row["params_hash"] == r["params_hash"] and storage.is_file(row["output_uri"])]
    return len(done)


def timed(fn, repeats: int) -> tuple[list[float], object]:
    result = fn()  # warm-up (page cache, imports)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return samples, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-manifest-")
    work = Path(args.workdir or tmp.name)
    print(f"building {args.rows} rows in parts of {args.per_part} under {work} ...", file=sys.stderr)
    start = time.perf_counter()
    requests, config = build(work, args)
    parts = len(list_parts(config.output))
    print(f"  built {parts} parts in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    results: dict[str, list[float]] = {}
    results["legacy"], n = timed(lambda: legacy_skip(requests, config), args.repeats)
    assert n == args.rows, n
    results["before"], plan = timed(lambda: plan_run(requests, config), args.repeats)
    assert len(plan.skipped) == args.rows and not plan.todo
    start = time.perf_counter()
    compacted = compact_manifest(config.output)
    results["compaction"] = [time.perf_counter() - start]
    results["after"], plan = timed(lambda: plan_run(requests, config), args.repeats)
    assert len(plan.skipped) == args.rows and not plan.todo
    results["gallery"], _ = timed(lambda: write_gallery(config.output), 1)
    report(results, args, parts, compacted, info, work)
    if tmp:
        tmp.cleanup()
    return 0


def report(results: dict, args: argparse.Namespace, parts: int, compacted: dict, info: dict, work: Path) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.rows} requests, all done; manifest of {parts} parts x {args.per_part} rows, "
          f"{args.inputs} distinct inputs; median of {args.repeats} (min-max)")
    print(f"{'step':<32} {'seconds':>18} {'rows/s':>10}")
    labels = {"legacy": "legacy skip decision (reference)", "before": "plan_run, before compaction",
              "compaction": "compact_manifest (once)", "after": "plan_run, after compaction",
              "gallery": "write_gallery (all rows, once)"}
    for key, label in labels.items():
        s = results[key]
        spread = f"{med[key]:.3f} ({min(s):.3f}-{max(s):.3f})" if len(s) > 1 else f"{med[key]:.3f}"
        print(f"{label:<32} {spread:>18} {args.rows / med[key]:>10.0f}")
    print(f"\nlegacy / before compaction: {med['legacy'] / med['before']:.2f}x")
    print(f"before / after compaction:  {med['before'] / med['after']:.2f}x")
    print(f"legacy / after compaction:  {med['legacy'] / med['after']:.2f}x")
    info["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "parts": parts, "compacted": compacted,
                                               "samples": results, "machine": info}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
