"""``gallery.html`` for a render output folder: input, output, extras, params and
losses side by side, one row per request (its latest manifest row).

The gallery shows one run's requests (``request_ids``; default: every request in the
manifest), failed rows first, :data:`PAGE_ROWS` rows a page: ``gallery.html``,
``gallery-2.html``, ... (pages of an earlier, longer run are removed). Which
companion files exist comes from the rows' ``extras`` and one listing of
``images/<kind>/`` (no stat per image). The page fits a 1366 px wide screen: fixed
column widths, long ids and params wrap, params scroll inside their cell.
"""

from __future__ import annotations

import html
import json

from genlib.render.manifest import GALLERY, companion, extras_of, list_outputs, read_manifest
from genlib.storage import Storage

PAGE_ROWS = 200
LEGACY_EXTRAS = ("mask", "masked_input", "generated")  # companions of rows written before the extras column

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em auto; padding: 0 1em; max-width: 1320px; color: #222; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
td, th { border-bottom: 1px solid #ddd; padding: 4px; vertical-align: top; overflow-wrap: anywhere; text-align: left; }
col.id { width: 15%; } col.img { width: 12%; } col.extras { width: 19%; } col.params { width: 24%; }
col.result { width: 18%; }
img { max-width: 100%; max-height: 180px; }
figure { display: inline-block; margin: 2px; max-width: 48%; } figure img { max-height: 110px; }
figcaption { font-size: 11px; }
pre { font-size: 11px; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; max-height: 14em; overflow: auto; }
small { overflow-wrap: anywhere; } nav a { margin-right: .5em; }
.failed { background: #fff0f0; } .err { color: #a00; }
"""


def write_gallery(output: str, request_ids: list[str] | None = None, run_id: str | None = None) -> str:
    """Write the gallery pages; returns the first page's URI. ``run_id`` marks rows made by other runs."""
    storage = Storage(output)
    latest = read_manifest(output)
    rows = (list(latest.values()) if request_ids is None
            else [latest[i] for i in dict.fromkeys(request_ids) if i in latest])
    rows.sort(key=lambda r: (r["status"] == "ok", r["kind"], r["request_id"]))
    files = list_outputs(output, {r["kind"] for r in rows})
    pages = [rows[i:i + PAGE_ROWS] for i in range(0, len(rows), PAGE_ROWS)] or [[]]
    names = [page_name(i) for i in range(len(pages))]
    ok = sum(r["status"] == "ok" for r in rows)
    summary = f"{len(rows)} request(s): {ok} ok, {len(rows) - ok} failed (failed first)."
    for i, page in enumerate(pages):
        body = "".join(_row(r, files, run_id) for r in page)
        storage.write_text(names[i], _page(summary, _nav(names, i), body))
    for stale in storage.glob("", "gallery-*.html"):
        if stale not in names:
            storage.delete(stale)
    return storage.uri(GALLERY)


def page_name(index: int) -> str:
    return GALLERY if index == 0 else GALLERY.replace(".html", f"-{index + 1}.html")


def _nav(names: list[str], current: int) -> str:
    if len(names) == 1:
        return ""
    links = "".join(f"<b>{i + 1}</b> " if i == current else f'<a href="{n}">{i + 1}</a>'
                    for i, n in enumerate(names))
    return f"<nav>page {current + 1} of {len(names)}: {links}</nav>"


def _page(summary: str, nav: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>genlib renders</title><style>{_STYLE}</style></head><body>
<h1>Renders</h1>
<p>{summary} Manifest: <code>manifest/part-*.parquet</code>.</p>{nav}
<table><colgroup><col class="id"><col class="img"><col class="img"><col class="extras"><col class="params">
<col class="result"></colgroup>
<tr><th>request</th><th>input</th><th>output</th><th>extras</th><th>params</th><th>result</th></tr>
{body}</table>{nav}</body></html>
"""


def _row(r: dict, files: set[str], run_id: str | None) -> str:
    esc = html.escape
    ok = r["status"] == "ok"
    extras = _extras(r, files)
    inp = extras.pop("input", None)
    figures = "".join(f'<figure><img src="{esc(p)}" alt="{esc(n)}"><figcaption>{esc(n)}</figcaption></figure>'
                      for n, p in extras.items())
    earlier = run_id and r.get("run_id") not in (None, run_id)
    other_run = f"<br><small>from run {esc(r['run_id'])}</small>" if earlier else ""
    out = r["output_uri"] if ok and r["output_uri"] in files else None
    return (f'<tr class="{"ok" if ok else "failed"}"><td><b>{esc(r["request_id"])}</b><br>{esc(r["kind"])}<br>'
            f'<small>{esc(r["input_uri"] or "")}</small>{other_run}</td>'
            f'<td>{_img(inp, "input")}</td><td>{_img(out, "output")}</td>'
            f"<td>{figures}</td><td><pre>{esc(_params(r['params']))}</pre></td><td>{_result(r, ok)}</td></tr>\n")


def _extras(r: dict, files: set[str]) -> dict[str, str]:
    """name -> relative path of the row's companion files that exist."""
    named = extras_of(r)
    if not named and r.get("output_uri"):  # rows written before the extras column
        named = {n: companion(r["output_uri"], n) for n in ("input", *LEGACY_EXTRAS)}
    return {n: p for n, p in named.items() if p in files}


def _params(params: str | None) -> str:
    """Canonical JSON with spaces after separators, so the cell can wrap (no indent: the
    C encoder, ~10x faster on a 100k-row gallery)."""
    try:
        return json.dumps(json.loads(params or "{}"), separators=(", ", ": "))
    except ValueError:
        return params or ""


def _result(r: dict, ok: bool) -> str:
    esc = html.escape
    if not ok:
        return f'<span class="err">{esc(r["error"] or "failed")}</span>'
    losses = json.loads(r["losses"]) if r["losses"] else {}
    seconds = f", {r['seconds']:.1f}s" if r["seconds"] is not None else ""
    return (f"<pre>{esc(json.dumps(losses, separators=(', ', ': ')))}</pre>{r['iterations']} iterations{seconds}"
            f"<br><small>{esc(r['weights_id'] or '')}<br>{esc(r['worker'] or '')}</small>")


def _img(rel: str | None, alt: str) -> str:
    return f'<img src="{html.escape(rel)}" alt="{alt}">' if rel else ""
