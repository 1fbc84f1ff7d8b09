"""Stream a corpus for training: shuffled, split by DDP rank and DataLoader
worker, with the same number of batches on every rank.

Why fixed batch counts: DDP ranks that run different numbers of steps hang in
the gradient all-reduce. Shards hold unequal sample counts, so instead of
"read my shards once" each (rank, worker) stream *cycles* over its own shards
and stops after exactly ``batches_per_worker`` batches; every rank therefore
yields ``num_workers * batches_per_worker`` batches per epoch.

Streams are disjoint: the S = world_size x num_workers streams take every S-th
shard of a per-epoch, seed-shared shard permutation. A split with fewer shards
than streams falls back to taking every S-th *sample* of all shards (still
disjoint, just more reading).

This module is Ray- and torch.distributed-free: the caller passes rank and
world size (Ray Train's ``get_context()`` gives them).
"""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from PIL import Image

from genlib.data import schema
from genlib.data.corpus import Corpus, open_corpus

Target = Literal["image", "index"]


@dataclass
class StreamSpec:
    """Everything one rank needs to build its share of an epoch."""

    shards: list[str]
    batch_size: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    target: Target = "image"
    shuffle: bool = True
    shuffle_buffer: int = 1000
    seed: int = 0
    batches_per_worker: int | None = None  # None: read each stream's data once (evaluation)

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)

    @property
    def streams(self) -> int:
        return self.world_size * self.workers


class CorpusStream(IterableDataset):
    """An IterableDataset of collated batches (``{"image"|"index": Tensor, "key": [...]}``)."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__()
        if not spec.shards:
            raise ValueError("no shards to stream")
        if not 0 <= spec.rank < spec.world_size:
            raise ValueError(f"rank {spec.rank} outside world_size {spec.world_size}")
        self.spec = spec
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling for ``epoch`` (workers pick this up at the next iter())."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.spec.batches_per_worker is None:
            raise TypeError("a read-once (evaluation) stream has no fixed length")
        return self.spec.workers * self.spec.batches_per_worker

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spec = self.spec
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != spec.workers:
            raise RuntimeError(f"StreamSpec.num_workers={spec.num_workers} but the DataLoader runs "
                               f"{workers} workers; build loaders with make_loader()")
        stream = spec.rank * spec.workers + worker
        repeat = spec.batches_per_worker is not None
        pipeline = wds.DataPipeline(
            lambda: self._samples(stream, repeat),
            wds.batched(spec.batch_size, collation_fn=collate, partial=not repeat),
        )
        batches = iter(pipeline)
        return islice(batches, spec.batches_per_worker) if repeat else batches

    def _samples(self, stream: int, repeat: bool) -> Iterator[dict[str, Any]]:
        """Decoded samples of this stream: one shuffled pass over its data per
        cycle, forever when ``repeat``. Shuffling within a pass (the buffer is
        flushed at the end of each) makes every cycle a permutation of the
        stream's samples: no sample repeats before all others were seen."""
        spec = self.spec
        shards = list(spec.shards)
        if spec.shuffle:  # same permutation on every rank and worker: streams stay disjoint
            random.Random(_seed(spec.seed, self.epoch, 0)).shuffle(shards)
        mine = shards[stream::spec.streams] if len(shards) >= spec.streams else shards
        sample_split = len(shards) < spec.streams
        for cycle in itertools.count():
            order = list(mine)
            if spec.shuffle and cycle:
                random.Random(_seed(spec.seed, self.epoch, stream, 2, cycle)).shuffle(order)
            urls = [{"url": url} for url in order]
            stages = [lambda urls=urls: iter(urls), wds.tarfile_to_samples()]
            if sample_split:
                stages.append(_every_nth(stream, spec.streams))
            if spec.shuffle:
                stages.append(wds.shuffle(spec.shuffle_buffer, spec.shuffle_buffer,
                                          seed=_seed(spec.seed, self.epoch, stream, 1, cycle)))
            stages.append(wds.map(_decoder(spec.target)))
            seen = 0
            for sample in wds.DataPipeline(*stages):
                seen += 1
                yield sample
            if not repeat:
                return
            if not seen:  # cycling would spin forever; batches_per_worker refuses this up front
                raise RuntimeError(f"loader stream {stream} of {spec.streams} owns no samples "
                                   f"({len(shards)} shards); use fewer ranks or loader workers")


def _seed(*parts: int) -> int:
    return hash(tuple(parts)) & 0x7FFFFFFF  # ints hash deterministically (no PYTHONHASHSEED salt)


def _every_nth(stream: int, streams: int):
    def select(samples):
        for i, sample in enumerate(samples):
            if i % streams == stream:
                yield sample

    return select


def _decoder(target: Target):
    ext = schema.INDEX_EXT if target == "index" else schema.IMAGE_EXT

    def decode(sample: dict) -> dict:
        if ext not in sample:
            raise KeyError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no '{ext}' "
                           f"(target={target!r}; was the corpus built with a palette?)")
        with Image.open(io.BytesIO(sample[ext])) as im:
            array = np.array(im)  # writable copy; [H, W] uint8 indices ("L") or [H, W, 3] RGB
        if target == "index":
            value = torch.from_numpy(array.astype(np.int64))                       # [H, W]
        else:
            value = torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0  # [3, H, W] in [-1, 1]
        return {target: value, "key": sample["__key__"]}

    return decode


def collate(samples: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"key": [s["key"] for s in samples]}
    for name in samples[0]:
        if name != "key" and not name.startswith("__"):  # webdataset re-adds __key__ after map
            out[name] = torch.stack([s[name] for s in samples])
    return out


def batches_per_worker(count: int, batch_size: int, world_size: int, num_workers: int) -> int:
    """Full batches each stream yields so one epoch covers ~``count`` samples in total.

    Every one of the world_size x workers streams must own at least one batch of distinct
    samples: a stream that owns none would cycle over nothing forever. Refused up front."""
    workers = max(num_workers, 1)
    per_rank = count // (world_size * batch_size)
    if per_rank < 1:
        raise ValueError(f"{count} samples cannot fill one batch of {batch_size} on each of "
                         f"{world_size} ranks; lower the batch size")
    if per_rank < workers:
        raise ValueError(f"{count} samples cannot fill one batch of {batch_size} for each of the "
                         f"{world_size * workers} loader streams ({world_size} ranks x {workers} workers); "
                         f"lower the batch size or the number of loader workers")
    return per_rank // workers


def make_loader(corpus: str | Path | Corpus, split: str = "train", *, batch_size: int = 64, rank: int = 0,
                world_size: int = 1, num_workers: int = 2, target: Target = "image", seed: int = 0,
                shuffle_buffer: int = 1000, train: bool = True) -> DataLoader:
    """A DataLoader over one split. ``train=True``: shuffled, cycling, equal
    ``len(loader)`` on every rank. ``train=False``: one ordered pass over this
    rank's share, last batch partial (for evaluation)."""
    c = corpus if isinstance(corpus, Corpus) else open_corpus(corpus)
    if target == "index" and c.palette is None:
        raise ValueError(f"corpus {c.root} has no palette; rebuild it with palette.colors > 0 for PixelRNN")
    shards = c.shards(split)
    if not shards:
        raise ValueError(f"corpus {c.root} has no '{split}' samples")
    spec = StreamSpec(shards=shards, batch_size=batch_size, rank=rank, world_size=world_size,
                      num_workers=num_workers, target=target, shuffle=train, shuffle_buffer=shuffle_buffer,
                      seed=seed, batches_per_worker=(batches_per_worker(c.count(split), batch_size, world_size,
                                                                         num_workers) if train else None))
    return DataLoader(CorpusStream(spec), batch_size=None, num_workers=num_workers,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)

