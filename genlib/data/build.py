"""Build a sharded WebDataset corpus from a folder or archive of raw images.

Stages: enumerate (sorted) -> process in parallel (decode + recipe) ->
de-duplicate by sha256 -> seeded split -> optional palette -> write shards,
index, rejects and manifest into a temp folder -> atomic rename. Every input
file ends in exactly one of ``index.parquet`` or ``rejects.parquet``.

Parallelism is pluggable: :class:`LocalMapper` (a process pool) here, and a Ray
mapper in ``genlib.distributed.build`` for cluster builds; both map
``process_chunk`` over chunks of raw items.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

import genlib
from genlib.config import config_hash, to_dict
from genlib.data import palette as pal
from genlib.data import schema
from genlib.data.process import Processed, process_chunk
from genlib.data.recipe import CorpusRecipe
from genlib.images import encode_png, image_grid
from genlib.data.sources import RawItem, iter_items, read_boxes
from genlib.storage import sha256_file

CHUNK = 64  # raw items per unit of parallel work


class CorpusExistsError(RuntimeError):
    """The output folder holds something this build must not overwrite."""


class EmptyCorpusError(RuntimeError):
    """No input file survived the recipe."""


class Mapper(Protocol):
    """Maps ``fn`` over chunks; yields each chunk's result list as it completes."""

    def map_chunks(self, fn: Callable[[list[RawItem]], list[Processed]],
                   chunks: Iterable[list[RawItem]]) -> Iterator[list[Processed]]: ...


class LocalMapper:
    """A bounded process pool (spawned, not forked: the caller may hold threads)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def map_chunks(self, fn, chunks):
        if self.workers <= 1:
            yield from (fn(chunk) for chunk in chunks)
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx) as pool:
            chunks = iter(chunks)
            pending = {pool.submit(fn, c) for c in islice(chunks, 2 * self.workers)}
            while pending:  # keep at most 2 chunks per worker in flight (bounded memory)
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = next(chunks, None)
                    if nxt is not None:
                        pending.add(pool.submit(fn, nxt))


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict
    up_to_date: bool = False
    rejects: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        m = self.manifest
        splits = ", ".join(f"{s} {n}" for s, n in m["counts"].items() if n)
        lines = [f"corpus {m['name']} ({m['corpus_id']}) at {self.out_dir}",
                 f"  accepted {m['accepted']} ({splits}) in {len(m['shards'])} shards",
                 f"  rejected {m['rejected']}"]
        for reason, n in sorted(m["rejects_by_reason"].items()):
            lines.append(f"    {reason:<13} {n:>6}  ({schema.REJECT_REASONS[reason]})")
        if self.up_to_date:
            lines.insert(0, "up to date: inputs, recipe and shards match; nothing rebuilt")
        return "\n".join(lines)


def build_corpus(input_path: str | Path, out_dir: str | Path, recipe: CorpusRecipe, *,
                 force: bool = False, mapper: Mapper | None = None, progress: bool = True) -> BuildResult:
    """Build (or verify) the corpus ``out_dir`` from ``input_path`` with ``recipe``."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise FileNotFoundError(f"input not found: {input_path}")
    boxes = read_boxes(recipe.box_file) if recipe.box_file else None
    existing = _check_existing(out_dir, force)
    items = list(_with_boxes(iter_items(input_path), boxes))
    fingerprint = _fingerprint(items, recipe)
    if existing is not None:
        if _up_to_date(out_dir, existing, fingerprint):
            return BuildResult(out_dir, existing, up_to_date=True)
        if not force:
            raise CorpusExistsError(_explain_mismatch(out_dir, existing, fingerprint))
    results = _process_all(items, recipe, mapper or LocalMapper(), progress)
    del items
    return _write_atomically(out_dir, input_path, recipe, results, fingerprint)


def _with_boxes(items: Iterator[RawItem], boxes: dict | None) -> Iterator[RawItem]:
    for item in items:
        if boxes is not None:
            item.box = boxes.get(item.source.rsplit("/", 1)[-1])
        yield item


def _fingerprint(items: list[RawItem], recipe: CorpusRecipe) -> dict:
    """What the corpus content depends on: every input's path and bytes, the recipe
    and the on-disk format version."""
    h = hashlib.sha256()
    for item in items:
        if item.data is not None:
            item.sha256 = hashlib.sha256(item.data).hexdigest()  # reused by process_item: hashed once
        digest = item.sha256 or f"error:{item.error}"
        h.update(f"{item.source}\t{digest}\t{item.box}\n".encode())
    inputs = h.hexdigest()
    rhash = config_hash(recipe)
    corpus_id = hashlib.sha256(f"{inputs}:{rhash}:{schema.FORMAT_VERSION}".encode()).hexdigest()[:16]
    return {"inputs_sha256": inputs, "input_files": len(items), "recipe_hash": rhash, "corpus_id": corpus_id}


def _check_existing(out_dir: Path, force: bool) -> dict | None:
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise CorpusExistsError(f"output {out_dir} exists and is not a folder")
    if (out_dir / schema.MANIFEST).is_file():
        try:
            return schema.read_manifest(out_dir)
        except (ValueError, OSError) as exc:
            if force:
                return {"corpus_id": None}
            raise CorpusExistsError(f"output {out_dir} holds an unreadable corpus ({exc}); "
                                    f"pass --force to rebuild it") from exc
    if any(out_dir.iterdir()):
        raise CorpusExistsError(f"output {out_dir} exists, is not empty and is not a genlib corpus; "
                                f"refusing to write into it (even with --force): pick another folder")
    return None


def _up_to_date(out_dir: Path, manifest: dict, fingerprint: dict) -> bool:
    if manifest.get("corpus_id") != fingerprint["corpus_id"]:
        return False
    for shard in manifest["shards"]:
        path = out_dir / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
            return False
    return all((out_dir / name).is_file() for name in (schema.INDEX, schema.REJECTS))


def _explain_mismatch(out_dir: Path, manifest: dict, fingerprint: dict) -> str:
    why = []
    if manifest.get("recipe_hash") != fingerprint["recipe_hash"]:
        why.append("the recipe differs")
    if manifest.get("inputs_sha256") != fingerprint["inputs_sha256"]:
        why.append(f"the input files differ ({manifest.get('input_files')} files then, "
                   f"{fingerprint['input_files']} now)")
    if not why:
        why.append("its shards or index are missing or modified")
    return (f"output {out_dir} already holds corpus {manifest.get('corpus_id')} and is not up to date: "
            f"{'; '.join(why)}. Pass --force to rebuild it, or choose another output folder")


def _process_all(items: list[RawItem], recipe: CorpusRecipe, mapper: Mapper, progress: bool) -> list[Processed]:
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    results: list[Processed] = []
    bar = tqdm(total=len(items), unit="img", desc="processing", disable=not progress,
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    with bar:
        for chunk_result in mapper.map_chunks(partial(process_chunk, recipe=recipe), chunks):
            results.extend(chunk_result)
            bar.update(len(chunk_result))
            bar.set_postfix(rejected=sum(r.reason is not None for r in results), refresh=False)
    results.sort(key=lambda r: r.source)
    return results


# --------------------------------------------------------------------------- write


def _write_atomically(out_dir: Path, input_path: Path, recipe: CorpusRecipe, results: list[Processed],
                      fingerprint: dict) -> BuildResult:
    """Write everything into a sibling temp folder, then swap it in: an interrupted
    build never leaves a folder that looks like a complete corpus."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write_corpus(tmp, input_path, recipe, results, fingerprint)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out_dir, manifest, rejects=Counter(manifest["rejects_by_reason"]))


def _swap_in(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def _write_corpus(tmp: Path, input_path: Path, recipe: CorpusRecipe, results: list[Processed],
                  fingerprint: dict) -> dict:
    if not results:
        raise EmptyCorpusError(f"input {input_path} contains no files")
    accepted, rejects = _dedupe(results)
    if not accepted:
        reasons = Counter(r.reason for r in rejects)
        raise EmptyCorpusError(f"no usable images in {input_path}: {len(rejects)} files, all rejected "
                               f"({', '.join(f'{k} {v}' for k, v in reasons.most_common())})")
    splits = assign_splits(accepted, recipe)
    palette = _learn_palette(splits["train"], recipe)
    shards, shard_of = _write_shards(tmp, recipe, splits, palette)
    _write_index(tmp / schema.INDEX, splits, shard_of)
    _write_rejects(tmp / schema.REJECTS, rejects)
    _write_previews(tmp, splits["train"] or accepted, palette)
    manifest = _manifest(input_path, recipe, fingerprint, splits, rejects, shards, palette)
    schema.write_json(tmp / schema.MANIFEST, manifest)
    return manifest


def _dedupe(results: list[Processed]) -> tuple[list[Processed], list[Processed]]:
    """Keep the first file (by sorted source path) of each sha256; later copies
    become ``duplicate`` rejects that name the kept file."""
    first: dict[str, str] = {}
    accepted, rejects = [], []
    for r in results:
        if r.reason is not None:
            rejects.append(r)
        elif r.sha256 in first:
            rejects.append(Processed(r.source, r.sha256, reason="duplicate",
                                     detail=f"same bytes as {first[r.sha256]}"))
        else:
            first[r.sha256] = r.source
            accepted.append(r)
    return accepted, rejects


def sample_key(sha256: str) -> str:
    return sha256[:16]


def assign_splits(accepted: list[Processed], recipe: CorpusRecipe) -> dict[str, list[Processed]]:
    """Seeded split with exact sizes: order samples by a seeded hash of their
    content, take the first ``test_fraction`` for test, the next ``val_fraction``
    for val (at least one each when asked and possible), the rest for train.
    Within a split, samples are ordered by key (a content hash), which mixes
    folders/labels across shards."""
    keys = {sample_key(r.sha256) for r in accepted}
    if len(keys) != len(accepted):
        raise RuntimeError("sha256 prefix collision between distinct files; please report this")
    rank = sorted(accepted, key=lambda r: hashlib.sha256(f"{recipe.seed}:{r.sha256}".encode()).digest())
    n = len(rank)
    n_test = _split_size(n, recipe.test_fraction)
    n_val = _split_size(n - n_test, recipe.val_fraction * n / max(n - n_test, 1))
    parts = {"test": rank[:n_test], "val": rank[n_test:n_test + n_val], "train": rank[n_test + n_val:]}
    return {s: sorted(parts[s], key=lambda r: sample_key(r.sha256)) for s in ("train", "val", "test")}


def _split_size(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, round(n * fraction)), n - 1)


def _decode_rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def _learn_palette(train: list[Processed], recipe: CorpusRecipe) -> np.ndarray | None:
    cfg = recipe.palette
    if cfg.colors == 0:
        return None
    images = [_decode_rgb(r.png) for r in train]
    return pal.learn_palette(images, cfg.colors, cfg.sample_pixels, cfg.iterations, cfg.seed)


def _write_shards(tmp: Path, recipe: CorpusRecipe, splits: dict[str, list[Processed]],
                  palette: np.ndarray | None) -> tuple[list[dict], dict[str, str]]:
    import webdataset as wds  # imported here: it pulls in torch, which spawned build workers never need

    shards: list[dict] = []
    shard_of: dict[str, str] = {}
    for split, samples in splits.items():
        if not samples:
            continue  # ShardWriter opens a file eagerly: never create an empty shard
        per_shard = min(recipe.shards.max_count, math.ceil(len(samples) / recipe.shards.min_shards))
        pattern = str(tmp / schema.shard_pattern(recipe.name, split))
        counts: Counter = Counter()
        with wds.ShardWriter(pattern, maxcount=per_shard, maxsize=recipe.shards.max_bytes, verbose=0,
                             encoder=False, mtime=schema.TAR_MTIME) as writer:
            for r in samples:
                writer.write(_sample(r, split, palette))
                name = Path(writer.fname).name
                shard_of[sample_key(r.sha256)] = name
                counts[name] += 1
        for name in sorted(counts):
            path = tmp / name
            shards.append({"file": name, "split": split, "count": counts[name],
                           "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return shards, shard_of


def _sample(r: Processed, split: str, palette: np.ndarray | None) -> dict:
    key = sample_key(r.sha256)
    sample = {"__key__": key, schema.IMAGE_EXT: r.png,
              schema.META_EXT: schema.sidecar(key, r.source, r.sha256, r.width, r.height, r.label, split)}
    if palette is not None:
        idx = pal.quantize(_decode_rgb(r.png), palette)
        sample[schema.INDEX_EXT] = encode_png(Image.fromarray(idx, mode="L"))
    return sample


def _write_index(path: Path, splits: dict[str, list[Processed]], shard_of: dict[str, str]) -> None:
    rows = [(sample_key(r.sha256), split, shard_of[sample_key(r.sha256)], r.source, r.sha256,
             r.width, r.height, r.label) for split, samples in splits.items() for r in samples]
    columns = list(zip(*rows))
    table = pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(columns, schema.INDEX_SCHEMA)],
                                 schema=schema.INDEX_SCHEMA)
    pq.write_table(table, path)


def _write_rejects(path: Path, rejects: list[Processed]) -> None:
    rows = sorted(rejects, key=lambda r: r.source)
    table = pa.Table.from_pydict({
        "source": [r.source for r in rows], "sha256": [r.sha256 for r in rows],
        "reason": [r.reason for r in rows], "detail": [r.detail for r in rows],
    }, schema=schema.REJECTS_SCHEMA)
    pq.write_table(table, path)


def _write_previews(tmp: Path, samples: list[Processed], palette: np.ndarray | None) -> None:
    images = [_decode_rgb(r.png) for r in samples[:64]]
    grid = image_grid(images, columns=8)
    Image.fromarray(grid).save(tmp / schema.PREVIEW_PNG)
    if palette is not None:
        swatches = np.repeat(np.repeat(palette[None, :, :], 16, axis=0), 8, axis=1)
        Image.fromarray(swatches.astype(np.uint8)).save(tmp / schema.PALETTE_PNG)


def _manifest(input_path: Path, recipe: CorpusRecipe, fingerprint: dict, splits: dict[str, list[Processed]],
              rejects: list[Processed], shards: list[dict], palette: np.ndarray | None) -> dict:
    counts = {s: len(v) for s, v in splits.items()}
    return {
        "format_version": schema.FORMAT_VERSION,
        "genlib_version": genlib.__version__,
        "name": recipe.name,
        "corpus_id": fingerprint["corpus_id"],
        "inputs_sha256": fingerprint["inputs_sha256"],
        "input_files": fingerprint["input_files"],
        "recipe_hash": fingerprint["recipe_hash"],
        "recipe": to_dict(recipe),
        "input": str(input_path.resolve()),
        "image": {"width": recipe.size, "height": recipe.size, "channels": 3},
        "accepted": sum(counts.values()),
        "counts": counts,
        "rejected": len(rejects),
        "rejects_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "shards": shards,
        "palette": palette.tolist() if palette is not None else None,
    }

