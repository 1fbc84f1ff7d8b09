"""Helpers of experiments/run.sh: log steps, write request tables, gather a summary.

    collect.py step OUT_DIR LABEL SECONDS COMMAND          # one line of OUT_DIR/steps.jsonl
    collect.py requests FILE KIND CORPUS SPLIT N PARAMS    # N requests over the first N samples of SPLIT
    collect.py explore FILE RUN FAMILY [RUN_2D CORPUS]     # latent-exploration requests of a run
    collect.py summary OUT_DIR                             # OUT_DIR/summary.json (+ a Markdown digest)
    collect.py figures OUT DEST                            # the pictures of RESULTS.md, from OUT into DEST
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from statistics import median_high

import numpy as np
from PIL import Image

from genlib.data.corpus import open_corpus
from genlib.eval.completion import harmonic_fill, mean_fill
from genlib.images import encode_png, image_grid, zoom
from genlib.train.rundir import RunDir, read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import machine as bench_machine  # noqa: E402  (benchmarks/ is not a package)

COMPLETION_MASKS = ("center", "half", "random_blocks")


def step(out: str, label: str, seconds: str, command: str) -> None:
    with open(Path(out) / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": label, "seconds": int(seconds), "command": command}) + "\n")


def keys(corpus: str, split: str, n: int) -> list[str]:
    index = open_corpus(corpus).index().to_pylist()
    return [r["key"] for r in index if r["split"] == split][:n]


def requests(path: str, kind: str, corpus: str, split: str, n: str, params: str) -> None:
    rows = []
    for i, key in enumerate(keys(corpus, split, int(n))):
        p = {**json.loads(params), "seed": i}
        if kind == "complete":
            p["mask"] = COMPLETION_MASKS[i % len(COMPLETION_MASKS)]
        rows.append({"request_id": f"{kind}-{split}-{key}", "kind": kind,
                     "input": f"corpus://{Path(corpus).resolve()}#{key}", "params": p})
    _write(path, rows)


def explore(path: str, run: str, family: str, run_2d: str | None = None, corpus: str | None = None) -> None:
    rows = [{"request_id": f"{family}-traverse", "kind": "explore", "input": run,
             "params": {"mode": "traverse", "seeds": [3], "dims": [0, 1, 2, 3], "steps": 9, "zoom": 2}}]
    if family == "dcgan":
        rows += [{"request_id": "dcgan-interpolate", "kind": "explore", "input": run,
                  "params": {"mode": "interpolate", "seeds": [0, 1], "path": "slerp", "steps": 10, "zoom": 2}},
                 {"request_id": "dcgan-arithmetic", "kind": "explore", "input": run,
                  "params": {"mode": "arithmetic", "groups": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                             "signs": [1, -1, 1], "zoom": 2}}]
    else:
        faces = [f"corpus://{Path(corpus).resolve()}#{k}" for k in keys(corpus, "test", 2)]
        rows += [{"request_id": "vae-interpolate", "kind": "explore", "input": run,
                  "params": {"mode": "interpolate", "images": faces, "path": "linear", "steps": 10, "zoom": 2}}]
    if run_2d:
        rows.append({"request_id": "vae2d-grid", "kind": "explore", "input": run_2d,
                     "params": {"mode": "grid", "steps": 12, "zoom": 2}})
    _write(path, rows)


def _write(path: str, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def summary(out: str) -> None:
    root = Path(out)
    steps = [json.loads(line) for line in (root / "steps.jsonl").read_text().splitlines() if line]
    runs = {}
    for run in sorted(p for p in (root / "runs").glob("*") if (p / "run.json").is_file()):
        rows = read_metrics(run)
        evals = RunDir(run).evals()
        runs[run.name] = {"steps": rows[-1]["step"] if rows else 0,
                          "images_per_s": median_high([r["images_per_s"] for r in rows if r.get("images_per_s")] or [None]),
                          "eval": evals, "last_metrics": rows[-1] if rows else {}}
    data = {"experiment": root.name, "machine": machine(), "steps": steps, "runs": runs}
    (root / "summary.json").write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    total = sum(s["seconds"] for s in steps)
    print(f"== {root.name}: {total} s in all; summary: {root / 'summary.json'}")
    for name, run in runs.items():
        last = run["eval"][-1] if run["eval"] else {}
        shown = {k: last[k] for k in ("fd", "kid", "precision", "recall", "iwae_nats", "elbo_nats", "bits_per_dim",
                                      "baseline_uniform_bpd", "baseline_unigram_bpd") if k in last}
        print(f"   {name}: step {run['steps']}, {shown}")


def machine() -> dict:
    """benchmarks/_common.py's machine record (python, torch, revision with +dirty, load at
    the start), plus the CPU model and the load when the summary is written."""
    info = {**bench_machine(), "loadavg": os.getloadavg()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


# ----------------------------------------------------------------------------- figures


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _save(dest: Path, name: str, image: np.ndarray) -> None:
    """PNG, or JPEG (quality 90) for the photo-like grids whose PNG would weigh hundreds of kB."""
    dest.mkdir(parents=True, exist_ok=True)
    if name.endswith(".jpg"):
        Image.fromarray(image).save(dest / name, format="JPEG", quality=90)
    else:
        (dest / name).write_bytes(encode_png(image))
    print(f"   {dest / name} {image.shape[1]}x{image.shape[0]}, {(dest / name).stat().st_size // 1024} kB")


def _samples_over_training(run: Path, steps: list[int]) -> np.ndarray | None:
    """The sample grids of the listed steps, side by side (same seed: the same z in each)."""
    rows = []
    for s in steps:
        path = run / "samples" / f"step_{s:06d}.png"
        if not path.is_file():
            return None
        rows.append(_load(path))
    height = max(r.shape[0] for r in rows)
    pad = np.full((height, 8, 3), 255, np.uint8)
    out = []
    for r in rows:
        out += [np.pad(r, ((0, height - r.shape[0]), (0, 0), (0, 0)), constant_values=255), pad]
    return np.concatenate(out[:-1], axis=1)


def _completion_strip(renders: Path, factor: int = 3) -> np.ndarray | None:
    """Per completion: masked input | mean fill | harmonic fill | genlib | ground truth."""
    rows = []
    for final in sorted((renders / "images" / "complete").glob("*.masked_input.png")):
        stem = final.name[: -len(".masked_input.png")]
        truth = _load(final.with_name(stem + ".input.png"))
        known = _load(final.with_name(stem + ".mask.png"))[..., 0] >= 128
        ours = _load(final.with_name(stem + ".png"))
        rows += [_load(final), mean_fill(truth, known), harmonic_fill(truth, known), ours, truth]
    return zoom(image_grid(rows, columns=5), factor) if rows else None


def figures(out: str, dest: str) -> None:
    """The pictures RESULTS.md shows, from the experiments under ``out``."""
    root, dest_dir = Path(out), Path(dest)
    for exp, run, steps, rows in (("dcgan-faces32", "dcgan", [250, 750, 2000], None),
                                  ("dcgan-pokemon64", "dcgan", [250, 750, 1500], 4)):
        grid = _samples_over_training(root / exp / "runs" / run, steps)
        if grid is not None:  # rows: keep the top rows of each grid (4 of 8 rows: 32 samples)
            _save(dest_dir, f"{exp}-samples.jpg", grid if rows is None else grid[: rows * (grid.shape[0] // 8) + 2])
    for exp, run, plot in (("dcgan-faces32", "dcgan", "eval-fd"), ("vae-faces32", "vae", "eval-nats")):
        path = root / exp / "runs" / run / "plots" / f"{plot}.png"
        if path.is_file():
            _save(dest_dir, f"{exp}-{plot}.png", _load(path))
    strip = _completion_strip(root / "dcgan-faces32" / "renders")
    if strip is not None:
        _save(dest_dir, "dcgan-faces32-completion.png", strip)
    for exp in ("dcgan-faces32", "vae-faces32"):
        for path in sorted((root / exp / "renders" / "images" / "explore").glob("*.png")):
            name = path.name.rsplit("-", 1)[0]  # without the params hash
            _save(dest_dir, f"{exp}-{name}." + ("jpg" if name.endswith("grid") else "png"), _load(path))
    pixel = root / "pixelrnn-pokemon20"
    for variant in ("row_lstm", "pixelcnn", "diagonal_bilstm"):
        samples = sorted((pixel / "runs" / variant / "samples").glob("step_*.png"))
        if samples:
            _save(dest_dir, f"pixelrnn-{variant}-samples.png", _load(samples[-1]))
    finals = [p for p in sorted((pixel / "renders" / "images" / "pixel_complete").glob("*.png"))
              if p.name.count(".") == 1]  # not the companions
    if finals:
        _save(dest_dir, "pixelrnn-pixel_complete.png", image_grid([_load(p) for p in finals], columns=1))


if __name__ == "__main__":
    commands = {"step": step, "requests": requests, "explore": explore, "summary": summary, "figures": figures}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
