"""FD, KID and precision/recall on feature sets with known answers; PSNR/SSIM in a hole;
the completion baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from genlib.eval.completion import harmonic_fill, mean_fill, score_image
from genlib.eval.metrics import PSNR_CAP, frechet_distance, kernel_distance, precision_recall, psnr_in, ssim_in
from genlib.render.masks import make_mask


def with_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """``n`` points whose *sample* mean and covariance (1/(n-1)) are exactly ``mean`` and ``cov``."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(0)
    white = np.linalg.cholesky(np.cov(x, rowvar=False))  # x @ inv(L).T has identity covariance
    x = np.linalg.solve(white, x.T).T
    return torch.from_numpy(x @ np.linalg.cholesky(cov).T + mean)


def closed_form_fd(m1, c1, m2, c2) -> float:
    """||m1 - m2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)), with scipy's sqrtm as the reference."""
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * root))


def random_cov(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fd_matches_the_closed_form_of_two_gaussians():
    d = 6
    m1, m2 = np.zeros(d), np.linspace(-1, 1, d)
    c1, c2 = random_cov(d, 1), random_cov(d, 2)
    fd = frechet_distance(with_moments(500, m1, c1, 0), with_moments(300, m2, c2, 1))
    assert fd == pytest.approx(closed_form_fd(m1, c1, m2, c2), rel=1e-6)
    # diagonal covariances: the textbook form sum((sqrt(a) - sqrt(b))^2) + ||dm||^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    fd = frechet_distance(with_moments(200, np.zeros(3), np.diag(a), 2), with_moments(200, np.ones(3), np.diag(b), 3))
    assert fd == pytest.approx(3 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-6)  # = 3 + 1 + 1


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(frechet_distance(x, x)) < 1e-6
    shifts = [0.5, 1.0, 2.0]
    fds = [frechet_distance(x, x + s) for s in shifts]
    assert fds == pytest.approx([8 * s ** 2 for s in shifts], rel=1e-6)  # a pure shift: ||dm||^2 = D s^2


def test_kid_is_about_zero_on_disjoint_halves_of_one_distribution_and_positive_for_a_shift():
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same, same_std = kernel_distance(x[:1000], x[1000:], subsets=50, subset_size=500)
    shifted, _ = kernel_distance(x[:1000], x[1000:] + 0.5, subsets=50, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: no positive floor as with the biased MMD
    assert shifted > 20 * max(abs(same), same_std)
    # seeded subsets: the same call gives the same numbers
    assert kernel_distance(x[:1000], x[1000:], subsets=50, subset_size=500) == (same, same_std)


def test_precision_recall_of_a_collapsed_generator():
    g = torch.Generator().manual_seed(0)
    blob = lambda centre, n: torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.1 + centre  # noqa: E731
    real = torch.cat([blob(0.0, 200), blob(5.0, 200)])  # two modes
    p, r = precision_recall(real, torch.cat([blob(0.0, 200), blob(5.0, 200)]))
    assert p > 0.9 and r > 0.9
    p, r = precision_recall(real, blob(0.0, 400))  # only one mode: fakes are real-looking, half is missed
    assert p > 0.9 and 0.4 < r < 0.6
    p, r = precision_recall(real, blob(20.0, 400))  # nowhere near the data
    assert p == 0.0 and r == 0.0
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(real[:3], real[:3], k=3)


def smooth_image(size: int = 32, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))


def test_psnr_and_ssim_inside_the_hole():
    image = smooth_image()
    known = make_mask("center", 32)
    assert psnr_in(image, image, known) == PSNR_CAP  # identical: capped, JSON-safe
    assert ssim_in(image, image, known) == pytest.approx(1.0)
    noisy = image.copy()
    noisy[~known] = np.clip(noisy[~known].astype(int) + 10, 0, 255).astype(np.uint8)
    err = noisy[~known].astype(float) - image[~known]
    assert psnr_in(noisy, image, known) == pytest.approx(10 * math.log10(255 ** 2 / np.mean(err ** 2)))
    outside = image.copy()
    outside[known] = 0  # damage where the mask is known: does not count
    assert psnr_in(outside, image, known) == PSNR_CAP
    with pytest.raises(ValueError, match="no hole"):
        psnr_in(image, image, np.ones((32, 32), bool))


@pytest.mark.parametrize("kind", ["center", "half", "random_blocks"])
def test_harmonic_fill_beats_mean_fill_on_a_smooth_image(kind):
    image = smooth_image(seed=3)
    known = make_mask(kind, 32)
    for fill in (mean_fill, harmonic_fill):
        out = fill(image, known)
        assert out.dtype == np.uint8 and np.array_equal(out[known], image[known])
    scores = score_image(image, known, harmonic_fill(image, known))
    assert scores["psnr_harmonic"] > scores["psnr_mean_fill"] + 1.0
    assert scores["ssim_harmonic"] > scores["ssim_mean_fill"]
    assert scores["psnr"] == scores["psnr_harmonic"]  # the "completion" scored here is the harmonic fill


def test_mean_fill_paints_the_known_mean():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = (200, 100, 0)  # left half coloured, right half black
    known = np.ones((8, 8), bool)
    known[6:, 6:] = False
    expected = np.round(image[known].astype(float).mean(0)).astype(np.uint8)
    assert np.array_equal(mean_fill(image, known)[7, 7], expected)


def test_metrics_issue_no_collective_inside_a_process_group(monkeypatch, tmp_path):
    """Rank 0 of a DDP run measures alone: torchmetrics must not gather across the group
    (it would wait for ranks that never call it)."""
    import torch.distributed as dist

    from genlib.eval.metrics import frechet_distance, kernel_distance

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        def refuse(*args, **kwargs):
            raise AssertionError("a collective was called")

        for name in ("barrier", "all_gather", "all_gather_object", "all_reduce", "broadcast"):
            monkeypatch.setattr(dist, name, refuse)
        gen = torch.Generator().manual_seed(0)
        real, fake = torch.randn(40, 8, generator=gen), torch.randn(40, 8, generator=gen) + 1
        assert frechet_distance(real, fake) > 1
        assert kernel_distance(real, fake, subsets=5, subset_size=10)[0] > 0
    finally:
        dist.destroy_process_group()
