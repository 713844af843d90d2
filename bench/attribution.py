"""Attribution patching vs the exact head-ablation sweep at the `small` shape (12 x 12 heads):
the speed-up of `probes.head_attribution` over `probes.head_ablation_sweep`, and how well the
estimate agrees with the exact sweep (Spearman rank correlation, top-3 overlap).

Run alone with `python -m bench.attribution [--positions N]`; `make bench` calls `run(report)`.
"""
from __future__ import annotations

import argparse
import sys

import torch

from model import GPT, GPTConfig
from model.device import torch_threads
from probes.measure.ablation import head_ablation_sweep
from probes.measure.attribution import agreement, head_attribution
from .common import Goal, Report, median_time

SPEEDUP_GOAL = 20.0


def run(report: Report, preset: str = "small", batch: int = 2, positions: int = 128, kind: str = "zero",
        threads: int = 2, repeats: int = 3) -> None:
    """Time the exact sweep and the estimate on one random-init model in the same process (median
    of `repeats` after one warm-up run each, which also gives the figures compared) and add the
    speed-up, with the agreement, to `report`."""
    with torch_threads(threads):
        cfg = GPTConfig.preset(preset)
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        tokens = torch.randint(0, cfg.vocab_size, (batch, positions + 1), generator=torch.Generator().manual_seed(0))
        exact = head_ablation_sweep(model, tokens, kind)  # also the sweep's warm-up
        estimate = head_attribution(model, tokens, kind)  # and the estimate's
        t_exact = median_time(lambda: head_ablation_sweep(model, tokens, kind), repeats=repeats, warmup=0)
        t_attr = median_time(lambda: head_attribution(model, tokens, kind), repeats=repeats, warmup=0)
    ag = agreement(estimate, exact)
    report.add(Goal(
        f"head attribution vs exact {kind} sweep, `{preset}` ({cfg.n_layer}x{cfg.n_head} heads, {batch}x{positions} tokens)",
        t_exact / t_attr, SPEEDUP_GOAL,
        detail=f"sweep {t_exact:.2f} s, attribution {t_attr:.3f} s, {threads} threads; random init: "
               f"Spearman {ag['spearman']:.3f}, top-3 overlap {ag['top3_overlap']:.2f}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.attribution", description=__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--positions", type=int, default=128)
    ap.add_argument("--kind", default="zero")
    args = ap.parse_args(argv)
    print("| figure | measured | goal | status | detail |\n|---|---|---|---|---|")
    run(Report(), args.preset, args.batch, args.positions, args.kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
