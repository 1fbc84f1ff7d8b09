"""Enumerate raw input files from a folder, a zip or a tar, in bounded memory.

Two passes. :func:`scan` walks the input once and hashes every file as a
stream, keeping a small :class:`RawItem` per file (source path, where its bytes
are, size, sha256, or why it was refused): the build's fingerprint and work
list. :func:`read_item` later reads one file's bytes where they are (in the
pool worker or Ray task that processes it, from the same shared path), and
:func:`stream_members` re-reads a compressed tar in one sequential pass (a
.tar.gz has no random access).

Every file yields exactly one item; items are sorted by source path, so builds
are reproducible whatever order the filesystem lists entries in. What is read,
and what is refused instead (reasons from ``schema.REJECT_REASONS``):

- folders are walked without following folder links: a link to a folder inside
  the input is read under that folder's own path (``repeated_folder``), one
  leading outside it is ``unsafe_path``; each folder (device, inode) is read once;
  at most ``MAX_DEPTH`` levels (``too_deep``); a folder that cannot be listed
  (permissions, a path over the OS limit) is ``unreadable``;
- only regular files are opened (FIFOs, sockets, devices: ``not_a_file``), and at
  most ``max_bytes + 1`` bytes are read from one file or member (``too_large``);
- names that are not UTF-8, and archive members named ``/abs`` or ``../x``, are
  ``unsafe_path``; other member names are normalised (``./a//b`` -> ``a/b``);
- archives inside folders are expanded in place (``sub/pack.zip/member.png``);
  archives inside archives are not (``too_deep``: one archive level);
- an archive that stops early (corrupt tar header, truncation, a bad gzip/bz2/xz
  trailer, an unreadable zip directory) keeps the members read before and adds an
  ``unreadable`` row for the archive saying where reading stopped.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from genlib.storage import NotRegularFile, file_kind, open_regular, read_blocks

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_DEPTH = 64  # folder levels below the input root that are read; real corpora use fewer than 10
# What damaged or hostile data can raise from zipfile, tarfile and their decompressors.
READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, struct.error,
               tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)
_TAR_MODES = ((b"\x1f\x8b", "r:gz"), (b"BZh", "r:bz2"), (b"\xfd7zXZ\x00", "r:xz"))  # magic -> mode
_ZIPS: dict[str, tuple[tuple, BinaryIO, zipfile.ZipFile]] = {}  # per process, see _zip_member


class Reject(Exception):
    """Raised while reading or processing one input; carries a reason from schema.REJECT_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Ref:
    """Where one input's bytes are. ``kind``: "file" (the file ``path``), "zip" (entry ``pos``
    of the zip's directory), "tar" (``size`` bytes at offset ``pos`` of an uncompressed tar) or
    "tarstream" (member ``pos``, in stream order, of a compressed tar)."""

    kind: str
    path: str  # absolute: pool workers and Ray tasks open it themselves
    pos: int = 0
    size: int = 0


@dataclass(slots=True)
class RawItem:
    """One input file as the scan saw it: ``ref`` and ``sha256`` when it can be processed,
    ``reason`` and ``error`` (the detail) when the scan refused it."""

    source: str
    ref: Ref | None = None
    sha256: str | None = None
    reason: str | None = None
    error: str | None = None
    box: tuple[int, int, int, int] | None = None  # face box (x, y, w, h) from the recipe's box file
    data: bytes | None = None  # the bytes, only on the copies stream_members hands out
    seq: int = -1  # position in the sorted scan; results are put back in this order


def is_archive(path: str | Path) -> bool:
    return posixpath.basename(str(path)).lower().endswith(ARCHIVE_SUFFIXES)


def scan(root: str | Path, max_bytes: int, on_item: Callable[[RawItem], None] | None = None) -> list[RawItem]:
    """Every file under ``root`` (a folder or an archive), hashed, sorted by source."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input not found: {root}")
    if root.is_dir():
        found = _scan_folder(root, max_bytes)
    elif root.is_file() and is_archive(root):
        found = _scan_archive(os.path.realpath(root), "", max_bytes)
    else:
        raise ValueError(f"input {root} is neither a folder nor a .zip/.tar archive")
    items = []
    for item in found:
        items.append(item)
        if on_item is not None:
            on_item(item)
    items.sort(key=lambda i: i.source)  # stable: equal member names keep their archive order
    for seq, item in enumerate(items):
        item.seq = seq
    return items


# --------------------------------------------------------------------------- folders


def _scan_folder(root: Path, max_bytes: int) -> Iterator[RawItem]:
    """Depth-first with an explicit stack (no recursion limit); folder links are never followed."""
    top = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    stack = [("", top, 0)]  # (source prefix, path, depth)
    while stack:
        rel, path, depth = stack.pop()
        if (refused := _refuse_folder(rel or ".", path, depth, seen)) is not None:
            yield refused
            continue
        try:
            with os.scandir(path) as entries:  # iterated, not listed: CelebA has 200k files in one folder
                for entry in entries:
                    yield from _scan_entry(f"{rel}/{entry.name}" if rel else entry.name, entry, depth, top,
                                           stack, max_bytes)
        except OSError as exc:
            yield RawItem(rel or ".", reason="unreadable", error=f"cannot list folder: {exc.strerror or exc}")


def _refuse_folder(source: str, path: str, depth: int, seen: set) -> RawItem | None:
    """The reject row for a folder that must not be read, or None (and it is marked seen)."""
    if depth > MAX_DEPTH:
        return RawItem(source, reason="too_deep", error=f"folder nested deeper than {MAX_DEPTH} levels; not read")
    try:
        st = os.stat(path)
    except OSError as exc:
        return RawItem(source, reason="unreadable", error=f"cannot list folder: {exc.strerror or exc}")
    if (st.st_dev, st.st_ino) in seen:  # a bind mount of a folder into itself, say
        return RawItem(source, reason="repeated_folder", error="this folder was already read under another path")
    seen.add((st.st_dev, st.st_ino))
    return None


def _scan_entry(child: str, entry: os.DirEntry, depth: int, top: str, stack: list,
                max_bytes: int) -> Iterator[RawItem]:
    """One folder entry: a sub-folder is pushed on ``stack``, everything else yields rows."""
    if not _is_utf8(entry.name):
        yield RawItem(_shown(child), reason="unsafe_path", error="the name is not valid UTF-8; rename it")
        return
    try:
        if entry.is_dir(follow_symlinks=False):
            stack.append((child, entry.path, depth + 1))
        elif entry.is_symlink():
            yield from _scan_link(child, entry.path, top, max_bytes)
        elif entry.is_file(follow_symlinks=False):
            yield from _scan_path(child, entry.path, max_bytes)
        else:
            yield RawItem(child, reason="not_a_file", error=file_kind(entry.stat(follow_symlinks=False).st_mode))
    except OSError as exc:
        yield RawItem(child, reason="unreadable", error=f"cannot inspect: {exc.strerror or exc}")


def _scan_link(source: str, path: str, top: str, max_bytes: int) -> Iterator[RawItem]:
    target = os.path.realpath(path)
    if os.path.commonpath([target, top]) != top:
        yield RawItem(source, reason="unsafe_path",
                      error=f"symbolic link to {target} leads outside the input folder")
        return
    try:
        mode = os.stat(target).st_mode
    except OSError as exc:  # dangling link, or a loop of links (ELOOP)
        yield RawItem(source, reason="unreadable",
                      error=f"symbolic link cannot be followed: {exc.strerror or exc}")
        return
    if stat.S_ISDIR(mode):
        where = os.path.relpath(target, top)
        yield RawItem(source, reason="repeated_folder",
                      error=f"link to the folder {where!r}, which is read under that path; not followed")
    elif stat.S_ISREG(mode):
        yield from _scan_path(source, target, max_bytes)
    else:
        yield RawItem(source, reason="not_a_file", error="symbolic link to " + file_kind(mode))


def _scan_path(source: str, path: str, max_bytes: int) -> Iterator[RawItem]:
    if is_archive(source):
        yield from _scan_archive(path, source + "/", max_bytes)
    else:
        yield _scan_file(source, path, max_bytes)


def _scan_file(source: str, path: str, max_bytes: int) -> RawItem:
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                return _too_large(source, size, max_bytes)
            size, sha = _hash_stream(f, max_bytes)
    except NotRegularFile as exc:
        return RawItem(source, reason="not_a_file", error=str(exc))
    except OSError as exc:
        return RawItem(source, reason="unreadable", error=f"cannot read file: {exc.strerror or exc}")
    if size > max_bytes:
        return _too_large(source, size, max_bytes, exact=False)  # the file grew while it was read
    return RawItem(source, Ref("file", path), sha)


# --------------------------------------------------------------------------- archives


def _scan_archive(path: str, prefix: str, max_bytes: int) -> Iterator[RawItem]:
    name = prefix.rstrip("/") or os.path.basename(path)
    scan_members = _scan_zip if path.lower().endswith(".zip") else _scan_tar
    try:
        yield from scan_members(path, prefix, name, max_bytes)
    except NotRegularFile as exc:
        yield RawItem(name, reason="not_a_file", error=str(exc))


def _scan_zip(path: str, prefix: str, name: str, max_bytes: int) -> Iterator[RawItem]:
    raw = None
    try:
        raw = open_regular(path)
        archive = zipfile.ZipFile(raw)
    except READ_ERRORS as exc:
        if raw is not None:
            raw.close()
        yield RawItem(name, reason="unreadable", error=f"cannot open zip archive: {exc}")
        return
    with raw, archive:
        for pos, info in enumerate(archive.infolist()):
            if not info.is_dir():
                yield _scan_zip_member(archive, info, pos, path, prefix, max_bytes)


def _scan_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, pos: int, path: str, prefix: str,
                     max_bytes: int) -> RawItem:
    source, problem = member_source(prefix, info.filename)
    if problem:
        return RawItem(source, reason=problem[0], error=problem[1])
    if info.flag_bits & 0x1:
        return RawItem(source, reason="unreadable", error="encrypted zip member; genlib does not decrypt archives")
    if stat.S_ISLNK(info.external_attr >> 16):  # unix mode bits sit in the high 16 bits
        return RawItem(source, reason="not_a_file", error="archive member is a symbolic link, not a file")
    if info.file_size > max_bytes:
        return _too_large(source, info.file_size, max_bytes)
    try:
        with archive.open(info) as f:
            size, sha = _hash_stream(f, max_bytes)
    except READ_ERRORS as exc:
        return RawItem(source, reason="unreadable", error=f"cannot read zip member: {exc}")
    if size > max_bytes:  # the directory under-stated its size
        return _too_large(source, size, max_bytes, exact=False)
    return RawItem(source, Ref("zip", path, pos), sha)


def _scan_tar(path: str, prefix: str, name: str, max_bytes: int) -> Iterator[RawItem]:
    """One sequential pass. tarfile ends iteration silently at a corrupt header, so
    ``_tar_end`` checks what follows the last member; the archive gets a reject row
    saying where reading stopped, and the members before it are kept."""
    count, offset, problem = 0, 0, None
    try:
        with open_regular(path) as raw, tarfile.open(fileobj=raw, mode=_tar_mode(raw)) as archive:
            streamed = archive.fileobj is not raw  # compressed: no random access for workers
            for pos, member in enumerate(_tar_members(archive)):
                item = _scan_tar_member(archive, member, pos, path, prefix, max_bytes, streamed)
                count, offset = count + 1, archive.offset
                if item is not None:
                    yield item
            offset = archive.offset
            problem = _tar_end(archive)
    except READ_ERRORS as exc:
        problem = str(exc) or type(exc).__name__
    if problem:
        yield RawItem(name, reason="unreadable", error=f"tar archive unreadable after {count} members "
                      f"(offset {offset}): {problem}; nothing after that point was read")


def _tar_mode(raw: BinaryIO) -> str:
    """The tarfile mode for the compression the magic bytes show (not the suffix)."""
    head = raw.read(6)
    raw.seek(0)
    return next((mode for magic, mode in _TAR_MODES if head.startswith(magic)), "r:")


def _tar_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members in stream order. tarfile keeps every TarInfo it read in ``members``;
    dropping them keeps the scan of a 200k-member archive in constant memory."""
    while (member := archive.next()) is not None:
        archive.members.clear()
        yield member


def _scan_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, pos: int, path: str, prefix: str,
                     max_bytes: int, streamed: bool) -> RawItem | None:
    if member.isdir():
        return None
    source, problem = member_source(prefix, member.name)
    if problem:
        return RawItem(source, reason=problem[0], error=problem[1])
    if not member.isreg():
        return RawItem(source, reason="not_a_file", error="archive member is a link or device, not a file")
    if member.issparse():
        return RawItem(source, reason="unreadable", error="sparse tar members are not supported")
    if member.size > max_bytes:
        return _too_large(source, member.size, max_bytes)
    _, sha = _hash_stream(archive.extractfile(member), max_bytes)
    ref = Ref("tarstream", path, pos) if streamed else Ref("tar", path, member.offset_data, member.size)
    return RawItem(source, ref, sha)


def _tar_end(archive: tarfile.TarFile) -> str | None:
    """Why a tar did not end cleanly after its last member, or None. Only zero blocks (the
    end-of-archive marker and padding) may follow it; reading them to the end of the
    stream also checks the gzip/bz2/xz trailer (CRC and length)."""
    stream = archive.fileobj
    stream.seek(archive.offset)
    zeros = 0
    for block in read_blocks(stream):
        if block.count(0) != len(block):
            if not zeros and any(block[:tarfile.BLOCKSIZE]):  # where tarfile stopped: not a zero block
                return f"no valid tar header at offset {archive.offset}: the archive is corrupt there"
            at = archive.offset + zeros + len(block) - len(block.lstrip(b"\0"))
            return f"data after the end-of-archive marker, at offset {at} (a second archive appended?)"
        zeros += len(block)
    if zeros < tarfile.BLOCKSIZE:
        return "the archive ends without its end-of-archive marker (truncated?)"
    return None


def member_source(prefix: str, name: str) -> tuple[str, tuple[str, str] | None]:
    """The source path of archive member ``name`` and, when it must not be used, (reason,
    detail). Names are normalised, never stored with ``..`` or a leading ``/``."""
    clean = posixpath.normpath(name)
    if not _is_utf8(name):
        return prefix + _shown(name), ("unsafe_path", "member name is not valid UTF-8")
    if name.startswith("/"):
        return prefix + name, ("unsafe_path", "absolute member name")
    if clean == ".." or clean.startswith("../"):
        return prefix + name, ("unsafe_path", "member name climbs out of the archive with '..'")
    if clean == ".":
        return prefix + name, ("unsafe_path", "empty member name")
    if is_archive(clean):
        return prefix + clean, ("too_deep", "an archive inside an archive is not expanded (genlib reads one "
                                            "archive level); extract it first")
    return prefix + clean, None


# --------------------------------------------------------------------------- reading (workers)


def read_item(item: RawItem, max_bytes: int) -> bytes:
    """The bytes of a scanned item, read where they are; raises :class:`Reject`."""
    if item.data is not None:
        return item.data
    ref = item.ref
    try:
        if ref.kind == "file":
            with open_regular(ref.path) as f:
                data = _read_capped(f, max_bytes)
        elif ref.kind == "zip":
            with _zip_member(ref.path, ref.pos) as f:
                data = _read_capped(f, max_bytes)
        elif ref.kind == "tar":
            if ref.size > max_bytes:
                raise _too_large_error(ref.size, max_bytes)
            with open_regular(ref.path) as f:
                f.seek(ref.pos)
                data = f.read(ref.size)
            if len(data) != ref.size:
                raise EOFError(f"the archive ends inside this member ({len(data)} of {ref.size} bytes)")
        else:
            raise Reject("unreadable", "compressed tar members come with their bytes (stream_members)")
    except NotRegularFile as exc:
        raise Reject("not_a_file", str(exc)) from None
    except READ_ERRORS as exc:
        raise Reject("unreadable", f"cannot read: {exc}") from None
    if len(data) > max_bytes:
        raise _too_large_error(len(data), max_bytes, exact=False)
    return data


def stream_members(path: str, items: list[RawItem], max_bytes: int) -> Iterator[RawItem]:
    """Copies of ``items`` (members of the compressed tar ``path``) with their bytes, from
    one sequential pass; the originals stay byte-free. Items the pass cannot deliver come
    back with a reason."""
    wanted = {item.ref.pos: item for item in items}
    detail = "the archive changed during the build: member not found"
    try:
        with open_regular(path) as raw, tarfile.open(fileobj=raw, mode=_tar_mode(raw)) as archive:
            for pos, member in enumerate(_tar_members(archive)):
                if (item := wanted.pop(pos, None)) is not None:
                    yield replace(item, data=_read_capped(archive.extractfile(member), max_bytes))
                if not wanted:
                    return
    except (NotRegularFile, *READ_ERRORS) as exc:
        detail = f"cannot read the archive again: {exc}"
    for item in wanted.values():
        yield replace(item, reason="unreadable", error=detail)


def _zip_member(path: str, pos: int) -> BinaryIO:
    """Entry ``pos`` of a zip, opened for reading. Each process keeps its last two zips
    open: parsing CelebA's 200k-entry directory once per chunk would dominate the build."""
    st = os.stat(path)
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _ZIPS.get(path)
    if cached is None or cached[0] != stamp:
        stale = path if cached is not None else (next(iter(_ZIPS)) if len(_ZIPS) >= 2 else None)
        if stale is not None:  # changed on disk, or the oldest of two
            _, raw, archive = _ZIPS.pop(stale)
            archive.close()
            raw.close()
        raw = open_regular(path)
        _ZIPS[path] = cached = (stamp, raw, zipfile.ZipFile(raw))
    archive = cached[2]
    return archive.open(archive.infolist()[pos])


# --------------------------------------------------------------------------- helpers


def _hash_stream(f: BinaryIO, max_bytes: int) -> tuple[int, str]:
    """(bytes read, sha256) reading at most ``max_bytes + 1`` bytes: a count over
    ``max_bytes`` means the input is too large (and its hash is meaningless)."""
    h, total = hashlib.sha256(), 0
    for block in read_blocks(f, max_bytes + 1):
        h.update(block)
        total += len(block)
    return total, h.hexdigest()


def _read_capped(f: BinaryIO, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes (a length over ``max_bytes``: the input is too large)."""
    return b"".join(read_blocks(f, max_bytes + 1))


def _too_large(source: str, size: int, max_bytes: int, exact: bool = True) -> RawItem:
    exc = _too_large_error(size, max_bytes, exact)
    return RawItem(source, reason=exc.reason, error=exc.detail)


def _too_large_error(size: int, max_bytes: int, exact: bool = True) -> Reject:
    """``exact``: ``size`` is the real size (from stat or a header), not where a read stopped."""
    amount = f"{size} bytes" if exact else f"more than {max_bytes} bytes"
    return Reject("too_large", f"{amount}: over the recipe's max_file_bytes ({max_bytes}); not read further")


def _is_utf8(name: str) -> bool:
    """False for names with bytes that are not UTF-8 (os and tarfile keep them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    r"""A printable, UTF-8-safe form of a name that may hold undecodable bytes (``caf\xe9.png``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
