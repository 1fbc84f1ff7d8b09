"""Render one request row into one manifest row (Ray-free).

:class:`RenderRunner` holds the loaded renderers (created lazily, once per kind:
an actor that only sees style rows never loads InceptionV3) and never raises
for a bad row: any error becomes a ``failed`` manifest row and the job goes on.
The Ray Data actor in ``genlib.distributed.render`` is a thin wrapper around it,
and the benchmark's plain-loop reference calls it directly.

Per row, in order:

1. the attempt record (``run_id`` given, :mod:`genlib.render.attempts`): a row that
   already finished in this run is returned as it was; a row whose actor died
   ``max_attempts`` times, or that the watchdog stopped, is failed without rendering;
2. params typed and checked against ``[limits]`` (the params class's ``check_limits``);
3. the render, under the row's budget (:func:`genlib.render.limits.row_budget`: the
   optimisation core stops it past ``max_seconds``); with ``watchdog=True`` (actors
   only: it kills the process) a row still running ``grace_seconds`` later is recorded
   as failed and its actor killed, so a row stuck in C code or I/O cannot hold it;
4. outputs written: the image, its companions (input thumbnail, extras, progress
   animation), all listed in the row's ``extras``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, features

from genlib.config import ConfigError, from_dict
from genlib.images import encode_png
from genlib.render import io as rio
from genlib.render.attempts import AttemptLog, RunStopped
from genlib.render.base import RenderError, RenderOutput
from genlib.render.batching import plan, render_batch
from genlib.render.config import RenderConfig
from genlib.render.identity import input_identity
from genlib.render.kinds import Renderer, kind as kind_of
from genlib.render.limits import row_budget
from genlib.render.manifest import companion, output_path
from genlib.render.resume import renderer_ids
from genlib.storage import Storage

FRAME_MS = 120  # progress animation: time per frame; the last frame (the result) is held 10x
STOP_POLL_SECONDS = 1.0  # how often a busy actor looks for the driver's STOP


class RenderRunner:
    def __init__(self, config: RenderConfig, device: str | None = None, run_id: str | None = None,
                 watchdog: bool = False) -> None:
        self.config = config
        self.device = device or ("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
        self.renderers: dict[str, Renderer] = {}
        self.renderer_ids: dict[str, str | None] = {}
        self.storage = Storage(config.output)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.run_id = run_id
        self.attempts = AttemptLog(config.output, run_id) if run_id else None
        self.watchdog = _Watchdog(self._give_up, self._stopping) if watchdog else None
        torch.set_num_threads(config.threads_per_actor)

    def render_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One manifest row per request row, in order. With ``batch_renders`` (and more than one
        row), compatible rows of a kind are optimised together (:mod:`genlib.render.batching`)."""
        if not self.config.batch_renders or len(rows) < 2:
            return [self.render_row(r) for r in rows]
        return self._render_batched(rows)

    def render_row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = self._start(row)
        earlier = self._earlier(row["request_id"], out)
        if earlier is not None:
            return earlier
        start = time.perf_counter()
        with _failing_into(out):
            with row_budget(self.config.limits, self.config.limits.max_seconds), self._watched([row]):
                self._testing_aids(row["request_id"])
                job = self._prepare(out, row)
                self._complete(out, job, self._renderer(row["kind"])(job.source, job.params))
        return self._finish(out, time.perf_counter() - start)

    def _render_batched(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Prepare every row alone (attempt record, params, limits, input), render each kind's
        prepared rows with ``render_batch``, then save each row alone. A row's ``seconds`` is its
        own preparation and saving plus an equal share of its batch's render time.

        A row with an attempt record (its earlier actor died while it was in flight, or it is
        already decided) is rendered alone, first: when an actor dies during a batch every row of
        it is charged one attempt, and on the retry each goes alone, so the row that kills actors
        is isolated and the others are not charged again for it."""
        results: list[dict[str, Any] | None] = [None] * len(rows)
        jobs: dict[int, _Job] = {}
        for i, row in enumerate(rows):
            if self.attempts is not None and self.attempts.read(row["request_id"]):
                results[i] = self.render_row(row)
        for i, row in enumerate(rows):
            if results[i] is not None:
                continue
            out = self._start(row)
            results[i] = self._earlier(row["request_id"], out)
            if results[i] is not None:
                continue
            start = time.perf_counter()
            with _failing_into(out):
                with row_budget(self.config.limits, self.config.limits.max_seconds), self._watched([row]):
                    self._testing_aids(row["request_id"])
                    jobs[i] = self._prepare(out, row)
            if i not in jobs:
                results[i] = self._finish(out, time.perf_counter() - start)
            else:
                jobs[i].seconds = time.perf_counter() - start
        for kind in dict.fromkeys(rows[i]["kind"] for i in jobs):
            group = [i for i in jobs if rows[i]["kind"] == kind]
            for i, result in zip(group, self._render_kind(kind, [rows[i] for i in group], [jobs[i] for i in group])):
                results[i] = result
        return results  # every slot is filled: earlier, failed while preparing, or rendered

    def _render_kind(self, kind: str, rows: list[dict[str, Any]], jobs: list[_Job]) -> list[dict[str, Any]]:
        """Render the prepared rows of one kind, each batch (``batching.plan``) under its own
        deadline and watchdog: ``max_seconds`` per row of the batch."""
        items = [(j.source, j.params) for j in jobs]
        try:
            renderer = self._renderer(kind)
            batches = plan(renderer, items, self.config.batch_size)
        except Exception as exc:  # the renderer could not even be built: every row fails with why
            return [self._done(job, exc, 0.0) for job in jobs]
        done: dict[int, dict[str, Any]] = {}
        limits = self.config.limits
        for batch in batches:
            with self._watched([rows[i] for i in batch]):  # rendering and saving: a hung write cannot hold the actor
                start = time.perf_counter()
                with row_budget(limits, limits.max_seconds * len(batch)):
                    rendered = render_batch(renderer, kind, [items[i] for i in batch])
                share = (time.perf_counter() - start) / len(batch)
                for i, result in zip(batch, rendered):
                    done[i] = self._done(jobs[i], result, share)
        return [done[i] for i in range(len(jobs))]

    def _done(self, job: _Job, result: RenderOutput | Exception, share: float) -> dict[str, Any]:
        """Save a rendered row (or record its error); its seconds include its share of the batch."""
        begin = time.perf_counter()
        with _failing_into(job.out):
            if isinstance(result, Exception):
                raise result
            self._complete(job.out, job, result)
        return self._finish(job.out, job.seconds + share + time.perf_counter() - begin)

    def _start(self, row: dict[str, Any]) -> dict[str, Any]:
        """The manifest row's known fields (RunStopped when the driver is stopping the run)."""
        if self.attempts is not None and self.attempts.stop_requested():
            raise RunStopped(f"run {self.run_id} is stopping: {row['request_id']} not rendered")
        return {"request_id": row["request_id"], "kind": row["kind"], "input_uri": row["input"],
                "params": row["params"], "params_hash": row["params_hash"], "worker": self.worker,
                "output_uri": output_path(row["kind"], row["request_id"], row["params_hash"]),
                "renderer_id": row.get("renderer_id") or self._renderer_id(row["kind"]), "run_id": self.run_id}

    # ------------------------------------------------------------------ attempts

    def _earlier(self, request_id: str, out: dict[str, Any]) -> dict[str, Any] | None:
        """The row's outcome without rendering it, when its attempt record decides it; else
        count this attempt and return None."""
        if self.attempts is None:
            return None
        record = self.attempts.read(request_id)
        if isinstance(record.get("row"), dict):
            return record["row"]  # finished before its batch's actor died: not rendered twice
        if record.get("reason"):
            return self._finish({**out, "status": "failed", "error": record["reason"]}, 0.0)
        tried = int(record.get("attempts", 0))
        if tried >= self.config.max_attempts:
            return self._finish({**out, "status": "failed",
                                 "error": f"actor died {tried} times rendering this row"}, 0.0)
        try:
            self.attempts.begin(request_id)
        except OSError as exc:
            return self._finish({**out, "status": "failed", "error": f"cannot record the attempt: {exc}"}, 0.0)
        return None

    def _finish(self, out: dict[str, Any], seconds: float) -> dict[str, Any]:
        out["seconds"] = seconds
        out["finished_at"] = datetime.now(timezone.utc).isoformat()
        if self.attempts is not None:
            try:
                self.attempts.finish(out)
            except OSError:  # the row is still returned; only a retry of its batch would redo it
                pass
        return out

    def _stopping(self) -> bool:
        try:
            return self.attempts is not None and self.attempts.stop_requested()
        except OSError:  # cannot tell: keep rendering
            return False

    def _give_up(self, request_ids: tuple[str, ...], reason: str) -> None:
        """Watchdog: record why, so the next actor fails the rows instead of retrying them."""
        if self.attempts is not None:
            for request_id in request_ids:
                self.attempts.give_up(request_id, reason)

    @contextmanager
    def _watched(self, rows: list[dict[str, Any]]) -> Iterator[None]:
        """Arm the watchdog for ``rows`` rendered together: max_seconds per row, plus the grace."""
        if self.watchdog is None:
            yield
            return
        limits = self.config.limits
        budget = limits.max_seconds * len(rows)
        together = f" (rendered together with {len(rows) - 1} other row(s))" if len(rows) > 1 else ""
        self.watchdog.arm(tuple(r["request_id"] for r in rows), budget + limits.grace_seconds,
                          f"exceeded limits.max_seconds ({budget:g} s{together}) and did not stop within "
                          f"limits.grace_seconds ({limits.grace_seconds:g} s): its actor was killed")
        try:
            yield
        finally:
            self.watchdog.disarm()

    def _testing_aids(self, request_id: str) -> None:
        config = self.config
        if config.die_on_request == request_id:
            marker = ".die_on_request.done"
            if config.die_on_request_always or not self.storage.exists(marker):
                self.storage.write_text(marker, request_id)
                os._exit(1)  # simulates a crashed render actor (OOM, segfault, lost node)
        if config.hang_on_request == request_id:
            while True:  # simulates a row stuck outside the optimiser (C code, a hung read)
                time.sleep(3600)

    # ------------------------------------------------------------------ render

    def _prepare(self, out: dict[str, Any], row: dict[str, Any]) -> _Job:
        """Typed params checked against ``[limits]``, and the input read (an image, or the URI
        for kinds that take one); the input's identity goes into ``out``."""
        spec = kind_of(row["kind"])
        typed = from_dict(spec.params, json.loads(row["params"]), prefix="params.")
        if callable(getattr(typed, "check_limits", None)):
            typed.check_limits(self.config.limits)
        if spec.input == "uri":
            out["input_sha256"] = input_identity(row["input"])  # the checkpoint it resolves to now
            return _Job(out, row["input"], typed, None)
        out["input_fingerprint"] = rio.fingerprints([row["input"]]).get(row["input"])  # before the read
        image, out["input_sha256"] = rio.load_image(row["input"])
        return _Job(out, image, typed, image)

    def _complete(self, out: dict[str, Any], job: _Job, result: RenderOutput) -> None:
        """Check the result and write the output and its companions into ``out``."""
        if not np.isfinite(list(result.losses.values()) or [0.0]).all():
            raise RenderError(f"non-finite final loss {result.losses}")
        renderer = self.renderers.get(out["kind"])
        out["weights_id"] = str(result.info.get("weights_id") or getattr(renderer, "weights_id", "unknown"))
        out.update(self._save(out["output_uri"], job.image, result), status="ok",
                   losses=json.dumps(result.losses, sort_keys=True), iterations=result.iterations)

    def _renderer(self, kind: str) -> Renderer:
        """The kind's renderer, built once per runner from its RenderConfig section."""
        if kind not in self.renderers:
            self.renderers[kind] = kind_of(kind).build(self.config, self.device)
        return self.renderers[kind]

    def _renderer_id(self, kind: str) -> str | None:
        """Rows from the driver carry it; a plain runner works it out once per kind."""
        if kind not in self.renderer_ids:  # None for unusable settings: the render reports the problem
            self.renderer_ids.update(renderer_ids(self.config, {kind}))
        return self.renderer_ids[kind]

    def _save(self, rel: str, image: np.ndarray | None, result: RenderOutput) -> dict[str, Any]:
        """Write the output and its companions; -> output_sha256 and extras (name -> relative path)."""
        data = encode_png(result.image)
        extras: dict[str, str] = {}
        if image is not None:  # gallery companion: the input as rendered
            extras["input"] = self._put(companion(rel, "input"), encode_png(_thumb(image, result.image)))
        for name, extra in result.extras.items():
            extras[name] = self._put(companion(rel, name), encode_png(_rgb(extra)))
        if result.frames:
            suffix, anim = animation(result.frames)
            extras["progress"] = self._put(companion(rel, "progress", suffix), anim)
        self.storage.write_bytes(rel, data)  # last: an output on disk has all its companions
        return {"output_sha256": hashlib.sha256(data).hexdigest(), "extras": json.dumps(extras, sort_keys=True)}

    def _put(self, rel: str, data: bytes) -> str:
        self.storage.write_bytes(rel, data)
        return rel


@dataclass
class _Job:
    """A prepared row: its manifest row so far, what the renderer takes, the decoded input."""

    out: dict[str, Any]
    source: Any                 # decoded image uint8 [H, W, 3], or the input URI
    params: Any                 # the kind's typed params
    image: np.ndarray | None    # the decoded input (gallery thumbnail), None for URI kinds
    seconds: float = 0.0        # spent preparing


@contextmanager
def _failing_into(out: dict[str, Any]) -> Iterator[None]:
    """A row that raises becomes a failed row (its error recorded); the job goes on."""
    try:
        yield
    except (RenderError, ConfigError, ValueError, FileNotFoundError, OSError) as exc:
        out.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug or a broken model must not kill the whole job either
        out.update(status="failed", error=f"unexpected {type(exc).__name__}: {exc}")


def animation(frames: list[np.ndarray]) -> tuple[str, bytes]:
    """Progress frames (uint8 [H, W, 3], oldest first) -> (suffix, animated WebP or GIF bytes)."""
    size = frames[-1].shape[1], frames[-1].shape[0]
    images = [Image.fromarray(f).resize(size) if f.shape[:2] != frames[-1].shape[:2] else Image.fromarray(f)
              for f in frames]
    fmt, suffix = ("WEBP", ".webp") if features.check("webp") else ("GIF", ".gif")
    buffer = io.BytesIO()
    durations = [FRAME_MS] * (len(images) - 1) + [FRAME_MS * 10]
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], duration=durations, loop=0,
                   **({"quality": 80} if fmt == "WEBP" else {}))
    return suffix, buffer.getvalue()


class _Watchdog:
    """A daemon thread that kills this process when the armed row runs past its time
    (after ``on_timeout(request_id, reason)`` recorded why): the actor's last resort.
    While a row is armed it also polls ``stopping()`` every STOP_POLL_SECONDS and exits
    at once when the driver stops the run (the row stays unfinished: the next run renders it)."""

    def __init__(self, on_timeout, stopping) -> None:
        self.on_timeout, self.stopping = on_timeout, stopping
        self.cond = threading.Condition()
        self.armed: tuple[tuple[str, ...], float, str] | None = None
        threading.Thread(target=self._run, name="genlib-render-watchdog", daemon=True).start()

    def arm(self, request_ids: tuple[str, ...], seconds: float, reason: str) -> None:
        with self.cond:
            self.armed = (request_ids, time.monotonic() + seconds, reason)
            self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            self.armed = None
            self.cond.notify()

    def _run(self) -> None:
        with self.cond:
            while True:
                if self.armed is None:
                    self.cond.wait()
                    continue
                request_ids, deadline, reason = self.armed
                if self.stopping():
                    os._exit(1)
                if time.monotonic() < deadline:
                    self.cond.wait(timeout=min(STOP_POLL_SECONDS, deadline - time.monotonic()))
                    continue
                try:
                    self.on_timeout(request_ids, reason)
                finally:
                    print(f"[render] {', '.join(request_ids)}: {reason}", file=sys.stderr, flush=True)
                    os._exit(1)


def _thumb(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    h, w = like.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))


def _rgb(extra: np.ndarray) -> np.ndarray:
    if extra.ndim == 2:
        extra = np.repeat(extra[..., None], 3, axis=2)
    if extra.dtype != np.uint8:
        extra = (np.clip(extra, 0, 1) * 255).astype(np.uint8)
    return extra
