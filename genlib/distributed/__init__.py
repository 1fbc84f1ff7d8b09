"""Every Ray and torch.distributed line in genlib lives in this subpackage.

The CLI and ``jobs/`` call into it; ``genlib.data``, ``genlib.models`` and the
render algorithms stay single-device and importable without Ray.
"""
