"""A result file read as series: every scalar under its dotted path, every [L][H] matrix (with
its max and mean as scalars) and each canary group under memorization.canaries.copies_N, so that
summary.json can line them up over checkpoints. SKIP_KEYS are left out: texts, timings, settings,
traces and per-token losses are nothing to follow as a series.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from probes.analyse.trajectory import is_number

SKIP_KEYS = {"continuations", "seconds", "items", "seen_examples", "sampling", "note", "version", "step",
             "tokens", "best_induction", "token_losses", "position_loss", "random_periods", "unseen_periods",
             "training_repeat_periods", "trace"}


def get(result: Any, path: str) -> Any:
    """result["a"]["b"]... for the dotted path "a.b...", or None where any part is missing: the one
    reader of a probe result (or of summary.json) by path, for the summary, the pages and run pairs."""
    for part in path.split("."):
        if not isinstance(result, Mapping) or part not in result:
            return None
        result = result[part]
    return result


def is_matrix(v: Any) -> bool:
    """A [layer][head] matrix: non-empty rows of one length, every entry a real number."""
    return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
            and all(isinstance(r, Sequence) and not isinstance(r, str) and len(r) > 0 for r in v)
            and len({len(r) for r in v}) == 1
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for r in v for x in r))


def flatten(obj: Any, path: str, scalars: dict[str, float | None], heads: dict[str, list]) -> None:
    """Scalars of a result (dotted paths), [L][H] matrices (with their max and mean as scalars),
    and canary groups under memorization.canaries.copies_N."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key not in SKIP_KEYS:
                flatten(value, f"{path}.{key}" if path else key, scalars, heads)
    elif obj is None:
        scalars[path] = None
    elif is_number(obj):
        scalars[path] = float(obj)
    elif is_matrix(obj) and all(is_number(x) for r in obj for x in r):
        heads[path] = obj
        flat = [float(x) for r in obj for x in r]
        scalars[f"{path}.max"] = max(flat)
        scalars[f"{path}.mean"] = sum(flat) / len(flat)
    elif path.endswith("canaries") and isinstance(obj, list):
        for group in obj:
            if isinstance(group, dict) and "copies" in group:
                rest = {k: v for k, v in group.items() if k != "copies"}
                flatten(rest, f"{path}.copies_{int(group['copies'])}", scalars, heads)
