"""Request tables and the append-only manifest (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genlib.render.gallery import write_gallery
from genlib.render.manifest import (DONE_COLUMNS, MANIFEST_SCHEMA, ManifestWarning, compact_manifest, is_done,
                                    list_parts, output_path, read_manifest, write_manifest_part)
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


# ----------------------------------------------------------------------------- format 2: names, compaction, gallery


def test_output_names_stay_short_and_distinct():
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    names = {output_path("style", rid, "0123456789abcdef") for rid in (long_a, long_b, "x/y", "x_y", "é")}
    assert len(names) == 5
    assert all(len(PurePosixPath(n).name) <= 110 and n.count("/") == 2 for n in names)
    assert output_path("style", "plain-id_1.2", "0123456789abcdef") == "images/style/plain-id_1.2-01234567.png"


def many_parts(out: str, parts: int, per_part: int, requests: int) -> None:
    """`parts` parts of `per_part` rows over `requests` ids; later attempts finish later."""
    n = 0
    for p in range(parts):
        rows = []
        for _ in range(per_part):
            rid = f"r{n % requests:04d}"
            rows.append({"request_id": rid, "kind": "style", "params": "{}", "params_hash": f"h{n}",
                         "status": "ok" if n % 3 else "failed", "output_uri": f"images/style/{rid}.png",
                         "finished_at": f"2026-01-01T00:00:{n:06d}"})
            n += 1
        write_manifest_part(out, rows, f"run-{p:05d}")


def test_compaction_keeps_the_latest_row_per_request_and_survives_a_crash(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    many_parts(out, parts=30, per_part=8, requests=50)
    before = read_manifest(out)
    assert len(before) == 50 and len(list_parts(out)) == 30

    # A crash after the compacted part is written, before the old parts are deleted.
    def crash(self, rel):
        raise OSError("power cut")

    monkeypatch.setattr(Storage, "delete", crash)
    with pytest.raises(OSError, match="power cut"):
        compact_manifest(out)
    assert len(list_parts(out)) == 31 and read_manifest(out) == before  # nothing lost, nothing counted twice
    monkeypatch.undo()

    assert compact_manifest(out) == {"parts": 31, "rows": 50, "unreadable": 0}
    assert len(list_parts(out)) == 1 and read_manifest(out) == before
    assert len(pq.read_table(tmp_path / "out" / list_parts(out)[0])) == 50


def test_compaction_moves_unreadable_parts_aside_and_reads_only_needed_columns(tmp_path):
    out = str(tmp_path / "out")
    many_parts(out, parts=3, per_part=4, requests=6)
    (tmp_path / "out" / "manifest" / "part-zero.parquet").write_bytes(b"")
    with pytest.warns(ManifestWarning, match="part-zero.parquet"):
        compact_manifest(out)
    assert (tmp_path / "out" / "manifest" / "part-zero.parquet.unreadable").is_file()
    from genlib.render.manifest import latest_rows, read_table

    rows = latest_rows(read_table(out, DONE_COLUMNS)).to_pylist()
    assert len(rows) == 6 and set(rows[0]) == set(DONE_COLUMNS)


def test_the_gallery_pages_large_runs_failed_rows_first(tmp_path):
    out = tmp_path / "out"
    many_parts(str(out), parts=1, per_part=450, requests=450)
    ids = [f"r{i:04d}" for i in range(450)]
    first = write_gallery(str(out), ids)
    pages = sorted(p.name for p in out.glob("gallery*.html"))
    assert pages == ["gallery-2.html", "gallery-3.html", "gallery.html"] and first.endswith("gallery.html")
    page1 = (out / "gallery.html").read_text()
    assert page1.count('<tr class="failed">') == 150 and page1.count('<tr class="ok">') == 50
    assert 'href="gallery-3.html"' in page1 and "450 request(s): 300 ok, 150 failed" in page1
    write_gallery(str(out), ids[:10])  # a smaller run: stale pages go
    assert sorted(p.name for p in out.glob("gallery*.html")) == ["gallery.html"]
    assert (out / "gallery.html").read_text().count("<tr class=") == 10


def test_a_gallery_of_rows_with_extras_lists_them(tmp_path):
    out = tmp_path / "out"
    request = normalise_requests([req()])[0]
    row = manifest_row(request, "ok", "2026-01-02T00:00:00", output="images/style/a.png")
    row["extras"] = json.dumps({"input": "images/style/a.input.png", "progress": "images/style/a.progress.webp",
                                "mask": "images/style/a.mask.png"})
    write_manifest_part(str(out), [row], "r1")
    for rel in ("images/style/a.png", "images/style/a.input.png", "images/style/a.progress.webp"):
        Storage(str(out)).write_bytes(rel, b"x")  # the mask is missing on disk: not shown
    page = Path(write_gallery(str(out))).read_text()
    assert 'src="images/style/a.progress.webp"' in page and 'src="images/style/a.input.png"' in page
    assert "a.mask.png" not in page


def test_the_vectorised_done_rule_agrees_with_is_done(tmp_path):
    from genlib.render.manifest import done_rows, latest_rows, list_outputs, read_table

    out = str(tmp_path / "out")
    requests = normalise_requests([req(rid=f"r{i}", params={"i": i}) for i in range(6)])
    for r, rid in zip(requests, ["A", "A", None, "A", "A", "A"]):
        r["renderer_id"] = rid
    rows = []
    for i, r in enumerate(requests):
        row = manifest_row(r, "failed" if i == 4 else "ok", "2026-01-01", output=f"images/style/r{i}.png")
        row.update(renderer_id="B" if i == 1 else "A", output_sha256=None if i == 5 else "f" * 64)
        rows.append(row)
        if i != 3:  # r3's output is missing
            Storage(out).write_bytes(row["output_uri"], b"png")
    write_manifest_part(out, rows, "r1")
    outputs = list_outputs(out, ["style"])
    manifest = read_manifest(out)
    expected = {r["request_id"] for r in requests if is_done(r, manifest, Storage(out), outputs)}
    table = done_rows(requests, latest_rows(read_table(out)), outputs)
    assert set(table["request_id"].to_pylist()) == expected == {"r0", "r2"}


def test_on_the_fly_request_ids_do_not_depend_on_the_other_inputs(tmp_path):
    from genlib.render.requests import requests_from_inputs

    for name in ("b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    before = {r["input"]: r["request_id"] for r in requests_from_inputs("style", [str(tmp_path)])}
    (tmp_path / "a.png").write_bytes(b"x")  # sorts first: a position-based id would shift b and c
    after = {r["input"]: r["request_id"] for r in requests_from_inputs("style", [str(tmp_path)])}
    assert all(after[uri] == rid for uri, rid in before.items()) and len(after) == 3
    assert before[str(tmp_path / "b.png")].startswith("style-b-")
