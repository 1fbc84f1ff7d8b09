"""Typed configuration: dataclasses loaded from TOML or YAML, with CLI overrides.

Every config in genlib is a (possibly nested) dataclass. Files are instances of
those dataclasses: ``load_config(CorpusRecipe, "datasets/pokemon.toml",
overrides=["size=32", "palette.colors=176"])``. An unknown key or a value of the
wrong type is a :class:`ConfigError` naming the dotted key, never a silent
default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import tomllib
import types
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """Build ``cls`` from a TOML/YAML file (optionally one ``section`` of it) plus
    ``key=value`` overrides (dotted keys for nested fields)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        if section is not None:
            if section not in data:
                raise ConfigError(f"{path}: missing section [{section}]")
            data = data[section]
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return from_dict(cls, data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(p.read_text())
        if suffix in (".yaml", ".yml"):
            import yaml  # ships with ray; only needed for YAML configs

            loaded = yaml.safe_load(p.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: top level must be a mapping")
            return loaded
        if suffix == ".json":
            return json.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: cannot parse: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError without importing yaml eagerly
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(f"{p}: cannot parse: {exc}") from exc
        raise
    raise ConfigError(f"{p}: unsupported config format {suffix!r} (use .toml, .yaml or .json)")


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``. Values are parsed as TOML scalars/arrays
    when possible (so ``3`` is an int, ``[1, 2]`` a list, ``true`` a bool) and
    kept as plain strings otherwise."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Recursively build dataclass ``cls`` from ``data``, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = prefix + unknown[0]
        raise ConfigError(f"unknown config key {name!r} (known keys: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; convert lists to tuples, ints to
    floats and nested tables to dataclasses where the type asks for it."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        return _coerce_sequence(tp, origin, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, "table", value)
        return dict(value)
    return _coerce_scalar(tp, value, key)


def _coerce_sequence(tp: Any, origin: type, value: Any, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, "list", value)
    args = get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item_tp = args[0] if args else Any
    items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(key, "bool", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, "int", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, "float", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(key, "string", value)
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _type_error(key, tp.__name__, value)
    return value


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {value!r}")


def is_int(value: Any) -> bool:
    """A real integer (bool excluded: ``True`` is not a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number (bool excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class Fields:
    """Validation of a config or params dataclass, with one message form.

    Use it in ``__post_init__``; every failed check raises ``ValueError`` naming the
    class, the field and the offending value::

        def __post_init__(self) -> None:
            check = Fields(self)
            check.integer("iterations", low=1)       # StyleParams.iterations: must be an integer >= 1, got 0
            check.number("lr", above=0)              # ...: must be a finite number > 0, got -1.0
            check.number("momentum", low=0, below=1)  # ...: must lie in [0, 1), got 1.5
            check.choice("optimizer", ("lbfgs", "adam"))
            check.require("window", self.window % 2 == 1, "must be odd")

    Numbers accept ints and floats (not bools) and may be normalised to ``float`` with
    ``as_float=True``; ``optional=True`` lets a field be None.
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.owner = type(obj).__name__

    def fail(self, name: str, message: str, value: Any) -> None:
        raise ValueError(f"{self.owner}.{name}: {message}, got {value!r}")

    def require(self, name: str, ok: bool, message: str) -> None:
        """Raise ``<Owner>.<name>: <message>, got <value>`` unless ``ok``."""
        if not ok:
            self.fail(name, message, getattr(self.obj, name))

    def integer(self, name: str, low: int | None = None, high: int | None = None, *,
                optional: bool = False) -> None:
        """An int (not a bool) in ``[low, high]`` (either bound may be absent)."""
        value = getattr(self.obj, name)
        if optional and value is None:
            return
        ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            self.fail(name, "must be an integer" + _bounds(low, high, None, None) + _or_none(optional), value)

    def number(self, name: str, low: float | None = None, high: float | None = None, *,
               above: float | None = None, below: float | None = None, optional: bool = False,
               as_float: bool = False) -> None:
        """A finite int or float with ``low <= v <= high``, ``v > above``, ``v < below``."""
        value = getattr(self.obj, name)
        if optional and value is None:
            return
        ok = (is_real(value) and (low is None or value >= low) and (high is None or value <= high)
              and (above is None or value > above) and (below is None or value < below))
        if not ok:
            bounds = _bounds(low, high, above, below)
            two_sided = bounds.startswith(" in ")
            text = ("must lie" + bounds) if two_sided else ("must be a finite number" + bounds)
            self.fail(name, text + _or_none(optional), value)
        if as_float:
            setattr(self.obj, name, float(value))

    def choice(self, name: str, options: Iterable[Any]) -> None:
        """One of ``options``."""
        options = tuple(options)
        value = getattr(self.obj, name)
        if isinstance(value, bool) or value not in options:
            self.fail(name, f"must be one of {', '.join(map(repr, options))}", value)

    def boolean(self, name: str) -> None:
        self.require(name, isinstance(getattr(self.obj, name), bool), "must be true or false")

    def text(self, name: str, *, empty: bool = False) -> None:
        """A string (non-empty unless ``empty``)."""
        value = getattr(self.obj, name)
        self.require(name, isinstance(value, str) and (empty or value.strip() != ""),
                     "must be a string" if empty else "must be a non-empty string")


def _bounds(low: Any, high: Any, above: Any, below: Any) -> str:
    """" >= 1", " > 0", " in [0, 1)", ... for the messages of :class:`Fields`."""
    lo = (f"[{low}" if low is not None else f"({above}") if (low is not None or above is not None) else None
    hi = (f"{high}]" if high is not None else f"{below})") if (high is not None or below is not None) else None
    if lo and hi:
        return f" in {lo}, {hi}"
    if lo:
        return f" >= {low}" if low is not None else f" > {above}"
    if hi:
        return f" <= {high}" if high is not None else f" < {below}"
    return ""


def _or_none(optional: bool) -> str:
    return " (or None)" if optional else ""


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def config_hash(obj: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable short hash of a config's content (key order independent), without the
    top-level fields named in ``exclude``."""
    fields = {k: v for k, v in to_dict(obj).items() if k not in exclude}
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


__all__ = ["ConfigError", "load_config", "from_dict", "to_dict", "config_hash", "read_config_file",
           "parse_override", "Fields", "is_int", "is_real"]
