"""--ckpt-window and --fill-in: a run checkpointed every 20 steps and filled in every 10 holds the
very bytes a run checkpointed every 10 steps holds; fill-in writes only the missing checkpoints,
records them, refuses bad input writing nothing, and survives a kill."""
import hashlib
import json
import random
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.checkpoint import SEAL, list_checkpoints, load_checkpoint, load_state, step_of
from store.runio import read_json
from train import main

from _faults import KILL_AT_FSYNC

# a 1-layer model: every run here trains in about a second
COMMON = ["--steps", "40", "--batch-size", "4", "--warmup", "4", "--eval-every", "10", "--n-layer", "1",
          "--n-head", "2", "--n-embd", "32", "--n-ctx", "32", "--corpus-mb", "0.05", "--canaries-per-count", "1",
          "--canary-copies", "1,8", "--eval-batches", "1", "--sample-tokens", "4", "--vocab-size", "512",
          "--seed", "11", "--device", "cpu", "--threads", "1"]


def steps_of(run: Path) -> list[int]:
    return [step_of(p) for p in list_checkpoints(run)]


def weights(run: Path, step: int) -> bytes:
    return (run / "checkpoints" / f"step_{step:06d}" / "model.safetensors").read_bytes()


def digest(folder: Path, skip: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part in skip for part in p.relative_to(folder).parts):
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fill")
    dense, sparse = root / "dense", root / "sparse"
    assert main(["--out", str(dense), "--ckpt-every", "10"] + COMMON) == 0
    assert main(["--out", str(sparse), "--ckpt-every", "20", "--ckpt-window", "33:37:2"] + COMMON) == 0
    return dense, sparse


def test_ckpt_window_adds_checkpoints_and_every_checkpoint_keeps_its_state(runs):
    dense, sparse = runs
    run = read_json(sparse / "run.json")
    assert run["train"]["ckpt_window"] == "33:37:2" and run["train"]["keep_states"] == "budget"  # 2 GB: every state of this small run fits
    assert steps_of(sparse) == run["checkpoint_steps"] == [0, 1, 2, 4, 20, 33, 35, 37, 40]
    assert steps_of(dense) == [0, 1, 2, 4, 10, 20, 30, 40]
    # a state at every checkpoint, each equal to what the other run kept at the same step
    for step in (0, 4, 20, 40):
        a, b = load_state(dense, step), load_state(sparse, step)
        assert a["step"] == b["step"] == step
        assert all((a["model"][k] == b["model"][k]).all() for k in a["model"])


def test_fill_in_is_bit_identical_and_writes_only_the_missing_checkpoints(runs, capsys):
    dense, sparse = runs
    keep = {name: (sparse / name).read_bytes() for name in ("metrics.jsonl", "samples.jsonl", "data.json")}
    states, old = digest(sparse / "state"), {s: digest(sparse / "checkpoints" / f"step_{s:06d}") for s in steps_of(sparse)}
    assert main(["--out", str(sparse), "--fill-in", "0:40:10"]) == 0
    assert "added 2 checkpoint(s)" in capsys.readouterr().err
    assert steps_of(sparse) == [0, 1, 2, 4, 10, 20, 30, 33, 35, 37, 40]
    for step in set(steps_of(dense)) & set(steps_of(sparse)):
        assert weights(sparse, step) == weights(dense, step), f"step {step} differs"
    for step in (10, 30):  # the meta of a filled-in checkpoint says what the dense run's says
        (_, a), (_, b) = load_checkpoint(dense / "checkpoints" / f"step_{step:06d}"), \
            load_checkpoint(sparse / "checkpoints" / f"step_{step:06d}")
        same = lambda m: {k: v for k, v in m.items() if k not in ("time", SEAL, "run_files")}
        assert same(a) == same(b)
    # nothing else was touched
    assert {name: (sparse / name).read_bytes() for name in keep} == keep
    assert digest(sparse / "state") == states
    assert {s: digest(sparse / "checkpoints" / f"step_{s:06d}") for s in old} == old
    entries = read_json(sparse / "run.json")["filled_in"]
    assert len(entries) == 1
    assert entries[0]["windows"] == "0:40:10" and entries[0]["steps"] == entries[0]["planned"] == [10, 30]
    assert entries[0]["from_state"] == 4 and entries[0]["losses_match_metrics"] is True
    assert read_json(sparse / "run.json")["status"] == "complete"

    # a second fill-in of the same window finds nothing to do and changes nothing
    before = digest(sparse)
    assert main(["--out", str(sparse), "--fill-in", "0:40:10"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert digest(sparse) == before


def test_probes_compute_the_filled_in_checkpoints(runs):
    from probes.run.runner import run_probes
    _, sparse = runs
    if 10 not in steps_of(sparse):
        assert main(["--out", str(sparse), "--fill-in", "0:40:10"]) == 0
    assert run_probes(sparse, only="attention_entropy", steps=[10, 30]) == [10, 30]
    assert (sparse / "probes" / "step_000010.json").exists() and (sparse / "probes" / "summary.json").exists()


# -- bad input ----------------------------------------------------------------------------------
def refused(argv, capsys, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: ")


@pytest.fixture(scope="module")
def latest_only(tmp_path_factory):
    run = tmp_path_factory.mktemp("latest") / "run"
    assert main(["--out", str(run), "--ckpt-every", "10", "--keep-states", "latest"] + COMMON) == 0
    return run


def test_fill_in_bad_input_is_one_sentence_and_writes_nothing(runs, latest_only, tmp_path, capsys):
    _, sparse = runs
    before = digest(sparse)
    for argv, needle in [
        (["--fill-in", "0:60:10"], "ends after step 40, the last step"),
        (["--fill-in", "10:0:5"], "START < END"),
        (["--fill-in", "0:40"], "START:END:EVERY"),
        (["--fill-in", "0:40:0"], "EVERY 0"),
        (["--fill-in", ""], "needs a window"),
        (["--fill-in", "0:40:10", "--resume"], "cannot be combined"),
        (["--fill-in", "0:40:10", "--lr", "0.5"], "holds a different run"),
    ]:
        refused(["--out", str(sparse)] + argv, capsys, needle)
    assert digest(sparse) == before
    refused(["--out", str(tmp_path / "none"), "--fill-in", "0:10:5"], capsys, "holds no run")
    assert not (tmp_path / "none").exists()

    # a run that kept only its latest state cannot retrain step 5
    before = digest(latest_only)
    refused(["--out", str(latest_only), "--fill-in", "5:15:5"], capsys, "no training state at or before step 5")
    assert digest(latest_only) == before

    # a run still training (or killed without --resume) is refused
    info = read_json(sparse / "run.json")
    (sparse / "run.json").write_text(json.dumps({**info, "status": "training"}))
    try:
        refused(["--out", str(sparse), "--fill-in", "0:40:5"], capsys, "is still training")
    finally:
        (sparse / "run.json").write_text(json.dumps(info, indent=1))


def test_bad_ckpt_window_is_refused(tmp_path, capsys):
    for argv, needle in [(["--ckpt-window", "30:50:5"], "ends after the last step (40)"),
                         (["--ckpt-window", "30:20:5"], "START < END"),
                         (["--ckpt-window", "0:40:0"], "EVERY 0"),
                         (["--ckpt-window", "x"], "START:END:EVERY"),
                         (["--steps", "10000000", "--ckpt-window", "0:10000000:1"], "more than 100000 checkpoints"),
                         (["--keep-states", "some"], "invalid choice")]:
        refused(["--out", str(tmp_path / "r")] + COMMON + argv, capsys, needle)
        assert not (tmp_path / "r").exists()


# -- a kill in the middle ------------------------------------------------------------------------


def test_a_killed_fill_in_leaves_every_checkpoint_readable_and_finishes_when_rerun(runs, tmp_path):
    seed = int(os.environ.get("KILL_SEED", 4242))  # fixed in make test; KILL_SEED=N tries another
    note = f"(reproduce with KILL_SEED={seed})"
    dense, _ = runs
    run = tmp_path / "run"
    assert main(["--out", str(run), "--ckpt-every", "20"] + COMMON) == 0
    # fill-in 5:35:5 writes 6 checkpoints (5, 10, 15, 25, 30, 35) after recording its plan in run.json:
    # 3 directory fsyncs each (checkpoint folder, checkpoints/, run.json), 19 in all
    die_at = random.Random(seed).randint(1, 19)
    p = subprocess.run([sys.executable, "-c", KILL_AT_FSYNC, str(die_at), "--out", str(run), "--fill-in", "5:35:5"],
                       capture_output=True, text=True)
    assert p.returncode == -9, (p.returncode, p.stderr[-800:], note)
    for ck in list_checkpoints(run):  # every checkpoint present loads
        load_checkpoint(ck)
    info = read_json(run / "run.json")
    planned = {s for e in info.get("filled_in", []) for s in e["planned"]}
    recorded = {s for e in info.get("filled_in", []) for s in e["steps"]}
    assert recorded <= set(steps_of(run)), note  # "steps" lists only checkpoints that exist
    assert set(steps_of(run)) - set(info["checkpoint_steps"]) <= planned, note  # run.json names every added one
    assert main(["--out", str(run), "--fill-in", "5:35:5"]) == 0, note
    assert steps_of(run) == [0, 1, 2, 4, 5, 10, 15, 20, 25, 30, 35, 40], note
    for step in (10, 20, 30, 40):
        assert weights(run, step) == weights(dense, step), f"step {step} differs {note}"
    added = sorted(s for e in read_json(run / "run.json")["filled_in"] for s in e["steps"])
    assert added == [5, 10, 15, 25, 30, 35], note  # the killed fill-in's entry was reconciled
