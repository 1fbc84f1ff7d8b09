"""A folder on a local disk or behind a URI (``s3://``, ``gs://``, ``file://``, ...).

Training runs live under a ``storage_path`` that Ray Train also uses for
checkpoints; on a multi-node cluster it must be shared (NFS or a bucket), and
rank 0 may run on another machine than the driver. Everything genlib writes
into a run folder goes through :class:`Storage`, backed by ``pyarrow.fs``
(which ships the S3/GCS/HDFS clients Ray itself uses).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import posixpath
import stat
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow.fs as pafs


CHUNK = 1 << 20  # bytes per read when hashing or copying streams


def read_blocks(stream: BinaryIO, limit: int | None = None) -> Iterator[bytes]:
    """What is left in a binary stream, in blocks of at most 1 MiB; with ``limit``, at most
    that many bytes in all (one huge read would allocate the whole cap)."""
    total = 0
    while limit is None or total < limit:
        block = stream.read(CHUNK if limit is None else min(CHUNK, limit - total))
        if not block:
            return
        total += len(block)
        yield block


def sha256_stream(stream: BinaryIO) -> str:
    """Hex sha256 of everything left in a binary stream, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for block in read_blocks(stream):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in chunks (never the whole file in memory)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def fsync_path(path: str | Path) -> None:
    """fsync a local file, or a folder (which makes a rename or a new entry in it durable).
    Filesystems that cannot fsync a folder (EINVAL on some network mounts) are let be."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace a local file so readers see the old bytes or the new, never a mix, even after
    a crash: a temp file with a name no other writer shares, fsynced, renamed over ``path``,
    then the folder fsynced so the rename itself is durable."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # 0o666: umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_path(folder or ".")


class NotRegularFile(Exception):
    """A path that is not a regular file (a FIFO, socket, device or folder); the message says which."""


def open_regular(path: str | Path) -> BinaryIO:
    """Open a local ``path`` for reading only if it is a regular file (NotRegularFile otherwise).
    O_NONBLOCK: opening a FIFO (even one swapped in after a check) returns at once instead of
    waiting for a writer; the descriptor is closed on every error."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(file_kind(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, e.g. "a FIFO, not a regular file"."""
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"))
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{what}, not a regular file"


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URIs alike."""
    if is_uri(base):
        return posixpath.join(base, *parts)
    return str(Path(base, *parts))


def absolute(path: str) -> str:
    """Local paths resolved to absolute (Ray needs that); URIs unchanged."""
    return path if is_uri(path) else str(Path(path).resolve())


class Storage:
    """Read/write small files relative to one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root) if is_uri(str(root)) else str(Path(root).resolve())
        self.fs, self.base = pafs.FileSystem.from_uri(self.root if is_uri(self.root) else "file://" + self.root)

    def _path(self, rel: str) -> str:
        return posixpath.join(self.base, rel) if rel else self.base

    def uri(self, rel: str = "") -> str:
        return join(self.root, rel) if rel else self.root

    def local_path(self) -> Path | None:
        """The root as a local Path when it is on this machine's filesystem."""
        return Path(self.base) if isinstance(self.fs, pafs.LocalFileSystem) else None

    def info(self, rel: str = "") -> pafs.FileInfo:
        """One stat of ``rel`` (type, size, mtime)."""
        return self.fs.get_file_info(self._path(rel))

    def exists(self, rel: str = "") -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.info(rel).type == pafs.FileType.File

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically where the filesystem allows it (local: ``write_atomic``;
        object stores: a PUT is atomic already)."""
        path = self._path(rel)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            write_atomic(path, data)
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def open(self, rel: str):
        """A seekable binary file object for reading (use as a context manager)."""
        return self.fs.open_input_file(self._path(rel))

    def size(self, rel: str) -> int:
        return self.info(rel).size

    def delete(self, rel: str) -> None:
        if self.is_file(rel):
            self.fs.delete_file(self._path(rel))

    def glob(self, rel_dir: str, pattern: str) -> list[str]:
        """Sorted relative paths of files in ``rel_dir`` matching ``pattern``."""
        return self._entries(rel_dir, pattern, pafs.FileType.File)

    def list_dirs(self, rel_dir: str, pattern: str = "*") -> list[str]:
        """Sorted relative paths of the folders in ``rel_dir`` matching ``pattern``."""
        return self._entries(rel_dir, pattern, pafs.FileType.Directory)

    def _entries(self, rel_dir: str, pattern: str, kind: pafs.FileType) -> list[str]:
        selector = pafs.FileSelector(self._path(rel_dir), allow_not_found=True)
        names = [posixpath.basename(i.path) for i in self.fs.get_file_info(selector) if i.type == kind]
        return sorted(posixpath.join(rel_dir, n) for n in names if fnmatch.fnmatch(n, pattern))
