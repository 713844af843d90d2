"""Two-process CPU (gloo) DDP launches of `python -m train` through torchrun, shared by the DDP test
in test_train.py (2 launches in `make test`) and test_ddp_stress.py (20 in `make stress`).

Each launch must exit 0: a rank that aborts while shutting down ("terminate called without an
active exception", SIGABRT) fails the launch even when training itself finished.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store.checkpoint import list_checkpoints, load_checkpoint
from store.runio import read_json, read_jsonl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def launch_ddp(out: Path, args: list[str], script: str | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """torchrun --nproc_per_node 2 -m train --out OUT ARGS (or SCRIPT instead of -m train, a file
    that runs the train module); returns the finished process."""
    target = [script] if script else ["-m", "train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *target,
           "--out", str(out)] + args
    return subprocess.run(cmd, env=ddp_env(), capture_output=True, text=True, timeout=timeout)


def assert_same_training(one: Path, two: Path, steps: int) -> None:
    """The DDP run `two` logged the same losses and ended with the same weights as the single-process
    run `one` (same global batch), and rank 0 alone wrote."""
    a, b = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(steps + 1))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
        if "val_loss" in x:
            assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4)
    assert read_json(two / "run.json")["world_size"] == 2
    assert read_json(two / "run.json")["status"] == "complete"
    m1, _ = load_checkpoint(list_checkpoints(one)[-1])
    m2, _ = load_checkpoint(list_checkpoints(two)[-1])
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(v1, v2, atol=1e-5), k


def failure_report(results: list[tuple[int, subprocess.CompletedProcess]], tail: int = 1500) -> str:
    """'k of n launches failed' and, for each failed one, its exit status and the tail of stderr."""
    failed = [(i, r) for i, r in results if r.returncode != 0]
    lines = [f"{len(failed)} of {len(results)} DDP launches exited non-zero"]
    for i, r in failed:
        lines.append(f"--- launch {i}: exit {r.returncode}; stderr tail:\n{r.stderr[-tail:]}")
    return "\n".join(lines)
