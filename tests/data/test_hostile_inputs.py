"""Corpus builds on inputs nobody inspected: each case is a real file tree in tmp_path that
once hung the build, lost files silently, crashed it or reached code it should not. Every
case must end (no hang), exit 0 from the CLI without a traceback, keep the good images and
give each hostile input a reject row naming it and the reason."""

from __future__ import annotations

import faulthandler
import gzip
import io
import os
import socket
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genlib.cli import main
from genlib.data import schema
from genlib.data import sources

GOOD = ("good/a.png", "good/b.png", "good/c.png")
FLAGS = ["--quiet", "--workers", "1", "--set", "size=16", "--set", "min_size=8", "--set", "val_fraction=0.0"]


def image_bytes(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def watchdog():
    """A hang must fail CI, not stall it: dump every stack and exit after 60 s."""
    faulthandler.dump_traceback_later(60, exit=True, file=sys.__stderr__)  # pytest captures sys.stderr
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    for i, name in enumerate(GOOD):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes(i))
    return root


def build_cli(src: Path, out: Path, capsys, *extra: str) -> tuple[dict[str, dict], list[str]]:
    """Build through the CLI; -> (rejects by source, index sources). Asserts exit 0, no traceback,
    the good images indexed and every source listed once."""
    code = main(["data", "build", str(src), "--out", str(out), *FLAGS, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err + captured.out
    rejects = pq.read_table(out / schema.REJECTS).to_pylist()
    index = pq.read_table(out / schema.INDEX).column("source").to_pylist()
    assert set(GOOD) <= set(index)
    sources_ = index + [r["source"] for r in rejects]
    assert len(sources_) == len(set(sources_))
    return {r["source"]: r for r in rejects}, index


def assert_reject(rejects: dict, source: str, reason: str, *details: str) -> None:
    assert source in rejects, f"{source!r} has no reject row; rows: {sorted(rejects)}"
    assert rejects[source]["reason"] == reason, rejects[source]
    assert reason in schema.REJECT_REASONS
    for text in details:
        assert text in rejects[source]["detail"], rejects[source]


# ---------------------------------------------------------------- hangs


def test_symlink_loops_are_rows_not_hangs(src, tmp_path, capsys, watchdog):
    (src / "good" / "loop").symlink_to("..")            # a folder link back to the input root
    (src / "self").symlink_to("self")                    # a link to itself (ELOOP)
    (src / "again").symlink_to("good")                   # a second path to a folder read anyway
    (src / "z-alias.png").symlink_to("good/a.png")       # a file link inside the input: read
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "good/loop", "repeated_folder", "link to the folder '.'")
    assert_reject(rejects, "again", "repeated_folder", "'good'")
    assert_reject(rejects, "self", "unreadable", "symbolic link cannot be followed")
    assert_reject(rejects, "z-alias.png", "duplicate", "same bytes as good/a.png")
    assert len(index) == 3


def test_links_out_of_the_input_are_refused(src, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(image_bytes(9))
    (src / "stolen.png").symlink_to(outside / "secret.png")
    (src / "elsewhere").symlink_to(outside)
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "stolen.png", "unsafe_path", "leads outside the input folder", str(outside))
    assert_reject(rejects, "elsewhere", "unsafe_path", "leads outside the input folder")
    assert not any("secret" in s for s in index)


def test_fifo_and_socket_are_never_opened(src, tmp_path, capsys, watchdog):
    os.mkfifo(src / "pipe.png")  # opening it for reading would wait for a writer forever
    (src / "to-pipe.png").symlink_to("pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "s.png"))
    except OSError:  # path over the 108-byte socket limit on some tmp dirs
        sock.close()
        sock = None
    rejects, _ = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "pipe.png", "not_a_file", "a FIFO")
    assert_reject(rejects, "to-pipe.png", "not_a_file", "a FIFO")
    if sock is not None:
        assert_reject(rejects, "s.png", "not_a_file", "a socket")
        sock.close()


# ---------------------------------------------------------------- silent loss


def test_tar_with_a_corrupt_header_mid_archive(src, tmp_path, capsys):
    write_tar(src / "pack.tar", {f"m{i}.png": image_bytes(10 + i) for i in range(4)})
    data = bytearray((src / "pack.tar").read_bytes())
    with tarfile.open(src / "pack.tar") as tar:
        second = tar.getmembers()[1].offset
    data[second:second + 100] = b"x" * 100  # the name field; the checksum no longer matches
    (src / "pack.tar").write_bytes(bytes(data))
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "pack.tar", "unreadable", "after 1 members", f"offset {second}",
                  f"no valid tar header at offset {second}")
    assert "pack.tar/m0.png" in index  # the member before the damage is kept


def test_tar_with_a_second_archive_appended(src, tmp_path, capsys):
    """``cat a.tar b.tar``: tarfile stops at a's end marker, and b's members would vanish."""
    write_tar(tmp_path / "a.tar", {"a.png": image_bytes(15)})
    write_tar(tmp_path / "b.tar", {"b.png": image_bytes(16)})
    first = (tmp_path / "a.tar").read_bytes()
    (src / "both.tar").write_bytes(first + (tmp_path / "b.tar").read_bytes())
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "both.tar", "unreadable", "after 1 members",
                  f"data after the end-of-archive marker, at offset {len(first)}")
    assert "both.tar/a.png" in index


def test_truncated_tar_gz_is_not_complete(src, tmp_path, capsys):
    write_tar(src / "pack.tar.gz", {f"m{i}.png": image_bytes(20 + i) for i in range(3)}, "w:gz")
    data = (src / "pack.tar.gz").read_bytes()
    (src / "pack.tar.gz").write_bytes(data[:-6])  # cut into the CRC/length trailer only
    with tarfile.open(src / "pack.tar.gz") as tar:  # tarfile alone reads every member happily
        assert len(tar.getmembers()) == 3
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "pack.tar.gz", "unreadable", "after 3 members", "ended before the end-of-stream")
    assert {"pack.tar.gz/m0.png", "pack.tar.gz/m2.png"} <= set(index)


def test_corrupt_tar_xz(src, tmp_path, capsys):
    write_tar(src / "pack.tar.xz", {f"m{i}.png": image_bytes(30 + i, 64) for i in range(3)}, "w:xz")
    data = bytearray((src / "pack.tar.xz").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (src / "pack.tar.xz").write_bytes(bytes(data))
    rejects, _ = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "pack.tar.xz", "unreadable", "tar archive unreadable after")


def test_encrypted_zip_member(src, tmp_path, capsys):
    with zipfile.ZipFile(src / "pack.zip", "w") as z:
        z.writestr("open.png", image_bytes(40))
        z.writestr("locked.png", image_bytes(41))
    data = bytearray((src / "pack.zip").read_bytes())
    with zipfile.ZipFile(src / "pack.zip") as z:
        local = z.getinfo("locked.png").header_offset
    central = data.rindex(b"locked.png") - 46  # the name's last copy sits 46 bytes into its directory entry
    data[local + 6] |= 1  # general purpose flag bit 0, "encrypted", in the local header
    data[central + 8] |= 1  # ... and in the central directory
    (src / "pack.zip").write_bytes(bytes(data))
    with zipfile.ZipFile(src / "pack.zip") as z, pytest.raises(RuntimeError, match="encrypted"):
        z.read("locked.png")
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "pack.zip/locked.png", "unreadable", "encrypted")
    assert "pack.zip/open.png" in index


def test_deep_nesting_has_a_limit(src, tmp_path, capsys):
    deep = src.joinpath(*["d"] * (sources.MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    (deep / "x.png").write_bytes(image_bytes(50))
    (src.joinpath(*["d"] * 3) / "ok.png").write_bytes(image_bytes(51))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("x.png", image_bytes(52))
    with zipfile.ZipFile(src / "outer.zip", "w") as z:
        z.writestr("inner.zip", inner.getvalue())
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    too_deep = "/".join(["d"] * (sources.MAX_DEPTH + 1))
    assert_reject(rejects, too_deep, "too_deep", f"deeper than {sources.MAX_DEPTH} levels")
    assert_reject(rejects, "outer.zip/inner.zip", "too_deep", "archive inside an archive")
    assert "d/d/d/ok.png" in index


def test_path_longer_than_the_os_limit(src, tmp_path, capsys):
    fd = os.open(src, os.O_RDONLY)
    try:  # built through folder fds: the full path exceeds PATH_MAX (4096)
        for _ in range(24):
            os.mkdir("n" * 200, dir_fd=fd)
            fd, parent = os.open("n" * 200, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        out = os.open("x.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, image_bytes(53))
        os.close(out)
    finally:
        os.close(fd)
    rejects, _ = build_cli(src, tmp_path / "out", capsys)
    (row,) = [r for r in rejects.values() if r["source"].startswith("n" * 200)]
    assert row["reason"] == "unreadable" and "File name too long" in row["detail"]


def test_non_utf8_names(src, tmp_path, capsys):
    (src / os.fsdecode(b"caf\xe9.png")).write_bytes(image_bytes(60))
    (src / os.fsdecode(b"dir\xff")).mkdir()
    (src / os.fsdecode(b"dir\xff") / "x.png").write_bytes(image_bytes(61))
    write_tar(src / "pack.tar", {os.fsdecode(b"m\xe9.png"): image_bytes(62), "ok.png": image_bytes(63)})
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "caf\\xe9.png", "unsafe_path", "not valid UTF-8")
    assert_reject(rejects, "dir\\xff", "unsafe_path", "not valid UTF-8")
    assert_reject(rejects, "pack.tar/m\\xe9.png", "unsafe_path", "not valid UTF-8")
    assert "pack.tar/ok.png" in index


def test_unreadable_folder_simulated(src, tmp_path, capsys, monkeypatch):
    (src / "locked").mkdir()
    (src / "locked" / "x.png").write_bytes(image_bytes(70))
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    rejects, _ = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "locked", "unreadable", "cannot list folder: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_for_real(src, tmp_path, capsys):
    (src / "locked").mkdir()
    (src / "locked" / "x.png").write_bytes(image_bytes(71))
    (src / "locked").chmod(0)
    try:
        rejects, _ = build_cli(src, tmp_path / "out", capsys)
    finally:
        (src / "locked").chmod(0o755)
    assert_reject(rejects, "locked", "unreadable", "Permission denied")


# ---------------------------------------------------------------- code from data


def test_member_names_that_escape_are_refused_others_normalised(src, tmp_path, capsys):
    write_tar(src / "pack.tar", {"../evil.png": image_bytes(80), "/abs.png": image_bytes(81),
                                 "./sub/./x.png": image_bytes(82), "sub/../y.png": image_bytes(83)})
    rejects, index = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "pack.tar/../evil.png", "unsafe_path", "'..'")
    assert_reject(rejects, "pack.tar//abs.png", "unsafe_path", "absolute")
    assert {"pack.tar/sub/x.png", "pack.tar/y.png"} <= set(index)


def test_eps_renamed_png_never_reaches_ghostscript(src, tmp_path, capsys):
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
           b"0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n")
    (src / "drawing.png").write_bytes(eps)
    with Image.open(src / "drawing.png") as im:  # Pillow, unrestricted, takes it for EPS
        assert im.format == "EPS"
    rejects, _ = build_cli(src, tmp_path / "out", capsys)
    assert_reject(rejects, "drawing.png", "not_an_image", "not a JPEG, PNG, GIF, WEBP, BMP or TIFF image")


def test_zip_bomb_and_big_file_stop_at_the_cap(src, tmp_path, capsys):
    cap = 1 << 20
    with zipfile.ZipFile(src / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.png", bytes(8 * cap))  # 8 MiB of zeros in ~8 KB
    assert (src / "bomb.zip").stat().st_size < 64 * 1024
    (src / "big.png").write_bytes(bytes(cap + 1))
    with gzip.open(src / "small.png.gz", "wb") as f:  # not an archive genlib opens: read as a file
        f.write(b"x")
    rejects, _ = build_cli(src, tmp_path / "out", capsys, "--set", f"max_file_bytes={cap}")
    assert_reject(rejects, "bomb.zip/bomb.png", "too_large", f"{8 * cap} bytes", f"max_file_bytes ({cap})")
    assert_reject(rejects, "big.png", "too_large", f"{cap + 1} bytes")
    assert_reject(rejects, "small.png.gz", "not_an_image")


def test_member_over_the_cap_is_read_no_further(tmp_path):
    """A zip directory that under-states a member's size: reading stops one byte past the cap."""
    cap = 1000
    with zipfile.ZipFile(tmp_path / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.png", bytes(50 * cap))
    items = sources.scan(tmp_path / "a.zip", max_bytes=cap)
    assert [(i.source, i.reason) for i in items] == [("big.png", "too_large")]

    class Counting(io.BytesIO):
        def read(self, n=-1):
            self.total = getattr(self, "total", 0) + (n if n >= 0 else 0)
            return super().read(n)

    stream = Counting(bytes(50 * cap))
    assert len(sources._read_capped(stream, cap)) == cap + 1 and stream.total == cap + 1
