"""`make bench`: every benchmark, printed as met / not met and written to bench/RESULTS.md."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
import transformer_lens
import transformers

from . import attention_variants, attribution, demo_time, speed
from .common import Report

SECTIONS = ("speed", "attention", "demo", "attribution")


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
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    report = Report()
    tables: list[str] = []
    print("| figure | measured | goal | status | detail |\n|---|---|---|---|---|")
    if "speed" in only:
        speed.run(report)
    if "demo" in only:
        demo_time.run(report)
    if "attribution" in only:
        attribution.run(report)
    if "attention" in only:
        tables.append(attention_variants.run())
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
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
