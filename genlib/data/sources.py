"""Enumerate raw input files from a folder, a zip or a tar (any nesting).

Every file yields exactly one :class:`RawItem`: either its bytes or the reason
they could not be read. Order is the sorted relative path, so builds are
reproducible whatever order the filesystem lists entries in. Archives found
inside a folder are expanded in place (``sub/pack.zip/member.png``).
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class RawItem:
    """One input file: ``data`` on success, ``error`` (a reason detail) otherwise."""

    source: str
    data: bytes | None = None
    error: str | None = None
    box: tuple[int, int, int, int] | None = None  # face box (x, y, w, h) from the recipe's box file
    sha256: str | None = None  # of ``data``; filled once by the build's fingerprint pass


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(ARCHIVE_SUFFIXES)


def iter_items(root: str | Path) -> Iterator[RawItem]:
    """Yield every file under ``root`` (a folder or an archive) in sorted order."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input not found: {root}")
    if root.is_dir():
        yield from _iter_folder(root)
    elif is_archive(root):
        yield from _iter_archive(root, prefix="")
    else:
        raise ValueError(f"input {root} is neither a folder nor a .zip/.tar archive")


def _iter_folder(root: Path) -> Iterator[RawItem]:
    files = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
        for name in filenames:
            files.append(Path(dirpath) / name)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    for path in files:
        rel = path.relative_to(root).as_posix()
        if is_archive(path):
            yield from _iter_archive(path, prefix=rel + "/")
            continue
        try:
            yield RawItem(rel, data=path.read_bytes())
        except OSError as exc:
            yield RawItem(rel, error=f"cannot read file: {exc.strerror or exc}")


def _iter_archive(path: Path, prefix: str) -> Iterator[RawItem]:
    if path.name.lower().endswith(".zip"):
        yield from _iter_zip(path, prefix)
    else:
        yield from _iter_tar(path, prefix)


def _iter_zip(path: Path, prefix: str) -> Iterator[RawItem]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield RawItem(prefix.rstrip("/") or path.name, error=f"cannot open zip archive: {exc}")
        return
    with archive:
        infos = sorted((i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.filename)
        for info in infos:
            source = prefix + info.filename
            try:
                yield RawItem(source, data=archive.read(info))
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                yield RawItem(source, error=f"cannot read zip member: {exc}")


def _iter_tar(path: Path, prefix: str) -> Iterator[RawItem]:
    """Read a tar in one sequential pass (random access into a .tar.gz is slow),
    then yield members sorted by name. A truncated archive yields the members
    read so far plus one item for the archive itself carrying the error."""
    items: list[RawItem] = []
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                source = prefix + member.name
                if member.isdir():
                    continue
                if not member.isfile():
                    items.append(RawItem(source, error="archive member is a link or device, not a file"))
                    continue
                fileobj = archive.extractfile(member)
                items.append(RawItem(source, data=fileobj.read() if fileobj else b""))
    except (tarfile.TarError, OSError, EOFError) as exc:
        items.append(RawItem(prefix.rstrip("/") or path.name,
                             error=f"tar archive unreadable after {len(items)} members: {exc}"))
    items.sort(key=lambda i: i.source)
    yield from items


def read_boxes(path: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """Parse a CelebA-style box file: an optional count line, an optional header
    line, then ``image_id x y w h`` rows. Keys are file base names."""
    boxes: dict[str, tuple[int, int, int, int]] = {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"box_file not found: {p}")
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or (lineno <= 2 and not _is_box_row(parts)):
            continue  # count line / header line
        if not _is_box_row(parts):
            raise ValueError(f"{p}:{lineno}: expected 'image_id x y w h', got {line.strip()!r}")
        boxes[parts[0]] = tuple(int(v) for v in parts[1:5])  # type: ignore[assignment]
    return boxes


def _is_box_row(parts: list[str]) -> bool:
    return len(parts) == 5 and all(v.lstrip("-").isdigit() for v in parts[1:])
