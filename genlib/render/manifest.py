"""The render manifest: one Parquet schema for every render attempt, defined once.

Requests come in through :mod:`genlib.render.requests`. An output folder holds::

    <output>/
        images/<kind>/<id>-<phash8>.png              the render (long or odd ids: <id[:80]>~<sha10>)
                      <id>-<phash8>.input.png        the input as rendered      } listed in the row's
                      <id>-<phash8>.<name>.png       kind extras (mask, ...)    } ``extras`` column
                      <id>-<phash8>.progress.webp    progress animation         }
        manifest/part-<run id>-<n>.parquet           append-only, MANIFEST_SCHEMA, one row per attempt
        manifest/part-compact-<time>.parquet         the latest row per request (compact_manifest)
        .attempts/<run id>/                          per-row attempt records of a job in flight
                                                     (genlib.render.attempts)
        gallery.html, gallery-2.html, ...            the latest run, failed rows first (genlib.render.gallery)

The latest row (by ``finished_at``) per request_id is its state. A request is
*done* when that row is ``ok`` with the same ``params_hash`` (kind, input URI,
params) and ``renderer_id`` (the kind's settings and model files) as now, its
input bytes are unchanged and its output is there: reruns skip it
(:mod:`genlib.render.resume`), failed rows are retried.

Parts are written whole (temp + rename), so a crash loses at most the rows in
flight; a part that cannot be read (e.g. zero bytes after a crash without fsync)
is skipped with a :class:`ManifestWarning` naming it, never fatal. Nightly jobs
append many parts: :func:`compact_manifest` replaces them by one holding the
latest row per request, writing the new part before deleting the old ones, so a
crash at any point loses nothing and counts nothing twice (duplicates of a row
are the same row: "latest" picks one).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genlib.storage import Storage

MANIFEST_DIR = "manifest"
PART_GLOB = "part-*.parquet"
GALLERY = "gallery.html"
MAX_NAME = 80  # characters of a request id kept in file names (ext4: 255 bytes a name)
READ_THREADS = 8  # parts read at once (local disks gain a little, object stores a lot)

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
    # added in format 2 (null in older parts):
    ("renderer_id", pa.string()),      # genlib.render.identity.renderer_id of the kind's settings + files
    ("input_fingerprint", pa.string()),  # "size:mtime_ns" of the input when read (genlib.render.io)
    ("extras", pa.string()),           # JSON object: companion file name -> path relative to the output
    ("run_id", pa.string()),           # the job that wrote the row
])

# What deciding "done" needs (a rerun reads only these columns).
DONE_COLUMNS = ("request_id", "status", "params_hash", "renderer_id", "input_sha256", "input_fingerprint",
                "output_uri", "output_sha256", "finished_at")


class ManifestWarning(UserWarning):
    """A manifest part was skipped (unreadable) or moved aside."""


def output_path(kind: str, request_id: str, phash: str) -> str:
    """``images/<kind>/<name>-<phash8>.png``; ids that are long or not plain ASCII get a hash of
    the id in their name, so names stay short and distinct ids never share a file."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in request_id)
    if safe != request_id or len(safe) > MAX_NAME:
        safe = f"{safe[:MAX_NAME]}~{hashlib.sha256(request_id.encode()).hexdigest()[:10]}"
    return str(PurePosixPath("images") / kind / f"{safe}-{phash[:8]}.png")


def companion(output_uri: str, name: str, suffix: str = ".png") -> str:
    """``images/k/x-1234.png`` -> ``images/k/x-1234.<name><suffix>``."""
    return f"{output_uri.removesuffix('.png')}.{name}{suffix}"


# ----------------------------------------------------------------------------- read


def list_parts(output: str) -> list[str]:
    return Storage(output).glob(MANIFEST_DIR, PART_GLOB)


def read_table(output: str, columns: tuple[str, ...] | None = None) -> pa.Table:
    """Every readable part's rows (``columns`` only, missing ones as nulls), in part order."""
    storage = Storage(output)
    schema = _project(columns)
    tables = [t for t in _read_parts(storage, list_parts(output), schema) if t is not None]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_manifest(output: str) -> dict[str, dict[str, Any]]:
    """request_id -> its latest manifest row (empty when there is no manifest yet)."""
    return {r["request_id"]: r for r in latest_rows(read_table(output)).to_pylist()}


def latest_rows(table: pa.Table) -> pa.Table:
    """The latest row per request_id (by finished_at; ties: the later part/row wins)."""
    table = table.filter(pc.is_valid(table["request_id"]))
    if len(table) == 0:
        return table
    t = table.append_column("_order", pa.array(range(len(table)), pa.int64()))
    t = t.append_column("_when", pc.fill_null(table["finished_at"], ""))  # no time: oldest
    t = t.sort_by([("request_id", "ascending"), ("_when", "ascending"), ("_order", "ascending")])
    ids = t["request_id"].combine_chunks()
    last = pc.not_equal(ids[:-1], ids[1:])  # [N-1]: row i is the last of its id
    return t.filter(pa.concat_arrays([last, pa.array([True])])).drop_columns(["_order", "_when"])


def _project(columns: tuple[str, ...] | None) -> pa.Schema:
    if columns is None:
        return MANIFEST_SCHEMA
    return pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])


def _read_parts(storage: Storage, parts: list[str], schema: pa.Schema) -> list[pa.Table | None]:
    """Each part conformed to ``schema`` (None if unreadable, with a warning naming it). Read by a
    few threads: pyarrow releases the GIL, and on object stores each read is a round trip."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        results = list(pool.map(lambda rel: _read_part(storage, rel, schema), parts))
    for rel, (_, error) in zip(parts, results):
        if error:  # warned here, in the caller's thread
            warnings.warn(f"skipping unreadable manifest part {storage.uri(rel)}: {error}", ManifestWarning,
                          stacklevel=3)
    return [table for table, _ in results]


def _read_part(storage: Storage, rel: str, schema: pa.Schema) -> tuple[pa.Table | None, str]:
    """(the part conformed to ``schema``, "") or (None, why it cannot be read)."""
    try:
        part = pq.ParquetFile(pa.BufferReader(storage.read_bytes(rel)))
        present = set(part.schema_arrow.names)
        table = part.read(columns=[c for c in schema.names if c in present])
        return pa.table([table[c].cast(f.type) if c in present else pa.nulls(len(table), f.type)
                         for c, f in zip(schema.names, schema)], schema=schema), ""
    except (OSError, pa.ArrowException, ValueError) as exc:
        return None, str(exc) or type(exc).__name__


# ----------------------------------------------------------------------------- done


def is_done(request: dict[str, Any], manifest: dict[str, dict[str, Any]], storage: Storage,
            outputs: set[str] | None = None) -> bool:
    """The latest row is ok for the same params and renderer, and its output is there.
    ``outputs``: the files under images/ (:func:`list_outputs`) instead of one stat per row.
    Whether the input bytes changed is :mod:`genlib.render.resume`'s check."""
    row = manifest.get(request["request_id"])
    if row is None or row["status"] != "ok" or row["params_hash"] != request["params_hash"]:
        return False
    if request.get("renderer_id") is not None and row.get("renderer_id") != request["renderer_id"]:
        return False
    if outputs is not None:
        return row["output_uri"] in outputs and row.get("output_sha256") is not None
    return storage.is_file(row["output_uri"])


def done_rows(requests: list[dict[str, Any]], latest: pa.Table, outputs: set[str]) -> pa.Table:
    """:func:`is_done` for many requests at once: the rows of ``latest`` (one per request_id,
    DONE_COLUMNS at least) that make their request done, plus the request's ``input`` column.
    Same rule as is_done with an ``outputs`` listing."""
    want = pa.table({"request_id": pa.array([r["request_id"] for r in requests], pa.string()),
                     "input": pa.array([r["input"] for r in requests], pa.string()),
                     "want_params": pa.array([r["params_hash"] for r in requests], pa.string()),
                     "want_renderer": pa.array([r.get("renderer_id") for r in requests], pa.string())})
    j = want.join(latest, "request_id", join_type="inner")
    same_renderer = pc.or_kleene(pc.is_null(j["want_renderer"]), pc.equal(j["renderer_id"], j["want_renderer"]))
    present = pc.and_(pc.is_in(j["output_uri"], value_set=pa.array(list(outputs), pa.string())),
                      pc.is_valid(j["output_sha256"]))
    done = pc.and_kleene(pc.and_kleene(pc.equal(j["status"], "ok"), pc.equal(j["params_hash"], j["want_params"])),
                         pc.and_kleene(same_renderer, present))
    return j.filter(pc.fill_null(done, False)).drop_columns(["want_params", "want_renderer"])


def list_outputs(output: str, kinds: set[str] | list[str]) -> set[str]:
    """Relative paths of the files in ``images/<kind>/`` (one listing per kind, no stat per file)."""
    storage = Storage(output)
    local = storage.local_path()
    found: set[str] = set()
    for kind in kinds:
        folder = f"images/{kind}"
        if local is not None:  # os.listdir: ~20x faster than a FileInfo per entry (genlib writes only files here)
            try:
                prefix = folder + "/"
                found.update(prefix + name for name in os.listdir(local / folder))
            except FileNotFoundError:
                pass
        else:
            found.update(storage.glob(folder, "*"))
    return found


# ----------------------------------------------------------------------------- write


def write_manifest_part(output: str, rows: list[dict[str, Any]], name: str) -> str:
    """Append one part file (atomic per part: a crash loses at most the rows in flight)."""
    table = pa.Table.from_pylist([{k: r.get(k) for k in MANIFEST_SCHEMA.names} for r in rows],
                                 schema=MANIFEST_SCHEMA)
    return _write_table(output, table, name)


def _write_table(output: str, table: pa.Table, name: str) -> str:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    rel = f"{MANIFEST_DIR}/part-{name}.parquet"
    Storage(output).write_bytes(rel, sink.getvalue().to_pybytes())
    return rel


def compact_manifest(output: str) -> dict[str, int]:
    """Replace every readable part by one part with the latest row per request; unreadable parts
    are renamed ``*.parquet.unreadable`` (kept for inspection, no longer read).

    Crash-safe: the compacted part is complete before any old part is deleted, and an old
    part still present beside it only repeats rows the compacted part holds."""
    storage = Storage(output)
    parts = list_parts(output)
    tables, bad = [], []
    for rel, table in zip(parts, _read_parts(storage, parts, MANIFEST_SCHEMA)):
        (bad.append(rel) if table is None else tables.append(table))
    for rel in bad:
        path = posixpath.join(storage.base, rel)
        storage.fs.move(path, path + ".unreadable")
        warnings.warn(f"moved unreadable manifest part aside: {storage.uri(rel)}.unreadable", ManifestWarning,
                      stacklevel=2)
    if len(tables) <= 1:
        return {"parts": len(tables), "rows": sum(len(t) for t in tables), "unreadable": len(bad)}
    latest = latest_rows(pa.concat_tables(tables))
    name = f"compact-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    new = _write_table(output, latest, name)
    for rel in parts:
        if rel not in bad and rel != new:
            storage.delete(rel)
    return {"parts": len(tables), "rows": len(latest), "unreadable": len(bad)}


def extras_of(row: dict[str, Any]) -> dict[str, str]:
    """The row's companion files (name -> path relative to the output); {} for older rows."""
    try:
        return dict(json.loads(row.get("extras") or "{}"))
    except (TypeError, ValueError):
        return {}
