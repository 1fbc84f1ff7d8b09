"""Corpus builds: round trip, determinism, bad input, archives, reruns."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from genlib.cli import main
from genlib.data import build as build_mod
from genlib.data import schema
from genlib.data.build import CorpusExistsError, EmptyCorpusError
from genlib.data.corpus import open_corpus
from genlib.data.process import process_item
from genlib.data.recipe import CorpusRecipe, PaletteConfig, ShardConfig
from genlib.data.sources import scan
from tests.conftest import build, faces_recipe


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def read_shards(corpus: Path) -> dict[str, dict]:
    """key -> sample, read straight from the tar shards with webdataset."""
    manifest = json.loads((corpus / schema.MANIFEST).read_text())
    urls = [str(corpus / s["file"]) for s in manifest["shards"]]
    samples = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        assert sample["__key__"] not in samples
        samples[sample["__key__"]] = sample
    return samples


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_round_trip_every_sample_matches_index(raw_faces, faces_corpus):
    index = pq.read_table(faces_corpus / schema.INDEX).to_pylist()
    samples = read_shards(faces_corpus)
    assert len(samples) == len(index) == 40
    for row in index:
        sample = samples[row["key"]]
        meta = json.loads(sample["json"])
        source_bytes = (raw_faces / row["source"]).read_bytes()
        assert hashlib.sha256(source_bytes).hexdigest() == row["sha256"] == meta["sha256"]
        assert row["key"] == row["sha256"][:16] == meta["key"]
        assert (row["width"], row["height"]) == (64, 64) == (meta["width"], meta["height"])
        assert Path(sample["__url__"]).name == row["shard"]
        with Image.open(io.BytesIO(sample["png"])) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
    # Every input file lands in exactly one of index / rejects.
    rejects = pq.read_table(faces_corpus / schema.REJECTS).column("source").to_pylist()
    assert sorted([r["source"] for r in index] + rejects) == all_files(raw_faces)


def test_manifest_counts_and_shard_hashes(faces_corpus):
    m = json.loads((faces_corpus / schema.MANIFEST).read_text())
    assert m["counts"] == {"train": 36, "val": 4, "test": 0}
    assert m["accepted"] == 40 and m["rejected"] == 0
    # min_shards=4 spreads 36 train samples over 4 shards of 9.
    train = [s for s in m["shards"] if s["split"] == "train"]
    assert [s["count"] for s in train] == [9, 9, 9, 9]
    for s in m["shards"]:
        data = (faces_corpus / s["file"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
        assert s["file"].startswith(f"t-{s['split']}-") and s["file"].endswith(".tar")
    assert (faces_corpus / schema.PREVIEW_PNG).is_file()


def test_two_builds_are_byte_identical(raw_faces, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build(raw_faces, a)
    build_mod.build_corpus(raw_faces, b, faces_recipe(), mapper=build_mod.LocalMapper(2), progress=False)
    assert all_files(a) == all_files(b)
    for name in all_files(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_split_is_seeded_exact_and_disjoint(raw_faces, tmp_path):
    build(raw_faces, tmp_path / "s0", faces_recipe(val_fraction=0.25, test_fraction=0.1))
    build(raw_faces, tmp_path / "s1", faces_recipe(val_fraction=0.25, test_fraction=0.1, seed=1))
    rows0 = pq.read_table(tmp_path / "s0" / schema.INDEX).to_pylist()
    rows1 = pq.read_table(tmp_path / "s1" / schema.INDEX).to_pylist()
    split0 = {r["key"]: r["split"] for r in rows0}
    assert sorted(split0.values()).count("test") == 4
    assert sorted(split0.values()).count("val") == 10
    assert split0 != {r["key"]: r["split"] for r in rows1}  # another seed, another split


# ---------------------------------------------------------------- bad input


@pytest.fixture
def messy_dir(raw_faces, tmp_path) -> Path:
    """Eight good faces plus one of every kind of bad file."""
    src = tmp_path / "messy"
    (src / "good").mkdir(parents=True)
    for name in all_files(raw_faces)[:8]:
        shutil.copy(raw_faces / name, src / "good" / name.replace("/", "_"))
    good = sorted((src / "good").glob("*.png"))
    jpeg = png_bytes(Image.open(good[0]).convert("RGB"), "JPEG", quality=90)
    (src / "bad").mkdir()
    (src / "bad" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (src / "bad" / "empty.jpg").write_bytes(b"")
    (src / "bad" / "notes.png").write_text("this is a text file, not a picture\n")
    (src / "bad" / "tiny.png").write_bytes(png_bytes(Image.new("RGB", (8, 8), "red")))
    (src / "later").mkdir()
    (src / "later" / "copy.png").write_bytes(good[0].read_bytes())
    return src


def test_bad_files_become_reject_rows(messy_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["data", "build", str(messy_dir), "--out", str(out), "--quiet", "--workers", "1",
                 "--set", "size=32", "--set", "min_size=16", "--set", "recipe='faces'"])
    assert code == 0
    rejects = {r["source"]: r for r in pq.read_table(out / schema.REJECTS).to_pylist()}
    assert {k: v["reason"] for k, v in rejects.items()} == {
        "bad/truncated.jpg": "truncated",
        "bad/empty.jpg": "empty_file",
        "bad/notes.png": "not_an_image",
        "bad/tiny.png": "too_small",
        "later/copy.png": "duplicate",
    }
    assert rejects["bad/tiny.png"]["detail"] == "8x8 is below min_size 16"
    assert rejects["bad/empty.jpg"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert open_corpus(out).manifest["accepted"] == 8
    printed = capsys.readouterr().out
    assert "accepted 8" in printed and "rejected 5" in printed and "truncated" in printed


def test_duplicate_keeps_first_sorted_source(messy_dir, tmp_path):
    result = build(messy_dir, tmp_path / "out")
    rejects = pq.read_table(result.out_dir / schema.REJECTS).to_pylist()
    dup = [r for r in rejects if r["reason"] == "duplicate"]
    first = sorted((messy_dir / "good").glob("*.png"))[0].name
    assert len(dup) == 1 and dup[0]["source"] == "later/copy.png"
    assert dup[0]["detail"] == f"same bytes as good/{first}"
    index = pq.read_table(result.out_dir / schema.INDEX).column("source").to_pylist()
    assert f"good/{first}" in index


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code = main(["data", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert f"input not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_corpus_is_an_error_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    with pytest.raises(EmptyCorpusError, match=r"no usable images .*: 1 files, all rejected \(not_an_image 1\)"):
        build(src, tmp_path / "out")
    assert main(["data", "build", str(src), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "no usable images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()
    assert not list(tmp_path.glob(".*tmp*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmptyCorpusError, match="contains no files"):
        build(empty, tmp_path / "out")


# ---------------------------------------------------------------- archives


def test_zip_and_tar_inputs_match_folder(raw_faces, faces_corpus, tmp_path):
    files = all_files(raw_faces)
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as z:
        for name in files:
            z.write(raw_faces / name, name)
    with tarfile.open(tmp_path / "faces.tar.gz", "w:gz") as t:
        for name in files:
            t.add(raw_faces / name, name)
    folder = pq.read_table(faces_corpus / schema.INDEX).to_pylist()
    for archive in ("faces.zip", "faces.tar.gz"):
        out = tmp_path / archive.replace(".", "_")
        build(tmp_path / archive, out)
        rows = pq.read_table(out / schema.INDEX).to_pylist()
        assert rows == folder, archive  # same keys, splits, shards and member paths as sources
        for name in all_files(faces_corpus):
            if name.endswith(".tar"):
                assert (out / name).read_bytes() == (faces_corpus / name).read_bytes()


def test_unreadable_archive_member_and_truncated_archive(raw_faces, tmp_path):
    files, others = all_files(raw_faces)[:6], all_files(raw_faces)[6:12]
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "pack.zip", "w", compression=zipfile.ZIP_STORED) as z:
        for name in files:
            z.write(raw_faces / name, name)
    # Corrupt the stored bytes of the first member: its CRC check fails on read.
    data = bytearray((src / "pack.zip").read_bytes())
    first = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    data[start + 100:start + 110] = b"\x00" * 10
    (src / "pack.zip").write_bytes(bytes(data))
    with tarfile.open(src / "cut.tar", "w") as t:
        for name in others:
            t.add(raw_faces / name, f"t/{name}")
    tar_bytes = (src / "cut.tar").read_bytes()
    (src / "cut.tar").write_bytes(tar_bytes[: len(tar_bytes) // 2])
    result = build(src, tmp_path / "out", faces_recipe(val_fraction=0.0))
    rejects = {r["source"]: r for r in pq.read_table(result.out_dir / schema.REJECTS).to_pylist()}
    assert rejects[f"pack.zip/{files[0]}"]["reason"] == "unreadable"
    assert "Bad CRC-32" in rejects[f"pack.zip/{files[0]}"]["detail"]
    assert rejects["cut.tar"]["reason"] == "unreadable"
    assert "tar archive unreadable after" in rejects["cut.tar"]["detail"]
    index = pq.read_table(result.out_dir / schema.INDEX).column("source").to_pylist()
    assert {f"pack.zip/{n}" for n in files[1:]} <= set(index)
    assert any(s.startswith("cut.tar/t/") for s in index)  # members before the cut survive


# ---------------------------------------------------------------- recipes


def sprite(size=(40, 30), box=(10, 5, 30, 15), color=(255, 0, 0, 255)) -> Image.Image:
    im = Image.new("RGBA", size, (0, 0, 0, 0))  # transparent black background
    im.paste(Image.new("RGBA", (box[2] - box[0], box[3] - box[1]), color), box[:2])
    return im


def test_sprites_alpha_composite_crop_and_pad(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(sprite()))
    # GIF with transparency: only the first frame counts.
    frame0 = Image.new("P", (32, 32), 0)
    frame0.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    frame0.paste(1, (8, 8, 24, 24))
    frame1 = Image.new("P", (32, 32), 1)
    frame1.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    frame0.save(src / "b.gif", save_all=True, append_images=[frame1], transparency=0)
    (src / "c.webp").write_bytes(png_bytes(sprite(color=(0, 255, 0, 255)), "WEBP", lossless=True))
    recipe = CorpusRecipe(name="s", recipe="sprites", size=20, min_size=16, margin=0.0, resample="nearest",
                          val_fraction=0.0)
    result = build(src, tmp_path / "out", recipe)
    by_source = {r["source"]: r["key"] for r in pq.read_table(result.out_dir / schema.INDEX).to_pylist()}
    samples = read_shards(result.out_dir)
    red = np.asarray(Image.open(io.BytesIO(samples[by_source["a.png"]]["png"])))
    # 20x10 red content padded to a square on white: rows 5..14 red, the rest white.
    assert (red[5:15, :] == [255, 0, 0]).all()
    assert (red[:5] == 255).all() and (red[15:] == 255).all()
    blue = np.asarray(Image.open(io.BytesIO(samples[by_source["b.gif"]]["png"])))
    assert (blue == [0, 0, 255]).all()  # cropped to the 16x16 blue square of frame 0
    green = np.asarray(Image.open(io.BytesIO(samples[by_source["c.webp"]]["png"])))
    assert (green[5:15] == [0, 255, 0]).all()


def test_sprite_without_visible_pixels_is_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "blank.png").write_bytes(png_bytes(Image.new("RGBA", (32, 32), (0, 0, 0, 0))))
    (src / "ok.png").write_bytes(png_bytes(sprite()))
    result = build(src, tmp_path / "out", CorpusRecipe(name="s", recipe="sprites", size=16, min_size=8,
                                                       val_fraction=0.0))
    assert result.manifest["rejects_by_reason"] == {"no_content": 1}


def test_faces_centre_crop_and_face_box(tmp_path):
    im = Image.new("RGB", (60, 40), (0, 0, 255))       # blue borders left/right
    im.paste(Image.new("RGB", (40, 40), (255, 0, 0)), (10, 0))
    im.paste(Image.new("RGB", (10, 10), (0, 255, 0)), (40, 20))  # a green "face"
    src = tmp_path / "src"
    src.mkdir()
    im.save(src / "img1.png")
    im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(src / "img2.png")
    plain = build(src, tmp_path / "centre", faces_recipe(size=20, val_fraction=0.0, resample="nearest"))
    first = read_shards(plain.out_dir)[pq.read_table(plain.out_dir / schema.INDEX)["key"][0].as_py()]
    assert not (np.asarray(Image.open(io.BytesIO(first["png"]))) == [0, 0, 255]).all(-1).any()
    boxes = tmp_path / "list_bbox_celeba.txt"
    boxes.write_text("1\nimage_id x_1 y_1 width height\nimg1.png 40 20 10 10\n")
    boxed = build(src, tmp_path / "box", faces_recipe(size=10, val_fraction=0.0, resample="nearest",
                                                       box_file=str(boxes), box_scale=1.0))
    samples = read_shards(boxed.out_dir)
    assert len(samples) == 1
    assert (np.asarray(Image.open(io.BytesIO(next(iter(samples.values()))["png"]))) == [0, 255, 0]).all()
    assert boxed.manifest["rejects_by_reason"] == {"missing_box": 1}


def test_parent_dir_labels(raw_faces, tmp_path):
    result = build(raw_faces, tmp_path / "out", faces_recipe(label="parent_dir"))
    for row in pq.read_table(result.out_dir / schema.INDEX).to_pylist():
        assert row["label"] == row["source"].split("/")[0]


def test_palette_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):  # flat-colour blocky sprites using exactly 6 colours
        arr = colours[rng.integers(0, 6, size=(4, 4))].repeat(8, 0).repeat(8, 1)
        Image.fromarray(arr).save(src / f"{i}.png")
    recipe = CorpusRecipe(name="p", recipe="faces", size=16, min_size=16, resample="box", val_fraction=0.0,
                          palette=PaletteConfig(colors=8, sample_pixels=5000))
    result = build(src, tmp_path / "out", recipe)
    palette = np.asarray(result.manifest["palette"], dtype=np.uint8)
    assert palette.shape == (8, 3)
    assert {tuple(c) for c in colours} <= {tuple(c) for c in palette}
    for sample in read_shards(result.out_dir).values():
        rgb = np.asarray(Image.open(io.BytesIO(sample["png"])))
        idx = np.asarray(Image.open(io.BytesIO(sample["idx.png"])))
        assert idx.dtype == np.uint8 and idx.shape == (16, 16) and idx.max() < 8
        assert (palette[idx] == rgb).all()  # 6 true colours < 8 palette slots: exact
    assert (result.out_dir / schema.PALETTE_PNG).is_file()


def test_palette_quantize_dequantize_is_stable():
    from genlib.data import palette as pal

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8) for _ in range(5)]
    p = pal.learn_palette(images, k=16, sample=2000, iterations=10, seed=0)
    assert p.shape == (16, 3) and len({tuple(c) for c in p}) == 16
    idx = pal.quantize(images[0], p)
    assert (pal.quantize(pal.dequantize(idx, p), p) == idx).all()
    assert (p == pal.learn_palette(images, k=16, sample=2000, iterations=10, seed=0)).all()


# ---------------------------------------------------------------- reruns and atomicity


def test_rerun_verifies_refuses_or_rebuilds(raw_faces, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw_faces, src)
    out = tmp_path / "out"
    first = build(src, out)
    again = build(src, out)
    assert again.up_to_date and again.manifest == first.manifest
    with pytest.raises(CorpusExistsError, match="recipe differs.*--force"):
        build(src, out, faces_recipe(size=16))
    next(src.rglob("*.png")).unlink()
    with pytest.raises(CorpusExistsError, match=r"input files differ \(40 files then, 39 now\)"):
        build(src, out)
    rebuilt = build(src, out, force=True)
    assert rebuilt.manifest["accepted"] == 39 and not rebuilt.up_to_date
    shard = out / rebuilt.manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(CorpusExistsError, match="shards or index are missing or modified"):
        build(src, out)


def test_refuses_to_overwrite_a_foreign_folder(raw_faces, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "precious.jpg").write_bytes(b"x")
    with pytest.raises(CorpusExistsError, match="not a genlib corpus"):
        build(raw_faces, out, force=True)
    assert (out / "precious.jpg").read_bytes() == b"x"


def test_interrupted_build_leaves_no_corpus_and_keeps_the_old_one(raw_faces, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill during the index write")

    monkeypatch.setattr(build_mod, "_write_index", boom)
    with pytest.raises(KeyboardInterrupt):
        build(raw_faces, out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    monkeypatch.undo()
    good = build(raw_faces, out)
    monkeypatch.setattr(build_mod, "_write_index", boom)
    with pytest.raises(KeyboardInterrupt):
        build(raw_faces, out, faces_recipe(size=16), force=True)
    assert open_corpus(out).manifest == good.manifest  # the previous corpus is untouched
    assert not list(tmp_path.glob(".out*"))


def test_stale_temp_folders_are_cleaned_and_an_orphaned_corpus_restored(raw_faces, tmp_path):
    """What killed builds leave beside the output: their temp folders go (when their pid is
    dead on this host), and a corpus a swap moved aside and never replaced comes back."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    good = build(raw_faces, out)
    old = tmp_path / f".out.old-{dead.pid}-{build_mod.HOST}"
    out.rename(old)  # the previous build died between its two renames
    stale = [tmp_path / f".out.tmp-{dead.pid}-{build_mod.HOST}", tmp_path / f".out.tmp-{dead.pid}"]
    alive = [tmp_path / f".out.tmp-{os.getppid()}-{build_mod.HOST}", tmp_path / f".out.tmp-{dead.pid}-otherhost"]
    for path in stale + alive:
        (path / "half.tar").parent.mkdir()
        (path / "half.tar").write_bytes(b"partial")
    again = build(raw_faces, out)
    assert again.up_to_date and again.manifest == good.manifest  # restored, verified, not rebuilt
    assert not old.exists() and not any(p.exists() for p in stale)
    assert all((p / "half.tar").is_file() for p in alive)  # a live build, or another machine's


def test_chunks_carry_references_not_bytes(raw_faces, tmp_path):
    """Workers read their own inputs: only compressed-tar members travel with their bytes.
    Processed PNGs are spilled to disk, never all held by the driver."""
    files = all_files(raw_faces)[:6]
    src = tmp_path / "src"
    shutil.copytree(raw_faces, src)
    for archive, mode in (("p.tar", "w"), ("p.tar.gz", "w:gz")):
        with tarfile.open(src / archive, mode) as t:
            for name in files:
                t.add(raw_faces / name, name)
    with zipfile.ZipFile(src / "p.zip", "w") as z:
        for name in files:
            z.write(raw_faces / name, name)
    items = scan(src, max_bytes=2**20)
    chunks = list(build_mod._work_chunks(items, 2**20))
    sent = [i for c in chunks for i in c]
    assert sorted(i.seq for i in sent) == list(range(len(items))) == [i.seq for i in items]
    assert all(i.data is None for i in sent if not i.source.startswith("p.tar.gz/"))
    assert {i.ref.kind for i in sent} == {"file", "zip", "tar", "tarstream"}
    assert all(i.data is not None for i in sent if i.source.startswith("p.tar.gz/"))
    assert all(i.data is None for i in items)  # the scan's list stays byte-free
    with build_mod.Spill(tmp_path / "spill", len(items)) as spill:
        results = build_mod._process_all(items, faces_recipe(), build_mod.LocalMapper(1), False, spill)
        assert [r.source for r in results] == [i.source for i in items]
        assert all(r.png is None for r in results) and results[-1].reason is None
        for r in (results[0], results[-1]):
            with Image.open(io.BytesIO(spill.png(r))) as im:
                assert im.size == (32, 32)


def test_a_file_changed_during_the_build_is_rejected(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(Image.new("RGB", (20, 20), "red")))
    (item,) = scan(tmp_path, max_bytes=2**20)
    (tmp_path / "a.png").write_bytes(png_bytes(Image.new("RGB", (20, 20), "blue")))
    result = process_item(item, faces_recipe())
    assert result.reason == "unreadable" and "changed during the build" in result.detail


def test_the_size_cap_does_not_change_corpus_ids():
    """The cap is not in the recipe hash (what it refuses is in the inputs fingerprint), so
    corpora built before it existed keep their ids; ef1bc1f34e436c5b is genlib 0.1's hash."""
    assert build_mod.recipe_hash(faces_recipe()) == "ef1bc1f34e436c5b"
    assert build_mod.recipe_hash(faces_recipe(max_file_bytes=10)) == "ef1bc1f34e436c5b"
    assert build_mod.recipe_hash(faces_recipe(size=16)) != "ef1bc1f34e436c5b"


def test_palette_pixels_match_the_in_memory_sampler(tmp_path):
    from genlib.data import palette as pal

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(30)]
    with build_mod.Spill(tmp_path / "spill", len(images)) as spill:
        train = []
        for i, im in enumerate(images):
            r = build_mod.Processed(f"{i}.png", f"{i:064x}", png=png_bytes(Image.fromarray(im)), seq=i)
            spill.put(r)
            train.append(r)
        for n in (100, 30 * 64):  # a sample, and every pixel
            got = build_mod._palette_pixels(train, 8, n, seed=5, spill=spill)
            assert (got.astype(np.float32) == pal.sample_pixels(images, n, 5)).all()


# ---------------------------------------------------------------- real corpora


@pytest.mark.shared
def test_real_pokemon_sprites(shared, tmp_path):
    recipe = CorpusRecipe(name="pokemon", recipe="sprites", size=20, min_size=16, resample="box",
                          palette=PaletteConfig(colors=32, sample_pixels=20000, iterations=10),
                          shards=ShardConfig(min_shards=8))
    result = build_mod.build_corpus(shared / "corpora/pokemon", tmp_path / "pk", recipe, progress=False)
    m = result.manifest
    files = all_files(shared / "corpora/pokemon")
    assert m["input_files"] == len(files) and m["accepted"] + m["rejected"] == len(files)
    sources = pq.read_table(result.out_dir / schema.INDEX).column("source").to_pylist()
    assert sum(s.startswith("gif/") for s in sources) > 50  # GIF first frames are accepted
    assert sum(s.startswith("png/") for s in sources) == 649
    assert set(m["rejects_by_reason"]) <= {"duplicate", "not_an_image"}  # SOURCES.md and re-used GIFs
    assert len(m["palette"]) == 32


@pytest.mark.shared
def test_real_faces_lfw_and_celeba(shared, tmp_path):
    recipe = faces_recipe(size=64, crop=130, label="parent_dir", min_size=64)
    result = build_mod.build_corpus(shared / "corpora/faces", tmp_path / "faces", recipe, progress=False)
    rows = pq.read_table(result.out_dir / schema.INDEX).to_pylist()
    lfw = [r for r in rows if r["source"].startswith("lfw-deepfunneled/")]
    celeba = [r for r in rows if r["source"].startswith("celeba/img_align_celeba/")]
    assert len(lfw) == 821 and len(celeba) == 32
    assert all(r["label"] == r["source"].split("/")[1] for r in lfw)
    assert {(r["width"], r["height"]) for r in celeba} == {(178, 218)}
