"""The training checkpoint: the one contract between training and everything that reads a model.

A run folder (local path or URI, see :mod:`genlib.train.rundir`) holds Ray Train's
checkpoint folders; genlib writes the two files inside each::

    <run>/
        run.json
        checkpoint_2026-11-23_10-00-00.000000/     # Ray Train's name: sorts by time
            state.pt      # torch.save(STATE), loadable with torch.load(weights_only=True)
            state.json    # MARKER, written after state.pt: {"format", "step", "bytes", "sha256"}

``STATE`` is a dict of plain containers and tensors only (so ``weights_only=True``
loads it and a tampered file cannot run code):

    family        Family.state_dict(): {"networks": {...}, "optimizers": {...}, ["scaler"]}
    step          optimiser steps taken
    train         the TrainConfig as a dict (``model.family`` names the family)
    corpus_id     id of the corpus it was trained on
    model_config  the resolved family config as a dict

Ray Train copies a reported folder into storage file by file, so a crash can leave
a folder whose ``state.pt`` is cut short. The marker names the bytes and sha256 of
``state.pt``: :func:`resolve_checkpoint` takes the newest folder whose marker
matches the file's size, and :func:`load_checkpoint` checks the sha256 as well.
Folders written before the marker existed (format 1) count as complete when
``state.pt`` is a whole zip archive (``torch.save``'s format ends with the zip
central directory, which a truncated copy lacks).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlib.config import ConfigError, from_dict
from genlib.models.base import Family
from genlib.models.registry import spec
from genlib.storage import Storage, is_uri

STATE_FILE = "state.pt"
MARKER_FILE = "state.json"
CHECKPOINT_GLOB = "checkpoint_*"  # Ray Train's checkpoint folder names
FORMAT = 2  # 1: state.pt alone (genlib 0.1.0); 2: state.pt + state.json marker
NETWORKS = {"dcgan": {"netG", "netD"}, "vae": {"encoder", "decoder"}, "pixelrnn": {"net"}}  # per family


class CheckpointError(FileNotFoundError):
    """No usable checkpoint where one was expected (message names the path and why)."""


@dataclass
class Checkpoint:
    """A loaded training checkpoint."""

    uri: str                  # the checkpoint folder (local path or URI)
    state: dict[str, Any]     # STATE (see module doc)
    sha256: str               # of state.pt

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def family_name(self) -> str:
        """``train.model.family``; for states without it, inferred from the network names."""
        name = ((self.state.get("train") or {}).get("model") or {}).get("family")
        if name:
            return str(name)
        networks = set((self.state.get("family") or {}).get("networks") or {})
        return next((family for family, nets in NETWORKS.items() if nets == networks), "")

    @property
    def corpus_id(self) -> str:
        return str(self.state.get("corpus_id") or "unknown")

    @property
    def weights_id(self) -> str:
        """Names these weights in manifests: ``<family>:<sha256[:16]>@<corpus id>``."""
        return f"{self.family_name or 'model'}:{self.sha256[:16]}@{self.corpus_id}"


# ----------------------------------------------------------------------------- write


def save_state(family: Family, step: int, train: dict[str, Any], corpus_id: str,
               model_config: dict[str, Any] | None, folder: str | Path) -> Path:
    """Write ``state.pt`` then its marker into the local ``folder``; returns state.pt's path."""
    state = {"family": family.state_dict(), "step": int(step), "train": train, "corpus_id": corpus_id,
             "model_config": model_config}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    folder = Path(folder)
    (folder / STATE_FILE).write_bytes(data)
    marker = {"format": FORMAT, "step": int(step), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True) + "\n")  # last: the folder is complete
    return folder / STATE_FILE


# ----------------------------------------------------------------------------- resolve


def resolve_checkpoint(path: str | Path) -> str:
    """A run folder -> its newest *complete* checkpoint folder; a checkpoint folder or its
    ``state.pt`` -> that folder. Local paths and URIs alike. CheckpointError otherwise."""
    path = str(path).rstrip("/") if is_uri(str(path)) else str(Path(path))
    if path.endswith(".pt"):
        folder, name = _split(path)
        if name != STATE_FILE:
            raise CheckpointError(f"{path}: a genlib checkpoint file is named {STATE_FILE}")
        path = folder
    storage = Storage(path)
    if storage.is_file(STATE_FILE):
        problem = incomplete_reason(storage)
        if problem:
            raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
        return storage.root
    if not storage.exists():
        raise CheckpointError(f"checkpoint or run folder not found: {path}")
    found = storage.list_dirs("", CHECKPOINT_GLOB)
    for name in reversed(found):  # newest first
        if not incomplete_reason(Storage(storage.uri(name))):
            return storage.uri(name)
    detail = f"{len(found)} checkpoint folder(s), none complete" if found else "no checkpoint_* folder"
    raise CheckpointError(f"no complete training checkpoint under {path} ({detail})")


def incomplete_reason(folder: Storage) -> str | None:
    """Why the checkpoint folder cannot be used, or None when it is complete."""
    if not folder.is_file(STATE_FILE):
        return f"{STATE_FILE} is missing"
    size = folder.size(STATE_FILE)
    if folder.is_file(MARKER_FILE):
        try:
            marker = json.loads(folder.read_text(MARKER_FILE))
            expected = int(marker["bytes"])
        except (ValueError, KeyError, TypeError) as exc:
            return f"{MARKER_FILE} is unreadable ({exc})"
        return None if size == expected else f"{STATE_FILE} has {size} bytes, its marker says {expected}"
    with folder.open(STATE_FILE) as f:  # format 1: no marker, check the zip's central directory
        return None if zipfile.is_zipfile(f) else f"{STATE_FILE} is truncated or not a torch.save file"


# ----------------------------------------------------------------------------- load


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Resolve ``path`` (run folder, checkpoint folder or state.pt; local or URI) and load it."""
    folder = Storage(resolve_checkpoint(path))
    data = folder.read_bytes(STATE_FILE)
    sha = hashlib.sha256(data).hexdigest()
    if folder.is_file(MARKER_FILE):
        expected = json.loads(folder.read_text(MARKER_FILE)).get("sha256")
        if expected and expected != sha:
            raise CheckpointError(f"checkpoint {folder.root}: {STATE_FILE} does not match its marker's sha256")
    return Checkpoint(folder.root, read_state(data, folder.uri(STATE_FILE)), sha)


def read_state(data: bytes, where: str) -> dict[str, Any]:
    """Unpickle STATE with ``weights_only=True``: tensors and plain containers only."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, zip errors: all mean "not a state"
        raise CheckpointError(f"{where} is not a loadable genlib checkpoint "
                              f"(only tensors and plain data are accepted): {_first_line(exc)}") from None
    if not isinstance(state, dict) or not {"family", "step"} <= set(state):
        raise CheckpointError(f"{where} is not a genlib training checkpoint (no family/step entries)")
    return state


def load_family(checkpoint: Checkpoint, device: torch.device | str = "cpu",
                expect: tuple[str, ...] | None = None) -> Family:
    """Rebuild the trained family of ``checkpoint`` (networks and optimisers) on ``device``.

    ``expect``: family names the caller accepts (e.g. ``("dcgan",)``); ValueError otherwise."""
    name = checkpoint.family_name
    if expect is not None and name not in expect:
        raise ValueError(f"{checkpoint.uri} holds a {name or 'unknown'} model, expected {' or '.join(expect)}")
    try:
        s = spec(name)
        family = s.family(from_dict(s.config, dict(checkpoint.state["model_config"]), prefix="model_config."),
                          device=device)
        family.load_state_dict(checkpoint.state["family"])
    except (KeyError, TypeError, ConfigError, RuntimeError) as exc:
        raise ValueError(f"{checkpoint.uri} does not hold a usable {name or 'genlib'} model: "
                         f"{type(exc).__name__}: {_first_line(exc)}") from None
    return family


class FamilyCache:
    """Trained families for inference, by the checkpoint folder a path resolves to (a newer
    checkpoint in a run folder is a new entry); the ``size`` most recently used are kept.
    Networks are in eval mode (BatchNorm on running statistics) without parameter gradients."""

    def __init__(self, device: torch.device | str = "cpu", expect: tuple[str, ...] | None = None,
                 size: int = 4) -> None:
        self.device, self.expect, self.size = device, expect, size
        self._families: OrderedDict[str, tuple[Family, str]] = OrderedDict()

    def get(self, path: str | Path) -> tuple[Family, str]:
        """``(family, weights_id)`` of the newest complete checkpoint under ``path``."""
        folder = resolve_checkpoint(path)
        if folder not in self._families:
            loaded = load_checkpoint(folder)
            family = load_family(loaded, self.device, expect=self.expect)
            for net in family.networks.values():
                net.eval().requires_grad_(False)
            self._families[folder] = (family, loaded.weights_id)
            if len(self._families) > self.size:
                self._families.popitem(last=False)
        self._families.move_to_end(folder)
        return self._families[folder]


def _split(path: str) -> tuple[str, str]:
    if is_uri(path):
        return posixpath.split(path)
    p = Path(path)
    return str(p.parent), p.name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = ["STATE_FILE", "MARKER_FILE", "FORMAT", "Checkpoint", "CheckpointError", "FamilyCache", "save_state",
           "resolve_checkpoint", "incomplete_reason", "load_checkpoint", "read_state", "load_family"]
