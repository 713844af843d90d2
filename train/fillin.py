"""`python -m train --out RUN --fill-in START:END:EVERY`: add checkpoints to a finished run.

A run keeps its training state at every checkpoint (state/state_NNNNNN.pt, store.checkpoint), and
training is a pure function of the state and the step (batches come from the seeded chunk order,
store.rundata). So the run is retrained in memory from the kept state at or before the first
missing step, and only the missing checkpoints of the windows are written: no existing checkpoint,
metrics row, sample or state is touched. On the CPU with the run's recorded thread count the
retrained steps are bit-identical to the original ones; each step's loss is compared with the one
metrics.jsonl holds, and run.json["filled_in"] records what was planned and added and whether the
losses agreed.

Every check comes before the first write, so bad input writes nothing. run.json names the planned
steps before the first checkpoint is written; checkpoints are written atomically, and run.json is
updated after each, so a fill-in killed at any moment leaves every earlier checkpoint readable and a
run.json that names every checkpoint it may have made (the next fill-in corrects "steps").
"""
from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from store.checkpoint import has_state, kept_state_steps, list_checkpoints, read_latest, remove_partial_checkpoints
from model.config import GPTConfig
from store.runio import RunFileError, read_jsonl
from store.runrecord import read_record
from store.runlayout import RUN_JSON, metrics_jsonl, step_of

from .args import BadInput, TrainArgs, parse_window_option, resolve
from .loop import Dist, Trainer
from .rundir import clean_temporaries, reconcile_fill_ins, record_fill_in
from .schedule import window_steps


@dataclass
class FillInPlan:
    """What a fill-in will do: retrain from the state at `start` to `end`, writing `missing`."""

    windows: str
    start: int
    missing: list[int]

    @property
    def end(self) -> int:
        return self.missing[-1]


def stored_run(out: Path) -> dict:
    """run.json of the run to fill in, or BadInput when --out holds none."""
    if not (out / RUN_JSON).exists():
        raise BadInput(f"--fill-in: {out} holds no run (no {RUN_JSON}).")
    try:
        run = read_record(out)
        dict(run["train"])
        return run
    except (RunFileError, KeyError, TypeError, ValueError):
        raise BadInput(f"{out / RUN_JSON} is not a readable run description, so the run cannot be filled in.") from None


def trained_through(out: Path) -> int:
    """The last step the run was trained to: its latest training state's (verified)."""
    if not has_state(out):
        raise BadInput(f"--fill-in: {out} keeps no training state to start from.")
    return int(read_latest(out)["step"])  # a damaged state/latest.json: CheckpointError, one sentence too


def plan_fill_in(out: Path, windows_text: str, run: dict) -> FillInPlan | None:
    """The plan, None when every checkpoint asked for exists, or BadInput naming the problem."""
    windows = parse_window_option("--fill-in", windows_text)
    if not windows:
        raise BadInput("--fill-in needs a window START:END:EVERY, e.g. 300:600:10.")
    if run.get("status") == "training":
        raise BadInput(f"{out} is still training (or was stopped before it could say so): let it finish, or "
                       "--resume it, before --fill-in.")
    if int(run.get("world_size", 1)) != 1:
        raise BadInput(f"--fill-in retrains in one process, but {out} was trained by {run.get('world_size')} "
                       "processes, so its steps cannot be reproduced.")
    last = trained_through(out)
    for start, end, every in windows:
        if end > last:
            raise BadInput(f"--fill-in {start}:{end}:{every} ends after step {last}, the last step {out} "
                           "was trained to.")
    have = {step_of(p) for p in list_checkpoints(out)}
    missing = [s for s in window_steps(windows) if s not in have]
    if not missing:
        return None
    kept = [s for s in kept_state_steps(out) if s <= missing[0]]
    if not kept:
        raise BadInput(f"{out} keeps no training state at or before step {missing[0]}, so that step cannot be "
                       "retrained (--keep-states latest, or a --state-budget of one state, keeps only the newest).")
    return FillInPlan(windows_text, max(kept), missing)


def check_fill_in(explicit: dict, windows_text: str, d: Dist) -> tuple[Path, TrainArgs, dict, FillInPlan | None]:
    """(run folder, its arguments, run.json, plan) once everything is checked; nothing written."""
    if d.world > 1:
        raise BadInput("--fill-in runs in one process; start it without torchrun.")
    if not explicit.get("out"):
        raise BadInput("--out is required (the run folder to fill in, e.g. runs/demo).")
    out = Path(explicit["out"])
    run = stored_run(out)
    args = resolve(explicit, dict(run["train"]), str(out))
    return out, args, run, plan_fill_in(out, windows_text, run)


def recorded_losses(out: Path) -> dict[int, float]:
    """The training loss metrics.jsonl holds for each step (what the retraining must reproduce)."""
    rows = read_jsonl(metrics_jsonl(out)) if metrics_jsonl(out).exists() else []
    return {int(r["step"]): r["loss"] for r in rows if isinstance(r, dict) and "step" in r and "loss" in r}


def tidy_after_a_kill(out: Path) -> None:
    """What a killed fill-in left: half-written checkpoint folders and temporary files (nothing
    else writes into a run that is not training), and run.json entries whose "steps" miss a
    checkpoint written just before the kill."""
    remove_partial_checkpoints(out)
    clean_temporaries(out)
    reconcile_fill_ins(out, {step_of(p) for p in list_checkpoints(out)})


def run_fill_in(out: Path, args: TrainArgs, plan: FillInPlan, device: torch.device) -> list[int]:
    """Retrain from plan.start to plan.end in memory and write the missing checkpoints; returns
    the steps written. run.json["filled_in"] gets an entry, updated after each checkpoint."""
    cfg = GPTConfig.from_dict(read_record(out)["model"])
    trainer = Trainer(out, args, cfg, device, Dist())
    trainer.load(plan.start)
    losses = recorded_losses(out)
    todo = set(plan.missing)
    entry = {"id": uuid.uuid4().hex[:12], "windows": plan.windows, "from_state": plan.start,
             "planned": plan.missing, "steps": [], "device": device.type, "threads": torch.get_num_threads(),
             "losses_match_metrics": True, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record_fill_in(out, entry)

    def write(train_loss: float | None) -> None:
        trainer.save_weights(train_loss, trainer.evaluate("val"))
        entry["steps"].append(trainer.step)
        record_fill_in(out, entry)

    if trainer.step in todo:  # a kept state whose checkpoint is gone: its weights are the state's
        write(losses.get(trainer.step, trainer.last_loss))
    for row in trainer.replay(plan.end):
        if trainer.step in losses and row["loss"] != losses[trainer.step] and entry["losses_match_metrics"]:
            entry["losses_match_metrics"] = False
            record_fill_in(out, entry)
            print(f"warning: retrained step {trainer.step} has loss {row['loss']!r}, metrics.jsonl says "
                  f"{losses[trainer.step]!r}: the filled-in checkpoints are close to, not exactly, what the run "
                  "would have saved (another device or thread count?).", file=sys.stderr)
        if trainer.step in todo:
            write(row["loss"])
    return entry["steps"]
