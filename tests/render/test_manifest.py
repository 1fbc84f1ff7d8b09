"""Request tables and the append-only manifest (no Ray needed)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genlib.render.manifest import MANIFEST_SCHEMA, is_done, read_manifest, write_manifest_part
from genlib.render.requests import RequestError, load_requests, normalise_requests
from genlib.storage import Storage


def req(rid="a", kind="style", input="x.png", params=None):
    return {"request_id": rid, "kind": kind, "input": input, "params": params if params is not None else {}}


def test_request_tables_in_three_formats(tmp_path):
    rows = [req("a", params={"iterations": 5, "style": ["s.jpg"]}), req("b", kind="deepdream", params="{}")]
    pq.write_table(pa.Table.from_pylist([{**r, "params": json.dumps(r["params"]) if isinstance(r["params"], dict)
                                          else r["params"]} for r in rows]), tmp_path / "r.parquet")
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps({**r, "params": json.dumps(r["params"])
                                                            if isinstance(r["params"], dict) else r["params"]})
                                                for r in rows))
    (tmp_path / "r.csv").write_text('request_id,kind,input,params\na,style,x.png,"{""style"": [""s.jpg""], '
                                    '""iterations"": 5}"\nb,deepdream,x.png,{}\n')
    loaded = [load_requests(str(tmp_path / f"r.{ext}")) for ext in ("parquet", "jsonl", "csv")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][0]["params"] == '{"iterations":5,"style":["s.jpg"]}'  # canonical JSON: key order irrelevant


@pytest.mark.parametrize("rows, message", [
    ([req("a"), req("a")], "duplicate request_id 'a'"),
    ([req("")], "row 0 has an empty request_id"),
    ([req(kind="paint")], "unknown kind 'paint'"),
    ([req(params="{nope")], "params is not valid JSON"),
    ([req(params="[1]")], "params must be a JSON object"),
])
def test_bad_request_tables_are_rejected_whole(rows, message):
    with pytest.raises(RequestError, match=message):
        normalise_requests(rows)


def test_missing_columns_and_unknown_format(tmp_path):
    pq.write_table(pa.table({"request_id": ["a"], "kind": ["style"]}), tmp_path / "r.parquet")
    with pytest.raises(RequestError, match="missing column.*input, params"):
        load_requests(str(tmp_path / "r.parquet"))
    with pytest.raises(RequestError, match="use .parquet, .csv or .jsonl"):
        load_requests(str(tmp_path / "r.xlsx"))


def test_params_hash_tracks_kind_input_and_params():
    base = normalise_requests([req()])[0]["params_hash"]
    assert normalise_requests([req(params={"a": 1})])[0]["params_hash"] != base
    assert normalise_requests([req(input="y.png")])[0]["params_hash"] != base
    assert normalise_requests([req(kind="deepdream")])[0]["params_hash"] != base
    assert normalise_requests([req(rid="other")])[0]["params_hash"] == base


def manifest_row(request, status, when, output="images/style/a.png"):
    return {"request_id": request["request_id"], "kind": request["kind"], "input_uri": request["input"],
            "params": request["params"], "params_hash": request["params_hash"], "output_uri": output,
            "status": status, "finished_at": when, "iterations": 3, "seconds": 0.5}


def test_latest_attempt_wins_and_done_needs_ok_same_params_and_output(tmp_path):
    out = str(tmp_path / "out")
    request = normalise_requests([req()])[0]
    assert read_manifest(out) == {}
    write_manifest_part(out, [manifest_row(request, "failed", "2026-01-01T00:00:00")], "run1-00000")
    storage = Storage(out)
    assert not is_done(request, read_manifest(out), storage)
    write_manifest_part(out, [manifest_row(request, "ok", "2026-01-02T00:00:00")], "run2-00000")
    latest = read_manifest(out)
    assert latest["a"]["status"] == "ok" and latest["a"]["iterations"] == 3
    assert not is_done(request, latest, storage)          # its output file is missing
    storage.write_bytes("images/style/a.png", b"png")
    assert is_done(request, latest, storage)
    changed = normalise_requests([req(params={"iterations": 9})])[0]
    assert not is_done(changed, latest, storage)          # new params: render again
    table = pq.read_table(tmp_path / "out" / "manifest" / "part-run2-00000.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA)
