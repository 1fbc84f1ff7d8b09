"""The checkpoint contract (genlib.train.checkpoint): write, resolve, load; old files still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.render.completion import CompletionParams, MaskCompletion
from genlib.render.gallery import write_gallery
from genlib.render.manifest import is_done, read_manifest
from genlib.storage import Storage
from genlib.train.checkpoint import (MARKER_FILE, STATE_FILE, CheckpointError, incomplete_reason, load_checkpoint,
                                     load_family, resolve_checkpoint, save_state)

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"  # written by genlib 0.1.0 (see its README)


def tiny_dcgan(seed: int = 0) -> DCGAN:
    torch.manual_seed(seed)
    return DCGAN(DCGANConfig(image_size=32, nz=8, ngf=4, ndf=4))


def write_checkpoint(run: Path, name: str, family: DCGAN, step: int) -> Path:
    folder = run / name
    folder.mkdir(parents=True)
    save_state(family, step, {"model": {"family": "dcgan"}}, "corpus-x", {"image_size": 32, "nz": 8, "ngf": 4,
                                                                          "ndf": 4}, folder)
    return folder


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_writes_state_then_a_marker_and_loads_back(tmp_path):
    family = tiny_dcgan()
    folder = write_checkpoint(tmp_path, "checkpoint_a", family, 7)
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["bytes"] == (folder / STATE_FILE).stat().st_size and marker["step"] == 7
    loaded = load_checkpoint(tmp_path)  # a run folder resolves to its checkpoint
    assert loaded.step == 7 and loaded.family_name == "dcgan" and loaded.corpus_id == "corpus-x"
    assert loaded.weights_id == f"dcgan:{marker['sha256'][:16]}@corpus-x"
    rebuilt = load_family(loaded)
    assert same_weights(rebuilt.netG, family.netG) and same_weights(rebuilt.netD, family.netD)
    with pytest.raises(ValueError, match="holds a dcgan model, expected vae"):
        load_family(loaded, expect=("vae",))


def test_resolver_takes_the_newest_complete_checkpoint(tmp_path):
    old = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-00.000000", tiny_dcgan(0), 4)
    new = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-09.000000", tiny_dcgan(1), 8)
    assert resolve_checkpoint(tmp_path) == str(new)
    data = (new / STATE_FILE).read_bytes()
    (new / STATE_FILE).write_bytes(data[: len(data) // 2])  # a copy cut short by a crash
    assert "marker says" in incomplete_reason(Storage(new))
    assert resolve_checkpoint(tmp_path) == str(old)
    assert load_checkpoint(tmp_path).step == 4
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(new)
    (new / STATE_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # right size, wrong bytes
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(new)
    shutil.rmtree(old)
    (new / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="none complete"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nothing")


def test_uri_paths_resolve_and_load(tmp_path):
    write_checkpoint(tmp_path, "checkpoint_b", tiny_dcgan(), 3)
    loaded = load_checkpoint(f"file://{tmp_path}")
    assert loaded.step == 3 and loaded.uri == f"file://{tmp_path}/checkpoint_b"
    assert load_checkpoint(f"file://{tmp_path}/checkpoint_b/state.pt").sha256 == loaded.sha256


def test_a_checkpoint_written_by_the_previous_version_still_loads(tmp_path):
    """tests/fixtures/v1: state.pt without a marker, written with genlib 0.1.0's save_state."""
    loaded = load_checkpoint(V1 / "run-dcgan")
    assert loaded.step == 1 and loaded.corpus_id == "0123456789abcdef" and loaded.family_name == "dcgan"
    family = load_family(loaded)
    assert family.config.ngf == 4 and set(family.optimizers["netG"].state_dict()["state"])  # optimiser state too
    completion = MaskCompletion(str(V1 / "run-dcgan"))
    image = np.full((32, 32, 3), 128, np.uint8)
    out = completion(image, CompletionParams(iterations=2, restarts=1))
    assert out.image.shape == (32, 32, 3) and completion.weights_id.startswith("dcgan:")
    # a legacy file cut short is recognised without a marker (the zip directory is missing)
    run = tmp_path / "run"
    shutil.copytree(V1 / "run-dcgan", run)
    state = next(run.glob("checkpoint_*")) / STATE_FILE
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="none complete"):
        resolve_checkpoint(run)


def test_a_manifest_written_by_the_previous_version_still_reads(tmp_path):
    out = tmp_path / "renders"
    shutil.copytree(V1 / "renders", out)
    rows = read_manifest(str(out))
    assert set(rows) == {"complete-a", "style-b"}
    assert rows["complete-a"]["status"] == "ok" and rows["style-b"]["error"] == "RenderError: boom"
    request = {"request_id": "complete-a", "params_hash": rows["complete-a"]["params_hash"]}
    assert not is_done(request, rows, Storage(out))  # its output image is not there
    assert Path(write_gallery(str(out))).is_file()


class _Payload:
    """A pickle that would create a file when unpickled with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_state_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "checkpoint_evil"
    folder.mkdir()
    torch.save({"family": {"networks": {}}, "step": 1, "evil": _Payload(marker)}, folder / STATE_FILE)
    with pytest.raises(CheckpointError, match="only tensors and plain data"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError):
        MaskCompletion(str(folder))
    assert not marker.exists()
    torch.load(folder / STATE_FILE, weights_only=False)  # the control: unrestricted loading runs it
    assert marker.exists()
