"""``report.html`` for a training run: loss curves (PNG), eval metrics over steps with
their baselines, and sample grids."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Callable

from genlib.eval.record import BASELINES, scalars
from genlib.storage import Storage
from genlib.train.rundir import SAMPLES, RunDir, read_metrics

# Metric groups plotted together, by family (the first present group wins per plot).
PLOTS = [
    ("losses", ["loss_d", "loss_g", "nelbo", "recon", "kl", "nll_nats", "loss"]),
    ("bits per dim", ["bits_per_dim", "val_bits_per_dim"]),
    ("discriminator", ["d_real", "d_fake"]),
    ("gradient norms", ["grad_norm_d", "grad_norm_g", "grad_norm"]),
    ("throughput (images/s)", ["images_per_s"]),
    ("validation", ["val_loss", "val_nelbo", "val_nll_nats", "val_loss_d"]),
]

# Eval records (flattened: "completion.center.psnr"): (title, file stem, which keys).
EVAL_PLOTS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("eval: Frechet distance", "eval-fd", lambda k: k == "fd"),
    ("eval: KID", "eval-kid", lambda k: k == "kid"),
    ("eval: precision and recall", "eval-pr", lambda k: k in ("precision", "recall")),
    ("eval: NLL bounds (nats per image)", "eval-nats", lambda k: k in ("elbo_nats", "iwae_nats", "nll_nats")),
    ("eval: bits per dim (with baselines)", "eval-bpd", lambda k: "bits_per_dim" in k or k.endswith("_bpd")),
    ("eval: completion PSNR in the hole (dB)", "eval-psnr", lambda k: k.startswith("completion.") and ".psnr" in k),
    ("eval: completion SSIM in the hole", "eval-ssim", lambda k: k.startswith("completion.") and ".ssim" in k),
]


def plot_metrics(rows: list[dict], storage: Storage) -> list[tuple[str, str]]:
    """One ``plots/*.png`` per metric group that has data; returns (title, relative path) pairs."""
    written = []
    for title, keys in PLOTS:
        series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if title == "losses" and {"loss_d", "loss_g"} & set(series) or title == "losses" and "nelbo" in series:
            series.pop("loss", None)  # the sum is redundant next to its parts
        if series:
            written.append(_plot(title, series, storage, "plots/" + title.split(" ")[0] + ".png"))
    return written


def plot_evals(records: list[dict], storage: Storage) -> list[tuple[str, str]]:
    """One ``plots/eval-*.png`` per eval metric group present in the records (by step)."""
    flat = [(r["step"], dict(scalars(r))) for r in records]
    written = []
    for title, stem, wanted in EVAL_PLOTS:
        keys = sorted({k for _, values in flat for k in values if wanted(k)})
        series = {k: [(step, values[k]) for step, values in flat if k in values] for k in keys}
        if series:
            written.append(_plot(title, series, storage, f"plots/{stem}.png"))
    return written


def _plot(title: str, series: dict[str, list[tuple[int, float]]], storage: Storage, rel: str) -> tuple[str, str]:
    """Draw ``series`` (name -> [(step, value)]) into ``rel``; baselines dashed."""
    import matplotlib  # heavy import: only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for key, points in series.items():
        dashed = "baseline" in key or "mean_fill" in key or "harmonic" in key
        ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None,
                linestyle="--" if dashed else "-")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, storage, rel)
    return title, rel


def save_figure(fig, storage: Storage, rel: str) -> None:
    """Lay out a matplotlib figure, write it as PNG to ``storage/rel`` and close it."""
    import matplotlib.pyplot as plt  # lazy: heavy, and only reports draw

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    storage.write_bytes(rel, buf.getvalue())


def write_report(run_dir: str | Path) -> str:
    """Write ``plots/*.png`` and ``report.html`` into the run folder (local or
    URI); returns the page's path/URI."""
    run = RunDir(run_dir)
    rows = read_metrics(run.storage)
    evals = run.evals()
    plots = plot_metrics(rows, run.storage) + plot_evals(evals, run.storage)
    samples = run.storage.glob(SAMPLES, "step_*.png")
    last = rows[-1] if rows else {}
    name = run.uri.rstrip("/").rsplit("/", 1)[-1]
    page = _page(name, run.info(), last, plots, samples, _eval_section(evals[-1] if evals else None))
    run.storage.write_text("report.html", page)
    return run.storage.uri("report.html")


def _eval_section(record: dict | None) -> str:
    """The newest eval record as a table: metric, value, the baselines measured beside it."""
    esc = html.escape
    if record is None:
        return "<p>No evaluation yet (<code>genlib eval RUN_DIR</code>).</p>"
    values = dict(scalars(record))
    shown = {b for names in BASELINES.values() for b in names}
    rows = []
    for key, value in values.items():
        metric = key.rsplit(".", 1)[-1]
        if metric in shown:
            continue
        prefix = key[: len(key) - len(metric)]
        base = [f"{_baseline_name(b, metric)} {_fmt(values[prefix + b])}"
                for b in BASELINES.get(metric, ()) if prefix + b in values]
        rows.append(f"<tr><th>{esc(key)}</th><td>{esc(_fmt(value))}</td><td>{esc(', '.join(base))}</td></tr>")
    net = record.get("feature_net")
    about = (f"step {record.get('step')}, split <code>{esc(str(record.get('split')))}</code> of "
             f"<code>{esc(str(record.get('corpus')))}</code>"
             + (f", features: {esc(str(net.get('name')))} ({esc(str(net.get('weights')))}; not comparable "
                f"with published Inception FIDs unless it is inception_v3)" if isinstance(net, dict) else ""))
    return (f"<p>{about}</p><table class=\"eval\"><tr><th>metric</th><th>value</th><th>baselines</th></tr>"
            f"{''.join(rows)}</table>")


def _page(name, info, last, plots, samples, evaluation) -> str:
    esc = html.escape
    cfg = info.get("train", {})
    summary = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in last.items())
    figures = "".join(f'<figure><img src="{esc(p)}" alt="{esc(t)}">'
                      f"<figcaption>{esc(t)}</figcaption></figure>" for t, p in plots)
    grids = "".join(f'<figure><img class="grid" src="{esc(p)}" alt="samples {esc(_stem(p))}">'
                    f'<figcaption>{esc(_stem(p).replace("_", " "))}</figcaption></figure>'
                    for p in reversed(samples))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genlib run {esc(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
img {{ max-width: 600px; border: 1px solid #ddd; }} img.grid {{ image-rendering: pixelated; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 12px 2px 0; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>Run {esc(name)}</h1>
<p>Model <b>{esc(str(cfg.get("model", {}).get("family", "?")))}</b> on corpus
<code>{esc(str(cfg.get("corpus", "?")))}</code> ({esc(str(info.get("corpus_id", "?")))}),
{esc(str(cfg.get("num_workers", "?")))} worker(s), global batch {esc(str(cfg.get("batch_size", "?")))}.</p>
<h2>Latest metrics</h2><table>{summary}</table>
<h2>Evaluation (newest)</h2>{evaluation}
<h2>Curves</h2>{figures or "<p>No metrics logged yet.</p>"}
<h2>Samples (newest first)</h2>{grids or "<p>No samples yet.</p>"}
<h2>Configuration</h2><pre>{esc(json.dumps(info, indent=2, sort_keys=True))}</pre>
</body></html>
"""


def _baseline_name(key: str, metric: str) -> str:
    """``baseline_unigram_bpd`` -> ``unigram``, ``psnr_mean_fill`` -> ``mean fill``."""
    for part in ("baseline_", "_bpd", metric + "_"):
        key = key.replace(part, "")
    return key.replace("_", " ")


def _stem(rel: str) -> str:
    return rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
