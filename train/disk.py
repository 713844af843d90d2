"""Disk that fits the run: which training states a run keeps, and the refusal before a run would
fill the disk.

A training state (weights and AdamW's two moments, about 3x a checkpoint) is what --resume and
--fill-in start from. Keeping one at every checkpoint costs little for `nano` (12 MB each, 190 MB
for the demo's 16) but 1.5 GB each for `small`: 24 GB for 16 checkpoints. So by default
(`--keep-states budget`) a run keeps, within `--state-budget` GB:
- the latest state, always (what --resume needs);
- then the states at checkpoints inside a --ckpt-window (where a fill-in is most likely wanted);
- then the others, thinned to be evenly spread in steps.
When the budget holds fewer states than that, the ones to drop are those whose neighbours are
closest in steps, so the kept ones stay evenly spread: a fill-in retrains from the nearest kept
state at or before its window, so what it costs is the distance to that state, and even spacing
keeps the longest such distance short. (Thinning in log step, the early schedule's own spacing,
would spend a small model's budget on states at steps 1, 2, 4, ..., which cost a few steps to
recompute, and leave hundreds of steps between the late ones.)
`all` keeps every state, `latest` only the last. Before a run starts, its checkpoints and the
states it will keep are estimated and compared with the free space of the disk it writes to.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from store.checkpoint import list_checkpoints
from model.memory import format_bytes, model_bytes

from .args import BadInput, TrainArgs

DEFAULT_STATE_BUDGET_GB = 2.0
CHECKPOINT_HEADER = 16 * 1024  # safetensors' header and meta.json, beside the weights
STATE_OVERHEAD = 64 * 1024  # a state's RNG states, data position and record, beside its tensors
DISK_SHARE = 0.9            # a run may plan to use this share of the free space, no more


def file_sizes(cfg) -> tuple[int, int]:
    """(a checkpoint's, a training state's) size: fp32 weights (safetensors, a small header); the
    weights and AdamW's two moments."""
    weights = model_bytes(cfg)
    return weights + CHECKPOINT_HEADER, 3 * weights + STATE_OVERHEAD


def capacity(budget_bytes: float, one_state: int) -> int:
    """How many states fit in the budget; at least 1 (the latest is always kept)."""
    return max(1, int(budget_bytes // max(1, one_state)))


def _thin(steps: list[int], keep: int) -> list[int]:
    """`keep` of the sorted `steps`, dropping one at a time the interior step whose neighbours are
    closest (the first and last stay while keep >= 2; ties drop the earlier)."""
    steps = sorted(steps)
    while len(steps) > keep:
        if keep <= 0:
            return []
        if len(steps) <= 2 or keep == 1:
            steps = steps[-keep:]
            continue
        gaps = [steps[i + 1] - steps[i - 1] for i in range(1, len(steps) - 1)]
        i = 1 + min(range(len(gaps)), key=lambda j: (gaps[j], j))
        del steps[i]
    return steps


def states_to_keep(saved: Iterable[int], window: Iterable[int], budget_states: int) -> set[int]:
    """Of the states `saved` (steps), those a `--keep-states budget` run keeps when at most
    `budget_states` fit: the latest, then states at steps in `window`, then the others, thinned."""
    saved = sorted(set(saved))
    if not saved:
        return set()
    latest, window = saved[-1], set(window)
    room = max(0, budget_states - 1)
    in_window = [s for s in saved[:-1] if s in window]
    others = [s for s in saved[:-1] if s not in window]
    kept_window = _thin(in_window, room)
    kept_others = _thin(others, room - len(kept_window))
    return {latest, *kept_window, *kept_others}


def planned_states(checkpoints: list[int], window: Iterable[int], keep_states: str, budget_states: int) -> int:
    """How many states a run with these checkpoint steps holds at its end."""
    if keep_states == "all":
        return len(checkpoints)
    if keep_states == "latest":
        return min(1, len(checkpoints))
    return len(states_to_keep(checkpoints, window, budget_states))


def free_bytes(path: Path) -> int:
    """Free space of the disk `path` is (or would be) on: its nearest existing parent's."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_refusal(out: Path, cfg, checkpoints: list[int], window: Iterable[int], keep_states: str,
                 budget_gb: float, written: int = 0, free: int | None = None) -> str | None:
    """The sentence refusing a run whose remaining checkpoints and kept states would not fit in
    DISK_SHARE of the free disk at `out`, or None. `written` checkpoints are already on disk
    (a resumed run), and so is their share of the states."""
    one_ckpt, one_state = file_sizes(cfg)
    n_states = planned_states(checkpoints, window, keep_states, capacity(budget_gb * 1e9, one_state))
    remaining = max(0, len(checkpoints) - written)
    need = remaining * one_ckpt + (n_states if written == 0 else min(n_states, remaining)) * one_state
    free = free_bytes(out) if free is None else int(free)
    if need <= DISK_SHARE * free:
        return None
    advice = ("lower --state-budget or use --keep-states latest, " if keep_states != "latest" and n_states > 1
              else "") + "or plan fewer checkpoints (--ckpt-every, --ckpt-window)"
    return (f"this run would write about {format_bytes(need)} to disk ({remaining} checkpoints of "
            f"{format_bytes(one_ckpt)} and up to {n_states} training states of {format_bytes(one_state)}, estimate), "
            f"but only {format_bytes(free)} are free at {out}; {advice}.")


def check_disk(out: Path, args: TrainArgs) -> None:
    """BadInput (one sentence, exit 2) when the run in `out` would not fit on its disk: the
    memory estimate's habit applied to disk. The vocabulary's upper bound stands in, as there."""
    cfg = args.largest_model
    written = len(list_checkpoints(out)) if out.is_dir() else 0
    problem = disk_refusal(out, cfg, args.checkpoint_steps, args.window_steps, args.keep_states, args.state_budget,
                           written)
    if problem:
        raise BadInput(problem)
