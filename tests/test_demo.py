"""Tests for the demo assets: the cartoon-face demo corpus (genlib.demo.faces) and the painted canvas."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from PIL import Image

from genlib.demo.faces import HAIR_STYLES, draw_face, generate_demo_faces


def _faces(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """The first n faces as uint8 arrays, drawn like the generator does."""
    return [np.asarray(draw_face(np.random.default_rng([seed, i]), size)) for i in range(n)]


def _tree(root) -> dict[str, bytes]:
    """Map each PNG's path relative to root to its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _tree_values(paths) -> set[bytes]:
    """The set of file contents behind paths."""
    return {p.read_bytes() for p in paths}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_draw_face_shape_and_mode(size):
    img = draw_face(np.random.default_rng(1), size)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (size, size)
    assert np.asarray(img).shape == (size, size, 3)


def test_draw_face_default_size_and_rng_determinism():
    a = draw_face(np.random.default_rng(7))
    b = draw_face(np.random.default_rng(7))
    assert a.size == (128, 128)
    assert a.tobytes() == b.tobytes()


def test_generation_is_byte_identical(tmp_path):
    first = generate_demo_faces(tmp_path / "a", count=8, size=48, seed=3)
    second = generate_demo_faces(tmp_path / "b", count=8, size=48, seed=3)
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in second
    ]
    tree_a, tree_b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(tree_a) == 8
    assert tree_a == tree_b


def test_face_i_does_not_depend_on_count(tmp_path):
    generate_demo_faces(tmp_path / "five", count=5, size=40)
    generate_demo_faces(tmp_path / "ten", count=10, size=40)
    five, ten = _tree(tmp_path / "five"), _tree(tmp_path / "ten")
    assert len(five) == 5 and len(ten) == 10
    for rel, data in five.items():
        assert ten[rel] == data


def test_seed_changes_the_faces(tmp_path):
    a = _tree_values(generate_demo_faces(tmp_path / "s0", count=4, size=40, seed=0))
    b = _tree_values(generate_demo_faces(tmp_path / "s1", count=4, size=40, seed=1))
    assert a.isdisjoint(b)



def test_layout_nested_sorted_and_complete(tmp_path):
    out = tmp_path / "new" / "corpus"  # parents do not exist yet
    paths = generate_demo_faces(out, count=40, size=32)
    assert len(paths) == 40
    assert paths == sorted(paths)
    indices = set()
    for p in paths:
        assert p.exists() and p.parent.parent == out
        assert p.parent.name in HAIR_STYLES
        m = re.fullmatch(r"face_(\d{5})\.png", p.name)
        assert m, p.name
        indices.add(int(m.group(1)))
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    assert indices == set(range(40))
    # Nested folders like a real corpus: several hair-style groups in use.
    assert len({p.parent.name for p in paths}) >= 4


def test_faces_are_varied():
    faces = _faces(20)
    for a, b in itertools.combinations(faces, 2):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    means = np.stack([f.reshape(-1, 3).mean(0) for f in faces])
    assert means.std(axis=0).mean() > 10  # mean colours spread, not one template


def test_face_stands_out_from_background():
    for face in _faces(20):
        corner = face[:4, :4].reshape(-1, 3).mean(0)  # top-left corner is background
        centre = face[26:38, 26:38].reshape(-1, 3).mean(0)  # nose/cheeks
        assert np.abs(centre - corner).sum() > 40
        # The face (not the background) fills a good part of the frame.
        differs = np.abs(face.astype(int) - corner).sum(-1) > 40
        assert differs.mean() > 0.3
        # A 64x64 centre crop of a 128 face (here: 32x32 of 64) is mostly face.
        assert differs[16:48, 16:48].mean() > 0.7


@pytest.mark.parametrize("count", [0, -3])
def test_bad_count(tmp_path, count):
    with pytest.raises(ValueError, match="count"):
        generate_demo_faces(tmp_path, count=count)


@pytest.mark.parametrize("size", [0, 16, 31])
def test_bad_size(tmp_path, size):
    with pytest.raises(ValueError, match="size"):
        generate_demo_faces(tmp_path, count=1, size=size)
    with pytest.raises(ValueError, match="size"):
        draw_face(np.random.default_rng(0), size)
