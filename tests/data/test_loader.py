"""The training loader: decoding, rank/worker splitting, equal batch counts."""

from __future__ import annotations

import io
from itertools import combinations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from genlib.data import schema
from genlib.data.corpus import open_corpus
from genlib.data.loader import CorpusStream, StreamSpec, batches_per_worker, make_loader
from genlib.data.recipe import CorpusRecipe, PaletteConfig, ShardConfig
from tests.conftest import build, faces_recipe
from tests.data.test_build import read_shards


def streams_of(corpus, world: int, workers: int, batch: int, split="train", epoch=0, train=True):
    """keys[rank][worker] = list of keys that stream produced in one epoch.

    DataLoader hands out batches round-robin over its workers, so batch i of
    rank r came from worker i % workers."""
    out = []
    for rank in range(world):
        loader = make_loader(corpus, split, batch_size=batch, rank=rank, world_size=world,
                             num_workers=workers, train=train, shuffle_buffer=8)
        loader.dataset.set_epoch(epoch)
        per_worker = [[] for _ in range(max(workers, 1))]
        n = 0
        for i, b in enumerate(loader):
            per_worker[i % max(workers, 1)].extend(b["key"])
            n += 1
        if train:
            assert n == len(loader)
        out.append(per_worker)
    return out


def test_batches_decode_to_the_stored_images(faces_corpus):
    loader = make_loader(faces_corpus, batch_size=4, num_workers=0, train=False)
    samples = read_shards(faces_corpus)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    for key, tensor in zip(batch["key"], batch["image"]):
        expected = np.asarray(Image.open(io.BytesIO(samples[key]["png"])), dtype=np.float32) / 127.5 - 1
        assert torch.allclose(tensor.permute(1, 2, 0), torch.from_numpy(expected), atol=1e-6)


@pytest.mark.parametrize("world, workers", [(2, 2), (1, 2), (4, 1)])
def test_rank_worker_streams_are_disjoint_and_equal(faces_corpus, world, workers):
    # 36 train samples in 4 shards of 9; batch 2.
    keys = streams_of(faces_corpus, world, workers, batch=2)
    flat = [stream for rank in keys for stream in rank]
    assert len({len(s) for s in flat}) == 1, [len(s) for s in flat]   # equal-length streams
    assert all(len(s) > 0 for s in flat)
    for a, b in combinations(flat, 2):
        assert not set(a) & set(b)                                     # disjoint streams
    per_rank = batches_per_worker(36, 2, world, workers) * workers
    assert all(len(sum(rank, [])) == per_rank * 2 for rank in keys)


def test_fewer_shards_than_streams_falls_back_to_sample_split(raw_faces, tmp_path):
    one_shard = tmp_path / "one"
    build(raw_faces, one_shard, faces_recipe(val_fraction=0.0, shards=ShardConfig(min_shards=1)))
    assert len(open_corpus(one_shard).shards("train")) == 1
    keys = streams_of(one_shard, world=2, workers=2, batch=3)
    flat = [s for rank in keys for s in rank]
    assert len({len(s) for s in flat}) == 1
    for a, b in combinations(flat, 2):
        assert not set(a) & set(b)


def test_epochs_reshuffle_deterministically(faces_corpus):
    e0 = streams_of(faces_corpus, 1, 0, batch=4, epoch=0)
    assert e0 == streams_of(faces_corpus, 1, 0, batch=4, epoch=0)
    assert e0 != streams_of(faces_corpus, 1, 0, batch=4, epoch=1)


def test_eval_pass_reads_every_sample_once(faces_corpus):
    keys = streams_of(faces_corpus, world=2, workers=0, batch=3, split="val", train=False)
    seen = sorted(k for rank in keys for s in rank for k in s)
    index = pq.read_table(faces_corpus / schema.INDEX).to_pylist()
    assert seen == sorted(r["key"] for r in index if r["split"] == "val")


def test_palette_indices_target(tmp_path, raw_faces):
    recipe = faces_recipe(size=16, palette=PaletteConfig(colors=12, sample_pixels=2000, iterations=5))
    corpus = build(raw_faces, tmp_path / "p", recipe).out_dir
    batch = next(iter(make_loader(corpus, batch_size=5, num_workers=0, target="index")))
    assert batch["index"].shape == (5, 16, 16) and batch["index"].dtype == torch.int64
    assert 0 <= batch["index"].min() and batch["index"].max() < 12


def test_loader_errors_are_clear(faces_corpus, tmp_path):
    with pytest.raises(ValueError, match="has no palette; rebuild it with palette.colors"):
        make_loader(faces_corpus, target="index")
    with pytest.raises(ValueError, match="cannot fill one batch of 64 on each of 2 ranks"):
        make_loader(faces_corpus, batch_size=64, world_size=2, rank=1)
    with pytest.raises(ValueError, match="has no 'test' samples"):
        make_loader(faces_corpus, "test")
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        make_loader(tmp_path / "nothing")
    (tmp_path / "notcorpus").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a genlib corpus"):
        make_loader(tmp_path / "notcorpus")
    with pytest.raises(ValueError, match="rank 2 outside world_size 2"):
        CorpusStream(StreamSpec(shards=["x.tar"], batch_size=1, rank=2, world_size=2))


def test_too_few_samples_for_every_stream_is_refused_before_training(faces_corpus):
    """36 train samples, batch 10: 3 full batches, fewer than 4 loader streams. One stream would
    own no batch and cycle over nothing forever; refused up front (train.prepare_run calls this)."""
    assert batches_per_worker(36, 9, 1, 4) == 1
    with pytest.raises(ValueError, match=r"36 samples cannot fill one batch of 10 for each of the 4 loader "
                                         r"streams \(1 ranks x 4 workers\)"):
        batches_per_worker(36, 10, 1, 4)
    with pytest.raises(ValueError, match="for each of the 4 loader streams"):
        make_loader(faces_corpus, batch_size=10, num_workers=4)


def test_a_stream_that_owns_no_sample_raises_instead_of_spinning(faces_corpus):
    """The 4 val samples sit in 4 one-sample shards; with 5 streams the last owns none."""
    corpus = open_corpus(faces_corpus)
    spec = StreamSpec(shards=corpus.shards("val"), batch_size=1, rank=4, world_size=5, batches_per_worker=1)
    with pytest.raises(RuntimeError, match="loader stream 4 of 5 owns no samples"):
        next(iter(CorpusStream(spec)))


def test_sprites_corpus_streams_rgb(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        arr = np.zeros((24, 24, 4), np.uint8)
        arr[4:20, 6:18] = [*rng.integers(0, 256, 3), 255]
        Image.fromarray(arr, "RGBA").save(src / f"{i}.png")
    corpus = build(src, tmp_path / "c", CorpusRecipe(name="s", recipe="sprites", size=16, min_size=8,
                                                     val_fraction=0.0)).out_dir
    batch = next(iter(make_loader(corpus, batch_size=5, num_workers=0)))
    assert torch.allclose(batch["image"][:, :, 0, 0], torch.ones(5, 3))  # white corners


def test_each_cycle_is_a_permutation_of_the_stream(faces_corpus):
    """A batch as large as the split holds every sample exactly once: the shuffle
    buffer never mixes one pass over the shards with the next."""
    train = {r["key"] for r in pq.read_table(faces_corpus / schema.INDEX).to_pylist() if r["split"] == "train"}
    loader = make_loader(faces_corpus, batch_size=36, num_workers=0, shuffle_buffer=1000)
    for epoch in range(2):
        loader.dataset.set_epoch(epoch)
        (batch,) = list(loader)
        assert sorted(batch["key"]) == sorted(train)
