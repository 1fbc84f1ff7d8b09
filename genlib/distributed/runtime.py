"""Connect to Ray: an existing cluster when one is configured, else an embedded local one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """``address=None``: join the cluster named by ``RAY_ADDRESS`` (set by
    ``ray job submit``) if any, else start an embedded local Ray. Returns True
    when this call started Ray (so the caller may shut it down)."""
    import ray  # lazy: importing ray costs seconds; callers import this module without using Ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """``init_ray`` for the block; shut Ray down afterwards only if this call
    started it (a cluster or an enclosing session is left running)."""
    started = init_ray(address)
    try:
        yield
    finally:
        if started:
            import ray  # lazy, as in init_ray

            ray.shutdown()
