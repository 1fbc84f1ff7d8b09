"""Run folders (local path or URI): metrics log, resume truncation, samples, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from genlib.storage import Storage, join
from genlib.train.report import write_report
from genlib.train.rundir import RunDir, read_metrics


@pytest.fixture(params=["path", "uri"])
def run_root(request, tmp_path) -> tuple[str, Path]:
    local = tmp_path / "run"
    return (str(local) if request.param == "path" else "file://" + str(local)), local


def test_metrics_log_resume_and_samples(run_root):
    root, local = run_root
    run = RunDir(root)
    run.init({"train": {"model": {"family": "dcgan"}, "corpus": "c", "num_workers": 2, "batch_size": 8}})
    for step in (10, 20, 30):
        run.log({"step": step, "loss": 1.0 / step, "images_per_s": 100.0})
    run.log({"step": 40, "loss": 0.01, "val_loss": 0.5})  # a new column appears later
    rows = read_metrics(root)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[0]["val_loss"] is None and rows[3]["val_loss"] == 0.5
    again = RunDir(root)
    again.resume_metrics(20)  # resumed from the step-20 checkpoint: later rows go
    assert [r["step"] for r in read_metrics(local)] == [10, 20]
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    rel = again.save_samples(images, 20)
    with Image.open(local / rel) as grid:
        assert grid.mode == "RGB" and grid.width >= 512  # small samples are upscaled for people


def test_report_page_references_existing_images(run_root):
    root, local = run_root
    run = RunDir(root)
    run.init({"train": {"model": {"family": "vae"}, "corpus": "c"}, "corpus_id": "abc"})
    for step in range(1, 6):
        run.log({"step": step, "nelbo": 100.0 - step, "bits_per_dim": 5.0 - step / 10, "grad_norm": 1.0,
                 "images_per_s": 50.0})
        run.save_samples(torch.zeros(4, 3, 8, 8), step)
    page_uri = write_report(root)
    assert page_uri == join(root, "report.html")
    page = (local / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert "plots/losses.png" in sources and "plots/bits.png" in sources
    assert sources.index("samples/step_000005.png") < sources.index("samples/step_000001.png")  # newest first
    for src in sources:
        assert (local / src).is_file(), src
    assert "vae" in page and "abc" in page


def test_storage_round_trip_and_glob(tmp_path):
    store = Storage("file://" + str(tmp_path / "s"))
    assert not store.exists()
    store.write_text("a/b.txt", "hi")
    store.write_bytes("a/c.png", b"\x89PNG")
    assert store.read_text("a/b.txt") == "hi" and store.is_file("a/c.png")
    assert store.glob("a", "*.png") == ["a/c.png"] and store.glob("missing", "*") == []
    assert store.local_path() == tmp_path / "s"
    store.delete("a/b.txt")
    assert not store.is_file("a/b.txt")
    assert not list((tmp_path / "s" / "a").glob("*.tmp"))


# ----------------------------------------------------------------------------- TensorBoard and eval records


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_series(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)]


def eval_record(step: int, sha: str = "a" * 64, **metrics) -> dict:
    return {"format": 1, "family": "dcgan", "step": step, "checkpoint_sha256": sha, "corpus_id": "c",
            "split": "val", **metrics}


@pytest.mark.parametrize("remote", [False, True])
def test_tensorboard_events_hold_scalars_samples_and_eval(tmp_path, remote):
    local = tmp_path / "run"
    run = RunDir("file://" + str(local))
    if remote:  # as behind s3://: the event file is written to a temp folder and uploaded whole
        run.storage.local_path = lambda: None
    run.log({"step": 10, "loss_d": 0.5, "note": "text is skipped"})
    run.log({"step": 20, "loss_d": 0.25})
    run.save_samples(torch.zeros(4, 3, 8, 8), 20)
    run.save_eval(eval_record(20, fd=3.5, completion={"center": {"psnr": 21.0, "n": 4}},
                              feature_net={"name": "efficientnet_lite0", "size": 224}))
    if remote:
        tmp = run.events.tmp
        assert tmp is not None and list(tmp.iterdir())
    run.close()
    assert len(list(local.glob("events.out.tfevents.*"))) == 1
    acc = read_events(local)
    assert scalar_series(acc, "train/loss_d") == [(10, 0.5), (20, 0.25)]
    assert scalar_series(acc, "eval/fd") == [(20, 3.5)]
    assert scalar_series(acc, "eval/completion.center.psnr") == [(20, 21.0)]
    assert {"eval/completion.center.n", "eval/feature_net.size"}.isdisjoint(acc.Tags()["scalars"])  # no settings
    (image,) = acc.Images("samples")
    assert image.step == 20 and image.width == 2 * 8 + 3 * 2  # 2 x 2 tiles of 8 px, 2 px padding
    if remote:
        assert not tmp.exists()


def test_resumed_run_hides_the_events_it_replays(tmp_path):
    first = RunDir(tmp_path)
    for step in (10, 20, 30):
        first.log({"step": step, "loss": float(step)})
    first.close()
    again = RunDir(tmp_path)
    again.resume_metrics(20)  # the step-30 row is gone from metrics.csv, and from TensorBoard
    again.log({"step": 30, "loss": -1.0})
    again.close()
    assert scalar_series(read_events(tmp_path), "train/loss") == [(10, 10.0), (20, 20.0), (30, -1.0)]


def test_eval_records_per_step_merge_and_latest(tmp_path):
    run = RunDir(tmp_path)
    run.save_eval(eval_record(5, fd=10.0))
    run.save_eval(eval_record(5, completion={"half": {"psnr": 20.0}}))  # same evaluation: merged
    merged = json.loads((tmp_path / "eval" / "step_000005.json").read_text())
    assert merged["fd"] == 10.0 and merged["completion"]["half"]["psnr"] == 20.0
    assert not (tmp_path / "eval" / "replaced").exists()  # nothing changed: nothing kept aside
    run.save_eval(eval_record(5, sha="b" * 64, fd=7.0))  # other weights at that step: replaced
    replaced = json.loads((tmp_path / "eval" / "step_000005.json").read_text())
    assert replaced["fd"] == 7.0 and "completion" not in replaced
    kept = [json.loads(p.read_text()) for p in (tmp_path / "eval" / "replaced").glob("step_000005-*.json")]
    assert kept == [merged]  # the training-time figures are kept, not lost
    run.save_eval(eval_record(5, sha="b" * 64, fd=7.0))  # the same figures again: nothing more kept
    assert len(list((tmp_path / "eval" / "replaced").iterdir())) == 1
    run.save_eval(eval_record(2, fd=float("nan")))  # older step evaluated later: eval.json is the latest call
    assert json.loads((tmp_path / "eval.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "eval" / "step_000002.json").read_text())["fd"] is None  # strict JSON
    (tmp_path / "eval" / "step_000009.json").write_text("{not json")  # a broken file does not break readers
    assert [r["step"] for r in run.evals()] == [2, 5]


def test_report_plots_eval_metrics_and_shows_baselines(tmp_path):
    run = RunDir(tmp_path)
    run.init({"train": {"model": {"family": "pixelrnn"}, "corpus": "c"}})
    for step in (100, 200):
        run.log({"step": step, "loss": 1.0, "bits_per_dim": 3.0})
        run.save_eval({**eval_record(step), "family": "pixelrnn", "bits_per_dim": 4.0 - step / 100,
                       "baseline_uniform_bpd": 7.459, "baseline_unigram_bpd": 5.25, "nll_nats": 900.0})
    run.close()
    page = Path(write_report(str(tmp_path))).read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert {"plots/eval-bpd.png", "plots/eval-nats.png"} <= set(sources)
    assert "plots/eval-fd.png" not in sources  # no FD in a PixelRNN's records
    for src in sources:
        assert (tmp_path / src).is_file(), src
    row = re.search(r"<tr><th>bits_per_dim</th><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert row and row.group(1) == "2" and row.group(2) == "uniform 7.459, unigram 5.25"
