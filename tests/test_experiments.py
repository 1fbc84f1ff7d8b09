"""experiments/: the script behind RESULTS.md parses, and its figures show what they claim."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlib.eval.completion import harmonic_fill, mean_fill

ROOT = Path(__file__).resolve().parents[1]


def _collect():
    spec = importlib.util.spec_from_file_location("collect", ROOT / "experiments" / "collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_run_script_parses_and_refuses_an_unknown_experiment(tmp_path):
    subprocess.run(["bash", "-n", str(ROOT / "experiments" / "run.sh")], check=True)
    shared = tmp_path / "shared"
    (shared / "corpora").mkdir(parents=True)
    out = subprocess.run(["bash", str(ROOT / "experiments" / "run.sh"), "no-such"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GENLIB_SHARED": str(shared), "OUT": str(tmp_path / "out")})
    assert out.returncode == 2 and "unknown experiment no-such" in out.stdout


def test_completion_figure_rows_are_masked_input_mean_harmonic_ours_truth(tmp_path):
    complete = tmp_path / "out" / "dcgan-faces32" / "renders" / "images" / "complete"
    complete.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truths = []
    for i in range(2):
        yy, xx = np.mgrid[:16, :16]
        truth = np.stack([xx * 12 + i * 20, yy * 12, (xx + yy) * 6], -1).astype(np.uint8)
        known = np.ones((16, 16), bool)
        known[4:12, 4:12] = False
        ours = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        stem = complete / f"complete-{i}-abc"
        Image.fromarray(truth).save(f"{stem}.input.png")
        Image.fromarray(np.where(known, 255, 0).astype(np.uint8)).convert("RGB").save(f"{stem}.mask.png")
        Image.fromarray(np.where(known[..., None], truth, 128).astype(np.uint8)).save(f"{stem}.masked_input.png")
        Image.fromarray(ours).save(f"{stem}.png")
        truths.append((truth, known, ours))
    _collect().figures(str(tmp_path / "out"), str(tmp_path / "figs"))
    strip = np.asarray(Image.open(tmp_path / "figs" / "dcgan-faces32-completion.png"))
    factor, tile, pad = 3, 16, 2
    assert strip.shape == (factor * (2 * (tile + pad) + pad), factor * (5 * (tile + pad) + pad), 3)

    def cell(row: int, col: int) -> np.ndarray:
        y, x = factor * (pad + row * (tile + pad)), factor * (pad + col * (tile + pad))
        return strip[y:y + factor * tile:factor, x:x + factor * tile:factor]

    for row, (truth, known, ours) in enumerate(truths):
        assert np.array_equal(cell(row, 1), mean_fill(truth, known))
        assert np.array_equal(cell(row, 2), harmonic_fill(truth, known))
        assert np.array_equal(cell(row, 3), ours)
        assert np.array_equal(cell(row, 4), truth)
