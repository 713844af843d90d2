"""Wall time of `make demo`'s work (training + probes, the install and the app excluded) and of
all probes on one nano checkpoint. The commands are the Makefile's demo recipe (tests/test_bench.py
checks that they still match it)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Goal, Report

DEMO_GOAL_MIN = 2.5
# `make demo` with RUNS=<tmp>: $(PY) -m train ... --out $(RUNS)/demo, then $(PY) -m probes $(RUNS)/demo
DEMO_TRAIN = ["-m", "train", "--preset", "nano", "--data", "stories", "--out"]
DEMO_PROBES = ["-m", "probes"]


def wait_until_idle(limit_s: float = 120.0, below: float = 0.5) -> float:
    """Wait (at most `limit_s`) until the 1-minute load average is under `below`, and return it.
    The goal is stated for an idle machine, and train and probes choose their thread count from
    the free cores when they start: right after the bench's heavy rows the load average still
    counts them, and the demo would train on one thread."""
    end = time.time() + limit_s
    while os.getloadavg()[0] >= below and time.time() < end:
        time.sleep(5)
    return os.getloadavg()[0]


def run(report: Report) -> None:
    load = wait_until_idle()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        t = time.perf_counter()
        subprocess.run([sys.executable, *DEMO_TRAIN, str(out)], check=True)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, *DEMO_PROBES, str(out)], check=True)
        t_probes = time.perf_counter() - t
        n_ckpt = len(list((out / "checkpoints").glob("step_*")))
        report.add(Goal("`make demo` training + probes (install excluded)", (t_train + t_probes) / 60,
                        DEMO_GOAL_MIN, unit=" min", higher_is_better=False,
                        detail=f"training {t_train:.0f} s, probes {t_probes:.0f} s over {n_ckpt} checkpoints "
                               f"(1-min load average {load:.2f} at the start)"))
        last = sorted((out / "checkpoints").glob("step_*"))[-1]
        t = time.perf_counter()
        subprocess.run([sys.executable, *DEMO_PROBES, str(out), "--steps", str(int(last.name[5:])), "--force"],
                       check=True, capture_output=True)
        t_one = time.perf_counter() - t
        report.add(Goal("all probes for one `nano` checkpoint (incl. process start)", t_one, 10, unit=" s",
                        higher_is_better=False))
