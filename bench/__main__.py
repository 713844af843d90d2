"""`make bench`: every benchmark, printed as met / not met and written to bench/RESULTS.md."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import torch
import transformer_lens
import transformers

from . import attention_variants, attribution, circuits_cost, demo_time, llc, probes_speed, ray_probes, speed, train_threads
from .common import Report

# Every row (or group of rows) by name, in the order `make bench` runs them; `--only` takes these names.
ROWS: dict[str, Callable[[Report], None]] = {
    "training_hf": speed.run_training,
    "training_nanogpt": speed.run_nanogpt,
    "hooks_tl": speed.bench_hooks,
    "cache_overhead": speed.bench_cache_overhead,
    "sweep_batched": speed.bench_sweep,
    "sweep_floor": probes_speed.bench_sweep_floor,
    "generate": speed.bench_generate,
    "probes_tiny": probes_speed.bench_probes_tiny,
    "demo": demo_time.run,
    "attribution": attribution.run,
    "llc": llc.run,
    "circuits": circuits_cost.run,
    "ray_probes": ray_probes.run,
    "train_threads": train_threads.run,
}
TABLES: dict[str, Callable[[], str]] = {"attention": attention_variants.run}
# Names for several rows at once (`speed` was the section before rows could be run one by one).
GROUPS = {"speed": ("training_hf", "training_nanogpt", "hooks_tl", "cache_overhead", "sweep_batched",
                    "sweep_floor", "generate", "probes_tiny")}


def select(text: str) -> list[str]:
    """The row and table names `--only` asks for, groups expanded, in run order. ValueError with
    one sentence for an unknown name."""
    known = [*ROWS, *TABLES]
    asked: set[str] = set()
    for name in (s.strip() for s in text.split(",")):
        if not name:
            continue
        if name in GROUPS:
            asked.update(GROUPS[name])
        elif name in known:
            asked.add(name)
        else:
            raise ValueError(f"unknown row {name!r}; choose from {', '.join([*known, *GROUPS])}.")
    if not asked:
        raise ValueError("--only names no row; give one or more comma-separated row names.")
    return [n for n in known if n in asked]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}, {os.cpu_count()} cores, GPU: {gpu}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--only", help=f"comma-separated rows of {', '.join([*ROWS, *TABLES])} "
                                   f"(or {', '.join(GROUPS)}); default all")
    ap.add_argument("--out", help="results file; default bench/RESULTS.md for a full run, none with --only "
                                  "(a partial run must not replace the full results)")
    args = ap.parse_args(argv)
    try:
        only = select(args.only if args.only is not None else ",".join([*ROWS, *TABLES]))
    except ValueError as e:
        ap.error(str(e))
    out = args.out or (None if args.only is not None else str(Path(__file__).with_name("RESULTS.md")))
    report = Report()
    tables: list[str] = []
    print("| figure | measured | goal | status | detail |\n|---|---|---|---|---|")
    for name in only:
        torch.manual_seed(0)
        if name in ROWS:
            ROWS[name](report)
        else:
            tables.append(TABLES[name]())
    lines = [
        "# Benchmark results", "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, transformer-lens {transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '4.x'}",
        f"- torch threads: {torch.get_num_threads()}",
        "- every figure is a median of several runs after warm-up; ratios compare against a reference "
        "measured in the same process", "",
        "| figure | measured | goal | status | detail |", "|---|---|---|---|---|",
        *[g.row() for g in report.goals], "", *tables,
    ]
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
