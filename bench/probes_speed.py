"""How fast the probes are on `tiny`, against yardsticks measured in the same process:

- all probes of one `tiny` checkpoint against one training step of the same model (8 x 512);
- the exact head-ablation sweep against its FLOP floor (its FLOPs, as counted by
  `probes.measure.ablation.sweep_flops`, at this machine's measured fp32 matmul peak).

Run alone with `python -m bench --only probes_tiny,sweep_floor`; `make bench` runs them with the rest.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from model import GPT, GPTConfig
from probes.measure import ablation
from probes.measure.inputs import ProbeSizes, probe_inputs
from probes.measure.results import read_result
from probes.run.runner import run_probes
from store.runlayout import result_path
from .common import Goal, NotMeasured, Report, median_time, timed_calls
from .speed import matmul_peak_flops, train_step_fn

PROBES_GOAL = 15.0      # all probes of one checkpoint <= this many training steps
FLOOR_GOAL = 1.5        # exact sweep <= this many times its FLOP floor
TRAIN_BATCH = 8

# A 1-step `tiny` run: just enough to leave a real checkpoint (step 1) with the run's data, vocab
# and canaries. 1 MB of stories with 15% held out gives the probes their full default held-out
# set (64 sequences of 513 tokens; the detail reports how many there were).
TINY_RUN = ["--preset", "tiny", "--data", "stories", "--steps", "1", "--warmup", "0", "--batch-size", str(TRAIN_BATCH),
            "--ckpt-every", "1", "--eval-every", "1", "--eval-batches", "1", "--sample-tokens", "4",
            "--corpus-mb", "1", "--val-fraction", "0.15", "--device", "cpu", "--seed", "0"]


def make_tiny_run(out: Path) -> Path:
    """Train TINY_RUN into `out` with the real CLI (a subprocess, as `make demo` does)."""
    subprocess.run([sys.executable, "-m", "train", *TINY_RUN, "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def bench_probes_tiny(report: Report, repeats: int = 3) -> None:
    """All probes of the step-1 checkpoint, in this process through `probes.run.runner.run_probes`
    (reading the run's inputs, loading the checkpoint, computing, writing the result: everything
    but process start), against one training step (forward, backward, AdamW) of GPT(tiny) at
    8 x 512. The steps are timed back to back as training runs them (a step right after a probe
    run pays for re-touching its gigabyte of logits and gradients), half before and half after
    the probes, so a drift of the machine falls on both sides."""

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_tiny_run(Path(tmp) / "tiny")
        n_heldout = len(probe_inputs(run).heldout)
        cfg = GPTConfig.preset("tiny")
        torch.manual_seed(0)
        model = GPT(cfg).train()
        tokens = torch.randint(0, cfg.vocab_size, (TRAIN_BATCH, cfg.n_ctx + 1))
        step = train_step_fn(model, tokens, hf=False)

        def probes() -> None:
            run_probes(run, steps=[1], force=True, threads=threads, jobs=1, log=lambda _: None)

        steps_before = timed_calls(step, repeats)
        t_probes = median_time(probes, repeats=repeats, warmup=1)
        t_step = statistics.median(steps_before + timed_calls(step, repeats))
        seconds = read_result(result_path(run, 1))["seconds"]  # the last repeat's, per probe
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(seconds.items(), key=lambda kv: -kv[1]) if v >= 0.5)
    report.add(Goal(f"all probes of one `tiny` checkpoint vs one training step (tiny, {TRAIN_BATCH}x{cfg.n_ctx})",
                    t_probes / t_step, PROBES_GOAL, higher_is_better=False,
                    detail=f"probes {t_probes:.1f} s (in-process `run_probes`, the default set, {threads} threads, "
                           f"1 job, {n_heldout} held-out sequences; last repeat: {parts}), training step {t_step:.2f} s"))


def bench_sweep_floor(report: Report, preset: str = "tiny", repeats: int = 3) -> None:
    """One exact zero-ablation sweep (`head_ablation_sweep`, its clean pass included) at the shape
    the probes use (ProbeSizes.n_ablation held-out sequences of n_ctx positions) against
    sweep_flops / matmul peak, both measured here."""

    cfg = GPTConfig.preset(preset)
    batch, positions = ProbeSizes().n_ablation, cfg.n_ctx
    name = f"exact head-ablation sweep vs its FLOP floor, `{preset}` ({batch}x{positions})"
    if not hasattr(ablation, "sweep_flops"):
        report.add(NotMeasured(name, f"≤ {FLOOR_GOAL:g}x", "not measured: sweep_flops missing "
                               "(probes.measure.ablation.sweep_flops(cfg, batch, positions) does not exist yet)"))
        return
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (batch, positions + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_sweep = median_time(lambda: ablation.head_ablation_sweep(model, tokens, "zero"), repeats=repeats, warmup=1)
    peak = matmul_peak_flops()
    flops = float(ablation.sweep_flops(cfg, batch, positions))
    floor = flops / peak
    report.add(Goal(name, t_sweep / floor, FLOOR_GOAL, higher_is_better=False,
                    detail=f"sweep {t_sweep:.2f} s, {flops / 1e9:,.0f} GFLOP at peak {peak / 1e9:,.0f} GFLOP/s "
                           f"= floor {floor:.2f} s ({torch.get_num_threads()} threads)"))
