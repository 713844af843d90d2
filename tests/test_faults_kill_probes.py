"""SIGKILL of the probes runner at random moments: after every kill each visible result
file is whole and equal to an uninterrupted run's, summary.json (if there) is readable, and the
next run computes exactly the checkpoints still missing, ending with the same results and summary
as a run never interrupted, and no temporary file left.

Kill moments: the N-th file write event of a process of `python -m probes` (fsync of a result's
temporary file, just before or just after its rename, the folder fsync; summary.json too), where
the hook of _faults.py kills the runner and its worker processes at once; or a random delay, after
which the runner alone is killed from outside, and its worker processes must then stop by
themselves (they used to wait forever). Fast: 2 kills; stress: 10. The seed is drawn from the
clock, printed at the start and named in every failure (escaped exceptions included); reproduce
with KILL_SEED=<seed> (or WORKBENCH_TEST_SEED=<seed>).
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import probes
from probes.measure.compute import PROBES, RESULT_VERSION
from probes.measure.results import read_results

import _faults as faults

STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


def without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the children (OMP_NUM_THREADS=1): the same numbers
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def template(fake_run) -> Path:
    """The session's fake run with STEPS (conftest.py): shared, so every test copies it."""
    return fake_run(steps=STEPS)


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory, one_thread) -> dict:
    """Results and summary of an uninterrupted runner (a child process, as the killed ones), and
    its file-write count and wall time, to place the kills."""
    root = tmp_path_factory.mktemp("reference")
    run = Path(shutil.copytree(template, root / "run"))
    counts = root / "counts"
    t0 = time.time()
    p = faults.launch(root, f"count={counts}", 0, "probes", [str(run)])
    err = faults.finish(p)
    assert p.returncode == 0, err[-2000:]
    return {"results": {s: without_timing(r) for s, r in read_results(run).items()},
            "summary": json.loads((run / "probes" / "summary.json").read_text()),
            "writes": faults.read_counts(counts)["write"], "seconds": time.time() - t0}


def check_after_kill(run: Path, ref: dict, note: str) -> list[int]:
    """Every visible file whole and right; returns the steps with results."""
    folder = run / "probes"
    if not folder.is_dir():
        return []
    done = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue  # a temporary file of the killed writer: invisible to readers, removed next run
        assert p.name == "summary.json" or (p.name.startswith("step_") and p.suffix == ".json"), (p.name, note)
        data = json.loads(p.read_text())  # every visible file is whole JSON
        if p.name == "summary.json":
            assert isinstance(data, dict) and "steps" in data, note
            continue
        step = int(p.stem[5:])
        assert data["version"] == RESULT_VERSION and set(PROBES) <= set(data), (p.name, note)
        assert without_timing(data) == ref["results"][step], f"{p.name} differs from the reference {note}"
        done.append(step)
    return sorted(done)


def kill_campaign(template: Path, tmp_path: Path, ref: dict, kills: int) -> list[str]:
    seed = faults.draw_seed("KILL_SEED", stress=kills > 2)
    with faults.replayable("KILL_SEED", seed):
        return kill_and_finish(template, tmp_path, ref, kills, seed)


def kill_and_finish(template: Path, tmp_path: Path, ref: dict, kills: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    run = Path(shutil.copytree(template, tmp_path / "run"))
    log, done = [], 0
    while done < kills:
        have = check_after_kill(run, ref, f"(KILL_SEED={seed}, before kill {done + 1})")
        left = 1 - len(have) / len(STEPS)
        if rng.random() < 0.6:
            mode, n = "write", rng.randint(1, max(1, int(ref["writes"] * left)))
        else:
            mode, n = "time", rng.uniform(0.2, ref["seconds"])
        note = f"(KILL_SEED={seed}, kill {done + 1}, {mode} {n:.3g})"
        p = faults.launch(tmp_path, mode if mode == "write" else "none", int(n) if mode == "write" else 0,
                          "probes", [str(run)])
        if mode == "time":
            try:
                p.wait(timeout=n)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)  # the runner alone: its workers must not outlive it
        err = faults.finish(p, timeout=60)
        if p.returncode == -signal.SIGKILL:
            done += 1
            after = check_after_kill(run, ref, note)
            log.append(f"{mode} {n:.3g} -> killed with {len(after)}/{len(STEPS)} results")
            continue
        assert p.returncode == 0, f"exit {p.returncode} {note}: {err[-1500:]}"
        assert check_after_kill(run, ref, note) == list(STEPS), note
        log.append(f"{mode} {n:.3g} -> completed; starting over")
        shutil.rmtree(run / "probes")

    # the next run (in-process) computes exactly what is missing, and ends where the reference did
    have = check_after_kill(run, ref, f"(KILL_SEED={seed}, final)")
    assert probes.run_probes(run) == [s for s in STEPS if s not in have], seed
    assert {s: without_timing(r) for s, r in read_results(run).items()} == ref["results"], seed
    assert json.loads((run / "probes" / "summary.json").read_text()) == ref["summary"], seed
    assert sorted(p.name for p in (run / "probes").iterdir()) == sorted(
        [f"step_{s:06d}.json" for s in STEPS] + ["summary.json"]), seed  # no temporary file left
    return log


@pytest.mark.parametrize("kills", [pytest.param(2, id="fast"),
                                   pytest.param(10, id="stress", marks=pytest.mark.stress)])
def test_sigkill_of_the_probes_runner_leaves_whole_files_and_the_next_run_completes(template, reference, tmp_path,
                                                                                    one_thread, kills):
    log = kill_campaign(template, tmp_path, reference, kills)
    assert sum("killed" in line for line in log) == kills
    print("\n".join(log))
