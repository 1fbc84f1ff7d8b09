"""What a run must render: its requests minus those already done (Ray-free).

    requests -> renderer_id per kind (genlib.render.identity), added to every row
             -> the manifest's DONE_COLUMNS only, latest row per request
             -> candidates: latest row ok, same params_hash and renderer_id, output in the
                listing of images/<kind>/ (one listing per kind, not one stat per row)
             -> input unchanged? its fingerprint (size:mtime_ns, genlib.render.io) equals the
                row's: trust the row's input_sha256; otherwise read and hash it now
             -> Plan(todo, skipped)

Rows written before renderer_id / input_fingerprint existed (null) cannot show they
were made by the same renderer: they are rendered once more, then carry both.
Inputs whose fingerprint changed (edited, or only touched/copied) are hashed in the
driver: a rerun reads only the inputs that look changed, never all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from genlib.render import io as rio
from genlib.render.identity import input_identity, renderer_id, row_renderer_id
from genlib.render.kinds import kind as kind_of
from genlib.render.manifest import DONE_COLUMNS, done_rows, latest_rows, list_outputs, read_table


@dataclass
class Plan:
    todo: list[dict[str, Any]]       # request rows to render, each with its kind's renderer_id added
    skipped: list[dict[str, Any]]    # request rows already done (as given)
    renderer_ids: dict[str, str | None] = field(default_factory=dict)


def plan_run(requests: list[dict[str, Any]], config: Any) -> Plan:
    """Split ``requests`` into what to render and what is done (``config``: a RenderConfig)."""
    kinds = {r["kind"] for r in requests}
    ids = renderer_ids(config, kinds)
    cache: dict[str, str | None] = {}
    rows = [{**r, "renderer_id": row_renderer_id(ids.get(r["kind"]), r["kind"], r["params"], cache)}
            for r in requests]
    latest = None if config.force else latest_rows(read_table(config.output, DONE_COLUMNS))
    same: set[str] = set()
    if latest is not None and len(latest):
        uri_kinds = {k for k in kinds if kind_of(k).input == "uri"}
        known = [r for r in rows if r["renderer_id"] is not None]  # unusable settings now: never "done"
        same = inputs_unchanged(done_rows(known, latest, list_outputs(config.output, kinds)),
                                {r["request_id"] for r in known if r["kind"] in uri_kinds},
                                max_bytes=config.limits.max_input_bytes)
    todo = [r for r in rows if r["request_id"] not in same]
    return Plan(todo, [r for r in requests if r["request_id"] in same], ids)


def renderer_ids(config: Any, kinds: set[str]) -> dict[str, str | None]:
    """kind -> renderer_id; None when a file its section names is unusable now (its rows then
    render, and fail with the renderer's own message)."""
    out: dict[str, str | None] = {}
    for name in sorted(kinds):
        try:
            out[name] = renderer_id(config, name)
        except Exception:  # any broken setting: never "done", the render reports it per row
            out[name] = None
    return out


def inputs_unchanged(candidates: pa.Table, uri_inputs: set[str] = frozenset(),
                     max_bytes: int | None = None) -> set[str]:
    """Request ids (of :func:`~genlib.render.manifest.done_rows`) whose input is the one their
    manifest row was rendered from. ``uri_inputs``: request ids of kinds whose input is a
    run/checkpoint folder, compared by :func:`~genlib.render.identity.input_identity`.
    ``max_bytes``: the job's ``limits.max_input_bytes`` for the inputs that must be hashed again."""
    by_uri = pc.is_in(candidates["request_id"], value_set=pa.array(sorted(uri_inputs), pa.string()))
    folders = candidates.filter(by_uri).select(["request_id", "input", "input_sha256"]).to_pylist()
    folders = [row for row in folders if row["input_sha256"] is not None]
    identities = {uri: input_identity(uri) for uri in {row["input"] for row in folders}}  # once per run folder
    same = {row["request_id"] for row in folders if identities[row["input"]] == row["input_sha256"]}
    files = candidates.filter(pc.invert(by_uri))
    inputs = pc.unique(files["input"]).to_pylist()
    prints = rio.fingerprints(inputs)
    now = pa.table({"input": pa.array(inputs, pa.string()),
                    "fingerprint_now": pa.array([prints.get(u) for u in inputs], pa.string())})
    t = files.join(now, "input", join_type="left outer")
    same_mask = pc.fill_null(pc.equal(t["input_fingerprint"], t["fingerprint_now"]), False)
    same |= set(t.filter(same_mask)["request_id"].to_pylist())
    hashes: dict[str, str | None] = {}
    for row in t.filter(pc.invert(same_mask)).select(["request_id", "input", "input_sha256"]).to_pylist():
        if _sha256(row["input"], hashes, max_bytes) == row["input_sha256"]:  # touched or copied, same bytes
            same.add(row["request_id"])
    return same


def _sha256(uri: str, cache: dict[str, str | None], max_bytes: int | None = None) -> str | None:
    if uri not in cache:
        try:
            cache[uri] = hashlib.sha256(rio.read_bytes(uri, max_bytes)).hexdigest()
        except Exception:  # unreadable now: not "unchanged"; rendering it reports why
            cache[uri] = None
    return cache[uri]
