"""Shipped recipes load; the CLI's demo and info commands work end to end."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from genlib.cli import main
from genlib.demo.assets import DEMO_RECIPE
from genlib.config import from_dict, load_config
from genlib.data.recipe import CorpusRecipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "datasets").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    recipe = load_config(CorpusRecipe, path)
    assert recipe.name and recipe.size in (20, 32, 40, 64)


def test_demo_recipe_file_matches_the_code():
    assert load_config(CorpusRecipe, ROOT / "datasets/demo-faces.toml") == from_dict(CorpusRecipe, DEMO_RECIPE)


def test_demo_command_builds_a_corpus(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--count", "24", "--steps", "0"]) == 0
    out = capsys.readouterr().out
    corpus = tmp_path / "corpus"
    assert f"corpus:  {corpus.resolve()}" in out
    manifest = json.loads((corpus / "corpus.json").read_text())
    assert manifest["accepted"] == 24 and manifest["name"] == "demo-faces"
    assert (corpus / "preview.png").is_file()
    assert main(["data", "info", str(corpus)]) == 0
    assert "accepted 24" in capsys.readouterr().out


def test_cli_reports_bad_config_key(tmp_path, capsys):
    bad = tmp_path / "r.toml"
    bad.write_text('name = "x"\nsise = 32\n')
    code = main(["data", "build", str(tmp_path), "--recipe", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "unknown config key 'sise'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")) + sorted((ROOT / "experiments" / "configs")
                                                                                 .glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_train_config_loads(path):
    from genlib.models.registry import FAMILIES
    from genlib.train.config import TrainConfig

    cfg = load_config(TrainConfig, path)
    assert cfg.family in FAMILIES
    spec = FAMILIES[cfg.family]
    known = {f for f in spec.config.__dataclass_fields__}
    assert set(cfg.model) - {"family"} <= known, f"{path.name}: unknown model keys"


@pytest.mark.parametrize("job", ["build", "train", "render", "pipeline"])
def test_job_entrypoints_forward_to_the_cli(job):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    expected = {"build": "--recipe", "train": "--resume", "render": "--requests", "pipeline": "--workdir"}[job]
    assert "usage: genlib" in out and expected in out


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import genlib.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt("interrupted: 3 finished row(s) are in out/manifest/")

    monkeypatch.setattr(cli, "cmd_report", interrupted)
    assert main(["report", "runs/x"]) == 130
    assert capsys.readouterr().err == "genlib: interrupted: 3 finished row(s) are in out/manifest/\n"


def test_report_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a genlib run folder (no run.json)" in capsys.readouterr().err
    assert main(["report", f"file://{tmp_path}/absent"]) == 2  # URIs are looked up through Storage
