"""PixelRNN family: autoregressive models of palette-indexed images.

Implements three variants from van den Oord et al. 2016, *Pixel Recurrent
Neural Networks*, adapted to images whose pixels are ONE categorical palette
index in ``[0, K)`` (e.g. K = 176 colours for the classic 20x20 Pokémon
sprites) instead of three 256-way RGB sub-pixels:

- ``"row_lstm"``: a 7x7 mask-A convolution, then Row LSTM layers (masked
  ``1 x k`` input-to-state convolution over the whole image at once, unmasked
  ``1 x k`` state-to-state convolution over the previous row's hidden state,
  run row by row top to bottom) with residual connections. The receptive
  field is triangular: it never sees the current or any later pixel, but it
  does not see every earlier pixel either.
- ``"diagonal_bilstm"`` (Sec. 3.2, the paper's best variant): a 7x7 mask-A
  convolution, then Diagonal BiLSTM layers. Each layer skews its input map
  (row r shifted right by r, ``[H, W] -> [H, W + H - 1]``) so that a diagonal
  of the image becomes a column, and runs an LSTM column by column (a Python
  loop over the ``W + H - 1`` skewed columns) with a 1x1 input-to-state
  convolution and a 2x1 state-to-state convolution over the previous column's
  state at the current row and the row above. In image coordinates the state
  at ``(r, c)`` then follows ``(r, c-1)`` and ``(r-1, c)``: it summarises the
  whole up-left quadrant. A second direction runs the same way on the image
  mirrored left-right (covering the up-right quadrant, which includes pixels
  right of ``c`` on row ``r``: the future), so its output is shifted down one
  row before it is added to the first one; then a 1x1 convolution and a
  residual connection, as in the Row LSTM. The receptive field is the whole
  causal context except, for a pixel ``(r, c)`` more than ``first_kernel // 2``
  columns from the right edge, the last pixel of row ``r - 1``: every feature
  that could carry that pixel sits on row ``r`` right of ``c`` (the paper's
  construction has the same gap for the last pixel's sub-pixels).
- ``"pixelcnn"``: a 7x7 mask-A convolution, then residual blocks built around
  3x3 mask-B convolutions (with the classic PixelCNN "blind spot").

All end in ReLU + 1x1 convolutions giving K logits per pixel, and model
``p(x) = prod_i p(x_i | x_<i)`` in raster order. Because a pixel is a single
categorical variable there is no RGB sub-channel masking, and a pixel counts
as ONE dimension in ``bits_per_dim`` (so these numbers are per palette-indexed
pixel, not comparable to per-RGB-subpixel figures in the paper).

Single-device and Ray-free: the distributed layer may wrap ``self.net`` (e.g.
in DDP) via :meth:`Family.wrap`.

Mixed precision (:meth:`Family.set_precision`): the network runs under
autocast, except two places kept in fp32 because rounding there would show in
the likelihood: the Row LSTM and Diagonal BiLSTM cell/hidden states (running
sums over rows or columns) and the final 1x1 logit layer. Cross-entropies are
taken on fp32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlib.config import Fields, is_int
from genlib.models.base import (
    Batch,
    Family,
    Metrics,
    bits_per_dim,
    full_precision,
    unwrap,
    upcast,
)

__all__ = [
    "VARIANTS",
    "PixelRNNConfig",
    "MaskedConv2d",
    "RowLSTMLayer",
    "DiagonalBiLSTMLayer",
    "skew",
    "unskew",
    "ResidualBlock",
    "PixelRNNNet",
    "PixelRNN",
    "causal_mask",
]

VARIANTS = ("row_lstm", "diagonal_bilstm", "pixelcnn")


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------
def _palette_list(palette: Any, check: Fields) -> list[list[int]]:
    """Normalise a ``[K, 3]`` RGB palette (list / numpy / tensor) to lists;
    errors are raised through ``check`` (``PixelRNNConfig.palette: ...``)."""
    if isinstance(palette, torch.Tensor):
        palette = palette.detach().cpu().numpy()
    arr = np.asarray(palette)
    if not (arr.ndim == 2 and arr.shape[1] == 3 and arr.size > 0):
        check.fail("palette", "must have shape [K, 3] with K >= 1", tuple(arr.shape))
    whole = arr == np.round(arr)
    if not np.all(whole):
        check.fail("palette", "values must be integers", arr[~whole].tolist()[0])
    inside = (arr >= 0) & (arr <= 255)
    if not np.all(inside):
        check.fail("palette", "values must lie in [0, 255]", arr[~inside].tolist()[0])
    return arr.astype(np.int64).tolist()


@dataclass
class PixelRNNConfig:
    """Hyper-parameters of the PixelRNN family.

    Attributes:
        num_colors: palette size K; pixels are indices in ``[0, K)``.
        height: image height in pixels (e.g. 20 for Pokémon sprites, or 32).
        width: image width in pixels.
        variant: ``"row_lstm"`` (default), ``"diagonal_bilstm"`` or
            ``"pixelcnn"``.
        hidden: feature channels of every hidden layer (and LSTM state size).
        layers: number of Row LSTM / Diagonal BiLSTM layers or PixelCNN
            residual blocks (4 keeps it quick; the paper uses up to 12).
        embed: dimension of the learned colour embedding of input indices.
        first_kernel: odd size (>= 3) of the first mask-A convolution (7).
        row_kernel: odd width k of the Row LSTM ``1 x k`` convolutions (3;
            unused by the other variants).
        lr: Adam learning rate.
        grad_clip: max global gradient L2 norm; ``None`` disables clipping.
        palette: optional ``[K, 3]`` uint8 RGB palette used by ``sample()``
            to map indices to colours; without it a grey ramp is used.
    """

    num_colors: int = 176
    height: int = 20
    width: int = 20
    variant: str = "row_lstm"
    hidden: int = 64
    layers: int = 4
    embed: int = 32
    first_kernel: int = 7
    row_kernel: int = 3
    lr: float = 1e-3
    grad_clip: float | None = 1.0
    palette: list[list[int]] | None = None

    def __post_init__(self) -> None:
        check = Fields(self)
        check.choice("variant", VARIANTS)
        minimums = {"num_colors": 2, "height": 1, "width": 1, "hidden": 1,
                    "layers": 1, "embed": 1, "first_kernel": 3, "row_kernel": 1}
        for name, low in minimums.items():
            check.integer(name, low=low)
        for name in ("first_kernel", "row_kernel"):
            check.require(name, getattr(self, name) % 2 == 1, "must be odd")
        check.number("lr", above=0)
        clip = self.grad_clip  # inf is allowed (no clipping, norm still reported): not Fields.number
        check.require("grad_clip", clip is None or (isinstance(clip, Real) and not isinstance(clip, bool)
                                                    and clip > 0), "must be a number > 0 (or None)")
        if self.palette is not None:
            self.palette = _palette_list(self.palette, check)
            if len(self.palette) != self.num_colors:
                check.fail("palette", f"must have num_colors = {self.num_colors} colours", len(self.palette))


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
def causal_mask(kh: int, kw: int, mask_type: str) -> torch.Tensor:
    """Raster-order mask ``[kh, kw]`` for a kernel centred on the output pixel.

    Rows above the centre are fully visible; in the centre row only columns
    left of the centre (mask ``"A"``) or left of and at the centre (``"B"``);
    rows below are hidden. ``"A"`` is for the first layer (the input pixel
    itself must not be seen), ``"B"`` for later layers, whose features at a
    position already only summarise strictly earlier pixels.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    mask = torch.zeros(kh, kw)
    cy, cx = kh // 2, kw // 2
    mask[:cy, :] = 1.0
    mask[cy, : cx + (mask_type == "B")] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """``same``-padded Conv2d whose kernel is multiplied by a causal mask.

    Multiplying (rather than zeroing weights once) keeps masked taps exactly
    zero forever, so gradients through them are exactly zero too.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int],
                 mask_type: str, bias: bool = True) -> None:
        kh, kw = kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel must have odd sizes, got {kernel}")
        super().__init__(in_ch, out_ch, kernel, padding=(kh // 2, kw // 2), bias=bias)
        self.mask_type = mask_type
        # Non-persistent: constant, rebuilt at construction, not checkpointed.
        self.register_buffer("mask", causal_mask(kh, kw, mask_type)[None, None],
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class RowLSTMLayer(nn.Module):
    """One Row LSTM layer with a residual connection (paper, Sec. 3.1).

    ``[o, f, i, g] = K_ss * h_{r-1} + K_is * x_r`` where ``K_is`` is a masked
    (mask B) ``1 x k`` conv computed for the whole image at once and ``K_ss``
    an unmasked ``1 x k`` conv over the previous row's hidden state.
    """

    def __init__(self, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(hidden, 4 * hidden, (1, kernel), "B")
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel,
                                        padding=kernel // 2, bias=False)
        self.out = nn.Conv2d(hidden, hidden, 1)  # 1x1: per-pixel, so causal
        with torch.no_grad():  # forget-gate bias 1: remember by default
            self.input_to_state.bias[hidden: 2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, hidden, H, W] -> [B, hidden, H, W]``."""
        batch, _, _, width = x.shape
        gates_in = self.input_to_state(x)          # [B, 4h, H, W]
        # The recurrent state stays in (at least) fp32 under autocast, only the
        # convs drop to 16 bits: c accumulates over every row of the image.
        state_dtype = torch.promote_types(x.dtype, torch.float32)
        h = x.new_zeros(batch, self.hidden, width, dtype=state_dtype)  # row r-1: [B, h, W]
        c = x.new_zeros(batch, self.hidden, width, dtype=state_dtype)
        rows = []
        # One unbind (not an index per row): its backward is a single stack.
        for gates_r in gates_in.unbind(2):          # H x [B, 4h, W]
            gates = upcast(gates_r) + upcast(self.state_to_state(h))  # [B, 4h, W]
            o, f, i, g = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            rows.append(h)
        states = torch.stack(rows, dim=2)           # [B, h, H, W]
        return x + self.out(states)


def skew(x: torch.Tensor) -> torch.Tensor:
    """Shift row r right by r: ``[B, C, H, W] -> [B, C, H, W + H - 1]``, zeros
    elsewhere, so image diagonal ``r + c = j`` becomes skewed column ``j``."""
    _, _, height, width = x.shape
    # Pad each row to W + H, flatten, drop the last H values and re-fold at
    # W + H - 1: every row then starts one column later than the one above.
    flat = F.pad(x, (0, height)).flatten(2)[:, :, : height * (width + height - 1)]
    return flat.unflatten(2, (height, width + height - 1))


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`skew`: ``[B, C, H, W + H - 1] -> [B, C, H, W]``."""
    height = x.shape[2]
    flat = F.pad(x.flatten(2), (0, height))          # [B, C, H * (W + H)]
    return flat.unflatten(2, (height, width + height))[..., :width]


class _DiagonalLSTM(nn.Module):
    """One direction of a Diagonal BiLSTM layer: left to right over the skewed
    columns, so the state at image ``(r, c)`` follows ``(r, c-1)`` and
    ``(r-1, c)`` and summarises every input at rows <= r, columns <= c."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = nn.Conv2d(hidden, 4 * hidden, 1)  # 1x1: per pixel
        # The 2x1 kernel over the previous column's state at rows r-1 and r,
        # as one matmul over their concatenation (channels last, see forward).
        self.state_to_state = nn.Linear(2 * hidden, 4 * hidden, bias=False)
        with torch.no_grad():  # forget-gate bias 1: remember by default
            self.input_to_state.bias[hidden: 2 * hidden].fill_(1.0)

    def _recurrent_gates(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, H, h]`` (column j-1) -> ``[B, H, 4h]``: row r reads rows
        r-1 (zeros above row 0) and r."""
        above = F.pad(h, (0, 0, 1, 0))[:, :-1]                  # [B, H, h]
        return self.state_to_state(torch.cat([above, h], dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, hidden, H, W] -> hidden states [B, hidden, H, W]`` (fp32+)."""
        batch, _, height, width = x.shape
        # 1x1 before skewing: the skew's padding then holds exact zeros.
        gates_in = skew(self.input_to_state(x))     # [B, 4h, H, W + H - 1]
        # One unbind (not an index per column): its backward is a single stack.
        columns_in = gates_in.permute(3, 0, 2, 1).unbind(0)   # W + H - 1 x [B, H, 4h]
        state_dtype = torch.promote_types(x.dtype, torch.float32)  # as in RowLSTMLayer
        h = x.new_zeros(batch, height, self.hidden, dtype=state_dtype)  # column j-1: [B, H, h]
        c = x.new_zeros(batch, height, self.hidden, dtype=state_dtype)
        columns = []
        for gates_j in columns_in:
            gates = upcast(gates_j) + upcast(self._recurrent_gates(h))   # [B, H, 4h]
            o, f, i, g = gates.chunk(4, dim=2)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            columns.append(h)
        states = torch.stack(columns, dim=3).transpose(1, 2)  # [B, h, H, W + H - 1]
        return unskew(states, width)


class DiagonalBiLSTMLayer(nn.Module):
    """One Diagonal BiLSTM layer with a residual connection (paper, Sec. 3.2).

    The left-to-right direction sees the up-left quadrant of each pixel; the
    right-to-left one runs the same recurrence on the image mirrored
    left-right and sees the up-right quadrant, which includes the current
    row's future, so its output is shifted down one row (row 0 gets zeros)
    before the two are added. Input features at ``(r, c)`` already summarise
    only pixels before ``(r, c)``, so the sum is causal.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.forward_dir = _DiagonalLSTM(hidden)
        self.backward_dir = _DiagonalLSTM(hidden)
        self.out = nn.Conv2d(hidden, hidden, 1)  # 1x1: per-pixel, so causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, hidden, H, W] -> [B, hidden, H, W]``."""
        left = self.forward_dir(x)                                     # [B, h, H, W]
        right = self.backward_dir(x.flip(3)).flip(3)                   # [B, h, H, W]
        right = F.pad(right[:, :, :-1], (0, 0, 1, 0))                  # row r <- row r-1
        return x + self.out(left + right)


class ResidualBlock(nn.Module):
    """PixelCNN residual block: ReLU, 3x3 mask-B conv, ReLU, 1x1 conv, add."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(hidden, hidden, (3, 3), "B"),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, hidden, H, W] -> [B, hidden, H, W]``."""
        return x + self.body(x)


class PixelRNNNet(nn.Module):
    """Embedding -> 7x7 mask-A conv -> body -> 1x1 head with K logits.

    ``forward(index [B, H, W] long) -> logits [B, K, H, W]``; the logits at
    ``(r, c)`` depend only on pixels strictly before ``(r, c)`` in raster
    order. Works on any ``H, W`` (sampling feeds cropped images).
    """

    def __init__(self, config: PixelRNNConfig) -> None:
        super().__init__()
        cfg = config
        self.embedding = nn.Embedding(cfg.num_colors, cfg.embed)
        k = cfg.first_kernel
        self.first = MaskedConv2d(cfg.embed, cfg.hidden, (k, k), "A")
        if cfg.variant == "row_lstm":
            blocks = [RowLSTMLayer(cfg.hidden, cfg.row_kernel) for _ in range(cfg.layers)]
        elif cfg.variant == "diagonal_bilstm":
            blocks = [DiagonalBiLSTMLayer(cfg.hidden) for _ in range(cfg.layers)]
        else:
            blocks = [ResidualBlock(cfg.hidden) for _ in range(cfg.layers)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.hidden, 1),
            nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.num_colors, 1),
        )

    def embed_input(self, index: torch.Tensor) -> torch.Tensor:
        """``index [B, H, W] -> embedding [B, E, H, W]``."""
        return self.embedding(index).permute(0, 3, 1, 2)

    def logits_from_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, E, H, W] -> logits [B, K, H, W]`` (exposed for tests).
        The last 1x1 conv runs in fp32 even under autocast (module docstring);
        without autocast this is exactly ``self.head(...)``."""
        h = self.head[:-1](self.body(self.first(emb)))
        return full_precision(self.head[-1], h)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embedding(self.embed_input(index))


# --------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------
def _draw(logits: torch.Tensor, temperature: float,
          generator: torch.Generator | None) -> torch.Tensor:
    """Sample one colour per row of ``logits [n, K]`` -> ``[n]`` long.

    ``temperature == 0`` is greedy argmax. A generator on another device than
    the logits (e.g. a CPU generator with a CUDA model) is honoured by
    drawing on the generator's device.
    """
    if temperature == 0:
        return logits.argmax(dim=1)
    probs = torch.softmax(logits.float() / temperature, dim=1)
    if generator is not None and generator.device != probs.device:
        drawn = torch.multinomial(probs.to(generator.device), 1, generator=generator)
        return drawn.squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------
# Family
# --------------------------------------------------------------------------
class PixelRNN(Family):
    """PixelRNN / PixelCNN family over palette indices.

    Args:
        config: a :class:`PixelRNNConfig` or a dict of its fields.
        palette: optional ``[K, 3]`` RGB palette (numpy / tensor / lists);
            overrides ``config.palette``.
        device: where the network lives.

    Networks: ``{"net": PixelRNNNet}`` (also ``self.net``); optimisers:
    ``{"net": Adam}``. Batches need ``"index"``: long ``[B, H, W]`` in
    ``[0, K)``.
    """

    def __init__(self, config: PixelRNNConfig | dict[str, Any] | None = None, *,
                 palette: Any = None, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        if config is None:
            config = PixelRNNConfig()
        elif isinstance(config, dict):
            config = PixelRNNConfig(**config)
        if palette is not None:
            config = replace(config, palette=palette)  # __post_init__ normalises and validates it
        self.config = config
        self.net: nn.Module = PixelRNNNet(config).to(self.device)
        self.networks = {"net": self.net}
        self.optimizers = {"net": torch.optim.Adam(self.net.parameters(), lr=config.lr)}
        self.palette = (None if config.palette is None else
                        torch.tensor(config.palette, dtype=torch.float32, device=self.device))

    @property
    def pixels(self) -> int:
        """Dimensions per image: one categorical per pixel, so ``H * W``."""
        return self.config.height * self.config.width

    # -- data ---------------------------------------------------------------
    def _index(self, batch: Batch | torch.Tensor) -> torch.Tensor:
        """Validated ``[B, H, W]`` long index tensor on ``self.device``."""
        index = batch["index"] if isinstance(batch, dict) else batch
        cfg = self.config
        if index.dim() != 3 or tuple(index.shape[1:]) != (cfg.height, cfg.width):
            raise ValueError(f"index must be [B, {cfg.height}, {cfg.width}], "
                             f"got {tuple(index.shape)}")
        if index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"index must be an integer tensor, got {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= cfg.num_colors):
            raise ValueError(f"index values must lie in [0, {cfg.num_colors})")
        return index.to(self.device, torch.long)

    def _metrics(self, nats_per_pixel: float) -> Metrics:
        """Likelihood metrics from the mean per-pixel cross-entropy."""
        nats = nats_per_pixel * self.pixels
        return {"loss": nats_per_pixel, "nll_nats": nats,
                "bits_per_dim": bits_per_dim(nats, self.pixels)}

    # -- training -----------------------------------------------------------
    def train_step(self, batch: Batch) -> Metrics:
        """One Adam step on the mean per-pixel cross-entropy.

        Returns ``loss`` (mean CE, nats/pixel), ``nll_nats`` (nats/image),
        ``bits_per_dim`` (= loss / ln 2) and ``grad_norm`` (before clipping);
        under fp16 also ``loss_scale`` and ``overflow`` (a non-finite grad
        norm: the step was skipped).
        """
        index = self._index(batch)
        optimizer = self.optimizers["net"]
        with self.autocast():
            logits = self.net(index)             # [B, K, H, W]; via wrapper
        loss = F.cross_entropy(upcast(logits), index)  # fp32 mean over B*H*W pixels
        optimizer.zero_grad(set_to_none=True)
        grad_norm = self.backward_step(loss, optimizer, list(self.net.parameters()),
                                       self.config.grad_clip)
        amp_metrics = self.end_step()
        return {**self._metrics(loss.item()), "grad_norm": float(grad_norm), **amp_metrics}

    @torch.no_grad()
    def nll_per_image(self, index: torch.Tensor | Batch) -> torch.Tensor:
        """Exact negative log-likelihood in nats, ``[B]``, of ``index [B,H,W]``
        (or of a batch dict's ``"index"``)."""
        index = self._index(index)
        with self.autocast():
            logits = unwrap(self.net)(index)
        ce = F.cross_entropy(upcast(logits), index, reduction="none")  # [B, H, W], fp32
        return ce.flatten(1).sum(dim=1)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> Metrics:
        """Exact NLL over all images in ``batches`` (eval mode, no grad).

        Returns ``nll_nats`` (mean nats/image), ``bits_per_dim``, ``loss``
        (mean nats/pixel) and ``n_images`` (for weighting across shards), as every family.
        Uses the unwrapped network, so it issues no collectives.
        """
        net = unwrap(self.net)
        was_training = net.training
        net.eval()
        total, images = 0.0, 0
        try:
            for batch in batches:
                nll = self.nll_per_image(batch)
                total += float(nll.double().sum())
                images += nll.shape[0]
        finally:
            net.train(was_training)
        if images == 0:
            raise ValueError("evaluate() received no images")
        return {**self._metrics(total / images / self.pixels), "n_images": float(images)}

    # -- sampling -----------------------------------------------------------
    def _canvas(self, n: int, given: torch.Tensor | None,
                given_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start canvas ``[n, H, W]`` long and fixed-pixel mask ``[n, H, W]``."""
        shape = (n, self.config.height, self.config.width)
        if (given is None) != (given_mask is None):
            raise ValueError("given and given_mask must be passed together")
        if given is None:
            return (torch.zeros(shape, dtype=torch.long, device=self.device),
                    torch.zeros(shape, dtype=torch.bool, device=self.device))
        given = torch.as_tensor(given, device=self.device).long().expand(shape).clone()
        fixed = torch.as_tensor(given_mask, device=self.device).bool().expand(shape).clone()
        kept = given[fixed]
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= self.config.num_colors):
            raise ValueError(f"given values must lie in [0, {self.config.num_colors})")
        return given.masked_fill(~fixed, 0), fixed

    @torch.no_grad()
    def sample_indices(self, n: int, temperature: float = 1.0,
                       generator: torch.Generator | None = None,
                       given: torch.Tensor | None = None,
                       given_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``[n, H, W]`` palette indices pixel by pixel in raster order.

        Each free pixel is drawn from ``softmax(logits / temperature)``;
        ``temperature == 0`` is greedy. Pixels where ``given_mask`` (bool,
        ``[n, H, W]`` or broadcastable ``[H, W]``) is True are kept equal to
        ``given`` and conditioned on. Costs up to ``H * W`` forward passes of
        the unwrapped network (no collectives, safe on a single rank).
        """
        if not is_int(n) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if not (isinstance(temperature, Real) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        canvas, fixed = self._canvas(n, given, given_mask)
        if n == 0:
            return canvas
        fixed_host = fixed.cpu()  # avoid a device sync per pixel for the skip test
        net = unwrap(self.net)
        was_training = net.training
        net.eval()
        try:
            for r in range(self.config.height):
                for c in range(self.config.width):
                    if bool(fixed_host[:, r, c].all()):
                        continue  # nothing to sample here
                    # Row r depends only on rows <= r, so later rows are cropped.
                    with self.autocast():
                        logits = net(canvas[:, : r + 1])[:, :, r, c]  # [n, K]
                    drawn = _draw(logits, float(temperature), generator)
                    canvas[:, r, c] = torch.where(fixed[:, r, c], canvas[:, r, c], drawn)
        finally:
            net.train(was_training)
        return canvas

    def top_half_mask(self) -> torch.Tensor:
        """``[H, W]`` bool mask selecting the top ``H // 2`` rows (for completion)."""
        mask = torch.zeros(self.config.height, self.config.width, dtype=torch.bool)
        mask[: self.config.height // 2] = True
        return mask

    @torch.no_grad()
    def complete(self, index_images: torch.Tensor, mask: torch.Tensor,
                 temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill in the pixels of ``index_images [n, H, W]`` where ``mask`` is
        False, keeping the rest (e.g. ``mask = top_half_mask()`` completes the
        lower half of each sprite). Returns ``[n, H, W]`` indices."""
        index_images = self._index(index_images)
        return self.sample_indices(index_images.shape[0], temperature, generator,
                                   given=index_images, given_mask=mask)

    def to_rgb(self, index: torch.Tensor) -> torch.Tensor:
        """Map ``[n, H, W]`` indices to float RGB ``[n, 3, H, W]`` in [-1, 1].

        Uses ``palette[idx] / 127.5 - 1``; without a palette, a grey ramp
        ``idx / (K - 1)`` scaled to [-1, 1] (only for previews).
        """
        index = index.to(self.device, torch.long)
        if self.palette is None:
            grey = index.float() / (self.config.num_colors - 1) * 2.0 - 1.0
            return grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        rgb = self.palette[index]                          # [n, H, W, 3]
        return rgb.permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images at temperature 1 as RGB ``[n, 3, H, W]`` in [-1, 1]."""
        return self.to_rgb(self.sample_indices(n, generator=generator))
