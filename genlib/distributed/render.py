"""Batch rendering with Ray Data: request rows fanned out over an actor pool.

    salvage rows finished under a driver that died -> plan: skip what is done (genlib.render.resume)
      -> ray.data.from_items -> map_batches(_RenderActor, compute=ActorPoolStrategy(size=actors))
      -> manifest parts written as results stream back (every 64 rows or 15 s, and on every exit path)
      -> compaction when the manifest has many parts -> gallery of this run's requests

Each actor loads its models once (GPU share per actor with ``use_gpu``; a
fractional CPU locally so Ray Data's own tasks are never starved). A bad row
fails alone (RenderRunner catches it). A row that kills its actor is retried on a
fresh one at most ``max_attempts`` times, then failed ("actor died 3 times
rendering this row"): the count lives in the output folder
(genlib.render.attempts), and bounded ``max_restarts`` / ``max_task_retries``
make sure the job ends even if that bookkeeping cannot be written. The driver
never loses a finished row: Ctrl-C or an error flushes what it holds and
salvages rows the actors finished but never delivered.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa

from genlib.config import from_dict, to_dict
from genlib.distributed.runtime import ray_session
from genlib.render.attempts import AttemptLog, leftover_runs
from genlib.render.config import RenderConfig
from genlib.render.gallery import write_gallery
from genlib.render.manifest import MANIFEST_SCHEMA, compact_manifest, list_parts, write_manifest_part
from genlib.render.resume import plan_run
from genlib.render.runner import RenderRunner
from genlib.storage import Storage

FLUSH_ROWS, FLUSH_SECONDS = 64, 15.0  # few, larger parts (reruns read them all) but bounded loss
TICK_SECONDS = 1.0                     # the driver wakes at least this often (timed flush, progress)
PROGRESS_SECONDS = 5.0                 # at most one progress line this often
MAX_ACTOR_RESTARTS = 1000              # safety net per actor; deaths are normally bounded by max_attempts
PUMP_THREAD = "genlib-render-results"
STOP_WAIT_SECONDS = 60.0               # how long an early stop waits for the actors to drop their rows


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C during a render, after every finished row was saved (the message says how many)."""


@dataclass
class RenderSummary:
    output: str
    submitted: int
    skipped: int
    ok: int
    failed: int
    seconds: float
    gallery: str

    def __str__(self) -> str:
        return (f"rendered {self.submitted} request(s) in {self.seconds:.1f}s: {self.ok} ok, {self.failed} failed; "
                f"skipped {self.skipped} already done\nmanifest: {self.output}/manifest/\ngallery:  {self.gallery}")


class _RenderActor:
    """Ray Data actor: one RenderRunner per actor; ``__call__`` renders a batch of rows."""

    def __init__(self, config: dict[str, Any], run_id: str) -> None:
        self.runner = RenderRunner(from_dict(RenderConfig, config), run_id=run_id, watchdog=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.runner.render_rows(batch.to_pylist())  # pyarrow: missing strings stay None, not NaN
        return pa.Table.from_pylist([{k: r.get(k) for k in MANIFEST_SCHEMA.names} for r in results],
                                    schema=MANIFEST_SCHEMA)


def run_render(requests: list[dict[str, Any]], config: RenderConfig, address: str | None = None,
               progress: bool = True) -> RenderSummary:
    """Render every request not already done into ``config.output``."""
    start = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    salvage_leftovers(config.output, run_id)
    plan = plan_run(requests, config)
    writer = _ManifestWriter(config.output, run_id)
    meter = _Progress(len(plan.todo), enabled=progress)
    stream = _fan_out(plan.todo, config, run_id, address)
    try:
        if plan.todo:
            _drain(stream, writer, meter)
    except KeyboardInterrupt:
        stream.close()
        saved = writer.close()
        raise RenderInterrupted(f"interrupted: {saved} finished row(s) are in {config.output}/manifest/; "
                                f"run the same command again to render the rest") from None
    finally:
        stream.close()  # on an early exit: stops the actors and Ray before the last flush and salvage
        writer.close()
        meter.done()
    _compact_if_needed(config)
    gallery = _gallery(config.output, [r["request_id"] for r in requests], run_id)
    return RenderSummary(Storage(config.output).root, len(plan.todo), len(plan.skipped), writer.ok, writer.failed,
                         time.perf_counter() - start, gallery)


def _drain(stream: Iterable[list[dict]], writer: _ManifestWriter, meter: _Progress) -> None:
    """Hand every finished row to the writer (which flushes by count and by time: the stream
    yields [] while it stalls) and the progress line."""
    for rows in stream:
        for row in writer.add(rows):
            meter.count(row)
        meter.tick()


def salvage_leftovers(output: str, run_id: str) -> int:
    """Rows finished by the actors of an earlier driver that died before saving them: into the
    manifest now (then that run's attempt records are removed). Returns how many rows."""
    saved = 0
    for log in leftover_runs(output, keep=run_id):
        rows = log.finished_rows()
        if rows:
            write_manifest_part(output, rows, f"{log.run_id}-salvaged")
        saved += len(rows)
        log.remove()
    return saved


def _fan_out(todo: list[dict], config: RenderConfig, run_id: str, address: str | None) -> Iterator[list[dict]]:
    """Yield lists of manifest rows as they finish, and [] at least every TICK_SECONDS meanwhile."""
    import ray  # lazy: heavy, and a run with nothing to do never needs it
    from ray.data import ActorPoolStrategy, DataContext

    with ray_session(address):
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # one progress line of our own instead (_Progress)
        ctx.print_on_execution_start = False
        blocks = max(1, -(-len(todo) // config.batch_size))  # one block per batch
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates **ray_remote_args but names no parameter for max_restarts /
            # max_task_retries; without them Ray Data retries a dying actor's batch for ever.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                _RenderActor, fn_constructor_kwargs={"config": to_dict(config), "run_id": run_id},
                batch_size=config.batch_size, batch_format="pyarrow",
                compute=ActorPoolStrategy(size=min(config.actors, blocks)), num_cpus=config.cpus_per_actor,
                num_gpus=config.gpus_per_actor if config.use_gpu else 0, **_retry_bounds(config, len(todo)))
        pump = _Pump(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            yield from pump.items()
        finally:
            if pump.running():  # stopping early: end Ray Data's execution before Ray shuts down
                with _quiet("ray.data"):  # the abort we cause is not an error to report
                    AttemptLog(config.output, run_id).request_stop()
                    pump.wait(STOP_WAIT_SECONDS)


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence logger ``name`` for the block (its level is restored after)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _retry_bounds(config: RenderConfig, rows: int) -> dict[str, int]:
    """Every actor death costs one attempt of the row being rendered, so a batch needs at most
    max_attempts x batch_size retries before all its rows are answered without rendering."""
    return {"max_task_retries": config.max_attempts * config.batch_size + 1,
            "max_restarts": min(MAX_ACTOR_RESTARTS, config.max_attempts * rows + 1)}


class _Pump:
    """Iterates Ray's result stream in a thread so the driver keeps a clock: a stalled stream
    still yields [] every TICK_SECONDS (timed flushes, progress) and Ctrl-C is seen at once.

    When the driver stops early the thread must end before Ray shuts down (Ray Data's clean-up
    in a thread outliving Ray would start a new local Ray): the driver writes STOP, the actors
    drop their rows (genlib.render.attempts), the stream fails and the thread closes it."""

    def __init__(self, batches: Iterable[pa.Table]) -> None:
        self.box: queue.Queue = queue.Queue()
        self.stream = iter(batches)
        self.thread = threading.Thread(target=self._pull, name=PUMP_THREAD, daemon=True)
        self.thread.start()

    def _pull(self) -> None:
        try:
            for batch in self.stream:
                self.box.put(batch.to_pylist())
            self.box.put(None)
        except BaseException as exc:  # handed to the driver thread, which raises it
            self.box.put(exc)
        finally:
            close = getattr(self.stream, "close", None)  # a generator: its clean-up stops the executor
            if callable(close):
                close()

    def items(self) -> Iterator[list[dict]]:
        while True:
            try:
                item = self.box.get(timeout=TICK_SECONDS)
            except queue.Empty:
                yield []
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def running(self) -> bool:
        return self.thread.is_alive()

    def wait(self, seconds: float) -> None:
        self.thread.join(seconds)


class _ManifestWriter:
    """Buffers finished rows and appends them as manifest parts: every FLUSH_ROWS rows or
    FLUSH_SECONDS, and on close; close also salvages rows the actors finished but never
    delivered (an interrupted run). Each request is written once per run."""

    def __init__(self, output: str, run_id: str) -> None:
        self.output, self.run_id = output, run_id
        self.buffer: list[dict] = []
        self.seen: set[str] = set()
        self.parts, self.ok, self.failed = 0, 0, 0
        self.last_flush = time.monotonic()
        self.closed = False

    def add(self, rows: list[dict]) -> list[dict]:
        """Take new rows (duplicates of a request dropped); returns the rows taken."""
        fresh = [r for r in rows if r["request_id"] not in self.seen]
        for r in fresh:
            self.seen.add(r["request_id"])
            self.ok += r["status"] == "ok"
            self.failed += r["status"] != "ok"
            if r["status"] != "ok":
                print(f"[render] {r['request_id'][:120]} failed: {r['error']}", file=sys.stderr)
        self.buffer += fresh
        if len(self.buffer) >= FLUSH_ROWS or (self.buffer and time.monotonic() - self.last_flush > FLUSH_SECONDS):
            self.flush()
        return fresh

    def flush(self) -> None:
        if self.buffer:
            write_manifest_part(self.output, self.buffer, f"{self.run_id}-{self.parts:05d}")
            self.buffer, self.parts = [], self.parts + 1
        self.last_flush = time.monotonic()

    def close(self) -> int:
        """Flush, salvage undelivered finished rows, drop the run's attempt records; -> rows saved."""
        if not self.closed:
            self.closed = True
            self.flush()
            log = AttemptLog(self.output, self.run_id)
            self.add(log.finished_rows())
            self.flush()
            log.remove()
        return len(self.seen)


class _Progress:
    """One line: rows done/failed, rate, ETA. In place on a terminal, else a new line at most
    every PROGRESS_SECONDS and only when rows finished since the last one, so logs get each
    count once."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.enabled = total, enabled and total > 0
        self.ok = self.failed = 0
        self.start = self.last = time.monotonic()
        self.shown = (0, 0)
        self.tty = sys.stderr.isatty()

    def count(self, row: dict) -> None:
        self.ok += row["status"] == "ok"
        self.failed += row["status"] != "ok"

    def line(self) -> str:
        done = self.ok + self.failed
        rate = done / max(time.monotonic() - self.start, 1e-9)
        eta = _duration((self.total - done) / rate) if rate > 0 else "?"
        return (f"[render] {done}/{self.total} rows ({self.ok} ok, {self.failed} failed), "
                f"{rate:.2f} rows/s, ETA {eta}")

    def tick(self, force: bool = False) -> None:
        if not self.enabled or (not force and time.monotonic() - self.last < PROGRESS_SECONDS):
            return
        self.last = time.monotonic()
        if (self.ok, self.failed) == self.shown:  # nothing new: no line (a stall prints nothing)
            return
        self.shown = (self.ok, self.failed)
        text = self.line()
        print(f"\r{text}\033[K" if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def done(self) -> None:
        self.tick(force=True)
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _compact_if_needed(config: RenderConfig) -> None:
    parts = len(list_parts(config.output))
    if config.compact or (config.compact_parts and parts > config.compact_parts):
        try:
            compact_manifest(config.output)
        except OSError as exc:  # compaction is an optimisation and crash-safe: the job still succeeds
            print(f"[render] manifest compaction skipped: {exc}", file=sys.stderr)


def _gallery(output: str, request_ids: list[str], run_id: str) -> str:
    """The gallery never fails the job: a problem is reported instead of the page's path."""
    try:
        return write_gallery(output, request_ids, run_id)
    except Exception as exc:  # a gallery is for people; the manifest is the record
        print(f"[render] gallery not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return f"(not written: {exc})"
