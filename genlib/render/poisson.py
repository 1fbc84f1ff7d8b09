"""Poisson blending (Pérez, Gangnet & Blake 2003, "Poisson Image Editing").

Yeh et al. paste the generated content into the hole with Poisson blending so
that the seam disappears: inside the hole the result keeps the *gradients* of
the generated image ``g`` (the source), while its values are pinned by the
known pixels of the original ``f*`` (the target) around the hole.

Discrete form, per channel, for each hole pixel p with in-image 4-neighbours
``N_p`` (the image border is a Neumann boundary: outside neighbours are dropped)::

    |N_p| f_p - sum_{q in N_p, q in hole} f_q
        = sum_{q in N_p, q known} f*_q + sum_{q in N_p} (g_p - g_q)

i.e. "Laplacian of the result = Laplacian of the source" in the hole, with the
known pixels as Dirichlet boundary. The matrix is symmetric positive definite
whenever at least one pixel is known (every hole component then touches a
known pixel), and is shared by all channels: one sparse solve with a ``[n, C]``
right-hand side (``scipy.sparse.linalg.spsolve``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from genlib.render.base import RenderError

_SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # 4-neighbourhood (dy, dx)


def _shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[i, j] = a[i + dy, j + dx]`` (``fill`` outside the image); ``a [H, W, ...]``."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, pad, constant_values=fill)
    h, w = a.shape[:2]
    return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def poisson_system(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[sp.csc_matrix, np.ndarray]:
    """Assemble ``A [n, n]`` and ``b [n, C]`` for the ``n`` hole pixels (row-major order).

    ``source``/``target``: float ``[H, W, C]``; ``mask``: bool ``[H, W]``, True = known."""
    hole = ~mask
    n = int(hole.sum())
    idx = np.full(mask.shape, -1, dtype=np.int64)
    idx[hole] = np.arange(n)  # unknown number of each hole pixel
    deg = np.zeros(n)
    b = np.zeros((n, source.shape[2]))
    rows, cols = [], []
    for dy, dx in _SHIFTS:
        q_idx = _shifted(idx, dy, dx, -2)[hole]  # [n]: -2 outside, -1 known, >= 0 hole
        inside = q_idx != -2
        deg += inside
        # guidance: the source's gradient towards each in-image neighbour
        b[inside] += source[hole][inside] - _shifted(source, dy, dx, 0.0)[hole][inside]
        known = q_idx == -1
        b[known] += _shifted(target, dy, dx, 0.0)[hole][known]  # Dirichlet boundary values
        free = q_idx >= 0
        rows.append(np.flatnonzero(free))
        cols.append(q_idx[free])
    r, c = np.concatenate(rows), np.concatenate(cols)
    a = sp.coo_matrix((np.concatenate([deg, -np.ones(len(r))]),
                       (np.concatenate([np.arange(n), r]), np.concatenate([np.arange(n), c]))), shape=(n, n))
    return a.tocsc(), b


def poisson_blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``source`` into the hole of ``target`` (see the module doc).

    ``source``, ``target``: float arrays ``[H, W]`` or ``[H, W, C]`` of the same
    shape (any range; nothing is clipped). ``mask``: bool ``[H, W]``, True = known.
    Returns float64 of the target's shape whose known pixels are exactly the
    target's and whose hole pixels solve the Poisson equation."""
    src = np.asarray(source, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if src.shape != tgt.shape or tgt.shape[:2] != mask.shape:
        raise RenderError(f"poisson_blend: shapes differ: source {src.shape}, target {tgt.shape}, "
                          f"mask {mask.shape}")
    if mask.all():
        return tgt.copy()
    if not mask.any():
        raise RenderError("poisson_blend: the mask has no known pixel (no boundary condition)")
    flat = tgt.ndim == 2
    src3, tgt3 = (src[..., None], tgt[..., None]) if flat else (src, tgt)
    a, b = poisson_system(src3, tgt3, mask)
    x = np.asarray(spsolve(a, b)).reshape(b.shape)  # [n, C]
    out = tgt3.copy()
    out[~mask] = x
    return out[..., 0] if flat else out
