"""Build a sharded WebDataset corpus from a folder or archive of raw images.

Stages: scan (walk the input once, hash every file as a stream, sorted) ->
process in parallel (each worker reads its files itself, decodes, applies the
recipe; PNGs are spilled to a file in the temp folder) -> de-duplicate by sha256
-> seeded split -> optional palette -> write shards, index, rejects and manifest
into the temp folder -> fsync -> atomic rename. Every input file ends in exactly
one of ``index.parquet`` or ``rejects.parquet``.

Memory does not grow with the input's bytes: the driver keeps a few hundred bytes
of metadata per input (path, sha256, reason, spill offset), never the images.

Parallelism is pluggable: :class:`LocalMapper` (a process pool) here, and a Ray
mapper in ``genlib.distributed.build`` for cluster builds; both map
``process_chunk`` over chunks of :class:`RawItem` references.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import re
import shutil
import socket
import sys
from array import array
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
from genlib.data.sources import RawItem, read_boxes, scan, stream_members
from genlib.storage import fsync_path, sha256_file

CHUNK = 64  # raw items per unit of parallel work
SPILL = ".samples.spill"  # processed PNGs while the build runs (inside the temp folder, removed before the rename)
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"  # in temp names: builds on shared disks


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
            lines.append(f"    {reason:<15} {n:>6}  ({schema.REJECT_REASONS[reason]})")
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
    clean_stale_temps(out_dir)
    existing = _check_existing(out_dir, force)
    items = _with_boxes(_scan(input_path, recipe, progress), boxes)
    fingerprint = _fingerprint(items, recipe)
    if existing is not None:
        if _up_to_date(out_dir, existing, fingerprint):
            return BuildResult(out_dir, existing, up_to_date=True)
        if not force:
            raise CorpusExistsError(_explain_mismatch(out_dir, existing, fingerprint))
    tmp = _fresh_temp(out_dir)
    try:
        with Spill(tmp / SPILL, len(items)) as spill:
            results = _process_all(items, recipe, mapper or LocalMapper(), progress, spill)
            del items  # from here on only the slim results
            manifest = _write_corpus(tmp, input_path, recipe, results, fingerprint, spill)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out_dir, manifest, rejects=Counter(manifest["rejects_by_reason"]))


def _scan(input_path: Path, recipe: CorpusRecipe, progress: bool) -> list[RawItem]:
    bar = tqdm(unit="file", desc="scanning", disable=not progress, file=sys.stderr, mininterval=1.0)
    with bar:
        return scan(input_path, recipe.max_file_bytes, on_item=lambda _: bar.update())


def _with_boxes(items: list[RawItem], boxes: dict | None) -> list[RawItem]:
    if boxes is not None:
        for item in items:
            item.box = boxes.get(item.source.rsplit("/", 1)[-1])
    return items


def _fingerprint(items: list[RawItem], recipe: CorpusRecipe) -> dict:
    """What the corpus content depends on: every input's path and sha256 (or why the scan
    refused it), the recipe and the on-disk format version."""
    h = hashlib.sha256()
    for item in items:
        digest = item.sha256 if item.reason is None else f"error:{item.error}"
        h.update(f"{item.source}\t{digest}\t{item.box}\n".encode())
    inputs = h.hexdigest()
    rhash = recipe_hash(recipe)
    corpus_id = hashlib.sha256(f"{inputs}:{rhash}:{schema.FORMAT_VERSION}".encode()).hexdigest()[:16]
    return {"inputs_sha256": inputs, "input_files": len(items), "recipe_hash": rhash, "corpus_id": corpus_id}


def recipe_hash(recipe: CorpusRecipe) -> str:
    """``config_hash`` of the recipe without ``max_file_bytes``: what the cap refuses is already
    in the inputs fingerprint (an ``error:`` line), and leaving it out keeps the ids of corpora
    built before the cap existed."""
    return config_hash(recipe, exclude=("max_file_bytes",))


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


# --------------------------------------------------------------------------- process


class Spill:
    """Processed PNGs appended to one file in the build's temp folder as they arrive: the
    driver keeps 16 bytes per input (offset and length, by ``Processed.seq``), not the images
    (CelebA at 64 px is ~2 GB of PNGs). Shards are written from it in key order."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self._file = open(path, "w+b")
        self._end = 0
        self._dirty = False
        self._offset = array("Q", bytes(8 * count))  # [count] per input seq
        self._length = array("Q", bytes(8 * count))

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def put(self, r: Processed) -> None:
        """Move ``r.png`` to disk."""
        if r.png is not None:
            self._file.write(r.png)
            self._offset[r.seq], self._length[r.seq] = self._end, len(r.png)
            self._end += len(r.png)
            r.png = None
            self._dirty = True

    def png(self, r: Processed) -> bytes:
        if self._dirty:
            self._file.flush()
            self._dirty = False
        return os.pread(self._file.fileno(), self._length[r.seq], self._offset[r.seq])


def _process_all(items: list[RawItem], recipe: CorpusRecipe, mapper: Mapper, progress: bool,
                 spill: Spill) -> list[Processed]:
    """Every item's outcome, in scan (source) order, with the PNGs moved to ``spill``."""
    results: list[Processed | None] = [None] * len(items)
    rejected = 0
    bar = tqdm(total=len(items), unit="img", desc="processing", disable=not progress,
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    with bar:
        chunks = _work_chunks(items, recipe.max_file_bytes)
        for chunk_result in mapper.map_chunks(partial(process_chunk, recipe=recipe), chunks):
            for r in chunk_result:
                spill.put(r)
                results[r.seq] = r
                rejected += r.reason is not None
            bar.update(len(chunk_result))
            bar.set_postfix(rejected=rejected, refresh=False)
    if None in results:  # a mapper that drops a chunk would otherwise lose inputs silently
        raise RuntimeError(f"{results.count(None)} inputs came back from the mapper without a result")
    return results


def _work_chunks(items: list[RawItem], max_bytes: int) -> Iterator[list[RawItem]]:
    """Chunks of CHUNK items for the mapper. They carry references, not bytes (the worker
    reads its files itself), except members of compressed tars: those have no random
    access, so one sequential pass here hands them over with their bytes, and the mapper's
    bound on chunks in flight bounds the memory that takes."""
    streamed: dict[str, list[RawItem]] = {}
    direct = []
    for item in items:
        if item.reason is None and item.ref.kind == "tarstream":
            streamed.setdefault(item.ref.path, []).append(item)
        else:
            direct.append(item)
    yield from _batched(direct, CHUNK)
    for path, members in streamed.items():
        yield from _batched(stream_members(path, members, max_bytes), CHUNK)


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


# --------------------------------------------------------------------------- write


def _fresh_temp(out_dir: Path) -> Path:
    """An empty sibling folder to build in; renamed into place only when complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(out_dir, "tmp", os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _temp_path(out_dir: Path, kind: str, pid: int) -> Path:
    """``.<name>.tmp-<pid>-<host>`` (a build in progress) or ``.<name>.old-<pid>-<host>`` (the
    previous corpus during the swap). The host: on a shared disk, a pid means nothing elsewhere."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{pid}-{HOST}"


def _publish(tmp: Path, out_dir: Path) -> None:
    """fsync the finished corpus, then swap it in: after a crash the folder holds the old
    corpus or the complete new one, never a renamed folder with unwritten files."""
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if out_dir.exists():
        old = _temp_path(out_dir, "old", os.getpid())
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    fsync_path(out_dir.parent)


def clean_stale_temps(out_dir: Path) -> list[Path]:
    """Tidy what interrupted builds of ``out_dir`` left beside it (pid dead on this host):
    delete their temp folders, and put back a previous corpus that a build moved aside
    (``.old-``) and died before replacing. Returns the paths it removed or restored."""
    pattern = re.compile(re.escape(f".{out_dir.name}.") + r"(tmp|old)-(\d+)(?:-([A-Za-z0-9-]+))?")
    touched = []
    for path in sorted(out_dir.parent.glob(f".{out_dir.name}.*")) if out_dir.parent.is_dir() else []:
        m = pattern.fullmatch(path.name)
        if m is None or not _dead(int(m[2]), m[3]):
            continue
        if m[1] == "old" and not out_dir.exists():
            path.rename(out_dir)  # the swap died between its two renames: this is the only corpus
        else:
            shutil.rmtree(path, ignore_errors=True)
        touched.append(path)
    return touched


def _dead(pid: int, host: str | None) -> bool:
    """Whether the build process ``pid`` is gone. Names without a host come from genlib <= 0.1,
    which built on this machine; another host's pids cannot be checked from here."""
    if (host is not None and host != HOST) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _write_corpus(tmp: Path, input_path: Path, recipe: CorpusRecipe, results: list[Processed],
                  fingerprint: dict, spill: Spill) -> dict:
    if not results:
        raise EmptyCorpusError(f"input {input_path} contains no files")
    accepted, rejects = _dedupe(results)
    if not accepted:
        reasons = Counter(r.reason for r in rejects)
        raise EmptyCorpusError(f"no usable images in {input_path}: {len(rejects)} files, all rejected "
                               f"({', '.join(f'{k} {v}' for k, v in reasons.most_common())})")
    splits = assign_splits(accepted, recipe)
    palette = _learn_palette(splits["train"], recipe, spill)
    shards, shard_of = _write_shards(tmp, recipe, splits, palette, spill)
    _write_index(tmp / schema.INDEX, splits, shard_of)
    _write_rejects(tmp / schema.REJECTS, rejects)
    _write_previews(tmp, splits["train"] or accepted, palette, spill)
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


def _learn_palette(train: list[Processed], recipe: CorpusRecipe, spill: Spill) -> np.ndarray | None:
    """The palette of the train split, decoding only the images the pixel draw falls in."""
    cfg = recipe.palette
    if cfg.colors == 0:
        return None
    pixels = _palette_pixels(train, recipe.size, cfg.sample_pixels, cfg.seed, spill)
    return pal.palette_from_pixels(pixels, cfg.colors, cfg.iterations, cfg.seed)


def _palette_pixels(train: list[Processed], size: int, n: int, seed: int, spill: Spill) -> np.ndarray:
    """The pixels ``palette.sample_pixels`` draws from all train images (each size x size)."""
    return pal.sample_pixels_lazy(len(train), size * size,
                                  lambda i: _decode_rgb(spill.png(train[i])).reshape(-1, 3), n, seed)


def _write_shards(tmp: Path, recipe: CorpusRecipe, splits: dict[str, list[Processed]],
                  palette: np.ndarray | None, spill: Spill) -> tuple[list[dict], dict[int, str]]:
    """Write every split's shards; -> (shard records, shard file name by Processed.seq)."""
    import webdataset as wds  # imported here: it pulls in torch, which spawned build workers never need

    shards: list[dict] = []
    shard_of: dict[int, str] = {}
    for split, samples in splits.items():
        if not samples:
            continue  # ShardWriter opens a file eagerly: never create an empty shard
        per_shard = min(recipe.shards.max_count, math.ceil(len(samples) / recipe.shards.min_shards))
        pattern = str(tmp / schema.shard_pattern(recipe.name, split))
        counts: Counter = Counter()
        with wds.ShardWriter(pattern, maxcount=per_shard, maxsize=recipe.shards.max_bytes, verbose=0,
                             encoder=False, mtime=schema.TAR_MTIME) as writer:
            fname = name = None
            for r in samples:
                writer.write(_sample(r, split, palette, spill.png(r)))
                if writer.fname != fname:  # one name str per shard, not one per sample
                    fname, name = writer.fname, Path(writer.fname).name
                shard_of[r.seq] = name
                counts[name] += 1
        for name in sorted(counts):
            path = tmp / name
            shards.append({"file": name, "split": split, "count": counts[name],
                           "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return shards, shard_of


def _sample(r: Processed, split: str, palette: np.ndarray | None, png: bytes) -> dict:
    key = sample_key(r.sha256)
    sample = {"__key__": key, schema.IMAGE_EXT: png,
              schema.META_EXT: schema.sidecar(key, r.source, r.sha256, r.width, r.height, r.label, split)}
    if palette is not None:
        idx = pal.quantize(_decode_rgb(png), palette)
        sample[schema.INDEX_EXT] = encode_png(Image.fromarray(idx, mode="L"))
    return sample


def _write_index(path: Path, splits: dict[str, list[Processed]], shard_of: dict[int, str]) -> None:
    rows = [(split, r) for split, samples in splits.items() for r in samples]
    columns = {"key": [sample_key(r.sha256) for _, r in rows], "split": [s for s, _ in rows],
               "shard": [shard_of[r.seq] for _, r in rows], "source": [r.source for _, r in rows],
               "sha256": [r.sha256 for _, r in rows], "width": [r.width for _, r in rows],
               "height": [r.height for _, r in rows], "label": [r.label for _, r in rows]}
    pq.write_table(pa.Table.from_pydict(columns, schema=schema.INDEX_SCHEMA), path)


def _write_rejects(path: Path, rejects: list[Processed]) -> None:
    rows = sorted(rejects, key=lambda r: r.source)
    table = pa.Table.from_pydict({
        "source": [r.source for r in rows], "sha256": [r.sha256 for r in rows],
        "reason": [r.reason for r in rows], "detail": [r.detail for r in rows],
    }, schema=schema.REJECTS_SCHEMA)
    pq.write_table(table, path)


def _write_previews(tmp: Path, samples: list[Processed], palette: np.ndarray | None, spill: Spill) -> None:
    images = [_decode_rgb(spill.png(r)) for r in samples[:64]]
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

