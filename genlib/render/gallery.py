"""``gallery.html`` for a render output folder: input, output, params and losses
side by side, one row per request (its latest manifest row)."""

from __future__ import annotations

import html
import json

from genlib.render.manifest import GALLERY, read_manifest
from genlib.storage import Storage

EXTRAS = ("mask", "masked_input", "generated")


def write_gallery(output: str) -> str:
    storage = Storage(output)
    rows = sorted(read_manifest(output).values(), key=lambda r: (r["kind"], r["request_id"]))
    body = "".join(_row(r, storage) for r in rows)
    ok = sum(r["status"] == "ok" for r in rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genlib renders</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; }}
img {{ max-width: 256px; max-height: 256px; image-rendering: auto; }}
pre {{ font-size: 11px; max-width: 360px; white-space: pre-wrap; margin: 0; }}
.failed {{ background: #fff0f0; }} .err {{ color: #a00; }}
</style></head><body>
<h1>Renders</h1>
<p>{len(rows)} request(s): {ok} ok, {len(rows) - ok} failed. Manifest: <code>manifest/part-*.parquet</code>.</p>
<table><tr><th>request</th><th>input</th><th>output</th><th>extras</th><th>params</th><th>result</th></tr>
{body}</table></body></html>
"""
    storage.write_text(GALLERY, page)
    return storage.uri(GALLERY)


def _row(r: dict, storage: Storage) -> str:
    esc = html.escape
    out = r["output_uri"]
    ok = r["status"] == "ok"
    inp = out.replace(".png", ".input.png")
    extras = "".join(f'<figure><img src="{esc(p)}" alt="{esc(n)}"><figcaption>{esc(n)}</figcaption></figure>'
                     for n in EXTRAS if storage.is_file(p := out.replace(".png", f".{n}.png")))
    losses = json.loads(r["losses"]) if r["losses"] else {}
    result = (f"<pre>{esc(json.dumps(losses, indent=1))}</pre>{r['iterations']} iterations, {r['seconds']:.1f}s"
              f"<br><small>{esc(r['weights_id'] or '')}<br>{esc(r['worker'] or '')}</small>" if ok else
              f'<span class="err">{esc(r["error"] or "failed")}</span>')
    params = esc(json.dumps(json.loads(r["params"]), indent=1))
    return (f'<tr class="{"ok" if ok else "failed"}"><td><b>{esc(r["request_id"])}</b><br>{esc(r["kind"])}<br>'
            f'<small>{esc(r["input_uri"])}</small></td>'
            f'<td>{_img(inp, storage, "input")}</td><td>{_img(out, storage, "output") if ok else ""}</td>'
            f"<td>{extras}</td><td><pre>{params}</pre></td><td>{result}</td></tr>\n")


def _img(rel: str, storage: Storage, alt: str) -> str:
    return f'<img src="{html.escape(rel)}" alt="{alt}">' if storage.is_file(rel) else ""
