"""A corpus built with Ray tasks is byte-identical to a local build; the tasks read their
inputs themselves (a chunk carries references: paths and zip entries, not bytes)."""

from __future__ import annotations

import zipfile

import pytest

from genlib.data.build import build_corpus
from tests.conftest import faces_recipe
from tests.data.test_build import all_files

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_build_matches_local_build(raw_faces, faces_corpus, tmp_path, local_ray):
    from genlib.distributed.build import RayMapper

    mapper = RayMapper(num_cpus=0.5, max_in_flight=2)  # fractional CPUs: shares the 2-CPU test Ray
    out = tmp_path / "ray"
    result = build_corpus(raw_faces, out, faces_recipe(), mapper=mapper, progress=False)
    assert result.manifest["accepted"] == 40
    assert all_files(out) == all_files(faces_corpus)
    for name in all_files(out):
        assert (out / name).read_bytes() == (faces_corpus / name).read_bytes(), name
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as z:  # members read by the tasks from the zip
        for name in all_files(raw_faces):
            z.write(raw_faces / name, name)
    zipped = build_corpus(tmp_path / "faces.zip", tmp_path / "zip", faces_recipe(), mapper=mapper, progress=False)
    assert zipped.manifest["corpus_id"] == result.manifest["corpus_id"]  # same sources and bytes, same recipe
    for name in all_files(out):
        if name.endswith(".tar") or name.endswith(".parquet"):
            assert (tmp_path / "zip" / name).read_bytes() == (out / name).read_bytes(), name
