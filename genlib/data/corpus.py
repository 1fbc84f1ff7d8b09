"""Read-side view of a built corpus (see ``schema`` for the layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genlib.data import schema


@dataclass
class Corpus:
    root: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def corpus_id(self) -> str:
        return self.manifest["corpus_id"]

    @property
    def image_size(self) -> int:
        return int(self.manifest["image"]["width"])

    @property
    def palette(self) -> np.ndarray | None:
        """[K, 3] uint8 RGB, or None when the corpus was built without a palette."""
        p = self.manifest.get("palette")
        return None if p is None else np.asarray(p, dtype=np.uint8)

    def count(self, split: str) -> int:
        return int(self.manifest["counts"].get(split, 0))

    def shards(self, split: str) -> list[str]:
        """Absolute shard paths of ``split`` in name order."""
        return [str(self.root / s["file"]) for s in self.manifest["shards"] if s["split"] == split]

    def index(self) -> pa.Table:
        return pq.read_table(self.root / schema.INDEX)

    def rejects(self) -> pa.Table:
        return pq.read_table(self.root / schema.REJECTS)


def open_corpus(path: str | Path) -> Corpus:
    """Open a corpus folder; a clear error when it is missing, not a corpus, or empty."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"corpus not found: {root}")
    manifest = schema.read_manifest(root)
    if not manifest.get("accepted"):
        raise ValueError(f"corpus {root} holds no samples")
    missing = [s["file"] for s in manifest["shards"] if not (root / s["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"corpus {root} is incomplete: missing shard(s) {', '.join(missing[:3])}")
    return Corpus(root, manifest)
