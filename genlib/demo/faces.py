"""An embedded demo corpus: procedurally drawn cartoon faces.

A fresh machine has no face corpus to download, yet the end-to-end path
(shard building, DCGAN training, mask-completion renders) needs one. This
module draws varied, clearly face-like cartoons with nothing but Pillow and
numpy, so that path can run anywhere.

Every face is drawn at ``_SUPERSAMPLE`` times the requested size and then
downscaled with LANCZOS, which gives smooth anti-aliased edges. Geometry is
expressed in *unit* coordinates (0..1 across the image) and scaled to pixels
at the last moment, so the same random draw gives the same face at any size.

Public API: :func:`draw_face` and :func:`generate_demo_faces`.
"""

from __future__ import annotations

import colorsys
import math
import os
import pathlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_face", "generate_demo_faces", "HAIR_STYLES"]

_SUPERSAMPLE = 4
_MIN_SIZE = 32

#: Hair styles; also the sub-folder names that group the corpus.
HAIR_STYLES = ("short", "long", "bun", "spiky", "curly", "bald")
_HAIR_STYLE_P = (0.26, 0.22, 0.12, 0.13, 0.13, 0.14)

# Realistic skin tones from very light to very dark; a face interpolates
# between neighbours so the whole range is covered, not just 8 tones.
_SKIN_TONES = np.array(
    [
        (255, 229, 210), (247, 212, 184), (236, 192, 156), (222, 170, 128),
        (196, 138, 98), (160, 105, 70), (122, 78, 50), (86, 55, 37),
    ],
    dtype=float,
)

# (colour, weight): natural hair colours dominate; dyed ones are occasional.
_HAIR_COLOURS = (
    ((28, 24, 24), 0.22), ((66, 42, 28), 0.19), ((118, 76, 42), 0.14),
    ((224, 190, 112), 0.13), ((164, 66, 30), 0.10), ((160, 160, 166), 0.08),
    ((228, 226, 220), 0.03), ((60, 110, 220), 0.03), ((236, 104, 170), 0.03),
    ((130, 70, 190), 0.03), ((60, 170, 110), 0.02),
)

_IRIS_COLOURS = (
    (98, 60, 30), (52, 32, 22), (70, 130, 200), (78, 140, 84),
    (140, 112, 52), (118, 128, 140),
)

Colour = tuple[int, int, int]


@dataclass
class _Face:
    """Everything the part painters share: canvas, geometry, palette."""

    img: Image.Image
    draw: ImageDraw.ImageDraw
    scale: float  # pixels per unit length on the supersampled canvas
    cx: float
    cy: float
    rx: float
    ry: float
    skin: Colour
    hair: Colour
    style: str

    def px(self, *coords: float) -> list[float]:
        """Convert unit coordinates to supersampled pixel coordinates."""
        return [c * self.scale for c in coords]

    def box(self, x: float, y: float, rx: float, ry: float) -> list[float]:
        """Pixel bounding box of an ellipse centred at (x, y) with radii."""
        return self.px(x - rx, y - ry, x + rx, y + ry)

    def width(self, frac: float) -> int:
        """Line width in pixels for a width of ``frac`` face radii."""
        return max(1, round(frac * self.rx * self.scale))


# --------------------------------------------------------------------------
# colour helpers


def _clip(c) -> Colour:
    """Round and clamp a colour-like sequence to an 8-bit RGB tuple."""
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _shade(c: Colour, factor: float) -> Colour:
    """Darken (factor < 1) or lighten (factor > 1) a colour."""
    if factor <= 1:
        return _clip(np.array(c) * factor)
    return _clip(255 - (255 - np.array(c)) / factor)


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    """Linear blend: t=0 gives a, t=1 gives b."""
    return _clip(np.array(a) * (1 - t) + np.array(b) * t)


def _hsv(h: float, s: float, v: float) -> Colour:
    """HSV in [0, 1] to an 8-bit RGB tuple."""
    return _clip(np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255)


def _skin_tone(rng: np.random.Generator) -> Colour:
    """Interpolated position along the light-to-dark skin palette."""
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    tone = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[i + 1] * (t - i)
    return _clip(tone + rng.normal(0, 4, 3))


def _hair_colour(rng: np.random.Generator) -> Colour:
    """A weighted pick of natural (mostly) or dyed hair, slightly jittered."""
    colours = [c for c, _ in _HAIR_COLOURS]
    weights = np.array([w for _, w in _HAIR_COLOURS])
    base = colours[rng.choice(len(colours), p=weights / weights.sum())]
    return _clip(np.array(base) + rng.normal(0, 8, 3))


def _background_colour(rng: np.random.Generator, skin: Colour) -> Colour:
    """Pastel (usually) or stronger solid colour that contrasts with the skin.

    Rejection keeps the face separable from the background, which is what a
    generative model most needs to learn first; the draws stay deterministic.
    """
    for _ in range(8):
        if rng.random() < 0.75:
            c = _hsv(rng.random(), rng.uniform(0.15, 0.45), rng.uniform(0.82, 1.0))
        else:
            c = _hsv(rng.random(), rng.uniform(0.45, 0.8), rng.uniform(0.35, 0.8))
        if np.abs(np.subtract(c, skin)).sum() > 110:
            return c
    return _shade(c, 0.45) if sum(skin) > 380 else _shade(c, 1.8)


# --------------------------------------------------------------------------
# background, body, hair


def _paint_background(rng: np.random.Generator, n: int, skin: Colour) -> Image.Image:
    """A solid colour or a vertical two-colour gradient, n x n pixels."""
    top = _background_colour(rng, skin)
    if rng.random() < 0.6:
        return Image.new("RGB", (n, n), top)
    bottom = _mix(top, _hsv(rng.random(), 0.3, 0.9), rng.uniform(0.3, 0.7))
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    rows = np.array(top) * (1 - t) + np.array(bottom) * t
    return Image.fromarray(np.broadcast_to(rows, (n, n, 3)).round().astype(np.uint8))


def _paint_body(f: _Face, rng: np.random.Generator) -> None:
    """Shoulders in a random shirt colour, and a neck in shaded skin."""
    shirt = _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9))
    top = f.cy + f.ry * 0.92
    f.draw.ellipse(f.box(f.cx, top + 0.32, f.rx * 1.7, 0.32), fill=shirt)
    neck_w = f.rx * rng.uniform(0.42, 0.55)
    f.draw.rectangle(f.px(f.cx - neck_w, f.cy, f.cx + neck_w, top + 0.05),
                     fill=_shade(f.skin, 0.82))
    # A collar line gives the shirt a front so it does not read as a blob.
    f.draw.arc(f.box(f.cx, top + 0.03, neck_w * 1.1, 0.05), 0, 180,
               fill=_shade(shirt, 0.7), width=f.width(0.04))


def _hair_mask(f: _Face, rng: np.random.Generator, cut: float, high: float) -> Image.Image:
    """Mask of the front hair: a cap around the skull minus the forehead.

    ``cut`` is how far below the face centre the hair may reach (in face
    radii); ``high`` raises the hairline (pulled-back styles).
    """
    n = f.img.size[0]
    mask = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(mask)
    vol = rng.uniform(1.05, 1.16)
    d.ellipse(f.box(f.cx, f.cy - 0.05 * f.ry, f.rx * vol, f.ry * (vol - 0.02)), fill=255)
    part = rng.uniform(-0.18, 0.18) * f.rx  # a side parting shifts the hairline
    fy = f.cy + f.ry * (0.36 - high + rng.uniform(-0.06, 0.06))
    d.ellipse(f.box(f.cx + part, fy, f.rx * 0.9, f.ry * 0.92), fill=0)
    d.rectangle(f.px(0, f.cy + cut * f.ry, 1, 1), fill=0)
    return mask


def _paint_hair_back(f: _Face, rng: np.random.Generator) -> None:
    """Hair that sits behind the head: long hair and the bun."""
    if f.style == "long":
        w, length = f.rx * rng.uniform(1.18, 1.32), f.ry * rng.uniform(0.8, 1.25)
        f.draw.ellipse(f.box(f.cx, f.cy - 0.08 * f.ry, w, f.ry * 1.08), fill=f.hair)
        f.draw.rounded_rectangle(f.px(f.cx - w, f.cy - 0.1 * f.ry, f.cx + w, f.cy + length),
                                 radius=f.rx * 0.35 * f.scale, fill=f.hair)
    elif f.style == "bun":
        r = f.rx * rng.uniform(0.28, 0.38)
        f.draw.ellipse(f.box(f.cx, f.cy - f.ry * 1.02 - r * 0.4, r, r), fill=f.hair)


def _paint_hair_front(f: _Face, rng: np.random.Generator) -> None:
    """Cap of hair over the top of the head, with a per-style outline."""
    if f.style == "bald":
        _paint_bald(f, rng)
        return
    cut = {"long": 0.35, "bun": -0.25}.get(f.style, -0.05)
    high = 0.12 if f.style == "bun" else 0.0
    mask = _hair_mask(f, rng, cut, high)
    f.img.paste(f.hair, (0, 0) + f.img.size, mask)
    if f.style == "spiky":
        _paint_spikes(f, rng)
    elif f.style == "curly":
        _paint_curls(f, rng)


def _arc_point(f: _Face, deg: float, grow: float) -> tuple[float, float]:
    """Point on the skull outline at angle ``deg`` (PIL's y-down convention)."""
    a = math.radians(deg)
    return (f.cx + f.rx * grow * math.cos(a),
            f.cy - 0.05 * f.ry + f.ry * grow * math.sin(a))


def _paint_spikes(f: _Face, rng: np.random.Generator) -> None:
    """Triangular spikes fanned along the top of the cap."""
    k = int(rng.integers(6, 10))
    length = rng.uniform(1.25, 1.45)
    for deg in np.linspace(195, 345, k):
        half = 150 / k * 0.75
        tip = _arc_point(f, deg + rng.uniform(-4, 4), length)
        pts = [_arc_point(f, deg - half, 1.0), tip, _arc_point(f, deg + half, 1.0)]
        f.draw.polygon([c * f.scale for p in pts for c in p], fill=f.hair)


def _paint_curls(f: _Face, rng: np.random.Generator) -> None:
    """Overlapping round curls along the cap's outline."""
    r = f.rx * rng.uniform(0.16, 0.22)
    for deg in np.linspace(170, 370, 15):
        x, y = _arc_point(f, deg, 1.05)
        rr = r * rng.uniform(0.85, 1.15)
        f.draw.ellipse(f.box(x, y, rr, rr), fill=f.hair)


def _paint_bald(f: _Face, rng: np.random.Generator) -> None:
    """A shine on the crown and, usually, tufts of hair above the ears."""
    f.draw.ellipse(f.box(f.cx - 0.3 * f.rx, f.cy - 0.72 * f.ry, 0.2 * f.rx, 0.1 * f.ry),
                   fill=(255, 255, 255, 70))
    if rng.random() < 0.7:
        for side in (-1, 1):
            x = f.cx + side * f.rx * 0.93
            f.draw.ellipse(f.box(x, f.cy - 0.12 * f.ry, 0.16 * f.rx, 0.26 * f.ry),
                           fill=f.hair)


# --------------------------------------------------------------------------
# head and facial features


def _paint_head(f: _Face, rng: np.random.Generator) -> None:
    """Ears (behind) and the face ellipse with a soft chin shadow."""
    ey, er = f.cy + f.ry * rng.uniform(-0.02, 0.1), f.rx * rng.uniform(0.15, 0.21)
    for side in (-1, 1):
        x = f.cx + side * f.rx * 0.97
        f.draw.ellipse(f.box(x, ey, er, er * 1.45), fill=f.skin)
        f.draw.ellipse(f.box(x + side * er * 0.15, ey, er * 0.5, er * 0.85),
                       fill=_shade(f.skin, 0.85))
    f.draw.ellipse(f.box(f.cx, f.cy, f.rx, f.ry), fill=f.skin)


def _paint_cheeks(f: _Face, rng: np.random.Generator, eye_dx: float) -> None:
    """Optional blush and freckles on the cheeks."""
    if rng.random() < 0.3:
        blush = (240, 110, 120, int(rng.integers(50, 100)))
        for side in (-1, 1):
            f.draw.ellipse(f.box(f.cx + side * eye_dx * 1.15, f.cy + 0.3 * f.ry,
                                 0.17 * f.rx, 0.1 * f.ry), fill=blush)
    if rng.random() < 0.15:
        dot, r = _shade(f.skin, 0.7), 0.022 * f.rx
        for _ in range(int(rng.integers(8, 16))):
            side = 1 if rng.random() < 0.5 else -1
            x = f.cx + side * eye_dx * rng.uniform(0.6, 1.4)
            y = f.cy + f.ry * rng.uniform(0.12, 0.32)
            f.draw.ellipse(f.box(x, y, r, r), fill=dot)


def _paint_eye(f: _Face, x: float, y: float, size: tuple, look: tuple, kind: str) -> None:
    """One eye: 'open' (white, iris, pupil, glint), 'dot' or 'closed'."""
    ex, ey, iris = size
    line = _shade(f.skin, 0.35)
    if kind == "closed":
        f.draw.arc(f.box(x, y - ey * 0.4, ex, ey), 20, 160, fill=line, width=f.width(0.045))
        return
    if kind == "dot":
        f.draw.ellipse(f.box(x, y, ex * 0.45, ey * 0.8), fill=(25, 20, 20))
        f.draw.ellipse(f.box(x - ex * 0.12, y - ey * 0.3, ex * 0.14, ex * 0.14), fill=(255,) * 3)
        return
    f.draw.ellipse(f.box(x, y, ex, ey), fill=(250, 250, 248), outline=line, width=f.width(0.025))
    r = min(ex, ey) * 0.68
    ix, iy = x + look[0] * (ex - r) * 0.8, y + look[1] * (ey - r) * 0.5
    f.draw.ellipse(f.box(ix, iy, r, r), fill=iris)
    f.draw.ellipse(f.box(ix, iy, r * 0.5, r * 0.5), fill=(15, 12, 12))
    f.draw.ellipse(f.box(ix - r * 0.35, iy - r * 0.35, r * 0.22, r * 0.22), fill=(255,) * 3)


def _paint_eyes(f: _Face, rng: np.random.Generator) -> tuple[float, float, float]:
    """Both eyes and eyebrows; returns (eye y, eye spacing, eye radius)."""
    y = f.cy - f.ry * rng.uniform(0.0, 0.12)
    dx = f.rx * rng.uniform(0.36, 0.48)
    ex = f.rx * rng.uniform(0.14, 0.21)
    size = (ex, ex * rng.uniform(0.7, 1.05), _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))])
    look = (rng.uniform(-1, 1), rng.uniform(-1, 1))
    kinds = ["open", "open"] if rng.random() < 0.8 else ["dot", "dot"]
    u = rng.random()
    if u < 0.06:
        kinds = ["closed", "closed"]
    elif u < 0.13:
        kinds[int(rng.integers(2))] = "closed"  # a wink
    for side, kind in zip((-1, 1), kinds):
        _paint_eye(f, f.cx + side * dx, y, size, look, kind)
    _paint_brows(f, rng, y - size[1] - f.ry * rng.uniform(0.08, 0.15), dx, ex)
    return y, dx, ex


def _paint_brows(f: _Face, rng: np.random.Generator, y: float, dx: float, ex: float) -> None:
    """Mirrored eyebrows; the tilt sets the mood (worried, neutral, cross)."""
    # Brows follow the hair colour; half the bald faces get skin-toned brows.
    colour = _shade(f.hair, 0.75)
    if f.style == "bald" and rng.random() < 0.5:
        colour = _shade(f.skin, 0.5)
    tilt = rng.uniform(-0.35, 0.35) * ex  # inner end up (+) or down (-)
    w = f.width(rng.uniform(0.04, 0.08))
    half = ex * rng.uniform(1.0, 1.35)
    for side in (-1, 1):
        x = f.cx + side * dx
        inner = (x - side * half, y - tilt)
        outer = (x + side * half, y + tilt * 0.3)
        f.draw.line(f.px(*inner, *outer), fill=colour, width=w)
        for p in (inner, outer):  # round line caps
            f.draw.ellipse(f.box(*p, w / f.scale / 2, w / f.scale / 2), fill=colour)


def _paint_nose(f: _Face, rng: np.random.Generator) -> float:
    """A nose in one of four cartoon styles; returns its y."""
    y = f.cy + f.ry * rng.uniform(0.14, 0.26)
    w, line = f.rx * rng.uniform(0.09, 0.15), _shade(f.skin, 0.62)
    kind = int(rng.integers(4))
    if kind == 0:  # button
        f.draw.ellipse(f.box(f.cx, y, w, w * 0.8), fill=_shade(f.skin, 0.88))
        f.draw.ellipse(f.box(f.cx - w * 0.3, y - w * 0.3, w * 0.25, w * 0.2),
                       fill=_shade(f.skin, 1.4))
    elif kind == 1:  # simple underside arc
        f.draw.arc(f.box(f.cx, y - w * 0.5, w, w), 20, 160, fill=line, width=f.width(0.035))
    elif kind == 2:  # profile-ish hook
        pts = [(f.cx + w * 0.2, y - f.ry * 0.2), (f.cx - w * 0.6, y + w * 0.6),
               (f.cx + w * 0.3, y + w * 0.6)]
        f.draw.line([c * f.scale for p in pts for c in p], fill=line, width=f.width(0.035))
    else:  # nostrils
        for side in (-1, 1):
            f.draw.ellipse(f.box(f.cx + side * w * 0.5, y, w * 0.22, w * 0.16), fill=line)
    return y


def _paint_mouth(f: _Face, rng: np.random.Generator, nose_y: float) -> tuple[float, float]:
    """Smile, grin, neutral, 'o' or frown; returns (mouth y, half-width)."""
    y = nose_y + f.ry * rng.uniform(0.22, 0.32)
    w = f.rx * rng.uniform(0.22, 0.45)
    lip = _mix(_shade(f.skin, 0.55), (150, 40, 50), 0.45)
    kind = rng.choice(["smile", "grin", "neutral", "o", "frown"], p=[0.34, 0.28, 0.16, 0.1, 0.12])
    lw = f.width(0.05)
    if kind == "smile":
        f.draw.arc(f.box(f.cx, y - w * 0.35, w, w * 0.55), 15, 165, fill=lip, width=lw)
    elif kind == "grin":
        h = w * rng.uniform(0.5, 0.8)
        f.draw.chord(f.box(f.cx, y - h * 0.3, w, h), 0, 180, fill=(110, 25, 35))
        f.draw.ellipse(f.box(f.cx, y + h * 0.5, w * 0.5, h * 0.25), fill=(225, 95, 105))  # tongue
        f.draw.rectangle(f.px(f.cx - w * 0.8, y - h * 0.3, f.cx + w * 0.8, y - h * 0.05),
                         fill=(250, 250, 245))  # teeth
        f.draw.chord(f.box(f.cx, y - h * 0.3, w, h), 0, 180, outline=lip, width=lw // 2 + 1)
    elif kind == "neutral":
        f.draw.line(f.px(f.cx - w * 0.8, y, f.cx + w * 0.8, y), fill=lip, width=lw)
    elif kind == "o":
        f.draw.ellipse(f.box(f.cx, y, w * 0.35, w * 0.45), fill=(110, 25, 35),
                       outline=lip, width=lw // 2 + 1)
    else:
        f.draw.arc(f.box(f.cx, y + w * 0.45, w * 0.9, w * 0.5), 200, 340, fill=lip, width=lw)
    return y, w


def _paint_facial_hair(f: _Face, rng: np.random.Generator, mouth: tuple[float, float]) -> None:
    """Optional beard (a lower-face mask around the mouth) and moustache."""
    my, mw = mouth
    beard, stache = rng.random() < 0.12, rng.random() < 0.14
    if beard:
        n = f.img.size[0]
        mask = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(mask)
        d.ellipse(f.box(f.cx, f.cy + 0.03 * f.ry, f.rx * 1.02, f.ry * 1.06), fill=255)
        # Starting below the eyes and clearing the cheeks keeps the face
        # readable instead of turning the beard into a balaclava.
        d.rectangle(f.px(0, 0, 1, f.cy + f.ry * rng.uniform(0.2, 0.35)), fill=0)
        d.ellipse(f.box(f.cx, my, mw * 1.1, f.ry * 0.1), fill=0)  # keep the mouth visible
        d.ellipse(f.box(f.cx, f.cy + 0.1 * f.ry, f.rx * 0.74, f.ry * 0.42), fill=0)  # cheeks
        f.img.paste(_shade(f.hair, 0.9), (0, 0, n, n), mask)
    if stache:
        y, h = my - f.ry * 0.1, f.ry * 0.06
        for side in (-1, 1):
            f.draw.ellipse(f.box(f.cx + side * mw * 0.45, y, mw * 0.55, h),
                           fill=_shade(f.hair, 0.85))


def _paint_glasses(f: _Face, rng: np.random.Generator, eyes: tuple[float, float, float]) -> None:
    """Optional round or square glasses, sometimes tinted."""
    if rng.random() >= 0.2:
        return
    y, dx, ex = eyes
    frame = [(20, 20, 20), (110, 60, 30), (180, 30, 40), (40, 70, 160)][rng.integers(4)]
    # Lenses may not overlap: cap the radius by the eye spacing.
    r, w = min(ex * rng.uniform(1.45, 1.75), dx * 0.88), f.width(0.045)
    tint = (120, 170, 220, 90) if rng.random() < 0.25 else None
    square = rng.random() < 0.5
    for side in (-1, 1):
        box = f.box(f.cx + side * dx, y, r, r * 0.85)
        if square:
            f.draw.rounded_rectangle(box, radius=r * 0.3 * f.scale, fill=tint,
                                     outline=frame, width=w)
        else:
            f.draw.ellipse(box, fill=tint, outline=frame, width=w)
        temple = (f.cx + side * f.rx * 0.98, y - r * 0.3)  # arms run to the ears
        f.draw.line(f.px(f.cx + side * (dx + r), y - r * 0.2, *temple), fill=frame, width=w)
    f.draw.arc(f.box(f.cx, y, dx - r * 0.95, r * 0.4), 200, 340, fill=frame, width=w)


# --------------------------------------------------------------------------
# public API


def _check_size(size: int) -> None:
    """Reject sizes too small to hold a legible face."""
    if int(size) != size or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE} pixels, got {size!r}")


def _draw_face_and_style(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """Draw one face; also return its hair style (the corpus group name)."""
    _check_size(size)
    n = size * _SUPERSAMPLE
    skin = _skin_tone(rng)
    img = _paint_background(rng, n, skin)
    rx = rng.uniform(0.26, 0.32)
    f = _Face(img=img, draw=ImageDraw.Draw(img, "RGBA"), scale=float(n),
              cx=0.5 + rng.uniform(-0.025, 0.025), cy=0.48 + rng.uniform(-0.02, 0.02),
              rx=rx, ry=min(0.37, rx * rng.uniform(1.12, 1.32)), skin=skin,
              hair=_hair_colour(rng), style=str(rng.choice(HAIR_STYLES, p=_HAIR_STYLE_P)))
    _paint_body(f, rng)
    _paint_hair_back(f, rng)
    _paint_head(f, rng)
    eyes = _paint_eyes(f, rng)
    _paint_cheeks(f, rng, eyes[1])
    mouth = _paint_mouth(f, rng, _paint_nose(f, rng))
    _paint_facial_hair(f, rng, mouth)
    _paint_hair_front(f, rng)
    _paint_glasses(f, rng, eyes)
    return img.resize((size, size), Image.Resampling.LANCZOS), f.style


def draw_face(rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One RGB cartoon face of size x size drawn from rng."""
    return _draw_face_and_style(rng, size)[0]


def generate_demo_faces(
    out_dir: str | os.PathLike, count: int = 512, size: int = 128, seed: int = 0
) -> list[pathlib.Path]:
    """Write ``count`` PNGs as ``out_dir/<hair style>/face_NNNNN.png``.

    Faces are grouped in nested folders like real corpora. Face ``i`` comes
    from ``numpy.random.default_rng([seed, i])``, so it does not depend on
    ``count``; files carry no metadata, so the same arguments give
    byte-identical files. Returns the written paths, sorted.
    """
    if int(count) != count or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    _check_size(size)
    root = pathlib.Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img, style = _draw_face_and_style(np.random.default_rng([seed, i]), size)
        path = root / style / f"face_{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        # Fixed encoder options and no pnginfo: nothing time- or host-dependent.
        img.save(path, format="PNG", optimize=False, compress_level=6)
        paths.append(path)
    return sorted(paths)
