"""Per-row attempt records of a render job, kept where a dying actor cannot take them along.

A row that kills its actor (OOM killer, segfault, ``os._exit``) would otherwise be
retried for ever: Ray restarts the actor and hands it the same batch. Before a row
renders, its actor records the attempt in a small file::

    <output>/.attempts/<run id>/<sha256(request id)[:32]>.json
        {"attempts": 2}                                   started twice, never finished
        {"attempts": 1, "reason": "exceeded ..."}         stopped by the watchdog: not retried
        {"attempts": 1, "row": {...manifest row...}}      finished (its batch may still die)

so the actor that gets the batch next answers a row whose attempts are used up
with a failed row instead of rendering it, and returns the rows that finished
before the death without rendering them again. A driver that stops early writes
``STOP`` there: actors then raise :class:`RunStopped` instead of starting a row and
leave a row in flight (their watchdog polls for it), so Ray Data's execution ends
while Ray is still up. The driver salvages finished rows
it never received (an interrupted or crashed driver) into the manifest and removes
the run's folder at the end. One writer per row at a time (Ray runs a batch on one
actor), and each write is whole (Storage: temp + rename), so no lock is needed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from genlib.storage import Storage

ATTEMPTS_DIR = ".attempts"
STOP_FILE = "STOP"  # written by a driver that is stopping early: actors drop their rows at once


class RunStopped(RuntimeError):
    """The driver asked this run's actors to stop (Ctrl-C, an error): raised instead of rendering."""


class AttemptLog:
    """The attempt records of run ``run_id`` in output folder ``output``."""

    def __init__(self, output: str, run_id: str) -> None:
        self.storage = Storage(output)
        self.run_id = run_id
        self.dir = f"{ATTEMPTS_DIR}/{run_id}"

    def _rel(self, request_id: str) -> str:
        return f"{self.dir}/{hashlib.sha256(request_id.encode()).hexdigest()[:32]}.json"

    def read(self, request_id: str) -> dict[str, Any]:
        """The row's record ({} when it never started; a torn record counts as one attempt)."""
        rel = self._rel(request_id)
        try:
            return dict(json.loads(self.storage.read_text(rel)))
        except OSError:  # object stores do not all say FileNotFoundError
            return {"attempts": 1} if self.storage.exists(rel) else {}
        except (ValueError, TypeError):
            return {"attempts": 1}

    def _write(self, request_id: str, record: dict[str, Any]) -> None:
        self.storage.write_text(self._rel(request_id), json.dumps(record, sort_keys=True))

    def begin(self, request_id: str) -> int:
        """Count one more attempt (before rendering); returns the attempt number."""
        record = self.read(request_id)
        record["attempts"] = int(record.get("attempts", 0)) + 1
        self._write(request_id, record)
        return record["attempts"]

    def give_up(self, request_id: str, reason: str) -> None:
        """Mark the row failed for good (the watchdog, before it kills the actor)."""
        self._write(request_id, {**self.read(request_id), "reason": reason})

    def finish(self, row: dict[str, Any]) -> None:
        """Keep the finished manifest row (a retried batch returns it without rendering)."""
        self._write(row["request_id"], {**self.read(row["request_id"]), "row": row})

    def request_stop(self) -> None:
        """Ask the run's actors to drop what they render (each checks before a row, and its
        watchdog while one renders)."""
        self.storage.write_text(f"{self.dir}/{STOP_FILE}", "stop")

    def stop_requested(self) -> bool:
        return self.storage.exists(f"{self.dir}/{STOP_FILE}")

    def finished_rows(self) -> list[dict[str, Any]]:
        """Every row an actor finished in this run (for the driver's salvage)."""
        rows = []
        for rel in self.storage.glob(self.dir, "*.json"):
            try:
                row = json.loads(self.storage.read_text(rel)).get("row")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def remove(self) -> None:
        """Delete this run's records (the run is over and its rows are in the manifest)."""
        for rel in self.storage.glob(self.dir, "*"):
            self.storage.delete(rel)
        path = posixpath.join(self.storage.base, self.dir)
        if self.storage.exists(self.dir):
            self.storage.fs.delete_dir(path)


def leftover_runs(output: str, keep: str = "") -> list[AttemptLog]:
    """Attempt logs of earlier runs whose driver died before cleaning up (all but ``keep``)."""
    storage = Storage(output)
    names = [posixpath.basename(d) for d in storage.list_dirs(ATTEMPTS_DIR)]
    return [AttemptLog(output, name) for name in names if name != keep]
