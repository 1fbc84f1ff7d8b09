"""Helpers shared by the benchmark scripts (run as ``python benchmarks/bench_X.py``,
so this module is importable as ``_common`` from the script's own folder)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def source_revision() -> str:
    """The genlib commit benchmarked (``+dirty`` with uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def machine(gpu: bool = False) -> dict:
    """What the figures depend on; the load average shows how busy the shared machine was.
    ``gpu``: also record the CUDA device name (None when there is none)."""
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_start": os.getloadavg(), "revision": source_revision()}
    try:
        import torch
    except ImportError:
        return info
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    if gpu:
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def build_demo_corpus(work: Path, count: int) -> Path:
    """Draw ``count`` 128 px demo faces and build them with the demo recipe (64 px)."""
    from genlib.demo.assets import DEMO_RECIPE
    from genlib.config import from_dict
    from genlib.data.build import build_corpus
    from genlib.demo.faces import generate_demo_faces
    from genlib.data.recipe import CorpusRecipe

    generate_demo_faces(work / "raw", count=count)
    build_corpus(work / "raw", work / "corpus", from_dict(CorpusRecipe, DEMO_RECIPE), progress=False)
    return work / "corpus"
