from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from genlib.config import ConfigError, Fields, config_hash, load_config, parse_override
from genlib.data.recipe import CorpusRecipe, PaletteConfig, ShardConfig
from genlib.train.config import TrainConfig


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
    with pytest.raises(ConfigError, match=re.escape(
            "palette: PaletteConfig.colors: must be 0 (off) or an integer in [2, 256], got 300")):
        load_config(CorpusRecipe, None, ["palette.colors=300"])
    with pytest.raises(ConfigError, match=re.escape("CorpusRecipe.size: must be an integer in [8, 1024], got 4")):
        load_config(CorpusRecipe, None, ["size=4"])


@pytest.mark.parametrize("cls, kw, message", [
    (PaletteConfig, {"colors": 1}, "PaletteConfig.colors: must be 0 (off) or an integer in [2, 256], got 1"),
    (PaletteConfig, {"sample_pixels": 999}, "PaletteConfig.sample_pixels: must be an integer >= 1000, got 999"),
    (PaletteConfig, {"iterations": 0}, "PaletteConfig.iterations: must be an integer >= 1, got 0"),
    (ShardConfig, {"min_shards": 0}, "ShardConfig.min_shards: must be an integer >= 1, got 0"),
    (CorpusRecipe, {"name": ""}, "CorpusRecipe.name: must be a non-empty string, got ''"),
    (CorpusRecipe, {"name": "a.b"}, "CorpusRecipe.name: must not contain '/', '\\', ' ', '.' or '%', got 'a.b'"),
    (CorpusRecipe, {"min_size": 0}, "CorpusRecipe.min_size: must be an integer >= 1, got 0"),
    (CorpusRecipe, {"crop": 0}, "CorpusRecipe.crop: must be an integer >= 1 (or None), got 0"),
    (CorpusRecipe, {"recipe": "sprites", "box_file": "b.txt"},
     "CorpusRecipe.box_file: only applies to recipe = 'faces', got 'b.txt'"),
    (CorpusRecipe, {"box_scale": 0.0}, "CorpusRecipe.box_scale: must be a finite number > 0, got 0.0"),
    (CorpusRecipe, {"background": (0, 0, 256)},
     "CorpusRecipe.background: must be three integers in [0, 255], got (0, 0, 256)"),
    (CorpusRecipe, {"margin": 1.0}, "CorpusRecipe.margin: must lie in [0, 1), got 1.0"),
    (CorpusRecipe, {"alpha_threshold": 255}, "CorpusRecipe.alpha_threshold: must be an integer in [0, 254], got 255"),
    (CorpusRecipe, {"val_fraction": -0.1}, "CorpusRecipe.val_fraction: must lie in [0, 1), got -0.1"),
    (CorpusRecipe, {"val_fraction": 0.5, "test_fraction": 0.5},
     "CorpusRecipe.test_fraction: must leave some training data (val_fraction + test_fraction = 1 >= 1), got 0.5"),
])
def test_recipe_messages_name_class_field_reason_and_value(cls, kw, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(**kw)


@pytest.mark.parametrize("kw, message", [
    ({"steps": 0}, "TrainConfig.steps: must be an integer >= 1, got 0"),
    ({"batch_size": 9, "num_workers": 2}, "TrainConfig.batch_size: must be divisible by num_workers = 2, got 9"),
    ({"eval_batches": -1}, "TrainConfig.eval_batches: must be an integer >= 0, got -1"),
    ({"cpus_per_worker": 0.0}, "TrainConfig.cpus_per_worker: must be a finite number > 0, got 0.0"),
    ({"model": {"lr": 1.0}},
     "TrainConfig.model: must be a table with a 'family' key (dcgan, vae or pixelrnn), got {'lr': 1.0}"),
])
def test_train_config_messages(kw, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(**kw)


@dataclass
class Checked:
    count: int | None = 1
    rate: float | None = 0.5
    mode: str = "a"
    flag: bool = False
    label: str = "x"

    def __post_init__(self):
        check = Fields(self)
        check.integer("count", low=1, high=9, optional=True)
        check.number("rate", low=0, below=1, optional=True, as_float=True)
        check.choice("mode", ("a", "b"))
        check.boolean("flag")
        check.text("label")


@pytest.mark.parametrize("kw, message", [
    ({"count": 0}, "Checked.count: must be an integer in [1, 9] (or None), got 0"),
    ({"count": 2.0}, "Checked.count: must be an integer in [1, 9] (or None), got 2.0"),
    ({"count": True}, "Checked.count: must be an integer in [1, 9] (or None), got True"),
    ({"rate": 1}, "Checked.rate: must lie in [0, 1) (or None), got 1"),
    ({"rate": float("nan")}, "Checked.rate: must lie in [0, 1) (or None), got nan"),
    ({"rate": "0.5"}, "Checked.rate: must lie in [0, 1) (or None), got '0.5'"),
    ({"mode": "c"}, "Checked.mode: must be one of 'a', 'b', got 'c'"),
    ({"flag": 1}, "Checked.flag: must be true or false, got 1"),
    ({"label": " "}, "Checked.label: must be a non-empty string, got ' '"),
])
def test_fields_messages(kw, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Checked(**kw)


def test_fields_optional_and_as_float():
    c = Checked(count=None, rate=None)
    assert c.count is None and c.rate is None
    c = Checked(rate=0)
    assert c.rate == 0.0 and isinstance(c.rate, float)
    assert isinstance(Checked(count=3).count, int)


@pytest.mark.parametrize("kw, bounds", [
    ({"low": 1}, "must be an integer >= 1"),
    ({"high": 5}, "must be an integer <= 5"),
    ({}, "must be an integer"),
])
def test_fields_integer_bounds_in_message(kw, bounds):
    @dataclass
    class One:
        n: object

        def __post_init__(self):
            Fields(self).integer("n", **kw)

    with pytest.raises(ValueError, match=f"^{re.escape(f'One.n: {bounds}, got 7.5')}$"):
        One(7.5)


@pytest.mark.parametrize("kw, value, text", [
    ({"above": 0}, 0, "must be a finite number > 0"),
    ({"low": 0}, -1, "must be a finite number >= 0"),
    ({"below": 2}, 2, "must be a finite number < 2"),
    ({"high": 2}, 3, "must be a finite number <= 2"),
    ({"above": 0, "high": 1}, 0, "must lie in (0, 1]"),
    ({}, float("inf"), "must be a finite number"),
])
def test_fields_number_bounds_in_message(kw, value, text):
    @dataclass
    class One:
        x: object

        def __post_init__(self):
            Fields(self).number("x", **kw)

    with pytest.raises(ValueError, match=f"^{re.escape(f'One.x: {text}, got {value!r}')}$"):
        One(value)


def test_fields_require_and_fail():
    @dataclass
    class Odd:
        window: int = 3

        def __post_init__(self):
            Fields(self).require("window", self.window % 2 == 1, "must be odd")

    with pytest.raises(ValueError, match=r"^Odd\.window: must be odd, got 4$"):
        Odd(4)
    with pytest.raises(ValueError, match=r"^Odd\.size: too big, got 99$"):
        Fields(Odd()).fail("size", "too big", 99)


def test_config_hash_tracks_content():
    a, b = CorpusRecipe(), CorpusRecipe()
    assert config_hash(a) == config_hash(b)
    b.size = 32
    assert config_hash(a) != config_hash(b)
