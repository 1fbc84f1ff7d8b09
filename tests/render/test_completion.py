"""DCGAN mask completion (Yeh et al. 2016) and its masks, on a tiny 32 px DCGAN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.config import ConfigError, from_dict
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.render.base import RenderError, to_image
from genlib.render.base import HIDDEN_GREY as GREY
from genlib.render.completion import CompletionParams, MaskCompletion
from genlib.train.checkpoint import CheckpointError
from genlib.render.masks import contextual_weights, fit_mask, load_mask, make_mask, mask_image

CFG = DCGANConfig(image_size=32, ngf=8, ndf=8, nz=16)
S = CFG.image_size
FAST = {"iterations": 30, "restarts": 2, "lr": 0.001}


def _calibrated_dcgan() -> DCGAN:
    """A random DCGAN whose eval-mode G makes contrasted images: BatchNorm
    running statistics measured on random z (a fresh G's unit statistics
    collapse its output to grey), output layer scaled up."""
    torch.manual_seed(0)
    family = DCGAN(CFG)
    g = family.netG
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        g.train()(torch.rand(256, CFG.nz) * 2 - 1)
        g.eval()
        g.main[-2].weight.mul_(5)  # last ConvTranspose2d, before tanh
    return family


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("dcgan-ckpt")
    torch.save({"family": _calibrated_dcgan().state_dict(), "step": 0, "train": {}, "corpus_id": "test",
                "model_config": dataclasses.asdict(CFG)}, d / "state.pt")
    return d


@pytest.fixture(scope="module")
def completer(checkpoint):
    return MaskCompletion(str(checkpoint))


def _generated(completer, seed: int) -> np.ndarray:
    """G(z*) as a uint8 image for a known z* drawn from the prior."""
    z = torch.rand(1, CFG.nz, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        return to_image((completer.netG(z) + 1) / 2)


def _photo(seed: int = 0) -> np.ndarray:
    """A smooth random uint8 image [S, S, 3] (not from G)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((S, S), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------- params
@pytest.mark.parametrize("field, value", [("mask", ""), ("mask_fraction", 1.0), ("mask_fraction", 0),
                                          ("lam", -0.1), ("window", 4), ("window", 1), ("iterations", 0),
                                          ("lr", 0.0), ("momentum", 1.0), ("restarts", 0), ("blend", 1),
                                          ("seed", -1), ("iterations", 2.5), ("snapshot_every", -1)])
def test_params_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"CompletionParams.{field}"):
        CompletionParams(**{field: value})


def test_params_from_request_json():
    p = from_dict(CompletionParams, {"mask": "half", "lam": 0, "iterations": 5})
    assert p.lam == 0.0 and p.mask == "half"
    with pytest.raises(ConfigError, match="window"):
        from_dict(CompletionParams, {"window": 6})


# ---------------------------------------------------------------- masks
def test_center_mask_position_and_fraction():
    m = make_mask("center", 32, 0.25)
    assert m.shape == (32, 32) and m.dtype == bool
    assert (~m[8:24, 8:24]).all() and m.sum() == 32 * 32 - 16 * 16  # a 16 x 16 hole, centred
    rect = make_mask("center", (20, 40), 0.09)  # same aspect as the image: 6 x 12
    rows, cols = np.nonzero(~rect)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (7, 12, 14, 25)


def test_half_and_random_block_masks():
    half = make_mask("half", (10, 12))
    assert half[:5].all() and not half[5:].any()
    a = make_mask("random_blocks", 32, 0.3, np.random.default_rng(1))
    b = make_mask("random_blocks", 32, 0.3, np.random.default_rng(1))
    c = make_mask("random_blocks", 32, 0.3, np.random.default_rng(2))
    assert (a == b).all() and not (a == c).all()
    assert abs((~a).mean() - 19 / 64) < 1e-9  # round(0.3 * 64) of the 8 x 8 blocks of 4 px
    blocks = (~a).reshape(8, 4, 8, 4)
    assert (blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))).all()  # whole blocks only
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_mask("ring", 32)
    with pytest.raises(ValueError, match="fraction"):
        make_mask("center", 32, 1.5)


def test_mask_image_round_trip_and_wrong_size(tmp_path):
    m = make_mask("random_blocks", (24, 30), 0.5, np.random.default_rng(0))
    Image.fromarray(mask_image(m)).save(tmp_path / "m.png")
    assert (load_mask(str(tmp_path / "m.png"), (24, 30)) == m).all()
    with pytest.raises(RenderError, match=r"30x24 \(WxH\) but the image is 32x32"):
        load_mask(str(tmp_path / "m.png"), 32)
    with pytest.raises(RenderError, match="cannot read"):
        load_mask(str(tmp_path / "absent.png"), 32)
    # a PostScript file named like a mask is never handed to Pillow's EPS plugin (Ghostscript)
    (tmp_path / "evil.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30 24\nshowpage\n")
    with pytest.raises(RenderError, match="cannot decode image .JPEG, PNG, GIF, WEBP, BMP, TIFF only"):
        load_mask(str(tmp_path / "evil.png"), (24, 30))


def test_contextual_weights():
    m = make_mask("center", 32, 0.25)  # hole rows/cols 8..23
    w = contextual_weights(m, 7)
    assert w.shape == m.shape and w.dtype == np.float32
    assert (w[~m] == 0).all()
    assert w[7, 16] == pytest.approx(3 / 7)  # next to the hole: 3 of the 7 window rows missing
    assert w[7, 16] > w[5, 16] > 0 and w[4, 16] == 0  # farther than window // 2: no weight
    assert w[0, 0] == 0 and w.max() <= 1
    with pytest.raises(ValueError, match="odd"):
        contextual_weights(m, 6)


def test_fit_mask_is_conservative():
    m = np.ones((64, 64), dtype=bool)
    m[10, 10] = False  # one missing input pixel -> its whole 2 x 2 cell is missing at 32 px
    out = fit_mask(m, (0, 0, 64, 64), 32)
    assert out.shape == (32, 32) and not out[5, 5] and out.sum() == 32 * 32 - 1


# ---------------------------------------------------------------- completion
def test_completion_lowers_the_objective_and_fills_only_the_hole(completer):
    image = _photo()
    out = completer(image, CompletionParams(**FAST))
    hist = out.info["history"]
    assert out.iterations == len(hist) == FAST["iterations"] and hist[-1] < hist[0]
    known = out.extras["mask"] == 255
    assert known.shape == (S, S) and (~known).sum() == 16 * 16
    assert out.image.shape == (S, S, 3) and out.image.dtype == np.uint8
    assert (out.image[known] == image[known]).all()  # known pixels: bit for bit
    hole = out.image[~known].astype(int)
    assert (hole != GREY).any(axis=1).mean() > 0.9 and np.abs(hole - image[~known]).mean() > 5
    assert (out.extras["masked_input"][~known] == GREY).all()
    assert out.extras["generated"].shape == (S, S, 3)
    assert set(out.losses) == {"contextual", "perceptual", "total"}
    assert out.losses["total"] == pytest.approx(out.losses["contextual"] + 0.1 * out.losses["perceptual"])
    assert out.info["weights_id"] == completer.weights_id and completer.weights_id.endswith("@test")


def test_fitted_target_is_reconstructed(completer):
    # y = G(z*): the z search must find a z explaining the known pixels, and
    # then the hole is close to G(z*)'s hole.
    image = _generated(completer, 123)
    out = completer(image, CompletionParams(iterations=300, restarts=4, lam=0.0, lr=0.001, blend=False))
    hole = out.extras["mask"] == 0
    start = out.info["history"][0] / 4  # mean contextual loss of the random initial z's
    assert out.losses["contextual"] < 0.02 * start, (out.losses, start)
    err = np.abs(out.extras["generated"].astype(float) - image)[hole].mean()
    random_err = np.abs(_generated(completer, 7).astype(float) - image)[hole].mean()
    assert err < 2 and random_err > 15, (err, random_err)  # in 0..255 grey levels
    assert (out.image[hole] == out.extras["generated"][hole]).all()  # blend=False pastes G(z)


def test_restarts_are_one_batch_and_the_best_wins(completer):
    sizes = []
    hook = completer.netG.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    try:
        out = completer(_photo(1), CompletionParams(iterations=10, restarts=5, lr=0.001))
    finally:
        hook.remove()
    # 10 steps + the final evaluation, all with the 5 restarts; then G(best z) once
    assert sizes == [5] * 11 + [1]
    losses = out.info["restart_losses"]
    assert len(losses) == 5 and len(set(losses)) == 5
    assert out.info["restart"] == int(np.argmin(losses))
    assert out.losses["total"] == pytest.approx(min(losses))


def test_snapshots_show_the_best_restart_pasted_into_the_hole(completer):
    image = _photo(3)
    out = completer(image, CompletionParams(snapshot_every=10, **FAST))
    assert len(out.frames) == FAST["iterations"] // 10 + 1 and np.array_equal(out.frames[-1], out.image)
    known = out.extras["mask"] == 255
    for frame in out.frames[:-1]:
        assert frame.shape == (S, S, 3) and (frame[known] == image[known]).all()  # the input around the hole
    assert not np.array_equal(out.frames[0][~known], out.frames[-2][~known])  # the hole changes as z moves
    assert completer(image, CompletionParams(**FAST)).frames == []


def test_deterministic_for_a_seed(completer):
    image = _photo(2)
    params = CompletionParams(mask="random_blocks", mask_fraction=0.3, seed=5, **FAST)
    a, b = completer(image, params), completer(image, params)
    assert (a.image == b.image).all() and a.losses == b.losses and (a.extras["mask"] == b.extras["mask"]).all()
    c = completer(image, dataclasses.replace(params, seed=6))
    assert c.losses != a.losses


def test_other_sizes_are_cropped_and_resized(completer):
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = np.ones((40, 56), dtype=bool)
    mask[10:30, 18:38] = False  # explicit mask at the input's size
    out = completer(image, CompletionParams(**FAST), mask=mask)
    assert out.image.shape == (S, S, 3) and out.info["original_size"] == (40, 56)
    assert (out.extras["mask"] == 0).sum() == 16 * 16  # 20 px of 40 -> 16 of 32


def test_mask_file_and_bad_masks(completer, tmp_path):
    image = _photo(3)
    m = make_mask("half", S)
    Image.fromarray(mask_image(m)).save(tmp_path / "half.png")
    out = completer(image, CompletionParams(mask=str(tmp_path / "half.png"), **FAST))
    assert (out.extras["mask"] == mask_image(m)).all()
    assert (out.image[:S // 2] == image[:S // 2]).all()
    Image.fromarray(mask_image(make_mask("half", 20))).save(tmp_path / "small.png")
    with pytest.raises(RenderError, match="20x20.*32x32"):
        completer(image, CompletionParams(mask=str(tmp_path / "small.png"), **FAST))
    with pytest.raises(RenderError, match="cannot read"):
        completer(image, CompletionParams(mask=str(tmp_path / "nope.png"), **FAST))
    with pytest.raises(RenderError, match="no missing pixel"):
        completer(image, CompletionParams(**FAST), mask=np.ones((S, S), dtype=bool))
    with pytest.raises(RenderError, match="no known pixel"):
        completer(image, CompletionParams(**FAST), mask=np.zeros((S, S), dtype=bool))
    with pytest.raises(RenderError, match="mask is"):
        completer(image, CompletionParams(**FAST), mask=np.ones((S, S + 1), dtype=bool))
    with pytest.raises(RenderError, match="uint8 RGB"):
        completer(image.astype(np.float32), CompletionParams(**FAST))


def test_checkpoint_loading(checkpoint, tmp_path):
    a, b = MaskCompletion(str(checkpoint)), MaskCompletion(str(checkpoint / "state.pt"))
    assert a.weights_id == b.weights_id and a.image_size == S
    assert not a.netG.training and not any(p.requires_grad for p in a.netD.parameters())
    vae = tmp_path / "vae"
    vae.mkdir()
    torch.save({"family": {"networks": {"encoder": {}, "decoder": {}}}, "step": 1,
                "model_config": {"latent_dim": 3}}, vae / "state.pt")
    with pytest.raises(ValueError, match="holds a vae model, expected dcgan"):
        MaskCompletion(str(vae))
    torch.save({"family": {"networks": {}}, "model_config": {"latent_dim": 3}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="not a genlib training checkpoint"):
        MaskCompletion(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        MaskCompletion(str(tmp_path / "absent"))
