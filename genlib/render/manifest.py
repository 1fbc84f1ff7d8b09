"""The render manifest: one Parquet schema for every render attempt, defined once.

Requests come in through :mod:`genlib.render.requests`. The manifest (``<output>/manifest/part-*.parquet``, append-only) has one row per
attempt (MANIFEST_SCHEMA). The latest row per request_id is its state. A request
is *done* when its latest row is ``ok`` for the same ``params_hash`` (kind,
input and params): reruns skip it, so a nightly job that died half way resumes
by running it again; failed rows are retried.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from genlib.storage import Storage

MANIFEST_DIR = "manifest"
GALLERY = "gallery.html"

MANIFEST_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("kind", pa.string()),             # a name in genlib.render.kinds.KINDS
    ("input_uri", pa.string()),
    ("input_sha256", pa.string()),     # null when the input could not be read
    ("params", pa.string()),           # canonical JSON
    ("params_hash", pa.string()),      # sha256 of (kind, input, params)[:16], see genlib.render.requests
    ("output_uri", pa.string()),       # relative to the output folder
    ("output_sha256", pa.string()),
    ("status", pa.string()),           # "ok" | "failed"
    ("error", pa.string()),
    ("losses", pa.string()),           # JSON object of final loss terms
    ("iterations", pa.int64()),
    ("seconds", pa.float64()),
    ("worker", pa.string()),           # host:pid of the actor
    ("weights_id", pa.string()),       # which model weights produced it
    ("finished_at", pa.string()),      # ISO time (ordering of attempts)
])


def output_path(kind: str, request_id: str, phash: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)
    return str(PurePosixPath("images") / kind / f"{safe}-{phash[:8]}.png")


def read_manifest(output: str) -> dict[str, dict[str, Any]]:
    """request_id -> its latest manifest row (empty when there is no manifest yet)."""
    storage = Storage(output)
    parts = storage.glob(MANIFEST_DIR, "part-*.parquet")
    latest: dict[str, dict[str, Any]] = {}
    for rel in parts:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(rel)), schema=MANIFEST_SCHEMA)
        for row in table.to_pylist():
            old = latest.get(row["request_id"])
            if old is None or (row["finished_at"] or "") >= (old["finished_at"] or ""):
                latest[row["request_id"]] = row
    return latest


def is_done(request: dict[str, Any], manifest: dict[str, dict[str, Any]], storage: Storage) -> bool:
    row = manifest.get(request["request_id"])
    return (row is not None and row["status"] == "ok" and row["params_hash"] == request["params_hash"]
            and storage.is_file(row["output_uri"]))


def write_manifest_part(output: str, rows: list[dict[str, Any]], name: str) -> str:
    """Append one part file (atomic per part: a crash loses at most the rows in flight)."""
    table = pa.Table.from_pylist([{k: r.get(k) for k in MANIFEST_SCHEMA.names} for r in rows],
                                 schema=MANIFEST_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    rel = f"{MANIFEST_DIR}/part-{name}.parquet"
    Storage(output).write_bytes(rel, sink.getvalue().to_pybytes())
    return rel
