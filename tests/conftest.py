"""Shared fixtures: tiny corpora made by the project itself, and the optional
real corpora in ../shared (tests that use them skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from genlib.data.build import LocalMapper, build_corpus
from genlib.demo.faces import generate_demo_faces
from genlib.data.recipe import CorpusRecipe, ShardConfig

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # 2-core CI: tests run serially, keep BLAS from oversubscribing


def shared_root() -> Path | None:
    env = os.environ.get("GENLIB_SHARED")
    path = Path(env) if env else ROOT.parent / "shared"
    return path if (path / "corpora").is_dir() else None


@pytest.fixture
def shared() -> Path:
    root = shared_root()
    if root is None:
        pytest.skip("../shared/corpora not present")
    return root


@pytest.fixture(scope="module")
def local_ray():
    """An embedded 2-CPU Ray for one test module (shut down after it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def raw_faces(tmp_path_factory) -> Path:
    """40 procedurally drawn 64px faces in nested folders (read-only for tests)."""
    out = tmp_path_factory.mktemp("raw-faces")
    generate_demo_faces(out, count=40, size=64, seed=7)
    return out


def faces_recipe(**kw) -> CorpusRecipe:
    shards = kw.pop("shards", ShardConfig(max_count=100, min_shards=4))
    return CorpusRecipe(name="t", recipe="faces", size=kw.pop("size", 32), min_size=kw.pop("min_size", 16),
                        val_fraction=kw.pop("val_fraction", 0.1), shards=shards, **kw)


def build(src: Path, out: Path, recipe: CorpusRecipe | None = None, **kw):
    return build_corpus(src, out, recipe or faces_recipe(), mapper=LocalMapper(1), progress=False, **kw)


@pytest.fixture(scope="session")
def faces_corpus(raw_faces, tmp_path_factory) -> Path:
    """The 40 faces built into a 32px corpus: 36 train (4 shards) + 4 val."""
    out = tmp_path_factory.mktemp("corpora") / "faces"
    build(raw_faces, out)
    return out
