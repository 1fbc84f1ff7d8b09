"""Ray Train runs: failure + resume exactness, 1-vs-2 worker parity, run folder.

These start real Ray Train worker groups on an embedded local Ray (CPU, gloo);
each fit costs ~30 s of Ray start-up on a 2-core machine, so runs are tiny.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from genlib.cli import main
from genlib.config import ConfigError, from_dict, to_dict
from genlib.data.corpus import open_corpus
from genlib.data.recipe import PaletteConfig, ShardConfig
from genlib.distributed.train import FAIL_MARKER, CorpusChanged, prepare_run, run_training
from genlib.models.registry import build_family
from genlib.train.checkpoint import load_checkpoint, save_state
from genlib.train.config import TrainConfig
from genlib.train.rundir import RunDir
from tests.conftest import build, faces_recipe

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def dcgan_cfg(corpus: Path, storage: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), storage_path=str(storage), steps=12, batch_size=8, num_workers=1,
                cpus_per_worker=1.0, loader_workers=0, log_every=2, checkpoint_every=4, sample_every=6,
                sample_count=4, eval_batches=1, keep_checkpoints=2,
                model={"family": "dcgan", "ngf": 8, "ndf": 8, "nz": 16})
    base.update(kw)
    return from_dict(TrainConfig, base)


def metric_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def final_state(outcome) -> dict:
    return load_checkpoint(outcome.checkpoint).state


def assert_same_weights(a: dict, b: dict) -> None:
    for family_part in ("networks", "optimizers"):
        flat_a = _flatten(a["family"][family_part])
        flat_b = _flatten(b["family"][family_part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), key


def _flatten(tree, prefix="") -> dict[str, torch.Tensor]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}{i}."))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tree
    return out


def test_worker_failure_and_explicit_resume_match_an_uninterrupted_run(faces_corpus, tmp_path, local_ray):
    straight = run_training(dcgan_cfg(faces_corpus, tmp_path, name="straight"))
    assert straight.step == 12

    # Rank 0 dies hard at step 6; Ray Train restarts the group from the step-4 checkpoint.
    # Its rank 0 also runs genlib eval every 4 steps: that must not change the training either.
    crashed = run_training(dcgan_cfg(faces_corpus, tmp_path, name="crashed", fail_at_step=6, max_failures=1,
                                     eval_every=4, eval_samples=4))
    assert (Path(crashed.run_dir) / FAIL_MARKER).read_text() == "6"
    assert crashed.step == 12
    rows = metric_rows(crashed.run_dir)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]  # no repeated, no skipped steps in the log
    assert [r["step"] for r in rows if r.get("q_fd")] == ["4", "8", "12"]
    assert sorted(p.name for p in (Path(crashed.run_dir) / "eval").glob("step_*.json")) == [
        "step_000004.json", "step_000008.json", "step_000012.json"]
    record = json.loads((Path(crashed.run_dir) / "eval.json").read_text())
    assert record["step"] == 12 and record["n_fake"] == 4 and record["fd"] == pytest.approx(float(rows[-1]["q_fd"]))
    assert_same_weights(final_state(crashed), final_state(straight))

    # A run stopped at step 8, continued with --resume to step 12.
    run_training(dcgan_cfg(faces_corpus, tmp_path, name="stopped", steps=8))
    resumed = run_training(dcgan_cfg(faces_corpus, tmp_path, steps=12), resume=str(tmp_path / "stopped"))
    assert resumed.step == 12 and resumed.run_dir == str(tmp_path / "stopped")
    assert_same_weights(final_state(resumed), final_state(straight))

    # Run folder contents: log, sample grids, kept checkpoints, report.
    run = Path(straight.run_dir)
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000006.png", "step_000012.png"]
    assert len([p for p in run.glob("checkpoint_*") if p.is_dir()]) == 2  # keep_checkpoints
    page = (run / "report.html").read_text()
    assert "plots/losses.png" in page and "samples/step_000012.png" in page
    for src in ("plots/losses.png", "samples/step_000012.png"):
        assert (run / src).is_file()
    row = metric_rows(run)[-1]
    assert float(row["images_per_s"]) > 0 and "val_loss_d" in row and "grad_norm_g" in row


@pytest.fixture(scope="module")
def palette_corpus(raw_faces, tmp_path_factory) -> Path:
    """16 train samples of 8x8 palette indices (8 colours) in 8 shards."""
    out = tmp_path_factory.mktemp("pal") / "c"
    recipe = faces_recipe(size=8, val_fraction=0.0, palette=PaletteConfig(colors=8, sample_pixels=2000),
                          shards=ShardConfig(min_shards=8))
    src = tmp_path_factory.mktemp("raw16")
    for p in sorted(raw_faces.rglob("*.png"))[:16]:
        (src / p.name).write_bytes(p.read_bytes())
    build(src, out, recipe)
    return out


def test_one_and_two_workers_give_matching_losses(palette_corpus, tmp_path, local_ray):
    """Global batch = the whole 16-sample split, so both runs see identical data;
    DDP's gradient averaging must then reproduce the single-worker update."""
    model = {"family": "pixelrnn", "variant": "pixelcnn", "hidden": 8, "layers": 1, "embed": 4, "first_kernel": 3}
    import signal

    losses = {}
    before = signal.getsignal(signal.SIGINT)
    for workers in (1, 2):
        cfg = from_dict(TrainConfig, dict(
            corpus=str(palette_corpus), storage_path=str(tmp_path), name=f"w{workers}", steps=3, batch_size=16,
            num_workers=workers, cpus_per_worker=0.5, loader_workers=0, log_every=1, checkpoint_every=3,
            sample_every=3, sample_count=2, eval_batches=1, model=model))
        outcome = run_training(cfg)
        losses[workers] = [float(r["loss"]) for r in metric_rows(outcome.run_dir)]
        assert "val_bits_per_dim" in metric_rows(outcome.run_dir)[-1]
        assert signal.getsignal(signal.SIGINT) is before  # Ray Train's run-abort handler is not left behind
    assert losses[1][0] == pytest.approx(losses[2][0], rel=1e-5)   # same data, same init
    assert losses[1][1] == pytest.approx(losses[2][1], rel=1e-4)   # after one DDP step
    assert losses[1][2] == pytest.approx(losses[2][2], rel=1e-4)
    assert losses[1][2] < losses[1][0]


def test_evaluation_is_collective_safe_when_batchnorm_syncs(faces_corpus, tmp_path, local_ray):
    """Issue 12. On GPUs BatchNorm is SyncBatchNorm: a train-mode forward (D in
    evaluation) is a collective. The stand-in does the same on CPU; evaluation on rank 0
    alone left it waiting for rank 1 (a hang, here cut at collective_timeout_s).
    Also checks the per-rank records: phase timing, BatchNorm kind, disjoint shards."""
    cfg = dcgan_cfg(faces_corpus, tmp_path, name="syncbn", num_workers=2, cpus_per_worker=0.5, steps=6,
                    checkpoint_every=2, sample_every=3, eval_batches=2, sync_bn_standin=True,
                    collective_timeout_s=60, max_failures=0, eval_every=6, eval_samples=4)
    outcome = run_training(cfg)
    assert outcome.step == 6
    rows = metric_rows(outcome.run_dir)
    assert [r["step"] for r in rows if r["val_loss_d"]] == ["2", "4", "6"]  # evaluated at every checkpoint
    assert all(0 < float(r["val_d_real"]) < 1 for r in rows if r["val_loss_d"])
    assert (Path(outcome.run_dir) / "samples" / "step_000006.png").is_file()  # sampling: rank 0, eval mode
    assert [r["step"] for r in rows if r.get("q_fd")] == ["6"]  # genlib eval on rank 0, the other waits
    for r in rows:  # phase columns: per-step seconds averaged over ranks
        assert float(r["time_compute_s"]) > 0 and float(r["time_allreduce_s"]) > 0
        assert float(r["time_data_s"]) >= 0 and float(r["time_report_s"]) >= 0
    records = [json.loads((Path(outcome.run_dir) / "ranks" / f"rank-00{k}.json").read_text()) for k in (0, 1)]
    assert [rec["rank"] for rec in records] == [0, 1]
    assert all(rec["batchnorm"] == ["CollectiveBatchNorm2d"] for rec in records)
    assert sum(w["steps"] for w in records[1]["windows"]) == 6
    for epoch in ("0", "1"):  # each rank read its own shards; together, the whole split
        mine, theirs = (set(rec["shards_by_epoch"][epoch]) for rec in records)
        assert mine and theirs and not mine & theirs
        assert mine | theirs == {f"t-train-00000{i}.tar" for i in range(4)}


# ------------------------------------------------------------------ fail fast, no Ray needed


def test_bad_runs_fail_before_any_worker_starts(faces_corpus, tmp_path):
    ok = dict(corpus=str(faces_corpus), storage_path=str(tmp_path), batch_size=8)
    with pytest.raises(ConfigError, match="unknown model 'gan' .known: dcgan, vae, pixelrnn"):
        prepare_run(from_dict(TrainConfig, {**ok, "model": {"family": "gan"}}))
    with pytest.raises(ConfigError, match="needs a palette corpus"):
        prepare_run(from_dict(TrainConfig, {**ok, "model": {"family": "pixelrnn"}}))
    with pytest.raises(ConfigError, match=r"model.image_size = 64 does not match corpus"):
        prepare_run(from_dict(TrainConfig, {**ok, "model": {"family": "dcgan", "image_size": 64}}))
    with pytest.raises(ConfigError, match="model: DCGANConfig.ngf: must be an integer >= 1, got -1"):
        prepare_run(from_dict(TrainConfig, {**ok, "model": {"family": "dcgan", "ngf": -1}}))
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        prepare_run(from_dict(TrainConfig, {**ok, "corpus": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="no corpus given"):
        prepare_run(from_dict(TrainConfig, {"storage_path": str(tmp_path)}))
    with pytest.raises(ValueError, match="cannot fill one batch of 64"):
        prepare_run(from_dict(TrainConfig, {**ok, "batch_size": 64}))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists: pass --resume"):
        prepare_run(from_dict(TrainConfig, {**ok, "name": "taken"}))
    with pytest.raises(ConfigError, match="not a genlib run folder"):
        prepare_run(from_dict(TrainConfig, ok), resume=str(tmp_path / "taken"))
    with pytest.raises(ConfigError, match="TrainConfig.batch_size: must be divisible by num_workers = 2, got 9"):
        from_dict(TrainConfig, {**ok, "batch_size": 9, "num_workers": 2})


def test_resume_refuses_another_corpus_unless_forced(faces_corpus, tmp_path, capsys):
    """Issue 10: --resume compares the corpus the run was trained on (newest complete
    checkpoint, else run.json) with the corpus now at the stored path."""
    now = open_corpus(faces_corpus).corpus_id
    cfg, run_dir, info = prepare_run(dcgan_cfg(faces_corpus, tmp_path, name="r"))
    RunDir(run_dir).init({**info, "corpus_id": "0123456789abcdef"})  # a run made on another corpus
    with pytest.raises(CorpusChanged, match=f"trained on corpus 0123456789abcdef, but the corpus at .* is now {now}; "
                                            "pass --force-corpus"):  # a ConfigError the demo can tell apart
        prepare_run(cfg, resume=run_dir)
    assert main(["train", "--resume", run_dir]) == 2  # before any Ray: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("genlib: error: --resume") and err.count("\n") == 1
    assert "0123456789abcdef" in err and now in err

    _, _, forced = prepare_run(cfg, resume=run_dir, force_corpus=True)
    assert forced["corpus_id"] == now and forced["previous_corpus_ids"] == ["0123456789abcdef"]
    assert forced["train"] == RunDir(run_dir).info()["train"]

    # The newest complete checkpoint names what the weights saw; it wins over run.json.
    RunDir(run_dir).init(info)
    folder = Path(run_dir) / "checkpoint_2026-01-01_00-00-00.000000"
    folder.mkdir()
    save_state(build_family(cfg.model, open_corpus(faces_corpus), "cpu"), 4, to_dict(cfg), "fedcba9876543210",
               None, folder)
    with pytest.raises(ConfigError, match="trained on corpus fedcba9876543210"):
        prepare_run(cfg, resume=run_dir)
    save_state(build_family(cfg.model, open_corpus(faces_corpus), "cpu"), 4, to_dict(cfg), now, None, folder)
    assert prepare_run(cfg, resume=run_dir)[2] == RunDir(run_dir).info()  # same corpus: resumes, run.json kept


def test_resume_takes_the_stored_config_and_only_steps(faces_corpus, tmp_path, capsys):
    """--set steps=1000 (TrainConfig's default value) is honoured; other changes are refused."""
    from genlib.cli import build_parser, main, resume_train_config

    cfg, run_dir, info = prepare_run(dcgan_cfg(faces_corpus, tmp_path, name="stored", steps=8))
    RunDir(run_dir).init(info)
    parse = lambda *extra: build_parser().parse_args(["train", "--resume", run_dir, *extra])  # noqa: E731
    assert resume_train_config(parse()).steps == 8                       # finish the run as started
    assert resume_train_config(parse("--set", "steps=1000")).steps == 1000  # extend it, even to the default
    assert resume_train_config(parse("--set", "steps=20")).model == cfg.model
    assert main(["train", "--resume", run_dir, "--set", "model.ngf=4", "--set", "steps=20"]) == 2
    assert "only --set steps=N (to extend it) may be given, not model.ngf" in capsys.readouterr().err
    assert main(["train", "--resume", run_dir, "--corpus", str(faces_corpus)]) == 2
    assert "not --corpus" in capsys.readouterr().err


def test_eval_every_on_a_split_too_small_is_refused_before_training(faces_corpus, tmp_path):
    """faces_corpus holds 4 held-out images: precision/recall (k = 3) need 4; 3 samples are too few."""
    with pytest.raises(ValueError, match="needs at least 4 held-out images; split 'val' .* gives 3"):
        prepare_run(dcgan_cfg(faces_corpus, tmp_path, eval_every=4, eval_samples=3))
    prepare_run(dcgan_cfg(faces_corpus, tmp_path, eval_every=4, eval_samples=4))  # enough
