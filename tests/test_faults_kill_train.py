"""SIGKILL of training at random moments: after every kill each checkpoint present loads
and equals the uninterrupted run's, the training state loads, metrics and samples are a prefix of
the uninterrupted run's; resuming (and being killed again) ends with weights, metrics, samples and
state bit-identical to a run that was never interrupted.

Kill moments are of three kinds, drawn at random:
  write   the N-th file write event of the process under the runs folder: right after an fsync of
          a file or folder, just before or just after a rename (the steps of every atomic write:
          token cache, run.json, data.json, checkpoints, state, latest.json, metrics, samples);
  tmpdir  right after the N-th temporary folder appears (a checkpoint or token-cache folder being
          written under a .tmp- name);
  time    from outside, after a random delay (import, corpus generation, tokenizing, training,
          evaluation, sampling: anywhere).
The first two are injected by the wrapper in _faults.py, which replaces os.fsync, os.replace and
os.mkdir in the child process; nothing in train/ knows about it.

Fast: 3 kills in `make test`; 20 in `make stress`. The seed is drawn from the clock, printed at the
start and named in every failure (escaped exceptions included); reproduce with KILL_SEED=<seed>
(or WORKBENCH_TEST_SEED=<seed>).
"""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from store.checkpoint import SEAL, has_state, list_checkpoints, load_checkpoint, load_state, step_of
from store.runio import read_json, read_jsonl
from train import main as train_main
from _small_run import small_run_argv

import _faults as faults

STEPS = 24
RUN = dict(steps=STEPS, batch_size=4, warmup=4, ckpt_every=4, eval_every=4, n_layer=2, n_head=2, n_embd=32,
           n_ctx=32, corpus_mb=0.05, canary_copies="1,8", eval_batches=1, sample_tokens=4, vocab_size=1024,
           seed=11)


def train_argv(out: Path, **overrides) -> list[str]:
    if (out / "run.json").exists():
        return ["--out", str(out), "--resume"]
    return small_run_argv(out, **{**RUN, **overrides})


def launch(root: Path, out: Path, mode: str, n: int, **overrides) -> subprocess.Popen:
    return faults.launch(root, mode, n, "train", train_argv(out, **overrides))


# -- the uninterrupted reference ---------------------------------------------------------------
class Reference:
    def __init__(self, root: Path):
        self.run = root / "run"
        counts = root / "counts"
        t0 = time.time()
        p = launch(root, self.run, f"count={counts}", 0)
        err = faults.finish(p)
        assert p.returncode == 0, err[-2000:]
        self.seconds = time.time() - t0
        self.counts = faults.read_counts(counts)
        self.ckpts = {step_of(c): c for c in list_checkpoints(self.run)}
        self.metrics = strip(read_jsonl(self.run / "metrics.jsonl"))
        self.samples = read_jsonl(self.run / "samples.jsonl")
        self.info = read_json(self.run / "run.json")
        self.state = load_state(self.run)

    def weights(self, step: int) -> bytes:
        return (self.ckpts[step] / "model.safetensors").read_bytes()


def without_time(meta: dict) -> dict:
    """A checkpoint's meta.json without its wall-clock time and the seal that covers it."""
    return {k: v for k, v in meta.items() if k not in ("time", SEAL)}


def strip(rows: list[dict]) -> list[dict]:
    """Metrics rows without the one wall-clock field."""
    return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    return Reference(tmp_path_factory.mktemp("reference"))


def equal_states(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_states(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_states(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


# -- what must hold after every kill -----------------------------------------------------------
def check_after_kill(run: Path, ref: Reference, note: str) -> None:
    if (run / "run.json").exists():
        info = read_json(run / "run.json")
        assert info["status"] in ("training", "complete") and info["model"] == ref.info["model"], note
    for ck in list_checkpoints(run):  # every checkpoint present loads, and is the uninterrupted run's
        step = step_of(ck)
        _, meta = load_checkpoint(ck)
        assert (ck / "model.safetensors").read_bytes() == ref.weights(step), f"step {step} {note}"
        want = read_json(ref.ckpts[step] / "meta.json")
        assert without_time(meta) == without_time(want), note
    if has_state(run):
        state = load_state(run)
        assert state["step"] in ref.ckpts and (run / "checkpoints" / f"step_{state['step']:06d}").is_dir(), note
    metrics = strip(read_jsonl(run / "metrics.jsonl"))
    assert metrics == ref.metrics[:len(metrics)], f"metrics are not a prefix of the reference {note}"
    samples = read_jsonl(run / "samples.jsonl")
    assert samples == ref.samples[:len(samples)], f"samples are not a prefix of the reference {note}"
    for name in ("data.json", "vocab.json"):
        if (run / name).exists():
            assert (run / name).read_bytes() == (ref.run / name).read_bytes(), f"{name} {note}"
    visible = [p for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")] if (run / "checkpoints").is_dir() else []
    assert all((p / "meta.json").is_file() and (p / "model.safetensors").is_file() for p in visible), note


def check_complete(run: Path, ref: Reference, note: str) -> None:
    assert read_json(run / "run.json")["status"] == "complete", note
    assert sorted(step_of(c) for c in list_checkpoints(run)) == sorted(ref.ckpts), note
    for step in ref.ckpts:
        assert (run / "checkpoints" / f"step_{step:06d}" / "model.safetensors").read_bytes() == ref.weights(step), \
            f"weights of step {step} differ {note}"
    assert strip(read_jsonl(run / "metrics.jsonl")) == ref.metrics, note
    assert read_jsonl(run / "samples.jsonl") == ref.samples, note
    assert equal_states(load_state(run), ref.state), f"final training state differs {note}"
    leftovers = [str(p) for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers, (leftovers, note)


# -- the kill campaign -------------------------------------------------------------------------
def progress(run: Path) -> float:
    """Share of the run still to do (1.0 before any state exists)."""
    if not has_state(run):
        return 1.0
    return max(0.05, 1 - load_state(run)["step"] / STEPS)


def pick_moment(rng: random.Random, run: Path, ref: Reference) -> tuple[str, float]:
    left = progress(run)
    mode = rng.choices(["write", "tmpdir", "time"], weights=[4, 3, 3])[0]
    if mode == "write":  # log-uniform: setup's few writes are hit as often as the many later ones
        top = max(4, int(ref.counts["write"] * left))
        return mode, min(top, int(math.exp(rng.uniform(0, math.log(top + 1)))))
    if mode == "tmpdir":
        return mode, rng.randint(1, max(1, int(ref.counts["tmpdir"] * left)))
    return mode, rng.uniform(0.2, ref.seconds * min(1.0, left + 0.3))


def kill_campaign(tmp_path: Path, ref: Reference, kills: int) -> list[str]:
    seed = faults.draw_seed("KILL_SEED", stress=kills > 3)
    with faults.replayable("KILL_SEED", seed):
        return kill_chains(tmp_path, ref, kills, seed)


def kill_chains(tmp_path: Path, ref: Reference, kills: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    log: list[str] = []
    chain, done = 0, 0
    root = tmp_path / f"chain{chain}"
    run = root / "run"
    while True:
        if done == kills:
            mode, n = "none", 0  # the last resume, undisturbed
        else:
            mode, n = pick_moment(rng, run, ref)
        note = f"(KILL_SEED={seed}, chain {chain}, kill {done + 1}, {mode} {n:.3g})"
        p = launch(root, run, mode if mode != "time" else "none", int(n) if mode != "time" else 0)
        if mode == "time":
            try:
                p.wait(timeout=n)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        err = faults.finish(p)
        if p.returncode == -signal.SIGKILL:
            done += 1
            log.append(f"{mode} {n:.3g} -> killed at state step "
                       f"{load_state(run)['step'] if has_state(run) else None}")
            check_after_kill(run, ref, note)
            continue
        assert p.returncode == 0, f"exit {p.returncode} {note}: {err[-1500:]}"
        check_complete(run, ref, note)
        log.append(f"{mode} {n:.3g} -> completed")
        if done == kills:
            return log
        chain += 1  # finished before the next kill landed: kill a fresh run
        root = tmp_path / f"chain{chain}"
        run = root / "run"


@pytest.mark.parametrize("where", ["write:.run.json.tmp-",  # right after its fsync
                                   pytest.param("write:/run.json", marks=pytest.mark.stress)])  # before the rename
def test_a_kill_inside_the_first_write_of_run_json_does_not_block_a_restart(tmp_path, where):
    """Found by the campaign: killed between writing .run.json.tmp-PID and renaming it, a new run
    folder held only that temporary file, and was then refused both as a fresh --out ("not an empty
    folder") and for --resume ("holds no run"): a user would have had to clean up by hand."""
    run = tmp_path / "run"
    p = launch(tmp_path, run, where, 1, steps=2)
    faults.finish(p)
    assert p.returncode == -signal.SIGKILL
    assert [x.name.startswith(".run.json.tmp-") for x in run.iterdir()] == [True]
    assert train_main(train_argv(run, steps=2)) == 0  # a plain restart (in-process: no second import)
    assert read_json(run / "run.json")["status"] == "complete"
    assert not [x for x in run.rglob("*") if ".tmp-" in x.name]


@pytest.mark.parametrize("kills", [pytest.param(3, id="fast"),
                                   pytest.param(20, id="stress", marks=pytest.mark.stress)])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference, tmp_path, kills):
    log = kill_campaign(tmp_path, reference, kills)
    assert sum("killed" in line for line in log) == kills, log
    print("\n".join(log))
