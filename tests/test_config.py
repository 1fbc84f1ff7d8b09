from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from genlib.config import ConfigError, config_hash, load_config, parse_override
from genlib.data.recipe import CorpusRecipe


@dataclass
class Inner:
    k: int = 1
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_with_nested_table_and_overrides(tmp_path):
    p = write(tmp_path, "c.toml", 'name = "n"\nrate = 2\nsizes = [3, 4]\n[inner]\nk = 5\n')
    cfg = load_config(Outer, p, ["inner.mode=b", "maybe=7", "rate=0.25"])
    assert cfg == Outer(name="n", rate=0.25, sizes=(3, 4), maybe=7, inner=Inner(k=5, mode="b"))
    assert isinstance(cfg.rate, float) and isinstance(cfg.sizes, tuple)


def test_yaml_and_json_files(tmp_path):
    y = write(tmp_path, "c.yaml", "name: y\ninner:\n  k: 9\n")
    j = write(tmp_path, "c.json", '{"name": "j", "rate": 1.5}')
    assert load_config(Outer, y).inner.k == 9
    assert load_config(Outer, j).rate == 1.5


@pytest.mark.parametrize("text, overrides, message", [
    ("nmae = 'x'\n", [], "unknown config key 'nmae'"),
    ("[inner]\nkk = 1\n", [], "unknown config key 'inner.kk'"),
    ("rate = 'fast'\n", [], "rate: expected float, got str 'fast'"),
    ("[inner]\nk = 1.5\n", [], "inner.k: expected int, got float 1.5"),
    ("", ["inner.mode=c"], "inner.mode: 'c' is not one of 'a', 'b'"),
    ("", ["sizes=[1, 'x']"], "sizes[1]: expected int"),
    ("", ["rate=-1"], "rate must be >= 0"),
    ("", ["inner=3"], "inner: expected a table"),
    ("", ["novalue"], "must look like key=value"),
])
def test_errors_name_the_key(tmp_path, text, overrides, message):
    p = write(tmp_path, "c.toml", text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(Outer, p, overrides)
    assert message in str(info.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(Outer, write(tmp_path, "bad.toml", "name = = 1"))
    with pytest.raises(ConfigError, match="unsupported config format"):
        load_config(Outer, write(tmp_path, "c.ini", "x"))


def test_override_values_are_typed():
    assert parse_override("a=3") == ("a", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=hello world") == ("a", "hello world")
    assert parse_override("a.b='x=y'") == ("a.b", "x=y")


def test_recipe_validation_names_field():
    with pytest.raises(ConfigError, match="palette.colors must be 0 .off. or in 2..256"):
        load_config(CorpusRecipe, None, ["palette.colors=300"])
    with pytest.raises(ConfigError, match="size must be in 8..1024"):
        load_config(CorpusRecipe, None, ["size=4"])


def test_config_hash_tracks_content():
    a, b = CorpusRecipe(), CorpusRecipe()
    assert config_hash(a) == config_hash(b)
    b.size = 32
    assert config_hash(a) != config_hash(b)
