"""Scaling experiments: one training config at several worker counts (``genlib scale``).

    genlib scale --config run.toml --workers 1,2,4,8 [--mode strong|weak] [--steps N] [--warmup N] --out DIR

Layout of ``DIR`` (local folder or URI)::

    scaling.json             # SCALING_JSON, the record below
    scaling.html             # the same as tables and plots, for people
    plots/throughput.png     # images/s against workers, with the ideal line
    plots/efficiency.png     # scaling efficiency against workers
    plots/phases.png         # per rank: seconds per step in data / compute / report / other
    runs/{mode}-w{N}/        # one genlib run folder per count (metrics.csv, ranks/rank-NNN.json, ...)

``scaling.json`` (``format`` 1)::

    format, mode, steps, warmup_steps, created_at
    mode             "strong": the config's global batch at every count;
                     "weak": the config's per-worker batch (batch_size / num_workers) at every count
    warmup_steps     steps left out: only log windows starting at or after it count
    config           the base TrainConfig (dict)
    cluster          ray.cluster_resources() when the experiment started
    results          one per worker count, ascending:
      workers, batch_size (global), per_worker_batch, run_dir
      images_per_s   steady state: images / seconds over the kept windows (rank 0's clock)
      step_s         seconds per step at that rate
      speedup        images_per_s / images_per_s at the smallest count
      efficiency     speedup / (workers / smallest count): per-worker throughput kept
                     (the same formula for strong and weak scaling)
      ranks          per rank: rank, node_id, hostname, node_resources, shards (read in
                     epoch 0), and seconds per step over the kept windows: data_s, compute_s
                     (of which allreduce_s was in flight), report_s (metrics, evaluation,
                     samples, checkpoint, ray.train.report), other_s (the rest); final_report_s
                     (the last checkpoint and report, after the last window)

Counts that do not fit the cluster (``num_workers x resources_per_worker`` against
``ray.cluster_resources()``) are refused before any run starts, as is anything
``prepare_run`` refuses for any count.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from typing import Any

from genlib.config import ConfigError, from_dict, to_dict
from genlib.distributed.runtime import ray_session
from genlib.distributed.train import PHASES, prepare_run, rank_record_path, resources_per_worker, run_training
from genlib.storage import Storage, absolute, join
from genlib.train.config import TrainConfig
from genlib.train.report import save_figure
from genlib.train.rundir import read_metrics

SCALING_JSON = "scaling.json"
SCALING_HTML = "scaling.html"
FORMAT = 1
MODES = ("strong", "weak")


# ============================================================================ plan


def parse_workers(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` (sorted, unique); ConfigError for anything else."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ConfigError(f"--workers: expected positive integers separated by commas, got {text!r}")
    return counts


def scale_configs(base: TrainConfig, workers: list[int], mode: str, steps: int, out: str) -> dict[int, TrainConfig]:
    """One TrainConfig per worker count (name ``{mode}-w{N}`` under ``OUT/runs``), each
    checked by ``prepare_run`` (corpus, batch, model) before anything starts."""
    if mode not in MODES:
        raise ConfigError(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    configs = {}
    for n in workers:
        batch = base.batch_size if mode == "strong" else base.per_worker_batch * n
        if batch % n:
            raise ConfigError(f"--workers {n}: the global batch {batch} (strong scaling keeps the config's "
                              f"batch_size) does not split over {n} workers")
        cfg = from_dict(TrainConfig, {**to_dict(base), "num_workers": n, "batch_size": batch, "steps": steps,
                                      "name": f"{mode}-w{n}", "storage_path": join(out, "runs"),
                                      "fail_at_step": 0})
        if Storage(join(out, "runs", cfg.name)).exists():
            raise ConfigError(f"--out {out} already holds runs/{cfg.name}: choose another --out")
        configs[n] = prepare_run(cfg)[0]
    return configs


def check_resources(configs: dict[int, TrainConfig], available: dict[str, float]) -> None:
    """ConfigError naming every count whose ``num_workers x resources_per_worker`` exceeds
    ``available`` (``ray.cluster_resources()``)."""
    refused = []
    for n, cfg in configs.items():
        need = {k: v * n for k, v in resources_per_worker(cfg).items()}
        short = [f"{k} {v:g}" for k, v in need.items() if v > available.get(k, 0.0) + 1e-9]
        if short:
            refused.append(f"{n} workers need {', '.join(short)}")
    if refused:
        have = ", ".join(f"{k} {available.get(k, 0.0):g}" for k in ("CPU", "GPU") if k in available or k == "CPU")
        raise ConfigError(f"--workers: {'; '.join(refused)}, but the Ray cluster has {have} "
                          f"(lower the counts or cpus_per_worker)")


# ============================================================================ run


def run_scaling(base: TrainConfig, workers: list[int], mode: str = "strong", steps: int | None = None,
                warmup: int | None = None, out: str = "scaling", address: str | None = None) -> dict[str, Any]:
    """Train ``base`` at each worker count, one after the other, on one Ray session (the
    embedded one, or the cluster at ``address``/``RAY_ADDRESS``); write and return the record."""
    steps = steps or base.steps
    warmup = base.log_every if warmup is None else warmup
    first = -(-warmup // base.log_every) * base.log_every if warmup > 0 else 0  # first logged step >= warmup
    if warmup < 0 or first >= steps:
        raise ConfigError(f"--warmup {warmup}: must be >= 0 and leave a log window (log_every = {base.log_every}) "
                          f"that starts at or after it, before step {steps}")
    out = absolute(out)
    configs = scale_configs(base, workers, mode, steps, out)
    with ray_session(address):
        import ray  # lazy: heavy; ray_session has started or joined it

        cluster = {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
        check_resources(configs, cluster)
        for n, cfg in configs.items():
            print(f"[scale] {n} worker(s), global batch {cfg.batch_size} ({cfg.per_worker_batch} per worker), "
                  f"{steps} steps", flush=True)
            run_training(cfg)
    record = summarize(configs, mode, steps, warmup, to_dict(base), cluster)
    write_scaling(out, record)
    return record


# ============================================================================ summary


def summarize(configs: dict[int, TrainConfig], mode: str, steps: int, warmup: int, base: dict,
              cluster: dict[str, float]) -> dict[str, Any]:
    """The scaling record (module doc) from the runs' metrics.csv and rank records."""
    results = []
    for n, cfg in configs.items():
        run_dir = join(cfg.storage_path, cfg.name)
        storage = Storage(run_dir)
        ips = steady_images_per_s(read_metrics(storage), cfg.batch_size, warmup)
        ranks = [rank_summary(json.loads(storage.read_text(rank_record_path(r))), warmup) for r in range(n)]
        results.append({"workers": n, "batch_size": cfg.batch_size, "per_worker_batch": cfg.per_worker_batch,
                        "run_dir": run_dir, "images_per_s": ips, "step_s": cfg.batch_size / ips, "ranks": ranks})
    first = results[0]
    for r in results:
        r["speedup"] = r["images_per_s"] / first["images_per_s"]
        r["efficiency"] = r["speedup"] / (r["workers"] / first["workers"])
    return {"format": FORMAT, "mode": mode, "steps": steps, "warmup_steps": warmup, "config": base,
            "cluster": cluster, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "results": results}


def steady_images_per_s(rows: list[dict], batch_size: int, warmup: int) -> float:
    """Images / seconds over the log windows that start at or after ``warmup``
    (a row's window runs from the previous row's step)."""
    images = seconds = 0.0
    previous = 0
    for row in rows:
        step, rate = int(row["step"]), row.get("images_per_s")
        if previous >= warmup and isinstance(rate, (int, float)) and rate > 0:
            images += (step - previous) * batch_size
            seconds += (step - previous) * batch_size / rate
        previous = step
    if not seconds:
        raise ValueError(f"no log window after the {warmup} warm-up steps (log_every too large?)")
    return images / seconds


def rank_summary(record: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Seconds per step in each phase over the rank's windows that start at or after ``warmup``."""
    kept = [w for w in record["windows"] if w["steps"] > 0 and w["step"] - w["steps"] >= warmup]
    steps = sum(w["steps"] for w in kept) or 1
    per_step = {f"{p}_s": sum(w[f"{p}_s"] for w in kept) / steps for p in PHASES}
    busy = per_step["data_s"] + per_step["compute_s"] + per_step["report_s"]
    per_step["other_s"] = max(0.0, sum(w["seconds"] for w in kept) / steps - busy)
    tail = [w for w in record["windows"] if w["steps"] == 0]
    return {"rank": record["rank"], "node_id": record.get("node_id"), "hostname": record.get("hostname"),
            "node_resources": record.get("node_resources", {}), "device": record.get("device"),
            "shards": record.get("shards_by_epoch", {}).get("0", []), "steps": steps, **per_step,
            "final_report_s": tail[-1]["report_s"] if tail else 0.0}


# ============================================================================ files


def write_scaling(out: str, record: dict[str, Any]) -> str:
    """scaling.json, plots/*.png and scaling.html into ``out``; returns the page's path/URI."""
    storage = Storage(out)
    storage.write_text(SCALING_JSON, json.dumps(record, indent=2, sort_keys=True) + "\n")
    plots = plot_scaling(record, storage)
    storage.write_text(SCALING_HTML, _page(record, plots))
    return storage.uri(SCALING_HTML)


def plot_scaling(record: dict[str, Any], storage: Storage) -> list[tuple[str, str]]:
    """Throughput, efficiency and per-rank phase plots; returns (title, relative path) pairs."""
    import matplotlib  # lazy: only writing the page needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    counts = [r["workers"] for r in results]
    ideal = [results[0]["images_per_s"] * n / counts[0] for n in counts]
    written = []
    for title, rel, draw in (
            ("throughput (images/s)", "plots/throughput.png",
             lambda ax: (ax.plot(counts, [r["images_per_s"] for r in results], marker="o", label="measured"),
                         ax.plot(counts, ideal, ls="--", color="grey", label="ideal"))),
            ("scaling efficiency", "plots/efficiency.png",
             lambda ax: (ax.plot(counts, [r["efficiency"] for r in results], marker="o"), ax.set_ylim(0, 1.1))),
            ("seconds per step by phase, per rank", "plots/phases.png", lambda ax: _phase_bars(ax, results))):
        fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
        draw(ax)
        if rel != "plots/phases.png":
            ax.set_xlabel("workers")
            ax.set_xticks(counts)
        ax.set_title(f"{title} ({record['mode']} scaling)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        save_figure(fig, storage, rel)
        written.append((title, rel))
    return written


def _phase_bars(ax, results: list[dict]) -> None:
    """One stacked bar per (count, rank): data, compute, report, other seconds per step."""
    bars = [(f"w{r['workers']} r{k['rank']}", k) for r in results for k in r["ranks"]]
    labels = [label for label, _ in bars]
    bottoms = [0.0] * len(bars)
    for phase in ("data_s", "compute_s", "report_s", "other_s"):
        heights = [k[phase] for _, k in bars]
        ax.bar(labels, heights, bottom=bottoms, label=phase[:-2])
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_ylabel("s / step")
    ax.tick_params(axis="x", labelrotation=90 if len(bars) > 8 else 0, labelsize=7)


def _page(record: dict[str, Any], plots: list[tuple[str, str]]) -> str:
    esc = html.escape
    head = ("<tr><th>workers</th><th>global batch</th><th>per worker</th><th>images/s</th><th>speed-up</th>"
            "<th>efficiency</th><th>s/step</th></tr>")
    rows = "".join(f"<tr><td>{r['workers']}</td><td>{r['batch_size']}</td><td>{r['per_worker_batch']}</td>"
                   f"<td>{r['images_per_s']:.1f}</td><td>{r['speedup']:.2f}x</td><td>{r['efficiency']:.0%}</td>"
                   f"<td>{r['step_s']:.4f}</td></tr>" for r in record["results"])
    rank_head = ("<tr><th>workers</th><th>rank</th><th>node</th><th>data</th><th>compute</th><th>(all-reduce)</th>"
                 "<th>report</th><th>other</th><th>final report</th><th>shards (epoch 0)</th></tr>")
    rank_rows = "".join(
        f"<tr><td>{r['workers']}</td><td>{k['rank']}</td><td>{esc(_node(k))}</td>"
        + "".join(f"<td>{k[p] * 1000:.1f} ms</td>" for p in ("data_s", "compute_s", "allreduce_s", "report_s",
                                                            "other_s"))
        + f"<td>{k['final_report_s']:.2f} s</td><td>{esc(', '.join(k['shards']))}</td></tr>"
        for r in record["results"] for k in r["ranks"])
    figures = "".join(f'<figure><img src="{esc(p)}" alt="{esc(t)}"><figcaption>{esc(t)}</figcaption></figure>'
                      for t, p in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genlib scaling ({esc(record['mode'])})</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
img {{ max-width: 640px; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} th, td {{ text-align: right; padding: 2px 10px; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>{esc(record['mode'].capitalize())} scaling</h1>
<p>{record['steps']} steps per count; throughput and phases over the steps after the first
{record['warmup_steps']} (warm-up). Created {esc(record['created_at'])}.</p>
<table>{head}{rows}</table>
<h2>Where a step's time goes, per rank</h2>
<p>Seconds per step (all-reduce time is in flight during compute, not added to it).</p>
<table>{rank_head}{rank_rows}</table>
{figures}
<h2>Configuration</h2><pre>{esc(json.dumps(record['config'], indent=2, sort_keys=True))}</pre>
</body></html>
"""


def _node(rank: dict) -> str:
    custom = ",".join(sorted(rank.get("node_resources") or {}))
    node = (rank.get("node_id") or "?")[:8]
    return f"{rank.get('hostname') or '?'} {node}" + (f" [{custom}]" if custom else "")


def efficiency_note(record: dict[str, Any]) -> str:
    """One line per count, as the CLI prints it."""
    return "\n".join(f"  {r['workers']:>3} worker(s): {r['images_per_s']:8.1f} images/s, speed-up "
                     f"{r['speedup']:.2f}x, efficiency {r['efficiency']:.0%}" for r in record["results"])


__all__ = ["SCALING_JSON", "SCALING_HTML", "FORMAT", "MODES", "parse_workers", "scale_configs", "check_resources",
           "run_scaling", "summarize", "steady_images_per_s", "rank_summary", "write_scaling", "efficiency_note"]
