"""Local writes through genlib.storage: unique temp names, fsync, nothing lost on failure."""

from __future__ import annotations

import os
import threading

import pytest

from genlib import storage
from genlib.storage import Storage, write_atomic


def test_concurrent_writers_never_collide(tmp_path):
    """Two writers of one file each get their own temp file: the result is one whole payload
    (a shared ``path + ".tmp"`` made one writer's rename fail or publish a mix)."""
    store = Storage(tmp_path)
    payloads = [bytes([i]) * 200_000 for i in range(2)]
    errors = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(40):
                store.write_bytes("a/b.bin", data)
        except Exception as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / "a" / "b.bin").read_bytes() in payloads
    assert os.listdir(tmp_path / "a") == ["b.bin"]  # no temp file left behind


def test_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    write_atomic(tmp_path / "x.bin", b"data")
    assert (tmp_path / "x.bin").read_bytes() == b"data"
    assert synced[-1] == str(tmp_path)  # the folder, after the rename
    assert synced[0].startswith(str(tmp_path / ".x.bin.")) and synced[0].endswith(".tmp")


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    write_atomic(tmp_path / "x.bin", b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "x.bin", b"new")
    assert (tmp_path / "x.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "x.bin", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o644
