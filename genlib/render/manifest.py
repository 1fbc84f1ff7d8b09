"""Render requests in, Parquet manifest out: the schemas, defined once.

A request table (Parquet, CSV or JSON Lines) has one row per job:

    request_id  unique id (string)
    kind        "style" | "deepdream" | "complete"
    input       image URI/path, or corpus://<corpus folder>#<key>
    params      JSON object with the kind's parameters (StyleParams, DreamParams, CompletionParams)

The manifest (``<output>/manifest/part-*.parquet``, append-only) has one row per
attempt (MANIFEST_SCHEMA). The latest row per request_id is its state. A request
is *done* when its latest row is ``ok`` for the same ``params_hash`` (kind,
input and params): reruns skip it, so a nightly job that died half way resumes
by running it again; failed rows are retried.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from genlib.storage import Storage

KINDS = ("style", "deepdream", "complete")
MANIFEST_DIR = "manifest"
GALLERY = "gallery.html"

REQUEST_COLUMNS = ("request_id", "kind", "input", "params")

MANIFEST_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("kind", pa.string()),
    ("input_uri", pa.string()),
    ("input_sha256", pa.string()),     # null when the input could not be read
    ("params", pa.string()),           # canonical JSON
    ("params_hash", pa.string()),      # sha256 of (kind, input, params)[:16]
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


class RequestError(ValueError):
    """The request table itself is unusable (the whole job stops before rendering)."""


def canonical_params(params: Any) -> str:
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except json.JSONDecodeError as exc:
            raise RequestError(f"params is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise RequestError(f"params must be a JSON object, got {type(params).__name__}")
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def params_hash(kind: str, input_uri: str, params: str) -> str:
    blob = json.dumps([kind, input_uri, params]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_path(kind: str, request_id: str, phash: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)
    return str(PurePosixPath("images") / kind / f"{safe}-{phash[:8]}.png")


def load_requests(path: str) -> list[dict[str, Any]]:
    """Read and validate a request table; per-row parameter problems are left to
    the render (they fail that row only), table-level problems raise RequestError."""
    table = _read_table(path)
    missing = [c for c in REQUEST_COLUMNS if c not in table.column_names]
    if missing:
        raise RequestError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(REQUEST_COLUMNS)})")
    rows = table.select(list(REQUEST_COLUMNS)).to_pylist()
    return normalise_requests(rows, str(path))


def normalise_requests(rows: list[dict[str, Any]], where: str = "request") -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for i, row in enumerate(rows):
        rid = str(row.get("request_id") or "")
        if not rid:
            raise RequestError(f"{where}: row {i} has an empty request_id")
        if rid in seen:
            raise RequestError(f"{where}: duplicate request_id {rid!r}")
        seen.add(rid)
        kind = row.get("kind")
        if kind not in KINDS:
            raise RequestError(f"{where}: request {rid}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        try:
            params = canonical_params(row.get("params") or {})
        except RequestError as exc:
            raise RequestError(f"{where}: request {rid}: {exc}") from None
        uri = str(row.get("input") or "")
        out.append({"request_id": rid, "kind": kind, "input": uri, "params": params,
                    "params_hash": params_hash(kind, uri, params)})
    return out


def _read_table(path: str) -> pa.Table:
    p = str(path)
    try:
        if p.endswith(".parquet"):
            return pq.read_table(p)
        if p.endswith(".csv"):
            return pacsv.read_csv(p)
        if p.endswith((".jsonl", ".json")):
            return pajson.read_json(p)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RequestError(f"cannot read request table {p}: {exc}") from exc
    raise RequestError(f"request table {p}: use .parquet, .csv or .jsonl")


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
