"""Sample-quality metrics on feature sets, and reconstruction metrics inside a hole.

Feature sets are ``[N, D]`` tensors computed once (:mod:`genlib.eval.features`) and
shared by every metric: the backbone is the expensive part, and FD, KID and
precision/recall only need its output. torchmetrics takes them through its
``feature=`` hook (an ``nn.Module`` that here passes the given features through):

- :func:`frechet_distance`: ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``
  between Gaussians fitted to the two sets (Heusel et al. 2017), torchmetrics'
  ``FrechetInceptionDistance`` (the matrix square root is its eigenvalue route).
- :func:`kernel_distance`: squared MMD with the cubic polynomial kernel, unbiased,
  mean and std over random subsets (Binkowski et al. 2018), torchmetrics'
  ``KernelInceptionDistance``; the subsets come from a seeded RNG.
- :func:`precision_recall`: k-NN manifold estimate (Kynkaanniemi et al. 2019): a real
  sample's manifold ball reaches its k-th nearest real neighbour; precision is the
  fraction of fakes inside some real ball, recall the fraction of reals inside some
  fake ball.
- :func:`psnr_in`, :func:`ssim_in`: PSNR and SSIM of a completion restricted to the
  hole (the known pixels are copied, they would only inflate the numbers).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

PSNR_CAP = 100.0  # dB for identical pixels (the MSE is 0): JSON has no infinity
CDIST_ROWS = 1024  # rows of a distance block: bounds memory at CDIST_ROWS x N floats
# torchmetrics gathers a metric's state from every process of an initialised torch.distributed
# group on compute() (a barrier + all-gather). genlib measures on one rank with its own data:
# a collective there would hang the other ranks (rank 0 of a DDP run calls genlib eval alone).
LOCAL_ONLY = {"sync_on_compute": False, "distributed_available_fn": lambda: False}


class _Given(nn.Module):
    """torchmetrics' ``feature=`` module for features computed beforehand: ``[B, D] -> [B, D]``."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.num_features = dims

    def forward(self, features: Tensor) -> Tensor:
        return features


def _check(real: Tensor, fake: Tensor, least: int, what: str) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"{what}: expected feature sets [N, D] of one D, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if min(len(real), len(fake)) < least:
        raise ValueError(f"{what} needs at least {least} real and {least} generated images, "
                         f"got {len(real)} and {len(fake)} (raise --samples or use a larger split)")


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FD between Gaussians fitted to ``real [N, D]`` and ``fake [M, D]`` (float64 statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # heavy import (~5 s): only when measuring

    _check(real, fake, 2, "Frechet distance")
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]), **LOCAL_ONLY)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    return float(metric.compute())


def kernel_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID ``(mean, std)`` over ``subsets`` draws of ``kid_subset(subset_size, N, M)`` samples per set."""
    from torchmetrics.image.kid import KernelInceptionDistance  # heavy import (~5 s): only when measuring

    _check(real, fake, 2, "KID")
    size = kid_subset(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": that is the point
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size,
                                          **LOCAL_ONLY)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):  # its subsets come from torch's global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def kid_subset(subset_size: int, n_real: int, n_fake: int) -> int:
    """Subset size actually used: at most half the smaller set, so that the subsets differ
    and ``kid_std`` says something (subsets as large as the set would all be the set)."""
    return max(2, min(subset_size, min(n_real, n_fake) // 2))


def _kth_radius(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x [N, D]`` to its k-th nearest other row -> ``[N]``."""
    radii = []
    for block in x.split(CDIST_ROWS):
        d = torch.cdist(block, x)  # [b, N]; the row itself is at distance 0, hence k + 1
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _inside(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each of ``points [M, D]``: within ``radii[i]`` of some ``centres[i]`` -> bool ``[M]``."""
    hits = [(torch.cdist(block, centres) <= radii[None]).any(dim=1) for block in points.split(CDIST_ROWS)]
    return torch.cat(hits)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with ``k`` neighbours."""
    _check(real, fake, k + 1, f"precision/recall with k={k}")
    real, fake = real.double(), fake.double()
    precision = _inside(fake, real, _kth_radius(real, k)).double().mean()
    recall = _inside(real, fake, _kth_radius(fake, k)).double().mean()
    return float(precision), float(recall)


# ----------------------------------------------------------------------------- inside a hole


def _hole(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    if image.shape[:2] != known.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {known.shape} differ in size")
    hole = ~np.asarray(known, dtype=bool)
    if not hole.any():
        raise ValueError("the mask has no hole to measure")
    return hole


def psnr_in(pred: np.ndarray, target: np.ndarray, known: np.ndarray) -> float:
    """PSNR in dB over the hole's pixels (all channels) of uint8 ``[H, W, 3]`` images;
    :data:`PSNR_CAP` when they are identical there."""
    hole = _hole(target, known)
    diff = pred[hole].astype(np.float64) - target[hole].astype(np.float64)  # [n, 3]
    mse = float(np.mean(diff ** 2))
    if mse == 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def ssim_in(pred: np.ndarray, target: np.ndarray, known: np.ndarray) -> float:
    """Mean of the SSIM map (11 px Gaussian window, sigma 1.5, reflect padding) over
    the hole's pixels and channels of uint8 ``[H, W, 3]`` images."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # heavy import, see above

    hole = torch.from_numpy(_hole(target, known))

    def tensor(a: np.ndarray) -> Tensor:  # [1, 3, H, W] in [0, 1], float64 for a clean 1.0 on equality
        return torch.from_numpy(np.array(a, dtype=np.float64)).permute(2, 0, 1)[None] / 255.0

    _, full = structural_similarity_index_measure(tensor(pred), tensor(target), data_range=1.0,
                                                  return_full_image=True)  # map [1, 3, H, W]
    return float(full[0][:, hole].mean())


__all__ = ["PSNR_CAP", "frechet_distance", "kernel_distance", "kid_subset", "precision_recall", "psnr_in",
           "ssim_in"]
