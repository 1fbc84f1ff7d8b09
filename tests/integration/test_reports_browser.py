"""The HTML pages people look at load in a real headless browser (Debian's
chromium) with every image displayed and no script errors."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.pipeline import write_site
from genlib.render.gallery import write_gallery
from genlib.render.manifest import write_manifest_part
from genlib.render.requests import normalise_requests
from genlib.train.report import write_report
from genlib.train.rundir import RunDir
from tests.conftest import build, faces_recipe

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")

HARNESS = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" src="PAGE" style="width:WIDTHpx;height:900px;border:0"></iframe>
<script>
const errors = [];
const f = document.getElementById("f");
f.addEventListener("load", () => {
  const w = f.contentWindow;
  w.addEventListener("error", e => errors.push(String(e.message || e)));
  const imgs = Array.from(f.contentDocument.images);
  Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => {
    const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
    document.getElementById("result").textContent = JSON.stringify(
      {title: f.contentDocument.title, images: imgs.length, broken: broken, errors: errors,
       scroll_width: f.contentDocument.documentElement.scrollWidth});
  });
});
</script></body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory, raw_faces) -> Path:
    """A small work folder with all three kinds of page: run report, render gallery, one-page site."""
    work = tmp_path_factory.mktemp("site")
    corpus = build(raw_faces, work / "corpus", faces_recipe()).out_dir
    run = RunDir(work / "runs" / "dcgan")
    run.init({"train": {"model": {"family": "dcgan"}, "corpus": str(corpus)}})
    for step in (10, 20):
        run.log({"step": step, "loss_d": 1.0 / step, "loss_g": 2.0, "images_per_s": 100.0})
        run.save_samples(torch.rand(16, 3, 32, 32) * 2 - 1, step)
        run.save_eval({"family": "dcgan", "step": step, "split": "val", "fd": 100.0 / step, "kid": 0.1,
                       "completion": {"center": {"psnr": 20.0, "psnr_mean_fill": 15.0, "psnr_harmonic": 18.0}}})
    run.close()
    write_report(run.uri)
    renders = work / "renders"
    # r2 has what used to push the page sideways: a 300-character id, long input URI and params
    wide = {"style": [f"s3://bucket/paintings/{'very-long-folder-name/' * 6}starry-{i}.jpg" for i in range(3)],
            "style_layers": ["conv1_1,conv2_1,conv3_1,conv4_1,conv5_1" * 4]}
    rows = normalise_requests([{"request_id": f"r{i}" + ("-" + "x" * 297 if i == 2 else ""), "kind": "style",
                                "input": "x.png" if i < 2 else "s3://bucket/" + "deep/" * 40 + "x.png",
                                "params": wide if i == 2 else {}} for i in range(3)])
    manifest = []
    for i, r in enumerate(rows):
        rel = f"images/style/r{i}.png"
        (renders / "images/style").mkdir(parents=True, exist_ok=True)
        for name in (rel, rel.replace(".png", ".input.png")):
            Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(renders / name)
        manifest.append({"request_id": r["request_id"], "kind": "style", "input_uri": r["input"],
                         "params": r["params"], "params_hash": r["params_hash"], "output_uri": rel,
                         "status": "ok" if i < 2 else "failed", "error": None if i < 2 else "RenderError: boom",
                         "losses": json.dumps({"total": 1.5}), "iterations": 3, "seconds": 0.1,
                         "finished_at": f"2026-01-0{i + 1}"})
    write_manifest_part(str(renders), manifest, "t-00000")
    write_gallery(str(renders))
    write_site(work, corpus, work / "runs" / "dcgan", renders)
    return work


def check_page(root: Path, page: str, tmp_path: Path, width: int = 1200) -> dict:
    (root / "__check.html").write_text(HARNESS.replace("PAGE", page).replace("WIDTH", str(width)))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/__check.html"
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=15000", "--dump-dom", url]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    finally:
        server.shutdown()
    match = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert match and match.group(1) != "pending", dom[-2000:]
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.parametrize("page, min_images", [("report.html", 5), ("runs/dcgan/report.html", 6),
                                              ("renders/gallery.html", 4)])
def test_page_loads_with_every_image(site, page, min_images, tmp_path):
    result = check_page(site, page, tmp_path)
    assert result["errors"] == []
    assert result["broken"] == [], result
    assert result["images"] >= min_images, result
    assert result["title"]


def test_the_check_catches_a_missing_image(tmp_path):
    (tmp_path / "bad.html").write_text('<!doctype html><title>t</title><img src="nope.png" alt="x">')
    result = check_page(tmp_path, "bad.html", tmp_path)
    assert result["broken"] == ["nope.png"]


LAPTOP = 1366  # px: the most common laptop screen width


def test_the_gallery_fits_a_laptop_screen(site, tmp_path):
    result = check_page(site, "renders/gallery.html", tmp_path, width=LAPTOP)
    assert result["broken"] == [] and result["errors"] == []
    assert result["scroll_width"] <= LAPTOP, result


def test_the_width_check_catches_a_page_that_runs_off_the_screen(tmp_path):
    (tmp_path / "wide.html").write_text("<!doctype html><title>t</title><table><tr><td><pre>"
                                        + "x" * 400 + "</pre></td></tr></table>")
    assert check_page(tmp_path, "wide.html", tmp_path, width=LAPTOP)["scroll_width"] > LAPTOP


def test_the_one_page_report_shows_the_dcgans_eval_numbers(site):
    page = (site / "report.html").read_text()
    table = page[page.index('<table class="q">'):page.index("</table>")]
    assert "<th>fd</th><th>kid</th>" in table
    assert "<td>step 10</td><td>10</td><td>0.1</td>" in table and "<td>step 20</td><td>5</td>" in table
    assert "not comparable with published Inception FIDs" in page
