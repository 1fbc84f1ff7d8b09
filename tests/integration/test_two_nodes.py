"""A real two-node Ray cluster on one machine (two ``ray start`` raylets, each with one CPU
and its own custom resource) running a 2-worker ``jobs/scale.py`` as a cluster driver:
one rank per node, each reading its own shards, checkpoints in the shared storage_path."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genlib.distributed.runtime import session_processes, stop_processes
from genlib.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Every port a node opens, chosen free: other Ray instances may run on this machine."""
    names = ("node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
             "dashboard-agent-grpc-port", "dashboard-agent-listen-port")
    return [f"--{name}={free_port()}" for name in names]


@pytest.fixture
def two_nodes():
    """Head (node_a) + worker (node_b) in this test's own temp dir; only its processes are stopped."""
    if not (BIN / "ray").is_file():
        pytest.skip("the `ray` command is not installed")
    port = free_port()
    temp = Path(f"/tmp/ray2n-{os.getpid()}-{secrets.token_hex(2)}")  # short: socket path length limit
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    head = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", '--resources={"node_a": 1}', *common, *node_ports()]
    worker = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", '--resources={"node_b": 1}',
              *common, *node_ports()]
    try:
        for attempt in (1, 2):  # `ray start` gives a raylet 30 s to register: a loaded machine may miss it
            log = ""
            for cmd in (head, worker):
                started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
                log = started.stdout[-2000:] + started.stderr[-2000:] if started.returncode else ""
                if log:
                    break
            if not log:
                break
            stop_processes(session_processes(str(temp)), grace=0)
        assert not log, log
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        stop_processes(session_processes(str(temp)), grace=0)  # `ray stop` would stop everyone's Ray
        shutil.rmtree(temp, ignore_errors=True)


def test_two_workers_on_two_nodes(two_nodes, faces_corpus, tmp_path):
    out = tmp_path / "shared"  # the "shared storage" both nodes write to
    cmd = [sys.executable, "jobs/scale.py", "--corpus", str(faces_corpus), "--model", "dcgan", "--workers", "2",
           "--steps", "4", "--warmup", "2", "--out", str(out)]
    for item in ("batch_size=8", "cpus_per_worker=1.0", "loader_workers=0", "log_every=2", "checkpoint_every=2",
                 "sample_every=4", "sample_count=4", "eval_batches=1", "model.ngf=8", "model.ndf=8", "model.nz=16"):
        cmd += ["--set", item]
    env = {**two_nodes["env"], "RAY_ADDRESS": two_nodes["address"]}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((out / "scaling.json").read_text())["results"][0]
    ranks = result["ranks"]
    assert result["workers"] == 2 and [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]  # one CPU per node: one rank on each
    assert sorted(name for r in ranks for name in r["node_resources"]) == ["node_a", "node_b"]
    assert ranks[0]["shards"] and ranks[1]["shards"] and not set(ranks[0]["shards"]) & set(ranks[1]["shards"])

    run = out / "runs" / "strong-w2"
    records = [json.loads((run / "ranks" / f"rank-00{k}.json").read_text()) for k in (0, 1)]
    assert {r["node_id"] for r in records} == {r["node_id"] for r in ranks}
    checkpoints = [p for p in run.glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2 and load_checkpoint(run).step == 4  # in the shared storage_path
