"""Tests for the PixelRNN family (CPU, tiny models, a few seconds)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlib.models.pixelrnn import PixelRNN, PixelRNNConfig, causal_mask, skew, unskew

torch.set_num_threads(1)

VARIANTS = ["row_lstm", "diagonal_bilstm", "pixelcnn"]
K, H, W = 6, 6, 5


def tiny_config(variant: str = "row_lstm", **overrides) -> PixelRNNConfig:
    """A model small enough to train and sample in well under a second."""
    fields = dict(variant=variant, num_colors=K, height=H, width=W, hidden=12,
                  layers=2, embed=8, lr=1e-2)
    fields.update(overrides)
    return PixelRNNConfig(**fields)


def make_family(variant: str = "row_lstm", seed: int = 0, **kw) -> PixelRNN:
    torch.manual_seed(seed)
    return PixelRNN(tiny_config(variant), **kw)


def random_index(b: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (b, H, W), generator=g)


def test_mask_shapes():
    a, b = causal_mask(3, 3, "A"), causal_mask(3, 3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert causal_mask(1, 3, "B").tolist() == [[1, 1, 0]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_shape(variant):
    fam = make_family(variant)
    logits = fam.net(random_index(3))
    assert logits.shape == (3, K, H, W)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """d logits[r, c] / d embedding at pixels >= (r, c) in raster order is 0."""
    fam = make_family(variant)
    net = fam.net
    emb = net.embed_input(random_index(1)).detach().requires_grad_(True)  # [1,E,H,W]
    logits = net.logits_from_embedding(emb)                               # [1,K,H,W]
    order = torch.arange(H * W).view(H, W)  # raster position of each pixel
    for r in range(H):
        for c in range(W):
            (grad,) = torch.autograd.grad(logits[0, :, r, c].sum(), emb, retain_graph=True)
            per_pixel = grad[0].abs().sum(dim=0)  # [H, W]
            future = order >= order[r, c]
            assert torch.all(per_pixel[future] == 0), (r, c)
            if (r, c) != (0, 0):  # not vacuous: some earlier pixel matters
                assert per_pixel[~future].sum() > 0, (r, c)


def test_row_lstm_state_carries_context_upwards():
    """With one Row LSTM layer and a 3x3 first conv, convolutions alone reach
    only one row up; the row-by-row state must carry (0, 0) to (5, 4)."""
    torch.manual_seed(0)
    fam = PixelRNN(tiny_config("row_lstm", layers=1, first_kernel=3))
    emb = fam.net.embed_input(random_index(1)).detach().requires_grad_(True)
    logits = fam.net.logits_from_embedding(emb)
    (grad,) = torch.autograd.grad(logits[0, :, 5, 4].sum(), emb)
    assert grad[0, :, 0, 0].abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_cropped_rows_give_the_same_logits(variant):
    """Sampling feeds only rows 0..r: rows <= r must not depend on later rows'
    presence (for the Diagonal BiLSTM the skewed map is then narrower)."""
    fam = make_family(variant)
    index = random_index(2)
    with torch.no_grad():
        full = fam.net(index)
        for r in (0, 2, H - 2):
            torch.testing.assert_close(fam.net(index[:, : r + 1]), full[:, :, : r + 1])


def test_skew_shifts_row_r_right_by_r_and_unskew_inverts_it():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    s = skew(x)
    assert s.shape == (2, 3, 4, 5 + 4 - 1)
    for r in range(4):
        assert torch.equal(s[:, :, r, r: r + 5], x[:, :, r])
        padding = torch.cat([s[:, :, r, :r], s[:, :, r, r + 5:]], dim=-1)
        assert torch.all(padding == 0)
    assert torch.equal(unskew(s, 5), x)


def _receptive_field(fam: PixelRNN, r: int, c: int) -> torch.Tensor:
    """``[H, W]`` bool: the pixels whose embedding moves logits[r, c]."""
    index = torch.randint(0, K, (1, fam.config.height, fam.config.width),
                          generator=torch.Generator().manual_seed(1))
    emb = fam.net.embed_input(index).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fam.net.logits_from_embedding(emb)[0, :, r, c].sum(), emb)
    return grad[0].abs().sum(dim=0) > 0


def test_diagonal_bilstm_sees_the_whole_context_but_one_pixel():
    """The paper's point: unlike the Row LSTM's triangle, the Diagonal BiLSTM
    sees every earlier pixel, even with one layer and a 3x3 first conv. The
    one exception (module docstring): the last pixel of row r-1 when (r, c)
    lies beyond the first conv's reach from the right edge."""
    torch.manual_seed(0)
    cfg = dict(layers=1, first_kernel=3, width=8)
    diag = PixelRNN(tiny_config("diagonal_bilstm", **cfg))
    row = PixelRNN(tiny_config("row_lstm", **cfg))
    order = torch.arange(H * 8).view(H, 8)
    for r, c in [(5, 0), (3, 4), (5, 6), (5, 7), (0, 5)]:
        earlier = order < order[r, c]
        expected = earlier.clone()
        if r > 0 and c < 8 - 1 - 1:  # 3x3 first conv: reaches one column right
            expected[r - 1, 8 - 1] = False
        assert torch.equal(_receptive_field(diag, r, c), expected), (r, c)
    # the Row LSTM misses the far upper right of (5, 0), e.g. (0, 7)
    assert not _receptive_field(row, 5, 0)[0, 7]


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_nll(variant):
    fam = make_family(variant)
    batch = {"index": random_index(4), "key": list("abcd")}
    before = fam.evaluate([batch])["nll_nats"]
    for _ in range(40):
        metrics = fam.train_step(batch)
    after = fam.evaluate([batch])["nll_nats"]
    assert set(metrics) >= {"loss", "nll_nats", "bits_per_dim", "grad_norm"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert after < 0.7 * before


def test_bits_per_dim_consistent():
    fam = make_family()
    batch = {"index": random_index(4), "key": list("abcd")}
    m = fam.train_step(batch)
    assert m["nll_nats"] == pytest.approx(m["loss"] * H * W, rel=1e-6)
    assert m["bits_per_dim"] == pytest.approx(m["nll_nats"] / (H * W * math.log(2)), rel=1e-6)
    # evaluate() is exact NLL: matches a direct cross-entropy sum.
    batches = [{"index": random_index(3, seed=s)} for s in (2, 3)]
    ev = fam.evaluate(batches)
    with torch.no_grad():
        idx = torch.cat([b["index"] for b in batches])
        total = F.cross_entropy(fam.net(idx), idx, reduction="sum").item()
    assert ev["n_images"] == 6
    assert ev["nll_nats"] == pytest.approx(total / 6, rel=1e-5)
    assert ev["bits_per_dim"] == pytest.approx(total / 6 / (H * W * math.log(2)), rel=1e-5)
    assert fam.nll_per_image(idx).shape == (6,)


def test_evaluate_empty_raises():
    with pytest.raises(ValueError):
        make_family().evaluate([])


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_indices_shape_and_determinism(variant):
    fam = make_family(variant)
    a = fam.sample_indices(3, generator=torch.Generator().manual_seed(7))
    b = fam.sample_indices(3, generator=torch.Generator().manual_seed(7))
    c = fam.sample_indices(3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, H, W) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < K
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_low_temperature_is_greedy():
    fam = make_family()
    greedy = fam.sample_indices(2, temperature=0.0)
    cold1 = fam.sample_indices(2, temperature=1e-6, generator=torch.Generator().manual_seed(1))
    cold2 = fam.sample_indices(2, temperature=1e-6, generator=torch.Generator().manual_seed(2))
    assert torch.equal(cold1, cold2)
    assert torch.equal(cold1, greedy)
    # Greedy really is the argmax of the model's conditional at every pixel.
    with torch.no_grad():
        assert torch.equal(fam.net(greedy).argmax(dim=1), greedy)
    with pytest.raises(ValueError):
        fam.sample_indices(1, temperature=-1.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_completion_keeps_given_pixels(variant):
    fam = make_family(variant)
    images = random_index(3)
    mask = fam.top_half_mask()
    out = fam.complete(images, mask, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.equal(out[:, mask], images[:, mask])
    # Arbitrary per-image masks are honoured too.
    m = torch.rand(3, H, W, generator=torch.Generator().manual_seed(3)) < 0.5
    out = fam.sample_indices(3, given=images, given_mask=m,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[m], images[m])
    with pytest.raises(ValueError):
        fam.sample_indices(3, given=images)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip(variant):
    fam = make_family(variant, seed=0)
    batch = {"index": random_index(4)}
    fam.train_step(batch)
    state = fam.state_dict()
    assert not any("mask" in k for k in state["networks"]["net"])  # masks not saved
    other = make_family(variant, seed=123)
    other.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fam.net(batch["index"]), other.net(batch["index"]))
    # Optimiser state came along: the next step is identical.
    assert fam.train_step(batch)["loss"] == pytest.approx(other.train_step(batch)["loss"], rel=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("variant", "gated", "must be one of 'row_lstm', 'diagonal_bilstm', 'pixelcnn', got 'gated'"),
    ("num_colors", 1, "must be an integer >= 2, got 1"),
    ("height", 0, "must be an integer >= 1, got 0"),
    ("width", -2, "must be an integer >= 1, got -2"),
    ("hidden", 0, "must be an integer >= 1, got 0"),
    ("layers", 0, "must be an integer >= 1, got 0"),
    ("embed", 0, "must be an integer >= 1, got 0"),
    ("first_kernel", 4, "must be odd, got 4"),
    ("first_kernel", 1, "must be an integer >= 3, got 1"),
    ("row_kernel", 2, "must be odd, got 2"),
    ("lr", 0.0, "must be a finite number > 0, got 0.0"),
    ("grad_clip", -1.0, "must be a number > 0 (or None), got -1.0"),
    ("palette", [[0, 0, 0]], f"must have num_colors = {K} colours, got 1"),
    ("palette", [[0, 0, 300]] * K, "values must lie in [0, 255], got 300"),
    ("palette", [[0, 0.5, 0]] * K, "values must be integers, got 0.5"),
    ("palette", [[0, 0]] * K, f"must have shape [K, 3] with K >= 1, got ({K}, 2)"),
    ("palette", [], "must have shape [K, 3] with K >= 1, got (0,)"),
    ("height", True, "must be an integer >= 1, got True"),
])
def test_config_validation_names_field(field, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(f'PixelRNNConfig.{field}: {message}')}$"):
        tiny_config(**{field: value})


def test_family_palette_argument_is_validated_by_the_config():
    with pytest.raises(ValueError, match=re.escape("PixelRNNConfig.palette: values must lie in [0, 255], got -1")):
        PixelRNN(tiny_config(), palette=torch.full((K, 3), -1))
    fam = PixelRNN(tiny_config(), palette=torch.zeros(K, 3, dtype=torch.uint8))
    assert fam.config.palette == [[0, 0, 0]] * K


def test_config_from_dict_and_no_clip():
    fam = PixelRNN({"num_colors": K, "height": H, "width": W, "hidden": 4,
                    "layers": 1, "embed": 4, "grad_clip": None})
    assert fam.config.grad_clip is None
    assert math.isfinite(fam.train_step({"index": random_index(2)})["grad_norm"])


class Wrapper(nn.Module):
    """Stand-in for DDP: holds the module as ``.module`` and forwards."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_wrap_keeps_training():
    fam = make_family()
    fam.wrap(Wrapper)
    assert isinstance(fam.net, Wrapper) and fam.networks["net"] is fam.net
    batch = {"index": random_index(4)}
    losses = [fam.train_step(batch)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    assert all(not k.startswith("module.") for k in fam.state_dict()["networks"]["net"])
    assert fam.sample(1).shape == (1, 3, H, W)
    assert "nll_nats" in fam.evaluate([batch])


def test_sample_rgb_through_palette():
    palette = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0],
                        [0, 128, 0], [10, 20, 30], [200, 100, 50]], dtype=np.uint8)
    fam = make_family(palette=palette)
    imgs = fam.sample(2, generator=torch.Generator().manual_seed(5))
    idx = fam.sample_indices(2, generator=torch.Generator().manual_seed(5))
    assert imgs.shape == (2, 3, H, W) and imgs.dtype == torch.float32
    assert imgs.min() >= -1 and imgs.max() <= 1
    expected = torch.tensor(palette, dtype=torch.float32)[idx].permute(0, 3, 1, 2) / 127.5 - 1
    assert torch.allclose(imgs, expected)
    # Palette via config (lists) gives the same mapping.
    fam2 = PixelRNN(tiny_config(palette=palette.tolist()))
    assert torch.allclose(fam2.to_rgb(idx), expected)


def test_sample_without_palette_is_grey_in_range():
    imgs = make_family().sample(1, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (1, 3, H, W) and imgs.min() >= -1 and imgs.max() <= 1


def test_bad_batch_rejected():
    fam = make_family()
    with pytest.raises(ValueError):
        fam.train_step({"index": torch.zeros(2, H + 1, W, dtype=torch.long)})
    with pytest.raises(ValueError):
        fam.train_step({"index": torch.full((2, H, W), K, dtype=torch.long)})
