"""Model families by name, and how a corpus fills in their data-dependent fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from genlib.config import ConfigError, from_dict
from genlib.data.corpus import Corpus
from genlib.models.base import Family
from genlib.models.dcgan import DCGAN, DCGANConfig
from genlib.models.pixelrnn import PixelRNN, PixelRNNConfig
from genlib.models.vae import VAE, VAEConfig


@dataclass(frozen=True)
class FamilySpec:
    family: type[Family]
    config: type
    target: str                                  # loader target: "image" or "index"
    from_corpus: Callable[[Corpus], dict[str, Any]]


def _image_fields(corpus: Corpus) -> dict[str, Any]:
    return {"image_size": corpus.image_size}


def _palette_fields(corpus: Corpus) -> dict[str, Any]:
    if corpus.palette is None:
        raise ConfigError(f"model 'pixelrnn' needs a palette corpus, and {corpus.root} has none: build it with "
                          f"palette.colors > 0 (e.g. datasets/pokemon-pixelrnn.toml)")
    return {"num_colors": len(corpus.palette), "height": corpus.image_size, "width": corpus.image_size,
            "palette": corpus.palette.tolist()}


FAMILIES: dict[str, FamilySpec] = {
    "dcgan": FamilySpec(DCGAN, DCGANConfig, "image", _image_fields),
    "vae": FamilySpec(VAE, VAEConfig, "image", _image_fields),
    "pixelrnn": FamilySpec(PixelRNN, PixelRNNConfig, "index", _palette_fields),
}


def spec(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise ConfigError(f"model.family: unknown model {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def resolve_model_config(model: dict[str, Any], corpus: Corpus) -> Any:
    """The family's typed config: the user's ``[model]`` table plus the fields the
    corpus determines (image size, palette). A user value that contradicts the
    corpus is an error, not a silent override."""
    args = {k: v for k, v in model.items() if k != "family"}
    s = spec(model.get("family", ""))
    for key, value in s.from_corpus(corpus).items():
        if key in args and args[key] != value and key != "palette":
            raise ConfigError(f"model.{key} = {args[key]!r} does not match corpus {corpus.root} ({key} = {value!r})")
        args[key] = value
    return from_dict(s.config, args, prefix="model.")


def build_family(model: dict[str, Any], corpus: Corpus, device: Any = "cpu") -> Family:
    s = spec(model.get("family", ""))
    return s.family(resolve_model_config(model, corpus), device=device)
