"""PixelRNN sprite completion (kind ``pixel_complete``) with a tiny Row LSTM trained in the test.

The training images are 8 x 8 with 4 colours where every column has one colour from
top to bottom, so a model that learned anything completes a hidden bottom half by
continuing each column; 60 Adam steps (~3 s) get there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.config import from_dict
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.models.pixelrnn import PixelRNN, PixelRNNConfig
from genlib.render.base import RenderError
from genlib.render.config import RenderConfig
from genlib.render.base import HIDDEN_GREY
from genlib.render.pixel_complete import PixelCompleteParams, PixelCompletion
from genlib.render.requests import normalise_requests
from genlib.render.runner import RenderRunner
from genlib.train.checkpoint import save_state

PALETTE = np.array([[0, 0, 0], [255, 255, 255], [230, 40, 30], [20, 60, 200]], dtype=np.uint8)
SIDE, PAD = 8, 2  # model side; image_grid's white gutter


def columns(n: int, seed: int) -> torch.Tensor:
    """[n, 8, 8] palette indices, one colour per column."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n, 1, SIDE), generator=gen).expand(n, SIDE, SIDE).clone()


def save_run(family, folder: Path, family_name: str) -> Path:
    """A run folder with one complete checkpoint written by the checkpoint contract."""
    ckpt = folder / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    save_state(family, 60, {"model": {"family": family_name}}, "test-corpus",
               dataclasses.asdict(family.config), ckpt)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = PixelRNNConfig(num_colors=4, height=SIDE, width=SIDE, hidden=16, layers=1, embed=8, first_kernel=3,
                         lr=2e-2, palette=PALETTE.tolist())
    family = PixelRNN(cfg)
    for step in range(60):
        family.train_step({"index": columns(16, step)})
    return save_run(family, tmp_path_factory.mktemp("pixelrnn-run"), "pixelrnn")


@pytest.fixture(scope="module")
def renderer(run) -> PixelCompletion:
    return PixelCompletion(str(run))


def sprite(seed: int = 99, scale: int = 1) -> np.ndarray:
    """A held-out column sprite as RGB uint8 [8 * scale, 8 * scale, 3] (exact palette colours)."""
    rgb = PALETTE[columns(1, seed)[0].numpy()]
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def tiles(grid: np.ndarray, count: int, zoom: int = 1) -> list[np.ndarray]:
    """Cut the output grid (one row of tiles) back into its tiles."""
    side = SIDE * zoom
    return [grid[PAD:PAD + side, PAD + i * (side + PAD):PAD + i * (side + PAD) + side] for i in range(count)]


def index_of(tile: np.ndarray) -> np.ndarray:
    """uint8 [8, 8, 3] palette colours -> [8, 8] indices (exact match required)."""
    match = (tile[:, :, None, :] == PALETTE[None, None]).all(-1)  # [8, 8, K]
    assert match.any(-1).all(), "a pixel that is not a palette colour"
    return match.argmax(-1)


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("field, value, reason", [
    ("mask", "", "must be one of ('top_half', 'rows', 'pixels') or a mask image path/URI"),
    ("fraction", 1.0, "must lie in (0, 1)"), ("fraction", 0, "must lie in (0, 1)"),
    ("samples", 0, "must be an integer >= 1"), ("temperature", -0.5, "must be a finite number >= 0"),
    ("seed", -1, "must be an integer >= 0"), ("zoom", 0, "must be an integer >= 1"),
    ("checkpoint", "", "must be a run or checkpoint folder (or None)"),
])
def test_params_validation_names_the_field(field, value, reason):
    with pytest.raises(ValueError, match=f"^{re.escape(f'PixelCompleteParams.{field}: {reason}, got {value!r}')}$"):
        PixelCompleteParams(**{field: value})


def test_params_limits():
    from genlib.render.limits import LimitError, RenderLimits

    PixelCompleteParams(samples=8).check_limits(RenderLimits(max_samples=8))
    with pytest.raises(LimitError, match=re.escape("PixelCompleteParams.samples: must be <= 8 (limits.max_samples)")):
        PixelCompleteParams(samples=9).check_limits(RenderLimits(max_samples=8))


# ----------------------------------------------------------------------------- completion


def test_given_pixels_are_kept_and_the_trained_model_continues_the_columns(renderer):
    image = sprite()
    out = renderer(image, PixelCompleteParams(samples=3, temperature=0.0, zoom=1))
    assert out.image.shape == (SIDE + 2 * PAD, 5 * (SIDE + PAD) + PAD, 3)  # input, masked input, 3 samples
    quantized, masked, *samples = tiles(out.image, 5)
    truth = index_of(image)
    assert np.array_equal(index_of(quantized), truth)
    assert (masked[:4] == image[:4]).all() and (masked[4:] == HIDDEN_GREY).all()
    for s in samples:
        s = index_of(s)
        assert np.array_equal(s[:4], truth[:4])  # given rows kept exactly
        assert (s[4:] == truth[4:]).mean() > 0.9  # greedy: the columns go on
    assert np.array_equal(out.extras["mask"][:4], np.full((4, SIDE), 255)) and (out.extras["mask"][4:] == 0).all()
    assert out.info["given_fraction"] == 0.5 and out.info["weights_id"].startswith("pixelrnn:")


def test_losses_split_the_exact_nll_of_the_input(renderer):
    family, _ = renderer.model(None)
    image = sprite(7)
    out = renderer(image, PixelCompleteParams(samples=2))
    full = float(family.nll_per_image(torch.from_numpy(index_of(image))[None])[0])  # the family's own NLL
    assert out.losses["nll_given"] + out.losses["nll_hidden_input"] == pytest.approx(full, rel=1e-4)
    assert out.losses["nll_given"] > 0 and out.losses["nll_samples"] > 0
    # a trained model finds the real continuation far likelier than a scrambled one
    scrambled = image.copy()
    scrambled[4:] = image[4:, ::-1][:, [1, 2, 3, 4, 5, 6, 7, 0]]
    worse = renderer(scrambled, PixelCompleteParams(samples=1))
    assert worse.losses["nll_hidden_input"] > out.losses["nll_hidden_input"] + 5


def test_sampling_is_seeded_and_temperature_matters(renderer):
    image = sprite(3)
    p = PixelCompleteParams(samples=6, temperature=3.0, seed=1, zoom=2)
    a, b = renderer(image, p), renderer(image, p)
    assert np.array_equal(a.image, b.image) and a.losses == b.losses
    c = renderer(image, dataclasses.replace(p, seed=2))
    assert not np.array_equal(a.image, c.image)
    hot = [index_of(t[::2, ::2]) for t in tiles(a.image, 8, zoom=2)[2:]]
    assert len({t.tobytes() for t in hot}) > 1  # hot sampling: the completions differ
    greedy = renderer(image, dataclasses.replace(p, temperature=0.0))
    cold = [t.tobytes() for t in tiles(greedy.image, 8, zoom=2)[2:]]
    assert len(set(cold)) == 1


@pytest.mark.parametrize("mask, fraction, given", [("top_half", 0.5, 32), ("rows", 0.25, 16), ("pixels", 0.25, 16),
                                                   ("pixels", 0.3, 19)])
def test_prefix_masks(renderer, mask, fraction, given):
    out = renderer(sprite(), PixelCompleteParams(mask=mask, fraction=fraction, samples=1, zoom=1))
    known = out.extras["mask"].ravel() == 255
    assert known.sum() == given and known[:given].all()  # a prefix in raster order


def test_mask_images_at_the_model_or_the_input_size(renderer, tmp_path):
    small = np.full((SIDE, SIDE), 255, np.uint8)
    small[:, 5:] = 0  # the right three columns hidden
    Image.fromarray(small).save(tmp_path / "model.png")
    out = renderer(sprite(), PixelCompleteParams(mask=str(tmp_path / "model.png"), samples=1))
    assert np.array_equal(out.extras["mask"], small)
    big = np.repeat(np.repeat(small, 3, axis=0), 3, axis=1)
    big[0, 0] = 0  # one hidden input pixel hides the model pixel it falls in (conservative)
    Image.fromarray(big).save(tmp_path / "input.png")
    out = renderer(sprite(scale=3), PixelCompleteParams(mask=str(tmp_path / "input.png"), samples=1))
    expected = small.copy()
    expected[0, 0] = 0
    assert np.array_equal(out.extras["mask"], expected)
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(RenderError, match="odd.png is 5x5"):
        renderer(sprite(), PixelCompleteParams(mask=str(tmp_path / "odd.png")))
    Image.fromarray(np.full((SIDE, SIDE), 255, np.uint8)).save(tmp_path / "all.png")
    with pytest.raises(RenderError, match="hides no pixel"):
        renderer(sprite(), PixelCompleteParams(mask=str(tmp_path / "all.png")))


def test_any_input_is_fitted_and_quantized(renderer):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # other size, other aspect, off-palette colours
    out = renderer(photo, PixelCompleteParams(samples=1, zoom=1))
    assert out.extras["quantized"].shape == (SIDE, SIDE, 3)
    index_of(out.extras["quantized"])  # every pixel a palette colour
    with pytest.raises(RenderError, match="expected a uint8 RGB image"):
        renderer(photo.astype(np.float32), PixelCompleteParams())


def test_models_are_cached_and_checkpoints_checked(renderer, run, tmp_path):
    first = renderer.model(None)
    assert renderer.model(str(run)) is first and renderer.model(str(run / "checkpoint_000001")) is first
    with pytest.raises(RenderError, match="needs a PixelRNN checkpoint"):
        PixelCompletion("")(sprite(), PixelCompleteParams())
    dcgan = save_run(DCGAN(DCGANConfig(image_size=32, ngf=8, ndf=8, nz=4)), tmp_path / "dcgan", "dcgan")
    with pytest.raises(ValueError, match="holds a dcgan model, expected pixelrnn"):
        renderer(sprite(), PixelCompleteParams(checkpoint=str(dcgan)))
    with pytest.raises(FileNotFoundError, match="not found"):
        renderer(sprite(), PixelCompleteParams(checkpoint=str(tmp_path / "nowhere")))


# ----------------------------------------------------------------------------- through the runner


def test_a_request_row_renders_through_the_runner(run, tmp_path):
    Image.fromarray(sprite(scale=4)).save(tmp_path / "sprite.png")
    config = from_dict(RenderConfig, {"output": str(tmp_path / "out"), "pixel_complete": {"checkpoint": str(run)}})
    rows = normalise_requests([
        {"request_id": "sprite", "kind": "pixel_complete", "input": str(tmp_path / "sprite.png"),
         "params": {"mask": "pixels", "fraction": 0.25, "samples": 2}},
        {"request_id": "bad", "kind": "pixel_complete", "input": str(tmp_path / "sprite.png"),
         "params": {"samples": 0}}])
    ok, bad = RenderRunner(config).render_rows(rows)
    assert ok["status"] == "ok", ok.get("error")
    data = (tmp_path / "out" / ok["output_uri"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == ok["output_sha256"]
    with Image.open(tmp_path / "out" / ok["output_uri"]) as im:
        assert im.size == (4 * (4 * SIDE + PAD) + PAD, 4 * SIDE + 2 * PAD)  # zoom 4: input, masked, 2 samples
    assert (tmp_path / "out" / ok["output_uri"].replace(".png", ".mask.png")).is_file()
    assert set(json.loads(ok["losses"])) == {"nll_given", "nll_hidden_input", "nll_samples"}
    assert ok["weights_id"].startswith("pixelrnn:") and ok["weights_id"].endswith("@test-corpus")
    assert bad["status"] == "failed" and "PixelCompleteParams.samples: must be an integer >= 1" in bad["error"]


def test_a_newer_checkpoint_named_in_the_params_renders_the_row_again(run, tmp_path):
    """params.checkpoint takes part in the row's renderer identity."""
    import shutil

    from genlib.render.config import RenderConfig
    from genlib.render.manifest import write_manifest_part
    from genlib.render.resume import plan_run

    own = tmp_path / "run"
    shutil.copytree(run, own)
    Image.fromarray(sprite()).save(tmp_path / "s.png")
    config = RenderConfig(output=str(tmp_path / "out"))
    requests = normalise_requests([{"request_id": "p", "kind": "pixel_complete", "input": str(tmp_path / "s.png"),
                                    "params": {"checkpoint": str(own), "samples": 1}}])
    (row,) = RenderRunner(config).render_rows(plan_run(requests, config).todo)
    assert row["status"] == "ok", row.get("error")
    write_manifest_part(config.output, [row], "r1")
    assert plan_run(requests, config).todo == []
    newer = own / "checkpoint_000002"
    shutil.copytree(own / "checkpoint_000001", newer)
    state = newer / "state.pt"
    data = torch.load(state, weights_only=True)
    data["step"] = 61
    torch.save(data, state)  # a different state.pt (format 1: no marker -> hashed)
    (newer / "state.json").unlink()
    assert [r["request_id"] for r in plan_run(requests, config).todo] == ["p"]


def test_a_zoom_whose_grid_exceeds_max_side_fails_before_sampling(renderer):
    from genlib.render.limits import LimitError, RenderLimits, row_budget

    with row_budget(RenderLimits(max_side=1024)), pytest.raises(LimitError, match="PixelCompleteParams.zoom: the "
                                                                    "output would be"):
        renderer(sprite(), PixelCompleteParams(samples=4, zoom=4096))
