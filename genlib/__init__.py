"""genlib: train and render classic generative image models at scale.

Models, data and render algorithms live in single-device, Ray-free modules
(``genlib.data``, ``genlib.models``); every Ray and ``torch.distributed`` line
lives in ``genlib.distributed``.
"""

__version__ = "0.1.0"
