"""``report.html`` for a training run: loss curves (PNG) and sample grids."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

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


def plot_metrics(rows: list[dict], storage: Storage) -> list[tuple[str, str]]:
    """One ``plots/*.png`` per metric group that has data; returns (title, relative path) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for title, keys in PLOTS:
        series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if title == "losses" and {"loss_d", "loss_g"} & set(series) or title == "losses" and "nelbo" in series:
            series.pop("loss", None)  # the sum is redundant next to its parts
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        for key, points in series.items():
            ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        rel = "plots/" + title.split(" ")[0] + ".png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        storage.write_bytes(rel, buf.getvalue())
        written.append((title, rel))
    return written


def write_report(run_dir: str | Path) -> str:
    """Write ``plots/*.png`` and ``report.html`` into the run folder (local or
    URI); returns the page's path/URI."""
    run = RunDir(run_dir)
    rows = read_metrics(run.storage)
    plots = plot_metrics(rows, run.storage)
    samples = run.storage.glob(SAMPLES, "step_*.png")
    last = rows[-1] if rows else {}
    name = run.uri.rstrip("/").rsplit("/", 1)[-1]
    run.storage.write_text("report.html", _page(name, run.info(), last, plots, samples))
    return run.storage.uri("report.html")


def _page(name, info, last, plots, samples) -> str:
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
<h2>Curves</h2>{figures or "<p>No metrics logged yet.</p>"}
<h2>Samples (newest first)</h2>{grids or "<p>No samples yet.</p>"}
<h2>Configuration</h2><pre>{esc(json.dumps(info, indent=2, sort_keys=True))}</pre>
</body></html>
"""


def _stem(rel: str) -> str:
    return rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
