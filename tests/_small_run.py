"""A small real run for the tests: `make_small_run(out_dir)` trains a shrunken nano model
on a small stories corpus (with canaries) through the real CLI in a few seconds, leaving the full
run layout (run.json, data, metrics, samples, several checkpoints, state).

Tests should share one such run per session (e.g. a session-scoped fixture), not build one each.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from store.runrecord import run_status
from store.runlayout import run_json as run_json_path
from train import main

SMALL_RUN = dict(
    preset="nano", data="stories", steps=40, batch_size=8, grad_accum=1, lr=3e-3, warmup=8,
    eval_every=10, ckpt_every=10, seed=1234, device="cpu", n_layer=2, n_head=4, n_embd=64, n_ctx=64,
    corpus_mb=0.15, canaries_per_count=1, canary_copies="1,4,16,64", eval_batches=2, sample_tokens=16,
    threads=1,  # fixed, not the machine's free cores: runs that tests compare must round alike
)


def small_run_argv(out_dir: str | os.PathLike, **overrides: Any) -> list[str]:
    """The CLI arguments make_small_run uses (handy for subprocess tests)."""
    opts = {**SMALL_RUN, **overrides}
    argv = ["--out", str(out_dir)]
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is not False and v is not None:
            argv += [flag, str(v)]
    return argv


def make_small_run(out_dir: str | os.PathLike, steps: int = 40, **overrides: Any) -> Path:
    """Train the small run into `out_dir` (checkpoints at 0, 1, 2, 4, 8, 10, 20, 30, 40 by default)
    and return its path. A complete run already there is returned as is; any option of the CLI can
    be overridden by its underscored name (n_layer=1, corpus_mb=0.3, ...)."""
    out = Path(out_dir)
    run_json = run_json_path(out)
    if run_status(out, None) == "complete":
        return out
    status = main(small_run_argv(out, steps=steps, **overrides) + (["--resume"] if run_json.exists() else []))
    if status != 0:
        raise RuntimeError(f"make_small_run failed with exit status {status} (see stderr).")
    return out
