"""Decode one raw file and apply a recipe: a pure function, safe to run in any
process (local pool worker or Ray task)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genlib.data.recipe import CorpusRecipe
from genlib.images import encode_png
from genlib.data.sources import RawItem, Reject, read_item

# The only Pillow formats ever tried on input bytes: what the recipes accept. Pillow's other
# plugins never see them (its EPS plugin, for one, runs Ghostscript), so anything else is not_an_image.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(slots=True)
class Processed:
    """The outcome for one input file: ``png`` set on success, ``reason`` otherwise."""

    source: str
    sha256: str | None
    png: bytes | None = None
    width: int = 0
    height: int = 0
    label: str | None = None
    reason: str | None = None
    detail: str | None = None
    seq: int = -1  # the input's position in the sorted scan


def process_chunk(items: list[RawItem], recipe: CorpusRecipe) -> list[Processed]:
    """Process a batch of items (the unit of work shipped to pool/Ray workers)."""
    return [process_item(item, recipe) for item in items]


def process_item(item: RawItem, recipe: CorpusRecipe) -> Processed:
    """One input -> its sample or its reject. Reads the bytes itself, where they are."""
    if item.reason is not None:  # refused by the scan
        return Processed(item.source, item.sha256, reason=item.reason, detail=item.error, seq=item.seq)
    sha = None
    try:
        data = read_item(item, recipe.max_file_bytes)
        sha = hashlib.sha256(data).hexdigest()
        if item.sha256 is not None and sha != item.sha256:
            raise Reject("unreadable", "the file changed during the build (its sha256 differs from the scan's)")
        width, height, out = _prepare(data, recipe, item.box)
    except Reject as rej:
        return Processed(item.source, sha, reason=rej.reason, detail=rej.detail, seq=item.seq)
    label = _label(item.source, recipe)
    return Processed(item.source, sha, png=encode_png(out), width=width, height=height, label=label,
                     seq=item.seq)


def _prepare(data: bytes, recipe: CorpusRecipe, box: tuple[int, int, int, int] | None):
    """Bytes -> (original width, height, recipe output image); raises Reject."""
    if not data:
        raise Reject("empty_file", "file is empty (0 bytes)")
    image = decode(data)
    width, height = image.size
    if min(width, height) < recipe.min_size:
        raise Reject("too_small", f"{width}x{height} is below min_size {recipe.min_size}")
    return width, height, apply_recipe(image, recipe, box)


def decode(data: bytes) -> Image.Image:
    """Bytes -> fully loaded RGB or RGBA image (GIF/APNG: first frame; EXIF
    orientation applied). Raises Reject for anything unusable."""
    try:
        return _decode(data)
    except Reject:
        raise
    except Exception as exc:  # any decoder path hostile bytes trip: one bad file must not end the build
        raise Reject("truncated", f"the image decoder failed: {type(exc).__name__}: {exc}") from None


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            image.seek(0)
            image.load()
    except UnidentifiedImageError:
        names = f"{', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]}"
        raise Reject("not_an_image", f"not a {names} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Reject("not_an_image", f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Reject("truncated", f"corrupt or truncated image data: {exc}") from None
    fmt = image.format
    image = ImageOps.exif_transpose(image) if fmt in ("JPEG", "MPO", "TIFF", "WEBP") else image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    try:
        return image.convert("RGBA" if has_alpha else "RGB")
    except (OSError, ValueError) as exc:
        raise Reject("truncated", f"cannot convert {image.mode} image: {exc}") from None


def apply_recipe(image: Image.Image, recipe: CorpusRecipe,
                 box: tuple[int, int, int, int] | None) -> Image.Image:
    if recipe.recipe == "faces":
        return faces(image, recipe, box)
    return sprites(image, recipe)


def composite(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB over a solid background (RGB passes through)."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    base = Image.new("RGBA", image.size, (*background, 255))
    return Image.alpha_composite(base, image).convert("RGB")


def faces(image: Image.Image, recipe: CorpusRecipe, box: tuple[int, int, int, int] | None) -> Image.Image:
    """Square crop (centre, or around the face box) then resize."""
    rgb = composite(image, recipe.background)
    w, h = rgb.size
    if recipe.box_file is not None:
        if box is None:
            raise Reject("missing_box", f"no entry in box_file {recipe.box_file}")
        cx, cy, side = _box_square(box, w, h, recipe.box_scale)
    else:
        side = min(recipe.crop or min(w, h), w, h)
        cx, cy = w / 2, h / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    square = rgb.crop((left, top, left + side, top + side))
    return square.resize((recipe.size, recipe.size), RESAMPLE[recipe.resample])


def _box_square(box: tuple[int, int, int, int], w: int, h: int, scale: float) -> tuple[float, float, int]:
    x, y, bw, bh = box
    if bw <= 0 or bh <= 0 or x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        raise Reject("bad_box", f"box {box} is empty or outside the {w}x{h} image")
    side = int(min(round(max(bw, bh) * scale), w, h))
    return x + bw / 2, y + bh / 2, side


def sprites(image: Image.Image, recipe: CorpusRecipe) -> Image.Image:
    """Composite on the background, crop to the content, pad to a square, resize."""
    bbox = content_bbox(image, recipe.alpha_threshold)
    if bbox is None:
        raise Reject("no_content", "no visible pixels (fully transparent or blank)")
    rgb = composite(image, recipe.background).crop(bbox)
    cw, ch = rgb.size
    side = int(round(max(cw, ch) * (1 + 2 * recipe.margin)))
    canvas = Image.new("RGB", (side, side), recipe.background)
    canvas.paste(rgb, ((side - cw) // 2, (side - ch) // 2))
    return canvas.resize((recipe.size, recipe.size), RESAMPLE[recipe.resample])


def content_bbox(image: Image.Image, alpha_threshold: int) -> tuple[int, int, int, int] | None:
    """Bounding box of visible content: alpha above the threshold for images with
    transparency; otherwise pixels that differ from the top-left (background) colour."""
    arr = np.asarray(image)
    if image.mode == "RGBA" and arr[..., 3].min() < 255:
        mask = arr[..., 3] > alpha_threshold
    else:
        rgb = arr[..., :3].astype(np.int16)
        mask = np.abs(rgb - rgb[0, 0]).max(axis=-1) > 8
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _label(source: str, recipe: CorpusRecipe) -> str | None:
    if recipe.label == "parent_dir":
        parent = PurePosixPath(source).parent.name
        return parent or None
    return None
