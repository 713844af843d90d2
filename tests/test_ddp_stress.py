"""`make stress`: 20 two-process CPU DDP launches in a row, every one must exit 0.

Before the shutdown fix (train/cli.py: release_ddp, then a barrier, then destroy_process_group on
every rank) rank 1 aborted at exit ("terminate called without an active exception", SIGABRT) in a
fraction of launches, more often when the garbage collector had not yet freed the DDP Reducer. So
half of the launches run the workers with automatic garbage collection off, which keeps every
reference cycle (DDP's included) alive until the process ends unless the code frees it itself.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from store.runio import read_json

from _ddp import failure_report, launch_ddp

pytestmark = pytest.mark.stress

N_LAUNCHES = 20
ARGS = ["--steps", "6", "--batch-size", "2", "--warmup", "2", "--ckpt-every", "100", "--eval-every", "3",
        "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-ctx", "32", "--corpus-mb", "0.05",
        "--canaries-per-count", "1", "--canary-copies", "1,8", "--eval-batches", "1", "--sample-tokens", "4",
        "--vocab-size", "1024", "--seed", "11", "--device", "cpu"]

# `python -m train` with automatic garbage collection off (explicit gc.collect() still works).
GC_OFF_TRAIN = """import gc, runpy, sys
gc.disable()
sys.path.insert(0, {root!r})
runpy.run_module("train", run_name="__main__", alter_sys=True)
"""


def test_twenty_ddp_launches_all_exit_cleanly(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    gc_off = tmp_path / "train_gc_off.py"
    gc_off.write_text(GC_OFF_TRAIN.format(root=root))
    results = []
    for i in range(N_LAUNCHES):
        out = tmp_path / f"run_{i}"
        script = str(gc_off) if i % 2 else None
        results.append((i, launch_ddp(out, ARGS, script=script)))
    report = failure_report(results)
    print(report)
    assert all(r.returncode == 0 for _, r in results), report
    for i, _ in results:
        assert read_json(tmp_path / f"run_{i}" / "run.json")["status"] == "complete", i
