"""run.json, the record of what a run is (its model, its options, its status): the one module
that reads, writes and updates it, for train, probes and the app alike.

Only the trainer (or the importer) writes a run's record; everyone else reads it, often while it
is being rewritten, so every write is atomic (store.runio) and readers get either the old record
or the new one. A record that is not a JSON object is a RunFileError naming the file.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from store.runio import RunFileError, read_json, write_json_atomic
from store.runlayout import run_json

STATUSES = ("training", "importing", "complete", "failed", "stopped")


def read_record(run_dir: str | os.PathLike) -> dict:
    """The run's record. RunFileError (naming run.json) when it is missing, unreadable or not a
    JSON object."""
    path = run_json(run_dir)
    record = read_json(path)
    if not isinstance(record, dict):
        raise RunFileError(path, "is not a JSON object")
    return record


def read_run(run_dir: str | os.PathLike) -> dict:
    """The record of a folder the user named as a run: ValueError with one sentence when the
    folder is not a run at all, RunFileError when its run.json is damaged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a folder; pass a run folder such as runs/demo.")
    if not run_json(run_dir).exists():
        raise ValueError(f"{run_dir} is not a run: it has no run.json.")
    return read_record(run_dir)


def record_or_none(run_dir: str | os.PathLike) -> dict | None:
    """The record, or None while there is no readable one (a run still being created, a damaged
    file): what a page or a watcher polling the run wants."""
    try:
        return read_record(run_dir)
    except RunFileError:
        return None


def run_status(run_dir: str | os.PathLike, default: str | None = "training") -> str | None:
    """The record's status; `default` when there is no readable record or it names none."""
    record = record_or_none(run_dir)
    return default if record is None else str(record.get("status", default))


def write_record(run_dir: str | os.PathLike, record: dict) -> None:
    """Write the whole record atomically (a new run, an imported one)."""
    write_json_atomic(run_json(run_dir), record)


def update_record(run_dir: str | os.PathLike, **changes: Any) -> dict:
    """Set `changes` in the record (read, change, write atomically) and return the new record.
    Safe because one process writes a run's record: the trainer, or the fill-in that replaces it."""
    record = read_record(run_dir)
    record.update(changes)
    write_record(run_dir, record)
    return record


def set_status(run_dir: str | os.PathLike, status: str, **extra: Any) -> dict:
    """Mark the run `status` (one of STATUSES) with `extra` keys, stamped with the time; a status
    other than failed drops an earlier error."""
    if status not in STATUSES:
        raise ValueError(f"a run's status is one of {', '.join(STATUSES)}, got {status!r}.")
    record = read_record(run_dir)
    record.update(extra, status=status, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if status != "failed":
        record.pop("error", None)
    write_record(run_dir, record)
    return record
