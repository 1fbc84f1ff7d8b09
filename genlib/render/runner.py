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
from genlib.render.config import RenderConfig
from genlib.render.identity import input_identity, renderer_id
from genlib.render.kinds import Renderer, kind as kind_of
from genlib.render.limits import row_budget
from genlib.render.manifest import companion, output_path
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
        return [self.render_row(r) for r in rows]

    def render_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.attempts is not None and self.attempts.stop_requested():
            raise RunStopped(f"run {self.run_id} is stopping: {row['request_id']} not rendered")
        out = {"request_id": row["request_id"], "kind": row["kind"], "input_uri": row["input"],
               "params": row["params"], "params_hash": row["params_hash"], "worker": self.worker,
               "output_uri": output_path(row["kind"], row["request_id"], row["params_hash"]),
               "renderer_id": row.get("renderer_id") or self._renderer_id(row["kind"]), "run_id": self.run_id}
        earlier = self._earlier(row["request_id"], out)
        if earlier is not None:
            return earlier
        start = time.perf_counter()
        try:
            with row_budget(self.config.limits, self.config.limits.max_seconds), self._watched(row):
                self._testing_aids(row["request_id"])
                self._render_into(out, row)
        except (RenderError, ConfigError, ValueError, FileNotFoundError, OSError) as exc:
            out.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug or a broken model must not kill the whole job either
            out.update(status="failed", error=f"unexpected {type(exc).__name__}: {exc}")
        return self._finish(out, time.perf_counter() - start)

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

    def _give_up(self, request_id: str, reason: str) -> None:
        """Watchdog: record why, so the next actor fails the row instead of retrying it."""
        if self.attempts is not None:
            self.attempts.give_up(request_id, reason)

    @contextmanager
    def _watched(self, row: dict[str, Any]) -> Iterator[None]:
        if self.watchdog is None:
            yield
            return
        limits = self.config.limits
        self.watchdog.arm(row["request_id"], limits.max_seconds + limits.grace_seconds,
                          f"exceeded limits.max_seconds ({limits.max_seconds:g} s) and did not stop within "
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

    def _render_into(self, out: dict[str, Any], row: dict[str, Any]) -> None:
        spec = kind_of(row["kind"])
        typed = from_dict(spec.params, json.loads(row["params"]), prefix="params.")
        if callable(getattr(typed, "check_limits", None)):
            typed.check_limits(self.config.limits)
        image = None
        if spec.input == "uri":
            source: Any = row["input"]
            out["input_sha256"] = input_identity(row["input"])  # the checkpoint it resolves to now
        else:
            out["input_fingerprint"] = rio.fingerprints([row["input"]]).get(row["input"])  # before the read
            image, out["input_sha256"] = rio.load_image(row["input"])
            source = image
        result, out["weights_id"] = self._render(row["kind"], source, typed)
        out.update(self._save(out["output_uri"], image, result), status="ok",
                   losses=json.dumps(result.losses, sort_keys=True), iterations=result.iterations)

    def _render(self, kind: str, source: Any, typed: Any) -> tuple[RenderOutput, str]:
        renderer = self._renderer(kind)
        result = renderer(source, typed)
        if not np.isfinite(list(result.losses.values()) or [0.0]).all():
            raise RenderError(f"non-finite final loss {result.losses}")
        return result, str(result.info.get("weights_id") or getattr(renderer, "weights_id", "unknown"))

    def _renderer(self, kind: str) -> Renderer:
        """The kind's renderer, built once per runner from its RenderConfig section."""
        if kind not in self.renderers:
            self.renderers[kind] = kind_of(kind).build(self.config, self.device)
        return self.renderers[kind]

    def _renderer_id(self, kind: str) -> str | None:
        """Rows from the driver carry it; a plain runner works it out once per kind."""
        if kind not in self.renderer_ids:
            try:
                self.renderer_ids[kind] = renderer_id(self.config, kind)
            except Exception:  # unusable settings: the render itself reports the problem
                self.renderer_ids[kind] = None
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
        self.armed: tuple[str, float, str] | None = None
        threading.Thread(target=self._run, name="genlib-render-watchdog", daemon=True).start()

    def arm(self, request_id: str, seconds: float, reason: str) -> None:
        with self.cond:
            self.armed = (request_id, time.monotonic() + seconds, reason)
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
                request_id, deadline, reason = self.armed
                if self.stopping():
                    os._exit(1)
                if time.monotonic() < deadline:
                    self.cond.wait(timeout=min(STOP_POLL_SECONDS, deadline - time.monotonic()))
                    continue
                try:
                    self.on_timeout(request_id, reason)
                finally:
                    print(f"[render] {request_id}: {reason}", file=sys.stderr, flush=True)
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
