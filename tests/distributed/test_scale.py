"""`genlib scale`: the plan (configs per count, resource check), the summary maths, the
files, and one real strong-scaling run at 1 and 2 workers (gloo on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genlib.cli import main
from genlib.config import ConfigError, from_dict, to_dict
from genlib.distributed.scale import (check_resources, parse_workers, rank_summary, scale_configs,
                                      steady_images_per_s, write_scaling)
from genlib.train.config import TrainConfig

TINY = {"family": "dcgan", "ngf": 8, "ndf": 8, "nz": 16}


def base_cfg(corpus: Path, **kw) -> TrainConfig:
    return from_dict(TrainConfig, {"corpus": str(corpus), "batch_size": 8, "num_workers": 2, "cpus_per_worker": 0.5,
                                   "loader_workers": 0, "model": TINY, **kw})


def test_parse_workers():
    assert parse_workers("4,1, 2,2") == [1, 2, 4]
    for bad in ("0,1", "two", ""):
        with pytest.raises(ConfigError, match="--workers: expected positive integers"):
            parse_workers(bad)


def test_configs_per_count_strong_and_weak(faces_corpus, tmp_path):
    strong = scale_configs(base_cfg(faces_corpus), [1, 2, 4], "strong", 6, str(tmp_path))
    assert {n: (c.num_workers, c.batch_size, c.per_worker_batch) for n, c in strong.items()} == {
        1: (1, 8, 8), 2: (2, 8, 4), 4: (4, 8, 2)}
    assert strong[2].name == "strong-w2" and strong[2].storage_path == str(tmp_path / "runs") and strong[2].steps == 6
    weak = scale_configs(base_cfg(faces_corpus), [1, 2, 4], "weak", 6, str(tmp_path))  # 4 per worker
    assert {n: c.batch_size for n, c in weak.items()} == {1: 4, 2: 8, 4: 16}
    with pytest.raises(ConfigError, match="--workers 3: the global batch 8 .* does not split over 3 workers"):
        scale_configs(base_cfg(faces_corpus), [1, 3], "strong", 6, str(tmp_path))
    with pytest.raises(ValueError, match="cannot fill one batch"):  # prepare_run's checks, per count
        scale_configs(base_cfg(faces_corpus), [16], "weak", 6, str(tmp_path))
    (tmp_path / "runs" / "strong-w1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds runs/strong-w1"):
        scale_configs(base_cfg(faces_corpus), [1], "strong", 6, str(tmp_path))


def test_counts_that_do_not_fit_are_refused(faces_corpus, tmp_path):
    configs = scale_configs(base_cfg(faces_corpus, cpus_per_worker=1.0), [1, 2, 4, 8], "strong", 6, str(tmp_path))
    check_resources({1: configs[1], 2: configs[2]}, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"--workers: 4 workers need CPU 4; 8 workers need CPU 8, but the Ray "
                                          r"cluster has CPU 2 "):
        check_resources(configs, {"CPU": 2.0, "memory": 1e9})
    gpu = {n: from_dict(TrainConfig, {**to_dict(c), "use_gpu": True}) for n, c in configs.items() if n <= 2}
    with pytest.raises(ConfigError, match="2 workers need GPU 2, but the Ray cluster has CPU 8, GPU 1"):
        check_resources(gpu, {"CPU": 8.0, "GPU": 1.0})


def test_steady_state_throughput_skips_warmup_windows():
    rows = [{"step": 2, "images_per_s": 10.0}, {"step": 4, "images_per_s": 20.0}, {"step": 5, "images_per_s": 40.0}]
    # windows (0-2] 16 img in 1.6 s, (2-4] 16 img in 0.8 s, (4-5] 8 img in 0.2 s
    assert steady_images_per_s(rows, 8, warmup=2) == pytest.approx(24 / 1.0)
    assert steady_images_per_s(rows, 8, warmup=3) == pytest.approx(40.0)  # (2-4] starts before step 3
    assert steady_images_per_s(rows, 8, warmup=0) == pytest.approx(40 / 2.6)
    with pytest.raises(ValueError, match="no log window after the 5 warm-up steps"):
        steady_images_per_s(rows, 8, warmup=5)


def test_rank_summary_per_step_phases():
    window = {"step": 2, "steps": 2, "seconds": 1.0, "data_s": 0.2, "compute_s": 0.6, "allreduce_s": 0.1,
              "report_s": 0.0}
    record = {"rank": 1, "node_id": "n1", "hostname": "h", "shards_by_epoch": {"0": ["a.tar"]}, "windows": [
        window, {**window, "step": 4, "report_s": 0.1}, {**window, "step": 6, "seconds": 1.2, "report_s": 0.3},
        {"step": 6, "steps": 0, "seconds": 0.5, "data_s": 0, "compute_s": 0, "allreduce_s": 0, "report_s": 0.5}]}
    out = rank_summary(record, warmup=2)  # windows ending at 4 and 6
    assert out["steps"] == 4 and out["shards"] == ["a.tar"] and out["final_report_s"] == 0.5
    assert out["data_s"] == pytest.approx(0.1) and out["compute_s"] == pytest.approx(0.3)
    assert out["allreduce_s"] == pytest.approx(0.05) and out["report_s"] == pytest.approx(0.1)
    assert out["other_s"] == pytest.approx(2.2 / 4 - 0.5)


def test_scaling_files(tmp_path):
    ranks = [{"rank": 0, "node_id": "abc", "hostname": "h", "node_resources": {"node_a": 1.0}, "shards": ["x.tar"],
              "data_s": 0.01, "compute_s": 0.1, "allreduce_s": 0.02, "report_s": 0.01, "other_s": 0.0,
              "final_report_s": 0.5, "steps": 4}]
    record = {"mode": "strong", "steps": 6, "warmup_steps": 2, "config": {}, "cluster": {}, "created_at": "now",
              "results": [{"workers": n, "batch_size": 8, "per_worker_batch": 8 // n, "run_dir": "r",
                           "images_per_s": ips, "step_s": 8 / ips, "speedup": ips / 50, "efficiency": ips / 50 / n,
                           "ranks": ranks * n} for n, ips in ((1, 50.0), (2, 80.0))]}
    page = write_scaling(str(tmp_path), record)
    assert json.loads((tmp_path / "scaling.json").read_text())["results"][1]["efficiency"] == pytest.approx(0.8)
    text = Path(page).read_text()
    assert "<td>1.60x</td><td>80%</td>" in text and "node_a" in text
    for png in ("throughput", "efficiency", "phases"):
        assert (tmp_path / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_strong_scaling_one_and_two_workers(faces_corpus, tmp_path, local_ray, capsys):
    pytest.importorskip("ray")
    args = ["scale", "--corpus", str(faces_corpus), "--model", "dcgan", "--steps", "6", "--warmup", "2"]
    sets = ["batch_size=8", "cpus_per_worker=0.5", "loader_workers=0", "log_every=2", "checkpoint_every=6",
            "sample_every=6", "sample_count=4", "eval_batches=1", "model.ngf=8", "model.ndf=8", "model.nz=16"]
    sets = [x for s in sets for x in ("--set", s)]

    # a warm-up that leaves no log window (log_every 2: the last window starts at step 4): refused up front
    assert main([*args[:-1], "5", *sets, "--workers", "1", "--out", str(tmp_path / "late")]) == 2
    assert "--warmup 5: must be >= 0 and leave a log window" in capsys.readouterr().err
    assert not (tmp_path / "late" / "runs").exists()
    # 8 x 0.5 CPU do not fit the 2-CPU Ray: refused before any run starts.
    assert main([*args, *sets, "--workers", "1,8", "--out", str(tmp_path / "too-many")]) == 2
    assert "8 workers need CPU 4, but the Ray cluster has CPU 2" in capsys.readouterr().err
    assert not (tmp_path / "too-many" / "runs").exists()

    out = tmp_path / "scale"
    assert main([*args, *sets, "--workers", "1,2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[scale] 2 worker(s), global batch 8 (4 per worker)" in printed and "efficiency" in printed
    record = json.loads((out / "scaling.json").read_text())
    assert record["mode"] == "strong" and record["warmup_steps"] == 2
    one, two = record["results"]
    assert (one["workers"], two["workers"]) == (1, 2) and one["speedup"] == 1.0 and one["efficiency"] == 1.0
    assert two["images_per_s"] > 0 and two["efficiency"] == pytest.approx(two["speedup"] / 2)
    assert [r["rank"] for r in two["ranks"]] == [0, 1]
    assert one["ranks"][0]["allreduce_s"] == 0 and all(r["allreduce_s"] > 0 for r in two["ranks"])
    assert all(r["compute_s"] > 0 and r["final_report_s"] > 0 for res in (one, two) for r in res["ranks"])
    assert not set(two["ranks"][0]["shards"]) & set(two["ranks"][1]["shards"])
    assert (out / "scaling.html").is_file() and (out / "plots" / "phases.png").is_file()
    assert (out / "runs" / "strong-w2" / "metrics.csv").read_text().splitlines()[-1].startswith("6,")
