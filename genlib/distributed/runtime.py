"""Connect to Ray (an existing cluster when one is configured, else an embedded local one),
keep its console chatter out of genlib's output, and leave no Ray process behind.

- Console: by default Ray logs at ERROR level on the driver, workers' output stays in
  Ray's log files (``log_to_driver=False``) and Ray Data's console handler is raised to
  ERROR; ``genlib --verbose`` (or ``GENLIB_VERBOSE=1``, which ``ray job submit``
  entrypoints inherit) shows all of it. genlib's own progress lines are printed by the
  driver (see :mod:`genlib.distributed.train`), so each appears once either way.
- Clean-up: an embedded Ray that :func:`ray_session` started is shut down on every way
  out of the block (normal end, exception, Ctrl-C, SIGTERM), and then every process of
  *that* session (found by its session folder, never by name) still alive after a
  grace period is killed: Ray Train's controller actor has been seen to outlive
  ``ray.shutdown()`` as an orphan holding ~1 GB.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

VERBOSE_ENV = "GENLIB_VERBOSE"
GRACE_S = 5.0  # seconds a session's processes get to exit on their own after ray.shutdown()


def set_verbose(verbose: bool) -> None:
    """``genlib --verbose``: show Ray's own log lines (for this process and its children)."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """``address=None``: join the cluster named by ``RAY_ADDRESS`` (set by
    ``ray job submit``) if any, else start an embedded local Ray. Returns True
    when this call started Ray (so the caller may shut it down)."""
    import ray  # lazy: importing ray costs seconds; callers import this module without using Ray

    quiet_ray_data()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    loud = verbose()
    kwargs = {"ignore_reinit_error": True, "log_to_driver": loud,
              "logging_level": logging.INFO if loud else logging.ERROR}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def quiet_ray_data() -> None:
    """Without --verbose, raise Ray Data's console handler to ERROR (its "Progress bars
    disabled" and progress INFO lines); its file handler keeps everything in ray-data.log.
    Ray Data installs its handlers when ``ray.data`` is imported, so callers import it
    before entering :func:`ray_session` (genlib/distributed/render.py does)."""
    if verbose() or "ray.data" not in sys.modules:
        return
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)  # the console one; Ray's file handlers are plain Handlers


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """``init_ray`` for the block; shut Ray down afterwards only if this call
    started it (a cluster or an enclosing session is left running). For an embedded
    Ray it started, also kill any process of that session still alive."""
    started = init_ray(address)
    if not started:
        yield
        return
    embedded = not (address or os.environ.get("RAY_ADDRESS"))  # else we only connected to a cluster
    session_dir, previous = None, None
    try:  # from here on, whatever happens (even in this setup), the Ray we started is stopped
        session_dir = current_session_dir() if embedded else None
        previous = _raise_on_sigterm()
        yield
    finally:
        try:
            killed = shutdown_session(session_dir)
            if killed and verbose():
                print(f"genlib: killed {len(killed)} Ray process(es) that outlived ray.shutdown(): {killed}",
                      file=sys.stderr)
        finally:
            _restore_sigterm(previous)


def shutdown_session(session_dir: str | None) -> list[int]:
    """``ray.shutdown()``; with the session folder of an embedded Ray this process started,
    then kill every process of that session that outlived it. Returns the pids killed."""
    import ray  # lazy, as in init_ray

    ours = ray_children() if session_dir else []  # before shutdown: exiting workers may close their logs
    try:
        ray.shutdown()
    finally:
        found = {p.pid: p for p in [*ours, *session_processes(session_dir)]} if session_dir else {}
        killed = stop_processes(list(found.values()))
    return killed


# ============================================================================ processes


def current_session_dir() -> str:
    """This driver's Ray session folder (``/tmp/ray/session_...``): every process of the
    session keeps log files open under it."""
    import ray  # lazy, as in init_ray

    return ray._private.worker._global_node.get_session_dir_path()  # no public accessor in Ray 2.60


def session_processes(root: str) -> list:
    """Live processes (psutil.Process, this one excluded) whose command line names ``root`` or
    which hold a file open under it: a Ray session folder, or a ``ray start --temp-dir``.
    Scoped this way, other people's Ray instances on the same machine are never touched."""
    import ray  # noqa: F401  # lazy; puts Ray's bundled psutil (ray/thirdparty_files) on sys.path
    import psutil

    root = os.path.realpath(root).rstrip("/") + "/"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            mentions = any(root in part + "/" for part in proc.info["cmdline"] or [])
            if mentions or any(f.path.startswith(root) for f in proc.open_files()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def ray_children() -> list:
    """This process's descendants that are Ray's (raylet, GCS, ``ray::`` workers, Ray's Python
    daemons): an embedded Ray's processes all start as our children."""
    import ray  # noqa: F401  # lazy, as in session_processes
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("ray" in part for part in proc.cmdline()[:3]):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_processes(procs: list, grace: float = GRACE_S) -> list[int]:
    """Give ``procs`` ``grace`` seconds to exit, then SIGTERM, then SIGKILL (Ray Train's
    controller ignores SIGTERM). Returns the PIDs still alive after ``grace`` (signalled)."""
    import ray  # noqa: F401  # lazy, as in session_processes
    import psutil

    if not procs:
        return []
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(alive, timeout=2)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


def _signal(proc, sig: int) -> None:
    import psutil  # lazy, as in session_processes

    try:
        proc.send_signal(sig)  # psutil checks the PID still names the same process (no reuse)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _raise_on_sigterm():
    """A SIGTERM (``kill``, a job scheduler) unwinds like Ctrl-C, so the clean-up runs."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
