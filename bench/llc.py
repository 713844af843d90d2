"""The llc probe's cost per checkpoint, and the step-size calibration of probes/measure/llc_settings.py.

`python -m bench.llc [RUN] [--steps S,...]` times the llc probe (its calibrated settings: SGLD
chains with devinterp) on checkpoints of a nano run, one torch thread as the probes runner's
workers use, and prints seconds per checkpoint with the estimate and whether its diagnostics
trust it. `make bench` calls `run(report)` on the last checkpoint of a nano run it trains for 20 steps,
so the row needs no run of yours.

`python -m bench.llc --calibrate RUN` runs the calibration of probes/measure/llc_settings.py on the run's
last checkpoint: the estimate at every step size of LR_GRID, and the largest step size whose
estimate is trusted and within CALIBRATION_TOLERANCE of the next smaller one's.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from store.checkpoint import list_checkpoints, load_checkpoint, step_of
from model.device import torch_threads
from store.vocab import load_tokenizer
import train
from probes.measure.inputs import probe_inputs
from probes.measure.llc import NextTokenLoss, llc_result, sample_llc, sampling_rows
from probes.measure.llc_settings import CALIBRATION_TOLERANCE, LR_GRID, settings_for
from .common import Goal, Report

SECONDS_GOAL = 20.0  # per nano checkpoint on a 2-core CPU, with diagnostics that say the estimate settled


def time_checkpoints(run: Path, steps: list[int] | None = None, threads: int = 1) -> list[dict]:
    """The llc probe on each checkpoint (all when `steps` is None): step, seconds (wall), cpu_seconds
    (this process's CPU time: on a machine shared with other work, what the probe would take on a
    free core), mean, std, trusted."""
    with torch_threads(threads):
        tok = load_tokenizer(run)
        inputs = probe_inputs(run, tokenizer=tok)
        paths = [p for p in list_checkpoints(run) if steps is None or step_of(p) in steps]
        out = []
        for path in paths:
            model, _ = load_checkpoint(path)
            t, cpu = time.perf_counter(), time.process_time()
            with torch.enable_grad():
                found = llc_result(model, tok, inputs)
            out.append({"step": step_of(path), "seconds": time.perf_counter() - t,
                        "cpu_seconds": time.process_time() - cpu, "mean": found["mean"],
                        "std": found["std"], "trusted": found["diagnostics"]["trusted"],
                        "problems": found["diagnostics"]["problems"]})
        return out


def calibrate(run: Path, grid: tuple[float, ...] = LR_GRID, threads: int = 1) -> tuple[list[dict], float | None]:
    """(one row per step size: lr, mean, std, trusted, change from the next smaller step size; the
    chosen step size or None) on the run's last checkpoint, as probes/measure/llc_settings.py describes."""
    with torch_threads(threads):
        tok = load_tokenizer(run)
        inputs = probe_inputs(run, tokenizer=tok)
        model, _ = load_checkpoint(list_checkpoints(run)[-1])
        context = min(inputs.chunk_len, model.cfg.n_ctx)
        base = settings_for(model.cfg, context=context, seed=inputs.seed)
        rows = sampling_rows(inputs, tok, model.cfg.d_vocab, model.cfg.n_ctx, base.n_sequences)
        table, chosen = [], None
        for lr in sorted(grid):
            with torch.enable_grad():
                found = sample_llc(NextTokenLoss(model), rows, dataclasses.replace(base, lr=lr))
            change = (found["mean"] / table[-1]["mean"] - 1) if table and table[-1]["mean"] else None
            ok = found["diagnostics"]["trusted"] and (change is None or abs(change) <= CALIBRATION_TOLERANCE)
            table.append({"lr": lr, "mean": found["mean"], "std": found["std"], "change": change,
                          "trusted": found["diagnostics"]["trusted"], "problems": found["diagnostics"]["problems"]})
            if ok and len(table) > 1:
                chosen = lr
        return table, chosen


def short_nano_run(root: Path, steps: int = 20) -> Path:
    """A nano-shaped run (2 layers, n_ctx 128, the induction recipe's shape) trained for `steps`
    steps on the built-in stories: real data (enough training chunks for the LLC's rows) and a
    real checkpoint, in seconds."""
    out = root / "nano"
    status = train.main(["--out", str(out), "--preset", "nano", "--data", "stories", "--steps", str(steps),
                         "--batch-size", "16", "--lr", "3e-3", "--warmup", "8", "--eval-every", str(steps),
                         "--ckpt-every", str(steps), "--seed", "1234", "--device", "cpu", "--n-layer", "2",
                         "--n-head", "4", "--n-embd", "128", "--n-ctx", "128", "--corpus-mb", "0.5",
                         "--canaries-per-count", "1", "--canary-copies", "1,4,16,64", "--eval-batches", "2",
                         "--sample-tokens", "16", "--threads", "1"])
    if status != 0:
        raise RuntimeError(f"training the short nano run failed with exit status {status} (see stderr).")
    return out


def run(report: Report) -> None:
    """The seconds per nano checkpoint of the llc probe, as a bench row."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (row,) = time_checkpoints(short_nano_run(Path(tmp)), steps=[20])
    report.add(Goal("llc probe, one nano checkpoint (2 layers, n_ctx 128)", row["seconds"], SECONDS_GOAL, unit=" s",
                    higher_is_better=False,
                    detail=f"2 chains x (24 + 96) SGLD steps of 16 x 128 tokens, one thread, {row['cpu_seconds']:.1f} s of "
                           f"CPU; LLC {row['mean']:.1f} "
                           f"± {row['std']:.1f}, diagnostics: {'trusted' if row['trusted'] else '; '.join(row['problems'])}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llc", description=__doc__)
    ap.add_argument("run", nargs="?", help="a run folder (default: a nano run trained here for 20 steps)")
    ap.add_argument("--steps", help="comma-separated checkpoint steps to time (default: all)")
    ap.add_argument("--calibrate", action="store_true", help="the step-size calibration on the run's last checkpoint")
    args = ap.parse_args(argv)
    if args.calibrate:
        if not args.run:
            ap.error("--calibrate needs a run folder.")
        table, chosen = calibrate(Path(args.run))
        print("| lr | LLC | std | change | trusted |\n|---|---|---|---|---|")
        for r in table:
            change = "" if r["change"] is None else f"{r['change']:+.0%}"
            print(f"| {r['lr']:g} | {r['mean']:.2f} | {r['std']:.2f} | {change} | {r['trusted'] or '; '.join(r['problems'])} |")
        print(f"chosen step size: {chosen:g}" if chosen else "no step size qualifies: widen the grid")
        return 0
    if not args.run:
        print("| figure | measured | goal | status | detail |\n|---|---|---|---|---|")
        run(Report())  # Report.add prints the row
        return 0
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    rows = time_checkpoints(Path(args.run), steps)
    print("| step | seconds | CPU seconds | LLC | std | trusted |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['mean']:.2f} | {r['std']:.2f} | "
              f"{r['trusted'] or '; '.join(r['problems'])} |")
    if rows:
        print(f"median {sorted(r['seconds'] for r in rows)[len(rows) // 2]:.1f} s per checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
