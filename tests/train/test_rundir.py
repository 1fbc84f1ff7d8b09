"""Run folders (local path or URI): metrics log, resume truncation, samples, report."""

from __future__ import annotations

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
