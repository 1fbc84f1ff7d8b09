"""Latent exploration (kind ``explore``) of a tiny DCGAN and a tiny 2-D VAE, each trained
for a few steps in the test and written with the checkpoint contract."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.config import from_dict
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.models.pixelrnn import PixelRNN, PixelRNNConfig
from genlib.models.vae import VAE, VAEConfig
from genlib.render.base import RenderError
from genlib.render.config import RenderConfig
from genlib.render.explore import ExploreParams, LatentExplorer, lerp, slerp, traverse
from genlib.render.masks import fit_image
from genlib.render.requests import normalise_requests, requests_from_inputs
from genlib.render.runner import RenderRunner
from genlib.train.checkpoint import save_state

S, PAD = 32, 2  # model side; image_grid's gutter


def train_and_save(family, folder: Path, name: str, steps: int = 3) -> Path:
    """A few steps on smooth random images, then one checkpoint folder in a run folder."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        low = torch.rand(8, 3, 4, 4, generator=gen) * 2 - 1
        family.train_step({"image": torch.nn.functional.interpolate(low, size=(S, S), mode="bilinear")})
    ckpt = folder / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    save_state(family, steps, {"model": {"family": name}}, "test-corpus", dataclasses.asdict(family.config), ckpt)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("explore-runs")
    return {"dcgan": train_and_save(DCGAN(DCGANConfig(image_size=S, ngf=8, ndf=8, nz=6)), root / "dcgan", "dcgan"),
            "vae": train_and_save(VAE(VAEConfig(image_size=S, latent_dim=2, nf=8)), root / "vae", "vae"),
            "vae3": train_and_save(VAE(VAEConfig(image_size=S, latent_dim=3, nf=8)), root / "vae3", "vae")}


@pytest.fixture(scope="module")
def explorer() -> LatentExplorer:
    return LatentExplorer()


def cut(grid: np.ndarray, row: int, col: int, side: int = S) -> np.ndarray:
    """Tile (row, col) of an image_grid output."""
    top, left = PAD + row * (side + PAD), PAD + col * (side + PAD)
    return grid[top:top + side, left:left + side]


def decoded(family, z: torch.Tensor) -> np.ndarray:
    """Independent decode of one latent [d] -> uint8 [S, S, 3]."""
    with torch.no_grad():
        x = family.decode(z[None]) if isinstance(family, VAE) else family.netG.eval()(z[None])
    return ((x[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).numpy()


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one grey level (batched and single decodes may round differently)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b).max()) <= 1


def photo(seed: int) -> np.ndarray:
    low = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((60, 45), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------- params and geometry


@pytest.mark.parametrize("kw, message", [
    ({"mode": "walk"}, "mode: must be one of 'interpolate', 'traverse', 'grid', 'arithmetic', got 'walk'"),
    ({"steps": 1}, "steps: must be an integer >= 2, got 1"),
    ({"path": "cubic"}, "path: must be one of 'linear', 'slerp', got 'cubic'"),
    ({"seeds": [1, 2, 3]}, "seeds: must name exactly two ends for mode 'interpolate', got [1, 2, 3]"),
    ({"seeds": [-1, 2]}, "seeds: must be a non-empty list of integers >= 0 (or None), got [-1, 2]"),
    ({"mode": "traverse", "dims": []}, "dims: must be a non-empty list of integers >= 0 (or None), got []"),
    ({"mode": "arithmetic"}, "groups: must be a non-empty list of non-empty lists of seeds (or image indices) for "
                             "mode 'arithmetic', got None"),
    ({"mode": "arithmetic", "groups": [[1], [2]], "signs": [1]}, "signs: must give one number per group (2), got [1]"),
    ({"mode": "arithmetic", "groups": [[0], [3]], "signs": [1, -1], "images": ["a.png", "b.png"]},
     "groups: must index into images (0 .. 1), got [[0], [3]]"),
    ({"span": 0}, "span: must be a finite number > 0 (or None), got 0"),
])
def test_params_validation_names_the_field(kw, message):
    with pytest.raises(ValueError, match=f"^{re.escape('ExploreParams.' + message)}$"):
        ExploreParams(**kw)


def test_limits_count_the_decoded_images():
    from genlib.render.limits import LimitError, RenderLimits

    caps = RenderLimits(max_samples=16)
    ExploreParams(mode="grid", steps=4).check_limits(caps)  # 16 tiles
    with pytest.raises(LimitError, match=re.escape("ExploreParams.steps: must be <= 16 (limits.max_samples), got 25")):
        ExploreParams(mode="grid", steps=5).check_limits(caps)
    with pytest.raises(LimitError, match=re.escape("ExploreParams.groups: must be <= 16 (limits.max_samples), got 18")):
        ExploreParams(mode="arithmetic", groups=[[1] * 8, [2] * 7], signs=[1, -1]).check_limits(caps)


def test_slerp_follows_the_great_circle_and_lerp_the_line():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    t = torch.linspace(0, 1, 5)
    path = slerp(a, b, t)
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=1), torch.full((5,), 3.0))  # equal norms stay on the sphere
    angles = torch.atan2(path[:, 1], path[:, 0])
    assert torch.allclose(angles.diff(), torch.full((4,), torch.pi / 8), atol=1e-6)  # equal angular steps
    assert torch.allclose(lerp(a, b, t)[2], (a + b) / 2) and lerp(a, b, t)[2].norm() < 3
    assert torch.allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t))  # parallel: the straight line
    z = traverse(torch.zeros(3), [0, 2], torch.tensor([-1.0, 1.0]))
    assert z.tolist() == [[-1, 0, 0], [1, 0, 0], [0, 0, -1], [0, 0, 1]]


# ----------------------------------------------------------------------------- modes


def test_dcgan_interpolation_ends_at_the_seeds_latents(explorer, runs):
    family, _ = explorer.model(str(runs["dcgan"]))
    out = explorer(str(runs["dcgan"]), ExploreParams(seeds=[3, 4], steps=5))
    assert out.image.shape == (S + 2 * PAD, 5 * (S + PAD) + PAD, 3) and out.info["columns"] == 5
    z3, z4 = (family.sample_z(1, torch.Generator().manual_seed(s)).flatten() for s in (3, 4))
    assert close(cut(out.image, 0, 0), decoded(family, z3)) and close(cut(out.image, 0, 4), decoded(family, z4))
    assert close(cut(out.image, 0, 2), decoded(family, (z3 + z4) / 2))
    again = explorer(str(runs["dcgan"]), ExploreParams(seeds=[3, 4], steps=5))
    assert np.array_equal(out.image, again.image)  # deterministic for the seeds
    curved = explorer(str(runs["dcgan"]), ExploreParams(seeds=[3, 4], steps=5, path="slerp"))
    assert np.array_equal(cut(curved.image, 0, 0), cut(out.image, 0, 0))
    assert not np.array_equal(cut(curved.image, 0, 2), cut(out.image, 0, 2))
    assert out.info["weights_id"].startswith("dcgan:") and out.info["family"] == "dcgan"


def test_vae_interpolates_between_encoded_images(explorer, runs, tmp_path):
    family, _ = explorer.model(str(runs["vae"]))
    for i in (0, 1):
        Image.fromarray(photo(i)).save(tmp_path / f"p{i}.png")
    params = ExploreParams(images=[str(tmp_path / "p0.png"), str(tmp_path / "p1.png")], steps=4, zoom=2)
    out = explorer(str(runs["vae"]), params)
    assert out.image.shape == (2 * S + 2 * PAD, 6 * (2 * S + PAD) + PAD, 3)  # image, 4 decodes, image
    fitted = fit_image(photo(0), (S, S))
    assert np.array_equal(cut(out.image, 0, 0, 2 * S)[::2, ::2], fitted)
    with torch.no_grad():
        mu, _ = family.encoder(torch.from_numpy(fitted.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert close(cut(out.image, 0, 1, 2 * S)[::2, ::2], decoded(family, mu[0]))


def test_traverse_varies_one_dimension_per_row(explorer, runs):
    family, _ = explorer.model(str(runs["dcgan"]))
    out = explorer(str(runs["dcgan"]), ExploreParams(mode="traverse", seeds=[7], dims=[1, 4], steps=3))
    assert out.info["rows"] == 2 and out.info["columns"] == 3
    base = family.sample_z(1, torch.Generator().manual_seed(7)).flatten()
    for row, dim in enumerate([1, 4]):
        for col, value in enumerate([-1.0, 0.0, 1.0]):  # a uniform DCGAN prior spans [-1, 1]
            z = base.clone()
            z[dim] = value
            assert close(cut(out.image, row, col), decoded(family, z))
    with pytest.raises(RenderError, match=r"dims: the model's latent has 6 dimensions \(0 .. 5\)"):
        explorer(str(runs["dcgan"]), ExploreParams(mode="traverse", dims=[6]))


def test_grid_is_the_2d_vaes_latent_grid(explorer, runs):
    family, _ = explorer.model(str(runs["vae"]))
    out = explorer(str(runs["vae"]), ExploreParams(mode="grid", steps=3, span=2.0))
    expected = family.latent_grid(3, 2.0)
    for i in range(9):
        tile = ((expected[i].permute(1, 2, 0) + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        assert close(cut(out.image, i // 3, i % 3), tile)
    for run in ("dcgan", "vae3"):
        with pytest.raises(RenderError, match="mode 'grid' needs a VAE with latent_dim = 2"):
            explorer(str(runs[run]), ExploreParams(mode="grid"))


def test_arithmetic_combines_the_group_means(explorer, runs):
    family, _ = explorer.model(str(runs["dcgan"]))
    params = ExploreParams(mode="arithmetic", groups=[[1, 2, 3], [4, 5], [6]], signs=[1, -1, 1])
    out = explorer(str(runs["dcgan"]), params)
    assert out.info["rows"] == 4 and out.info["columns"] == 4  # 3 members + their mean
    z = {s: family.sample_z(1, torch.Generator().manual_seed(s)).flatten() for s in range(1, 7)}
    means = [(z[1] + z[2] + z[3]) / 3, (z[4] + z[5]) / 2, z[6]]
    assert close(cut(out.image, 0, 3), decoded(family, means[0])) and close(cut(out.image, 1, 0), decoded(family, z[4]))
    assert close(cut(out.image, 3, 0), decoded(family, means[0] - means[1] + means[2]))
    assert (cut(out.image, 1, 3) == 255).all()  # shorter rows are padded with white


def test_bad_models_and_inputs(explorer, runs, tmp_path):
    with pytest.raises(RenderError, match="only a VAE can encode images"):
        explorer(str(runs["dcgan"]), ExploreParams(images=["a.png", "b.png"]))
    with pytest.raises(FileNotFoundError, match="not found"):
        explorer(str(tmp_path / "nowhere"), ExploreParams())
    pixel = PixelRNN(PixelRNNConfig(num_colors=2, height=4, width=4, hidden=4, layers=1, embed=2))
    (tmp_path / "p" / "checkpoint_1").mkdir(parents=True)
    save_state(pixel, 0, {"model": {"family": "pixelrnn"}}, "c", dataclasses.asdict(pixel.config),
               tmp_path / "p" / "checkpoint_1")
    with pytest.raises(ValueError, match="holds a pixelrnn model, expected dcgan or vae"):
        explorer(str(tmp_path / "p"), ExploreParams())


# ----------------------------------------------------------------------------- through the runner


def test_an_explore_row_takes_the_run_folder_as_its_input(runs, tmp_path):
    config = from_dict(RenderConfig, {"output": str(tmp_path / "out")})
    rows = normalise_requests([
        {"request_id": "walk", "kind": "explore", "input": str(runs["vae"]),
         "params": {"mode": "grid", "steps": 4}},
        {"request_id": "lost", "kind": "explore", "input": str(tmp_path / "missing-run"), "params": {}}])
    ok, lost = RenderRunner(config).render_rows(rows)
    assert ok["status"] == "ok", ok.get("error")
    data = (tmp_path / "out" / ok["output_uri"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == ok["output_sha256"]
    with Image.open(tmp_path / "out" / ok["output_uri"]) as im:
        assert im.size == (4 * (S + PAD) + PAD,) * 2
    assert ok["weights_id"].startswith("vae:") and ok["weights_id"].endswith("@test-corpus")
    assert lost["status"] == "failed" and "missing-run" in lost["error"]
    # from the CLI (--kind explore --input RUN): the run folder is the input, not a folder of images
    (built,) = requests_from_inputs("explore", [str(runs["vae"])])
    assert built["input"] == str(runs["vae"]) and built["kind"] == "explore"


def test_a_newer_checkpoint_in_the_input_run_renders_the_row_again(runs, tmp_path):
    """The run folder is the input: its resolved checkpoint is the input's identity."""
    import shutil

    from genlib.render.manifest import write_manifest_part
    from genlib.render.resume import plan_run

    run = tmp_path / "run"
    shutil.copytree(runs["vae"], run)
    config = from_dict(RenderConfig, {"output": str(tmp_path / "out")})
    requests = normalise_requests([{"request_id": "g", "kind": "explore", "input": str(run),
                                    "params": {"mode": "grid", "steps": 3}}])
    (row,) = RenderRunner(config).render_rows(plan_run(requests, config).todo)
    assert row["status"] == "ok" and row["input_sha256"].startswith("sha256:")
    write_manifest_part(config.output, [row], "r1")
    assert plan_run(requests, config).todo == []
    torch.manual_seed(1)
    newer = train_and_save(VAE(VAEConfig(image_size=S, latent_dim=2, nf=8)), tmp_path / "other", "vae", steps=4)
    shutil.copytree(newer / "checkpoint_000001", run / "checkpoint_000002")  # training wrote a newer one
    assert [r["request_id"] for r in plan_run(requests, config).todo] == ["g"]


def test_a_zoom_whose_grid_exceeds_max_side_fails_before_drawing(explorer, runs):
    from genlib.render.limits import LimitError, RenderLimits, row_budget

    params = ExploreParams(mode="interpolate", steps=8, zoom=4096)  # ~1 million px wide: would exhaust memory
    with row_budget(RenderLimits(max_side=2048)), pytest.raises(LimitError, match=r"ExploreParams.zoom: the output "
                                                                    r"would be \d+x\d+ px, over limits.max_side"):
        explorer(str(runs["dcgan"]), params)
    with row_budget(RenderLimits(max_side=2048)):
        assert explorer(str(runs["dcgan"]), ExploreParams(mode="interpolate", steps=8, zoom=2)).image.shape[1] < 2048
