"""Render requests: the request table schema, reading it, and building rows on the fly.

A request table (Parquet, CSV or JSON Lines) has one row per job:

    request_id  unique id (string)
    kind        a render kind: a name in genlib.render.kinds.KINDS ("style", "deepdream", "complete", ...)
    input       image URI/path, or corpus://<corpus folder>#<key>
    params      JSON object with the kind's parameters (the kind's params dataclass)

CSV columns are read as text (an id ``007`` stays ``007``); JSON Lines rows are parsed
one by one, so a ``params`` object keeps exactly its own keys whatever the other rows'
kinds (Parquet tables should hold params as JSON strings for the same reason).

Table-level problems (missing column, duplicate or empty id, unknown kind, params
that are not a JSON object) stop the job before anything renders
(:class:`RequestError`); a row whose params do not fit its kind fails alone at
render time. Normalised rows carry ``params`` as canonical JSON and a
``params_hash`` (of kind, input and params) that the manifest records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genlib.render.kinds import KINDS
from genlib.storage import is_uri

REQUEST_COLUMNS = ("request_id", "kind", "input", "params")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


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
            # Every request column as text: type inference would turn id "007" into 7 and "1e3" into 1000.0.
            types = dict.fromkeys(REQUEST_COLUMNS, pa.string())
            return pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(column_types=types))
        if p.endswith((".jsonl", ".json")):
            return _read_json_lines(p)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RequestError(f"cannot read request table {p}: {exc}") from exc
    raise RequestError(f"request table {p}: use .parquet, .csv or .jsonl")


def _read_json_lines(path: str) -> pa.Table:
    """One JSON object per line, parsed per row: ``params`` objects keep exactly their own keys
    (one inferred struct over all rows would add other kinds' keys as nulls)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RequestError(f"{path}: line {number} is not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise RequestError(f"{path}: line {number} must be a JSON object, got {type(row).__name__}")
            rows.append({c: _text(row.get(c)) if c != "params" else _params_text(row.get(c))
                         for c in REQUEST_COLUMNS if c in row})
    columns = sorted({c for r in rows for c in r}, key=REQUEST_COLUMNS.index)
    return pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _params_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def requests_from_inputs(kind: str, inputs: list[str], params: Any = "{}") -> list[dict[str, Any]]:
    """One request per input image: files as given, folders searched (recursively, sorted)
    for image files by suffix, URIs passed through. RequestError when an input is
    missing or nothing is found."""
    images: list[str] = []
    scan = getattr(KINDS.get(kind), "input", "image") == "image"  # a "uri" kind takes a folder (a run) as is
    for item in inputs:
        p = Path(item)
        if p.is_dir() and scan:
            images += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.exists() or is_uri(item):
            images.append(item)
        else:
            raise RequestError(f"input not found: {item}")
    if not images:
        raise RequestError("no input images (pass --input FILE_OR_FOLDER)")
    # ids from the input itself (not its position in the listing): adding an image to the folder
    # does not rename, and so re-render, the others
    rows = [{"request_id": f"{kind}-{Path(uri).stem}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}",
             "kind": kind, "input": uri, "params": params} for uri in dict.fromkeys(images)]
    return normalise_requests(rows, "--input")
