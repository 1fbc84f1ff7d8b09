"""The corpus on-disk contract, defined once.

A corpus is a folder::

    corpus.json                      # manifest: recipe, counts, shards (+sha256), palette, corpus id
    index.parquet                    # one row per accepted sample (INDEX_SCHEMA)
    rejects.parquet                  # one row per input file that was not used (REJECTS_SCHEMA)
    palette.png                      # only with a palette: K swatches, for people
    preview.png                      # a grid of training samples, for people
    {name}-{split}-{000000..N}.tar   # WebDataset shards

Each shard sample ``<key>`` holds ``<key>.png`` (processed RGB image),
``<key>.json`` (SIDECAR fields) and, with a palette, ``<key>.idx.png`` (8-bit
palette indices, mode "L"). Keys are the first 16 hex digits of the sha256 of
the source bytes: stable across rebuilds, free of dots (WebDataset splits the
extension at the first dot), unique after de-duplication.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "corpus.json"
INDEX = "index.parquet"
REJECTS = "rejects.parquet"
PALETTE_PNG = "palette.png"
PREVIEW_PNG = "preview.png"
SPLITS = ("train", "val", "test")

# Extensions inside a shard sample.
IMAGE_EXT = "png"
INDEX_EXT = "idx.png"
META_EXT = "json"

# Fixed tar member metadata so identical inputs give byte-identical shards.
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z. An int: a float mtime makes tarfile add a PAX header
#                        to every member (+1 KiB each, ~26% larger shards, slower reads).

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("split", pa.string()),
    ("shard", pa.string()),        # shard file name, relative to the corpus folder
    ("source", pa.string()),       # path relative to the input root (archive member path for archives)
    ("sha256", pa.string()),       # of the source bytes
    ("width", pa.int32()),         # original image size, before the recipe
    ("height", pa.int32()),
    ("label", pa.string()),        # null when the recipe assigns none
])

REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("sha256", pa.string()),       # null when the bytes could not be read
    ("reason", pa.string()),       # one of REJECT_REASONS
    ("detail", pa.string()),       # human-readable explanation
])

# Every reason a file can be rejected for, with the meaning shown in summaries.
REJECT_REASONS = {
    "empty_file": "the file has zero bytes",
    "unreadable": "the file or archive member could not be read",
    "not_an_image": "the bytes are not an image format Pillow can open",
    "truncated": "the image data ends early or is corrupt",
    "too_small": "smaller than the recipe's min_size",
    "duplicate": "same sha256 as an earlier file (the earlier one is kept)",
    "no_content": "a sprite with no visible pixels",
    "missing_box": "the recipe uses a face-box file and it has no box for this file",
    "bad_box": "the face box lies outside the image or is empty",
    "too_large": "over the recipe's max_file_bytes (not read past it)",
    "not_a_file": "not a regular file: a FIFO, socket, device, or an archive member that is a link",
    "unsafe_path": "a link or archive member name leading outside the input, or a name that is not UTF-8",
    "repeated_folder": "a link (or mount) to a folder read under another path, or a link loop: not followed",
    "too_deep": "nested deeper than genlib reads (folders: 64 levels; archives: no archive in an archive)",
}


def shard_pattern(name: str, split: str) -> str:
    """printf pattern used by ShardWriter for one split."""
    return f"{name}-{split}-%06d.tar"


def sidecar(key: str, source: str, sha256: str, width: int, height: int, label: str | None,
            split: str) -> bytes:
    """The per-sample JSON sidecar (sorted keys: deterministic bytes)."""
    record = {"key": key, "source": source, "sha256": sha256, "width": width, "height": height,
              "label": label, "split": split}
    return json.dumps(record, sort_keys=True).encode()


def read_manifest(corpus_dir: str | Path) -> dict[str, Any]:
    """Load ``corpus.json``; a clear error when the folder is not a corpus."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{corpus_dir} is not a genlib corpus: {MANIFEST} is missing "
                                f"(build one with `genlib data build`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')} is not "
                         f"{FORMAT_VERSION}; rebuild the corpus with this genlib")
    return manifest


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
