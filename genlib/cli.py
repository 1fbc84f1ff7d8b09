"""The ``genlib`` command line.

    genlib data build INPUT --recipe datasets/pokemon.toml --out corpora/pokemon [--set size=32] [--ray]
    genlib data info CORPUS
    genlib data demo-raw OUT [--count N]
    genlib train --config run.toml [--corpus DIR] [--set steps=500] [--resume RUN_DIR]
    genlib scale --config run.toml --workers 1,2,4 [--mode strong|weak] [--steps N] [--warmup N] --out DIR
    genlib report RUN_DIR
    genlib eval RUN_DIR [--checkpoint DIR] [--corpus DIR --split NAME] [--samples N] [--completion]
    genlib render --requests requests.parquet [--config render.toml] [--set actors=4]
    genlib render --kind style --input photos/ --params '{"style": ["starry.jpg"]}' --output renders/
    genlib demo [--workdir runs/demo]

Errors the user can fix (missing input, bad config, existing output) print one
clear line and exit 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from genlib.config import ConfigError, load_config
from genlib.data.build import BuildResult, CorpusExistsError, EmptyCorpusError, LocalMapper, build_corpus
from genlib.data.corpus import open_corpus
from genlib.data.recipe import CorpusRecipe
from genlib.demo.faces import generate_demo_faces
from genlib.distributed.build import RayMapper
from genlib.distributed.render import run_render
from genlib.distributed.runtime import set_verbose
from genlib.distributed.scale import efficiency_note, parse_workers, run_scaling
from genlib.distributed.train import resume_config, run_training
from genlib.eval.run import EvalConfig, evaluate_run
from genlib.eval.record import dumps as eval_json
from genlib.pipeline import PipelineConfig, build_demo_corpus, run_pipeline
from genlib.render.config import RenderConfig
from genlib.render.kinds import KINDS
from genlib.render.manifest import compact_manifest
from genlib.render.requests import load_requests, requests_from_inputs
from genlib.storage import Storage
from genlib.train.config import TrainConfig
from genlib.train.report import write_report
from genlib.train.rundir import RUN_JSON

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UserError(Exception):
    """A problem with the user's input: printed without a traceback."""


# Errors a user can fix: one line on stderr, exit 2 (RequestError, CheckpointError are among them).
USER_ERRORS = (UserError, ConfigError, FileNotFoundError, ValueError, CorpusExistsError, EmptyCorpusError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        set_verbose(True)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except USER_ERRORS as exc:
        print(f"genlib: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C: what was finished is saved (renders say how much); no traceback
        print(f"genlib: {exc or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genlib", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="also show Ray's own log lines and worker output")
    sub = parser.add_subparsers(title="commands")
    _add_data(sub)
    _add_train(sub)
    _add_scale(sub)
    _add_render(sub)
    _add_eval(sub)
    demo = sub.add_parser("demo", help="demo faces -> corpus -> DCGAN -> renders -> report.html, on local Ray")
    demo.add_argument("--workdir", default="runs/demo", help="where everything is written (default: runs/demo)")
    demo.add_argument("--count", type=int, default=512, help="number of demo faces to draw")
    demo.add_argument("--steps", type=int, default=300, help="DCGAN training steps (0: build the corpus only)")
    demo.add_argument("--workers", type=int, default=1, help="DDP ranks for training")
    demo.add_argument("--force", action="store_true", help="delete the workdir first (a fresh run)")
    demo.set_defaults(func=cmd_demo)
    pipe = sub.add_parser("pipeline", help="build -> train -> render -> report, from a PipelineConfig file")
    pipe.add_argument("--config", help="PipelineConfig (TOML/YAML), see genlib/pipeline.py")
    pipe.add_argument("--workdir", help="output folder (overrides the config)")
    pipe.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pipe.add_argument("--ray-address", default=None, help="Ray address (default: RAY_ADDRESS or embedded)")
    pipe.set_defaults(func=cmd_pipeline)
    return parser


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="build and inspect corpora").add_subparsers(title="data commands")
    build = data.add_parser("build", help="raw images (folder/zip/tar) -> WebDataset shards + index")
    build.add_argument("input", help="folder, .zip or .tar(.gz) of raw images")
    build.add_argument("--recipe", help="recipe file (TOML/YAML), e.g. datasets/pokemon.toml")
    build.add_argument("--out", required=True, help="corpus folder to create")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field, e.g. --set size=32 --set palette.colors=176")
    build.add_argument("--force", action="store_true", help="rebuild an existing, out-of-date corpus")
    build.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    build.add_argument("--ray", action="store_true", help="process images as Ray tasks (cluster builds)")
    build.add_argument("--ray-address", default=None, help="Ray address (default: RAY_ADDRESS or embedded)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=cmd_data_build)
    info = data.add_parser("info", help="print a corpus's manifest summary")
    info.add_argument("corpus")
    info.set_defaults(func=cmd_data_info)
    raw = data.add_parser("demo-raw", help="draw the procedural cartoon-face demo images")
    raw.add_argument("out")
    raw.add_argument("--count", type=int, default=512)
    raw.add_argument("--seed", type=int, default=0)
    raw.set_defaults(func=cmd_data_demo_raw)


def _add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """The arguments ``load_train_config`` reads (genlib train and genlib scale)."""
    parser.add_argument("--config", help="run config (TOML/YAML): a TrainConfig, see genlib/train/config.py")
    parser.add_argument("--corpus", help="corpus folder (overrides the config's corpus)")
    parser.add_argument("--model", help="model family: dcgan, vae or pixelrnn (overrides model.family)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set steps=500 --set model.ngf=32")


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train DCGAN / VAE / PixelRNN with Ray Train (DDP)")
    _add_train_config_args(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its latest checkpoint")
    train.add_argument("--force-corpus", action="store_true",
                       help="with --resume: continue even though the corpus differs from the one trained on")
    train.add_argument("--ray-address", default=None, help="Ray address (default: RAY_ADDRESS or embedded)")
    train.set_defaults(func=cmd_train)
    report = sub.add_parser("report", help="(re)write a run's report.html")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)


def _add_render(sub) -> None:
    kinds = ", ".join(f"{k.name} ({k.summary})" for k in KINDS.values())
    render = sub.add_parser("render", help="batch renders on Ray Data: " + kinds)
    render.add_argument("--requests", help="request table (.parquet/.csv/.jsonl): request_id, kind, input, params")
    render.add_argument("--kind", choices=list(KINDS), help="build requests on the fly")
    render.add_argument("--input", action="append", default=[], help="input image or folder (with --kind)")
    render.add_argument("--params", default="{}", help="JSON params for every on-the-fly request")
    render.add_argument("--config", help="render config (TOML/YAML): a RenderConfig, see genlib/render/config.py")
    render.add_argument("--output", help="output folder or URI (overrides the config)")
    render.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    render.add_argument("--ray-address", default=None, help="Ray address (default: RAY_ADDRESS or embedded)")
    render.add_argument("--compact", action="store_true",
                        help="compact the manifest (alone: only that; with requests: after rendering)")
    render.set_defaults(func=cmd_render)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="measure a run's checkpoint on held-out images (FD/KID, IWAE, bits/dim, "
                                     "completion) -> RUN_DIR/eval.json")
    ev.add_argument("run_dir", help="training run folder (path or URI)")
    ev.add_argument("--checkpoint", help="checkpoint folder to evaluate (default: the run's newest complete one)")
    ev.add_argument("--corpus", help="corpus folder (default: the one the model was trained on)")
    ev.add_argument("--split", choices=["test", "val", "train"],
                    help="default: test if non-empty, else val, else train")
    ev.add_argument("--samples", type=int, default=EvalConfig.samples,
                    help=f"cap on images generated/compared/evaluated/completed (default {EvalConfig.samples})")
    ev.add_argument("--iterations", type=int, default=EvalConfig.iterations,
                    help=f"z-search iterations per completion (default {EvalConfig.iterations})")
    ev.add_argument("--completion", action="store_true", help="DCGAN: also measure mask completion vs baselines")
    ev.add_argument("--feature-net", default=EvalConfig.feature_net, help="efficientnet_lite0 (offline) or "
                                                                         "inception_v3 (torchvision weights)")
    ev.add_argument("--feature-weights", default="default", metavar="PATH",
                    help="state dict of the feature network (offline inception_v3), default: its own")
    ev.add_argument("--iwae-k", type=int, default=None, help="VAE importance samples (default 64 GPU, 16 CPU)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    config = EvalConfig(split=args.split, samples=args.samples, iterations=args.iterations,
                        completion=args.completion, feature_net=args.feature_net,
                        feature_weights=args.feature_weights, iwae_k=args.iwae_k,
                        seed=args.seed, progress=not args.quiet)
    print(eval_json(evaluate_run(args.run_dir, checkpoint=args.checkpoint, corpus=args.corpus, config=config,
                                 device=args.device)), end="")
    return 0


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_render(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"output={_toml_str(args.output)}"] if args.output else [])
    config = load_config(RenderConfig, args.config, overrides + (["compact=true"] if args.compact else []))
    if args.compact and not (args.requests or args.kind):
        print(f"compacted {config.output}/manifest/: {compact_manifest(config.output)}")
        return 0
    if bool(args.requests) == bool(args.kind):
        raise UserError("give either --requests FILE or --kind with --input")
    requests = (load_requests(args.requests) if args.requests
                else requests_from_inputs(args.kind, args.input, args.params))
    print(run_render(requests, config, address=args.ray_address))
    return 0


def resume_train_config(args: argparse.Namespace) -> TrainConfig:
    """``--resume RUN_DIR``: the run's stored config; only ``--set steps=N`` may change it."""
    keys = [item.split("=", 1)[0].strip() for item in args.overrides]
    other = [k for k in keys if k != "steps"] + [f"--{flag}" for flag in ("config", "corpus", "model")
                                                  if getattr(args, flag)]
    if other:
        raise UserError(f"--resume continues a run with the config it was started with; only --set steps=N "
                        f"(to extend it) may be given, not {', '.join(other)}")
    steps = load_config(TrainConfig, None, [o for o in args.overrides]).steps if keys else None
    return resume_config(args.resume, steps)


def load_train_config(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.corpus:
        overrides.append(f"corpus={_toml_str(args.corpus)}")
    if args.model:
        overrides.append(f"model.family={_toml_str(args.model)}")
    return load_config(TrainConfig, args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resume_train_config(args) if args.resume else load_train_config(args)
    outcome = run_training(cfg, resume=args.resume, address=args.ray_address, force_corpus=args.force_corpus)
    print(f"trained to step {outcome.step}: {outcome.run_dir}")
    print(f"checkpoint: {outcome.checkpoint}")
    print(f"report:     {outcome.report}")
    return 0


def _add_scale(sub) -> None:
    scale = sub.add_parser("scale", help="train one config at several worker counts -> scaling.json/.html")
    _add_train_config_args(scale)
    scale.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated (default 1,2,4,8)")
    scale.add_argument("--mode", choices=["strong", "weak"], default="strong",
                       help="strong: the config's global batch; weak: its per-worker batch (default strong)")
    scale.add_argument("--steps", type=int, help="steps per count (default: the config's steps)")
    scale.add_argument("--warmup", type=int, help="leading steps left out of the figures (default: log_every)")
    scale.add_argument("--out", required=True, help="output folder (scaling.json, scaling.html, runs/)")
    scale.add_argument("--ray-address", default=None, help="Ray address (default: RAY_ADDRESS or embedded)")
    scale.set_defaults(func=cmd_scale)


def cmd_scale(args: argparse.Namespace) -> int:
    record = run_scaling(load_train_config(args), parse_workers(args.workers), mode=args.mode, steps=args.steps,
                         warmup=args.warmup, out=args.out, address=args.ray_address)
    print(f"{record['mode']} scaling, steady state after {record['warmup_steps']} steps:")
    print(efficiency_note(record))
    print(f"scaling: {args.out}/scaling.json, {args.out}/scaling.html")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if not Storage(args.run_dir).is_file(RUN_JSON):
        raise UserError(f"not a genlib run folder (no {RUN_JSON}): {args.run_dir}")
    print(write_report(args.run_dir))
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    recipe = load_config(CorpusRecipe, args.recipe, args.overrides)
    mapper = RayMapper(address=args.ray_address) if args.ray else LocalMapper(args.workers)
    start = time.perf_counter()
    result = build_corpus(args.input, args.out, recipe, force=args.force, mapper=mapper,
                          progress=not args.quiet)
    seconds = time.perf_counter() - start
    print(result.summary())
    if not result.up_to_date:
        n = result.manifest["input_files"]
        print(f"  built in {seconds:.1f}s ({n / max(seconds, 1e-9):.0f} input files/s)")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    corpus = open_corpus(args.corpus)
    print(BuildResult(corpus.root, corpus.manifest).summary())
    print(f"  image {corpus.image_size}x{corpus.image_size}, palette "
          f"{'none' if corpus.palette is None else len(corpus.palette)} colours")
    return 0


def cmd_data_demo_raw(args: argparse.Namespace) -> int:
    paths = generate_demo_faces(args.out, count=args.count, seed=args.seed)
    print(f"wrote {len(paths)} demo faces under {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main command: everything from nothing, with no download."""
    work = Path(args.workdir)
    if args.force:
        shutil.rmtree(work, ignore_errors=True)
    cfg = PipelineConfig(workdir=str(work), count=args.count, steps=args.steps, train_workers=args.workers)
    if not args.steps:  # corpus only
        build_demo_corpus(cfg)
        return 0
    run_pipeline(cfg)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"workdir={_toml_str(args.workdir)}"] if args.workdir else [])
    run_pipeline(load_config(PipelineConfig, args.config, overrides), address=args.ray_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
