"""Fault injection for batch renders: every promise of a nightly job, one test each.

Without Ray (fast): huge params and slow rows fail alone naming the cap, FIFO and
oversized inputs fail their row, a 300-character id renders and shows in the gallery,
CSV ids stay text, mixed-kind JSONL keeps each row's params, unreadable manifest parts
are skipped with a warning, a different backbone/weights/checkpoint or changed input
bytes make a rerun render again, attempt records bound retries, the hard watchdog
kills a stuck process (in a subprocess), progress frames become an animation.

With Ray (slow): an actor killed on every attempt, a driver interrupted mid-render,
a row stuck outside the optimiser.
"""

from __future__ import annotations

import _thread
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from genlib import cli
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.render.attempts import ATTEMPTS_DIR, AttemptLog
from genlib.render.completion import CompletionSettings
from genlib.render.config import BackboneChoice, RenderConfig
from genlib.render.gallery import write_gallery
from genlib.render.kinds import KINDS
from genlib.render.limits import RenderLimits
from genlib.render.manifest import ManifestWarning, read_manifest, write_manifest_part
from genlib.render.requests import load_requests, normalise_requests
from genlib.render.resume import plan_run
from genlib.render.runner import RenderRunner

ROOT = Path(__file__).resolve().parents[2]
LITE = BackboneChoice("efficientnet_lite0", "none")  # random init: fast, needs no weights


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("faults-inputs")
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(6):
        arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"photo{i}.png")
        paths[f"photo{i}"] = str(d / f"photo{i}.png")
    return paths


def dcgan_run(folder: Path, seed: int, name: str = "checkpoint_2026-01-01_00-00-00.000000") -> Path:
    """A run folder with one (format 1) checkpoint of a tiny random DCGAN."""
    cfg = DCGANConfig(image_size=32, ngf=8, ndf=8, nz=16)
    torch.manual_seed(seed)
    ckpt = folder / name
    ckpt.mkdir(parents=True)
    torch.save({"family": DCGAN(cfg).state_dict(), "step": seed, "train": {}, "corpus_id": "test",
                "model_config": dataclasses.asdict(cfg)}, ckpt / "state.pt")
    return folder


def config(out: Path, **kw) -> RenderConfig:
    kw = {"style": LITE, "deepdream": LITE, "actors": 2, "cpus_per_actor": 0.5, **kw}
    return RenderConfig(output=str(out), **kw)


def dream(rid: str, image: str, **params) -> dict:
    return {"request_id": rid, "kind": "deepdream", "input": image,
            "params": {"octaves": 1, "iterations": 2, "size": 40, "jitter": 4, **params}}


def render_plain(requests: list[dict], cfg: RenderConfig, part: str):
    """What run_render does, without Ray: plan, render what is left, append a manifest part."""
    plan = plan_run(normalise_requests(requests), cfg)
    rows = RenderRunner(cfg).render_rows(plan.todo)
    if rows:
        write_manifest_part(cfg.output, rows, part)
    return plan, {r["request_id"]: r for r in rows}


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("kind, params, message", [
    ("style", {"iterations": 10 ** 9}, "StyleParams.iterations: must be <= 10000 (limits.max_iterations)"),
    ("style", {"size": 100000}, "StyleParams.size: must be <= 4096 (limits.max_side), got 100000"),
    ("style", {"style_scale": 1e6}, "StyleParams.style_scale: must keep style_scale x size <= 4096"),
    ("deepdream", {"octaves": 10 ** 9}, "DreamParams.octaves: must be <= 12 (limits.max_octaves)"),
    ("deepdream", {"jitter": 10 ** 9}, "DreamParams.jitter: must be <= 4096 (limits.max_side)"),
    ("deepdream", {"tile": 100000}, "DreamParams.tile: must be <= 4096 (limits.max_side)"),
    ("complete", {"restarts": 10 ** 7}, "CompletionParams.restarts: must be <= 64 (limits.max_restarts)"),
    ("complete", {"iterations": 10 ** 9}, "CompletionParams.iterations: must be <= 10000"),
])
def test_huge_params_fail_their_row_alone_naming_the_cap(kind, params, message, images, tmp_path):
    extra = {"style": [images["photo1"]]} if kind == "style" else {}
    rows = normalise_requests([{"request_id": "huge", "kind": kind, "input": images["photo0"],
                                "params": {**extra, **params}}, dream("fine", images["photo0"])])
    start = time.perf_counter()
    huge, fine = RenderRunner(config(tmp_path)).render_rows(rows)
    assert huge["status"] == "failed" and message in huge["error"], huge["error"]
    assert fine["status"] == "ok"
    assert time.perf_counter() - start < 60  # the huge row was refused, not started


def test_every_kind_with_params_checks_limits():
    """New kinds add check_limits too (the runner calls it when the params class has one)."""
    for kind in KINDS.values():
        assert callable(getattr(kind.params, "check_limits", None)), kind.name


def test_a_row_past_max_seconds_stops_and_fails_alone(images, tmp_path):
    cfg = config(tmp_path, limits=RenderLimits(max_seconds=1.0))
    rows = normalise_requests([dream("slow", images["photo0"], iterations=10000, size=64),
                               dream("fine", images["photo1"])])
    start = time.perf_counter()
    slow, fine = RenderRunner(cfg).render_rows(rows)
    assert slow["status"] == "failed" and "exceeded limits.max_seconds (1 s)" in slow["error"]
    assert 1.0 <= slow["seconds"] < 10 and time.perf_counter() - start < 30
    assert fine["status"] == "ok"


def test_a_fifo_or_oversized_input_fails_its_row_without_blocking(images, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody ever writes: reading it would block the actor for ever
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(big)
    cfg = config(tmp_path / "out", limits=RenderLimits(max_input_bytes=10_000, max_pixels=50_000))
    rows = normalise_requests([dream("fifo", str(fifo)), dream("bytes", images["photo0"]),
                               dream("pixels", str(big))])
    noisy = tmp_path / "noisy.png"
    Image.fromarray((np.random.default_rng(1).random((200, 200, 3)) * 255).astype(np.uint8)).save(noisy)
    rows[1] = normalise_requests([dream("bytes", str(noisy))])[0]  # ~120 kB of noise > 10 kB
    fifo_row, bytes_row, pixels_row = RenderRunner(cfg).render_rows(rows)
    assert fifo_row["status"] == "failed" and "a FIFO, not a regular file" in fifo_row["error"]
    assert bytes_row["status"] == "failed" and "larger than limits.max_input_bytes (10000 bytes)" in bytes_row["error"]
    assert pixels_row["status"] == "failed" and "300x300 image is larger than limits.max_pixels" in pixels_row["error"]


# ----------------------------------------------------------------------------- names and request tables


def test_a_300_character_id_renders_and_shows_in_the_gallery(images, tmp_path):
    cfg = config(tmp_path)
    long_id = "nightly/" + "x" * 292
    _, rows = render_plain([dream(long_id, images["photo0"]), dream("short", images["photo1"])], cfg, "r1")
    row = rows[long_id]
    assert row["status"] == "ok", row["error"]
    name = Path(row["output_uri"]).name
    assert len(name) < 120 and "~" in name and "/" not in name
    assert (tmp_path / row["output_uri"]).is_file()
    page = Path(write_gallery(str(tmp_path), [long_id, "short"])).read_text()
    assert long_id in page and page.count('<tr class="ok">') == 2
    assert f'src="{row["output_uri"]}"' in page


def test_csv_ids_stay_text_and_jsonl_params_stay_per_row(tmp_path):
    (tmp_path / "r.csv").write_text('request_id,kind,input,params\n007,deepdream,x.png,{}\n1e3,deepdream,y.png,\n')
    rows = load_requests(str(tmp_path / "r.csv"))
    assert [r["request_id"] for r in rows] == ["007", "1e3"]
    lines = [{"request_id": "s", "kind": "style", "input": "a.png", "params": {"style": ["p.png"], "iterations": 5}},
             {"request_id": 8, "kind": "deepdream", "input": "b.png", "params": {"octaves": 2}},
             {"request_id": "c", "kind": "complete", "input": "c.png", "params": '{"mask": "half"}'}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    rows = load_requests(str(tmp_path / "r.jsonl"))
    assert [json.loads(r["params"]) for r in rows] == [{"iterations": 5, "style": ["p.png"]}, {"octaves": 2},
                                                       {"mask": "half"}]
    assert rows[1]["request_id"] == "8"
    (tmp_path / "bad.jsonl").write_text('{"request_id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2 is not valid JSON"):
        load_requests(str(tmp_path / "bad.jsonl"))


# ----------------------------------------------------------------------------- manifest parts


def test_zero_byte_and_corrupt_parts_are_skipped_with_a_warning(images, tmp_path):
    cfg = config(tmp_path)
    render_plain([dream("a", images["photo0"])], cfg, "r1")
    (tmp_path / "manifest" / "part-r2-00000.parquet").write_bytes(b"")
    (tmp_path / "manifest" / "part-r3-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.warns(ManifestWarning) as caught:
        plan, rows = render_plain([dream("a", images["photo0"]), dream("b", images["photo1"])], cfg, "r4")
    messages = " ".join(str(w.message) for w in caught)
    assert "part-r2-00000.parquet" in messages and "part-r3-00000.parquet" in messages
    assert [r["request_id"] for r in plan.skipped] == ["a"] and list(rows) == ["b"]
    with pytest.warns(ManifestWarning):
        assert set(read_manifest(cfg.output)) == {"a", "b"}


# ----------------------------------------------------------------------------- what "done" means


def test_changed_input_bytes_render_again_but_a_touch_does_not(images, tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(Path(images["photo0"]).read_bytes())
    cfg = config(tmp_path / "out")
    requests = [dream("a", str(src)), dream("b", images["photo1"])]
    first, _ = render_plain(requests, cfg, "r1")
    assert len(first.todo) == 2
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10 ** 9))  # same bytes, new mtime: rehashed, still done
    assert [r["request_id"] for r in plan_run(normalise_requests(requests), cfg).todo] == []
    src.write_bytes(Path(images["photo2"]).read_bytes())  # new bytes
    again, rows = render_plain(requests, cfg, "r2")
    assert [r["request_id"] for r in again.todo] == ["a"]
    assert rows["a"]["input_sha256"] != read_manifest(cfg.output)["b"]["input_sha256"]


def test_another_backbone_or_weights_file_renders_again(images, tmp_path):
    requests = [dream("a", images["photo0"])]
    cfg = config(tmp_path)
    render_plain(requests, cfg, "r1")
    assert plan_run(normalise_requests(requests), cfg).todo == []
    weights = tmp_path / "lite0.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    for other in (BackboneChoice("efficientnet_lite0", str(weights)), BackboneChoice("vgg19", "none")):
        todo = plan_run(normalise_requests(requests), config(tmp_path, deepdream=other)).todo
        assert [r["request_id"] for r in todo] == ["a"], other
    torch.save({"w": torch.ones(1)}, weights)  # same path, other bytes: another renderer
    a = plan_run(normalise_requests(requests), config(tmp_path, deepdream=BackboneChoice("efficientnet_lite0",
                                                                                          str(weights))))
    torch.save({"w": torch.zeros(1)}, weights)
    b = plan_run(normalise_requests(requests), config(tmp_path, deepdream=BackboneChoice("efficientnet_lite0",
                                                                                          str(weights))))
    assert a.renderer_ids["deepdream"] != b.renderer_ids["deepdream"]


def test_a_newer_completion_checkpoint_renders_again(images, tmp_path):
    run = dcgan_run(tmp_path / "run", seed=0)
    cfg = config(tmp_path / "out", complete=CompletionSettings(str(run)))
    requests = [{"request_id": "c", "kind": "complete", "input": images["photo0"],
                 "params": {"iterations": 3, "restarts": 2}}]
    first, rows = render_plain(requests, cfg, "r1")
    assert rows["c"]["status"] == "ok", rows["c"]["error"]
    assert plan_run(normalise_requests(requests), cfg).todo == []
    dcgan_run(run, seed=1, name="checkpoint_2026-02-01_00-00-00.000000")  # training wrote a newer one
    again = plan_run(normalise_requests(requests), cfg)
    assert [r["request_id"] for r in again.todo] == ["c"]
    assert again.renderer_ids["complete"] != first.renderer_ids["complete"]


def test_rows_of_the_previous_manifest_version_render_once_more(tmp_path):
    """v1 rows have no renderer_id: they cannot show the same renderer made them."""
    import shutil

    shutil.copytree(ROOT / "tests" / "fixtures" / "v1" / "renders", tmp_path / "out")
    row = read_manifest(str(tmp_path / "out"))["complete-a"]
    assert row["renderer_id"] is None and row["extras"] is None and row["run_id"] is None


# ----------------------------------------------------------------------------- attempts and the watchdog


def test_attempt_records_bound_retries_and_keep_finished_rows(images, tmp_path):
    cfg = config(tmp_path, max_attempts=3)
    rows = normalise_requests([dream("poison", images["photo0"]), dream("done", images["photo1"]),
                               dream("stuck", images["photo2"])])
    log = AttemptLog(cfg.output, "run1")
    for _ in range(3):
        log.begin("poison")  # three actors died on it
    finished = {**RenderRunner(cfg).render_row(rows[1]), "worker": "earlier-actor"}
    log.begin("done")
    log.finish(finished)  # finished before its batch's actor died
    log.begin("stuck")
    log.give_up("stuck", "exceeded limits.max_seconds (1 s) ...: its actor was killed")
    poison, done, stuck = RenderRunner(cfg, run_id="run1").render_rows(rows)
    assert poison["status"] == "failed" and poison["error"] == "actor died 3 times rendering this row"
    assert done == finished  # returned as it was, not rendered again
    assert stuck["status"] == "failed" and "its actor was killed" in stuck["error"]
    assert len(log.finished_rows()) == 3
    log.remove()
    assert not (tmp_path / ATTEMPTS_DIR / "run1").exists()


WATCHDOG_SCRIPT = """
import sys
from genlib.render.config import BackboneChoice, RenderConfig
from genlib.render.limits import RenderLimits
from genlib.render.requests import normalise_requests
from genlib.render.runner import RenderRunner
cfg = RenderConfig(output=sys.argv[1], hang_on_request="hang", deepdream=BackboneChoice("efficientnet_lite0", "none"),
                   limits=RenderLimits(max_seconds=0.5, grace_seconds=0.5))
row = normalise_requests([{"request_id": "hang", "kind": "deepdream", "input": sys.argv[2], "params": {}}])[0]
RenderRunner(cfg, run_id="run1", watchdog=True).render_row(row)
print("not reached")
"""


def test_the_watchdog_kills_a_stuck_process_and_the_row_is_failed_for_good(images, tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WATCHDOG_SCRIPT, str(tmp_path), images["photo0"]],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and "not reached" not in proc.stdout, proc.stderr
    assert "hang: exceeded limits.max_seconds (0.5 s)" in proc.stderr
    assert time.perf_counter() - start < 60
    row = normalise_requests([dream("hang", images["photo0"])])[0]
    again = RenderRunner(config(tmp_path), run_id="run1").render_row(row)  # the next actor
    assert again["status"] == "failed" and "did not stop within limits.grace_seconds (0.5 s)" in again["error"]


# ----------------------------------------------------------------------------- progress animation


def test_progress_frames_become_an_animation_listed_in_extras(images, tmp_path):
    cfg = config(tmp_path)
    _, rows = render_plain([dream("anim", images["photo0"], iterations=4, snapshot_every=1)], cfg, "r1")
    extras = json.loads(rows["anim"]["extras"])
    assert set(extras) >= {"input", "progress"}
    with Image.open(tmp_path / extras["progress"]) as anim:
        assert getattr(anim, "n_frames", 1) >= 2 and anim.size == (40, 33)
    for rel in extras.values():
        assert (tmp_path / rel).is_file()
    page = Path(write_gallery(str(tmp_path), ["anim"])).read_text()
    assert f'src="{extras["progress"]}"' in page


# ----------------------------------------------------------------------------- console


def test_an_interrupted_cli_render_says_so_in_one_line(monkeypatch, capsys, tmp_path, images):
    from genlib.distributed.render import RenderInterrupted

    def interrupted(*args, **kwargs):
        raise RenderInterrupted("interrupted: 3 finished row(s) are in x/manifest/; run the same command again")

    monkeypatch.setattr(cli, "run_render", interrupted)
    code = cli.main(["render", "--kind", "deepdream", "--input", images["photo0"], "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines() == [
        "genlib: interrupted: 3 finished row(s) are in x/manifest/; run the same command again"]


# ----------------------------------------------------------------------------- with Ray


def part_ids(out: Path) -> list[str]:
    return [i for p in sorted((out / "manifest").glob("part-*.parquet"))
            for i in pq.read_table(p).column("request_id").to_pylist()]


@pytest.mark.slow
def test_a_job_with_a_deadly_row_and_a_stuck_row_ends_with_both_failed_and_the_rest_ok(images, tmp_path, local_ray):
    """r2 kills its actor on every attempt (retried on fresh actors, then failed); r4 hangs outside
    the optimiser (the watchdog kills its actor, the row fails without a retry). r3 shares r2's batch."""
    from genlib.distributed.render import run_render

    requests = normalise_requests([dream(f"r{i}", images[f"photo{i}"]) for i in range(6)])
    cfg = config(tmp_path, batch_size=2, max_attempts=2, die_on_request="r2", die_on_request_always=True,
                 hang_on_request="r4", limits=RenderLimits(max_seconds=1, grace_seconds=1))
    summary = run_render(requests, cfg, progress=False)
    assert (summary.ok, summary.failed) == (4, 2)
    rows = read_manifest(cfg.output)
    assert rows["r2"]["status"] == "failed" and rows["r2"]["error"] == "actor died 2 times rendering this row"
    assert rows["r4"]["status"] == "failed" and "exceeded limits.max_seconds (1 s)" in rows["r4"]["error"] \
        and "its actor was killed" in rows["r4"]["error"]
    assert all(rows[f"r{i}"]["status"] == "ok" for i in (0, 1, 3, 5))
    assert sorted(part_ids(tmp_path)) == sorted(rows)  # one row per request: none lost, none twice
    assert not (tmp_path / ATTEMPTS_DIR).exists() or not any((tmp_path / ATTEMPTS_DIR).iterdir())


@pytest.mark.slow
def test_a_deadly_row_late_in_a_batch_does_not_use_up_its_neighbours_attempts(images, tmp_path, local_ray):
    """r3 dies after r0..r2 of its batch were taken on: each retry renders the charged rows alone,
    so they finish and only r3 is failed (max_attempts = 2)."""
    from genlib.distributed.render import run_render

    requests = normalise_requests([dream(f"r{i}", images[f"photo{i}"]) for i in range(6)])
    cfg = config(tmp_path, actors=1, cpus_per_actor=1.0, batch_size=4, max_attempts=2, die_on_request="r3",
                 die_on_request_always=True)
    summary = run_render(requests, cfg, progress=False)
    rows = read_manifest(cfg.output)
    assert rows["r3"]["status"] == "failed" and rows["r3"]["error"] == "actor died 2 times rendering this row"
    assert (summary.ok, summary.failed) == (5, 1), {k: r["error"] for k, r in rows.items() if r["error"]}


def finished_in_attempts(out: Path) -> set[str]:
    """Request ids whose actor has finished them (their attempt record holds the row)."""
    ids = set()
    for path in (out / ATTEMPTS_DIR).glob("*/*.json"):
        row = json.loads(path.read_text()).get("row")
        if row:
            ids.add(row["request_id"])
    return ids


@pytest.mark.slow
def test_an_interrupted_driver_keeps_every_finished_row_and_a_rerun_renders_the_rest(images, tmp_path, local_ray):
    from genlib.distributed.render import PUMP_THREAD, RenderInterrupted, run_render

    requests = normalise_requests([dream(f"r{i:02d}", images[f"photo{i % 6}"], iterations=12, size=64)
                                   for i in range(12)])
    cfg = config(tmp_path, actors=1, cpus_per_actor=1.0)
    seen: set[str] = set()

    def interrupt_after_two_rows():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.update(finished_in_attempts(tmp_path))
            if len(seen) >= 2:
                _thread.interrupt_main()  # Ctrl-C while the driver waits for results
                return
            time.sleep(0.02)

    threading.Thread(target=interrupt_after_two_rows, daemon=True).start()
    with pytest.raises(RenderInterrupted, match="finished row"):
        run_render(requests, cfg, progress=False)
    rows = read_manifest(cfg.output)
    assert seen and seen <= set(rows) and len(rows) < len(requests)  # nothing finished is lost
    assert all((tmp_path / r["output_uri"]).is_file() for r in rows.values())
    for thread in threading.enumerate():  # the stream stops after the batch in flight
        if thread.name == PUMP_THREAD:
            thread.join(timeout=120)
    again = run_render(requests, cfg, progress=False)
    assert again.skipped >= len(rows) and again.skipped + again.submitted == len(requests)
    assert (again.ok, again.failed) == (again.submitted, 0)
    assert sorted(part_ids(tmp_path)) == sorted(r["request_id"] for r in requests)  # each exactly once


# ----------------------------------------------------------------------------- the driver loop, without Ray


def test_a_stalled_stream_still_flushes_what_it_has(tmp_path, monkeypatch):
    import genlib.distributed.render as driver
    from genlib.render.manifest import MANIFEST_SCHEMA

    monkeypatch.setattr(driver, "TICK_SECONDS", 0.05)
    monkeypatch.setattr(driver, "FLUSH_SECONDS", 0.2)
    release = threading.Event()

    def stream():
        yield pa.Table.from_pylist([{"request_id": f"r{i}", "status": "ok", "finished_at": "t"} for i in range(3)],
                                   schema=MANIFEST_SCHEMA)
        release.wait(30)  # Ray stalls: a long row, a restarting actor
        yield pa.Table.from_pylist([{"request_id": "r3", "status": "failed", "error": "x", "finished_at": "t"}],
                                   schema=MANIFEST_SCHEMA)

    writer = driver._ManifestWriter(str(tmp_path), "run1")
    worker = threading.Thread(target=driver._drain, args=(driver._Pump(stream()).items(), writer,
                                                           driver._Progress(4, enabled=False)))
    worker.start()
    deadline = time.monotonic() + 10
    while not list((tmp_path / "manifest").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(read_manifest(str(tmp_path))) == {"r0", "r1", "r2"}  # flushed while the stream stalls
    release.set()
    worker.join(10)
    writer.close()
    assert set(read_manifest(str(tmp_path))) == {"r0", "r1", "r2", "r3"} and (writer.ok, writer.failed) == (3, 1)


def test_the_progress_line_is_printed_once_per_interval(capsys, monkeypatch):
    import genlib.distributed.render as driver

    meter = driver._Progress(10)
    meter.tty = False
    for status in ("ok", "ok", "failed"):
        meter.count({"status": status})
    meter.tick(force=True)
    meter.tick()  # within PROGRESS_SECONDS: nothing
    meter.tick(force=True)  # unchanged: nothing
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[render] 3/10 rows (2 ok, 1 failed), ")
    assert "rows/s, ETA " in lines[0]


def test_genlib_render_compact_alone_compacts_the_manifest(tmp_path, capsys):
    for p in range(5):
        write_manifest_part(str(tmp_path), [{"request_id": f"r{p % 2}", "status": "ok", "finished_at": f"{p}"}],
                            f"run-{p:05d}")
    assert cli.main(["render", "--compact", "--output", str(tmp_path)]) == 0
    assert len(list((tmp_path / "manifest").glob("part-*.parquet"))) == 1
    assert read_manifest(str(tmp_path))["r0"]["finished_at"] == "4"
    assert "compacted" in capsys.readouterr().out


def test_reading_a_folder_or_fifo_as_an_input_fails_without_leaking_descriptors(tmp_path):
    from genlib.render.base import RenderError
    from genlib.render.io import read_bytes

    os.mkfifo(tmp_path / "pipe")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        for name, what in (("", "a folder"), ("pipe", "a FIFO")):
            with pytest.raises(RenderError, match=f"{what}, not a regular file"):
                read_bytes(str(tmp_path / name) if name else str(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before
