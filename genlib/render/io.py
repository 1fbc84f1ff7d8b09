"""Reading and writing render inputs/outputs by URI.

Accepted input URIs: a local path, ``file://``, any ``pyarrow.fs`` URI
(``s3://``, ``gs://``), or ``corpus://<corpus folder>#<key>`` for a sample of a
genlib corpus (its processed image).
"""

from __future__ import annotations

import hashlib
import posixpath

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from genlib.data.corpus import open_corpus
from genlib.data.process import decode
from genlib.render.base import RenderError
from genlib.storage import Storage, is_uri


def read_bytes(uri: str) -> bytes:
    if uri.startswith("corpus://"):
        return _corpus_sample(uri)
    parent, name = posixpath.split(uri) if is_uri(uri) else (None, uri)
    try:
        if parent is not None:
            return Storage(parent).read_bytes(name)
        with open(uri, "rb") as f:
            return f.read()
    except (OSError, FileNotFoundError) as exc:
        raise RenderError(f"cannot read {uri}: {exc}") from exc


def _corpus_sample(uri: str) -> bytes:
    import webdataset as wds  # lazy: heavy, and only corpus:// inputs need it

    root, _, key = uri[len("corpus://"):].partition("#")
    if not key:
        raise RenderError(f"{uri}: corpus URIs look like corpus://<folder>#<key>")
    corpus = open_corpus(root)
    index = corpus.index()  # read once
    rows = index.filter(pc.equal(index["key"], key)).to_pylist()
    if not rows:
        raise RenderError(f"{uri}: no sample with key {key!r} in corpus {root}")
    for sample in wds.WebDataset(str(corpus.root / rows[0]["shard"]), shardshuffle=False):
        if sample["__key__"] == key:
            return sample["png"]
    raise RenderError(f"{uri}: sample {key} missing from shard {rows[0]['shard']}")


def load_image(uri: str) -> tuple[np.ndarray, str]:
    """-> (uint8 RGB [H, W, 3], sha256 of the source bytes). Alpha is composited on white."""
    data = read_bytes(uri)
    sha = hashlib.sha256(data).hexdigest()
    try:
        image = decode(data)
    except Exception as exc:  # Reject from genlib.data.process, with its reason
        raise RenderError(f"{uri}: {getattr(exc, 'detail', exc)}") from None
    if image.mode == "RGBA":
        base = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(base, image)
    return np.asarray(image.convert("RGB")), sha


def resize_max(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (never upscale)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
