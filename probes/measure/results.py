"""Result files of the probes: probes/step_NNNNNN.json, one per checkpoint (their names come from
store.runlayout). Reading never follows a symlink; writing is atomic and keeps the probes of an
earlier result that were not recomputed; temporary files of a killed writer are removed only once
their writer is gone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from store.runio import RunFileError, read_json, remove_temporaries, write_json_atomic
from store.runlayout import probes_dir, result_path, result_step

from probes.measure.compute import ON_DEMAND_KINDS, RESULT_VERSION



def read_result(path: str | os.PathLike) -> dict | None:
    """A result file's content, or None when it is missing or unreadable. The runner writes only
    regular files, so a symlink is not a result (and is never followed: it may lead anywhere, and
    the app hands runs to this runner on the promise that nothing outside its runs folder is read)."""
    if Path(path).is_symlink():
        return None
    try:
        data = read_json(path)
    except RunFileError:
        return None
    return data if isinstance(data, dict) else None


def read_results(run_dir: str | os.PathLike) -> dict[int, dict]:
    """{step: result} for every readable result file of a run."""
    root = probes_dir(run_dir)
    out: dict[int, dict] = {}
    if not root.is_dir():
        return out
    for p in root.iterdir():
        step = result_step(p)
        if step is not None:
            data = read_result(p)
            if data is not None:
                out[step] = data
    return dict(sorted(out.items()))


def ablation_key(result: dict | None, kind: str) -> str | None:
    """The entry of a result that holds the exact `kind` head-ablation sweep: `head_ablation` (the
    default zero sweep, or every kind in results computed before mean and resample became on
    demand), else `head_ablation_<kind>` once computed on demand; None when the result has none."""
    if not isinstance(result, dict):
        return None
    for key in ("head_ablation", f"head_ablation_{kind}"):
        entry = result.get(key)
        if isinstance(entry, dict) and isinstance(entry.get(kind), list):
            return key
    return None


def is_done(result: dict | None, want: Iterable[str]) -> bool:
    """Whether `result` is current and holds every probe of `want` (an on-demand ablation kind
    counts as held wherever `ablation_key` finds it)."""
    if result is None or result.get("version") != RESULT_VERSION:
        return False
    return all(k in result or (k in ON_DEMAND_KINDS and ablation_key(result, ON_DEMAND_KINDS[k]) is not None)
               for k in want)


def remove_stale_temp_files(run_dir: str | os.PathLike) -> None:
    """Delete temp files that a killed writer left in probes/ (never those of a live process)."""
    remove_temporaries(probes_dir(run_dir), live_writers_too=False)


def write_result(run_dir: str | os.PathLike, step: int, result: dict) -> None:
    """Write a checkpoint's result atomically, merged into an existing one of the same version
    when only some probes were recomputed (the others are kept, with their timings)."""
    previous = read_result(result_path(run_dir, step))
    if previous is not None and previous.get("version") == RESULT_VERSION:
        result = {**previous, **result, "seconds": {**previous.get("seconds", {}), **result.get("seconds", {})}}
    write_json_atomic(result_path(run_dir, step), result)
