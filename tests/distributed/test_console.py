"""`genlib train` as a user runs it (a subprocess): each progress line once, no Ray chatter
without --verbose (issue 11), and no Ray process of its session left afterwards (issue 13)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genlib.distributed.runtime import session_processes

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RAY_CHATTER = re.compile(r"\b(INFO|WARNING|WARN)\b|\((RayTrainWorker|TrainController|raylet)|Progress bars")


@pytest.fixture
def ray_tmpdir():
    """A Ray temp folder of this test alone (short: Ray's socket paths have a length limit)."""
    path = Path(f"/tmp/gl-{os.getpid()}-{secrets.token_hex(3)}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_train_prints_each_step_once_and_leaves_no_ray_process(faces_corpus, tmp_path, ray_tmpdir):
    cmd = [sys.executable, "-m", "genlib.cli", "train", "--corpus", str(faces_corpus), "--model", "dcgan",
           "--set", f"storage_path={str(tmp_path)!r}".replace("'", '"'), "--set", 'name="quiet"',
           "--set", "steps=4", "--set", "batch_size=8", "--set", "log_every=1", "--set", "checkpoint_every=2",
           "--set", "sample_every=4", "--set", "sample_count=4", "--set", "eval_batches=1",
           "--set", "loader_workers=0", "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "model.nz=16"]
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmpdir), "GENLIB_VERBOSE": ""}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [int(m) for m in re.findall(r"^\[train\] step (\d+)/4 ", done.stdout, flags=re.M)]
    assert steps == [1, 2, 3, 4]  # each once, in order, printed by the driver alone
    assert "images_per_s=" in done.stdout and "trained to step 4" in done.stdout
    chatter = [line for line in (done.stdout + done.stderr).splitlines() if RAY_CHATTER.search(line)]
    assert not chatter, chatter[:5]

    sessions = list(ray_tmpdir.glob("session_*")) + list(ray_tmpdir.glob("*/session_*"))
    assert sessions, "the run did not use the test's Ray temp folder"
    left = session_processes(str(ray_tmpdir))
    assert not left, [(p.pid, p.cmdline()) for p in left]
