"""Reading and writing render inputs/outputs by URI.

Accepted input URIs: a local path, ``file://``, any ``pyarrow.fs`` URI
(``s3://``, ``gs://``), or ``corpus://<corpus folder>#<key>`` for a sample of a
genlib corpus (its processed image).

Only regular files are read (a FIFO, a device or a socket would block or never
end: those fail the row), and at most ``limits.max_input_bytes`` of them; images
larger than ``limits.max_pixels`` fail before they are decoded. The caps are the
current row's (:func:`genlib.render.limits.current_limits`), so style images and
mask files read by the renderers are capped too.

:func:`fingerprints` gives each input's ``size:mtime_ns`` (one stat, or one
listing per folder for URIs; ``corpus:<corpus id>`` for corpus samples): a rerun
compares it with the manifest's ``input_fingerprint`` and rehashes only the
inputs whose fingerprint changed (as rsync's quick check does).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
from collections import defaultdict

import numpy as np
import pyarrow.compute as pc
import pyarrow.fs as pafs
from PIL import Image

from genlib.data.corpus import open_corpus
from genlib.data.process import IMAGE_FORMATS, decode
from genlib.render.base import RenderError
from genlib.render.limits import current_limits
from genlib.storage import NotRegularFile, Storage, is_uri, open_regular


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The input's bytes; ``max_bytes`` defaults to the current row's ``limits.max_input_bytes``.
    RenderError naming the input for a missing, unreadable, non-regular or too large file."""
    if uri.startswith("corpus://"):
        return _corpus_sample(uri)
    cap = current_limits().max_input_bytes if max_bytes is None else max_bytes
    try:
        return _read_uri(uri, cap) if is_uri(uri) else _read_local(uri, cap)
    except OSError as exc:
        raise RenderError(f"cannot read {uri}: {exc}") from exc


def _read_local(path: str, cap: int) -> bytes:
    try:
        with open_regular(path) as f:  # never blocks on a FIFO; the descriptor is always closed
            data = f.read(cap + 1)
    except NotRegularFile as exc:
        raise RenderError(f"{path}: {exc}; only regular files are read") from None
    _check_size(path, len(data), cap)
    return data


def _read_uri(uri: str, cap: int) -> bytes:
    parent, name = posixpath.split(uri)
    storage = Storage(parent)
    info = storage.fs.get_file_info(posixpath.join(storage.base, name))
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file: {uri}")
    if info.type != pafs.FileType.File:
        raise RenderError(f"{uri}: not a regular file ({info.type.name}); only regular files are read")
    _check_size(uri, info.size or 0, cap)
    with storage.open(name) as f:
        data = f.read(cap + 1)
    _check_size(uri, len(data), cap)
    return data


def _check_size(where: str, size: int, cap: int) -> None:
    if size > cap:
        raise RenderError(f"{where}: larger than limits.max_input_bytes ({cap} bytes)")


def fingerprints(uris: list[str]) -> dict[str, str | None]:
    """uri -> ``size:mtime_ns`` (``corpus:<id>`` for corpus samples; None when it cannot be told).
    Local files: one stat each; URIs: one listing per folder; corpora: corpus.json read once."""
    out: dict[str, str | None] = {}
    folders: dict[str, list[str]] = defaultdict(list)
    corpora: dict[str, str | None] = {}
    for uri in uris:
        if uri.startswith("corpus://"):
            root = uri[len("corpus://"):].partition("#")[0]
            if root not in corpora:
                corpora[root] = _corpus_fingerprint(root)
            out[uri] = corpora[root]
        elif is_uri(uri):
            folders[posixpath.dirname(uri)].append(uri)
        else:
            out[uri] = _local_fingerprint(uri)
    for folder, members in folders.items():
        out.update(_listing_fingerprints(folder, members))
    return out


def _local_fingerprint(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) else None


def _listing_fingerprints(folder: str, members: list[str]) -> dict[str, str | None]:
    """One listing of ``folder`` for several members; one stat for a single one (a row
    rendered alone must not list a folder of a million inputs)."""
    try:
        storage = Storage(folder)
        if len(members) == 1:
            infos = [storage.info(posixpath.basename(members[0]))]
        else:
            infos = storage.fs.get_file_info(pafs.FileSelector(storage.base, allow_not_found=True))
    except (OSError, ValueError):
        return dict.fromkeys(members)
    by_name = {posixpath.basename(i.path): i for i in infos if i.type == pafs.FileType.File}
    out: dict[str, str | None] = {}
    for uri in members:
        info = by_name.get(posixpath.basename(uri))
        out[uri] = f"{info.size}:{info.mtime_ns}" if info is not None and info.mtime_ns is not None else None
    return out


def _corpus_fingerprint(root: str) -> str | None:
    try:
        return f"corpus:{open_corpus(root).corpus_id}"
    except (OSError, ValueError, KeyError):
        return None


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
    _check_pixels(uri, data)
    try:
        image = decode(data)
    except Exception as exc:  # Reject (genlib.data.sources), with its reason
        raise RenderError(f"{uri}: {getattr(exc, 'detail', exc)}") from None
    if image.mode == "RGBA":
        base = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(base, image)
    return np.asarray(image.convert("RGB")), sha


def _check_pixels(uri: str, data: bytes) -> None:
    """Refuse an image over ``limits.max_pixels`` from its header alone (before decoding it)."""
    cap = current_limits().max_pixels
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
    except Exception:  # not an image: decode() below says so with its reason
        return
    if width * height > cap:
        raise RenderError(f"{uri}: {width}x{height} image is larger than limits.max_pixels ({cap} pixels)")


def capped_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shape with the longer side at most ``size`` (never enlarged), aspect kept."""
    ratio = min(1.0, size / max(height, width))
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def resize_max(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (never upscale): to ``capped_shape``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    height, width = capped_shape(h, w, max_side)
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))
