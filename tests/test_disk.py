"""Disk that fits the run (train/disk.py): which training states a run keeps within its budget,
the real run's state folder, --resume and --fill-in from a thinned run, and the refusal before a
run would fill the disk."""
from __future__ import annotations

import math
import random

import pytest

from store.checkpoint import kept_state_steps, list_checkpoints, load_checkpoint
from model.config import GPTConfig
from model.memory import param_count
from store.runio import read_json
from store.runlayout import state_dir, state_name, step_of
from train import disk, main
from train.schedule import checkpoint_steps
from _small_run import make_small_run, small_run_argv

from _faults import draw_seed


def test_states_to_keep_by_hand():
    # no window, room for 3: the latest, then 0, 1, 2, 4 thinned to 2 by step: dropping 1 leaves
    # the smallest gap (2 - 0 = 2 < 4 - 1 = 3), then 2 goes
    assert disk.states_to_keep([0, 1, 2, 4, 8], [], 3) == {0, 4, 8}
    # the demo's schedule with room for 6: the late states stay evenly spread, the early ones go
    demo = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600, 700, 800]
    assert disk.states_to_keep(demo, [], 6) == {0, 200, 400, 600, 700, 800}
    # window states come before the others; the latest is always kept
    assert disk.states_to_keep([0, 1, 2, 4, 8, 10, 12], [8, 10], 3) == {8, 10, 12}
    assert disk.states_to_keep([0, 1, 2, 4, 8, 10, 12], [8, 10], 1) == {12}
    assert disk.states_to_keep([0, 5, 10], [], 10) == {0, 5, 10}
    assert disk.states_to_keep([], [3], 4) == set()
    # too many window states: thinned by step, ends kept
    assert disk.states_to_keep([100, 110, 120, 130, 140, 150], [100, 110, 120, 130, 140], 4) == {100, 120, 140, 150}


def test_states_to_keep_properties_online_as_the_loop_applies_it():
    """After every save the loop keeps states_to_keep(kept + new): never more than the capacity,
    always the latest, window states before others, and nothing when everything fits."""
    seed = draw_seed("TEST_SEED")
    print(f"seed {seed}: replay with TEST_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(200):
        steps = sorted(rng.sample(range(0, 5000), rng.randint(1, 40)))
        window = set(rng.sample(steps, rng.randint(0, len(steps))))
        cap = rng.randint(1, 45)
        kept: set[int] = set()
        for s in steps:
            kept = disk.states_to_keep(kept | {s}, window, cap)
            assert s in kept and len(kept) <= cap
        if cap >= len(steps):
            assert kept == set(steps)
        dropped_window = window - kept
        assert not dropped_window or kept <= window | {steps[-1]}, (seed, steps, window, cap, kept)


def test_sizes_follow_the_parameter_count():
    cfg = GPTConfig.preset("small")
    n = param_count(cfg)
    one_ckpt, one_state = disk.file_sizes(cfg)
    assert one_ckpt == 4 * n + 16 * 1024
    assert one_state == 12 * n + disk.STATE_OVERHEAD
    assert 1.4e9 < one_state < 1.6e9  # the "about 1.5 GB a state"
    assert disk.capacity(2e9, one_state) == 1 and disk.capacity(0, 10) == 1


def test_the_estimates_match_a_real_runs_files(tmp_path):
    run = make_small_run(tmp_path / "run", steps=10, keep_states="all")
    cfg = GPTConfig.from_dict(read_json(run / "run.json")["model"])
    state = (state_dir(run) / state_name(10)).stat().st_size
    weights = sum(p.stat().st_size for p in (list_checkpoints(run)[-1]).iterdir() if p.suffix == ".safetensors")
    one_ckpt, one_state = disk.file_sizes(cfg)
    assert abs(state - one_state) <= 0.02 * state + disk.STATE_OVERHEAD, (state, one_state)
    assert abs(weights - one_ckpt) <= 0.02 * weights + 16 * 1024, (weights, one_ckpt)


def test_a_budget_run_keeps_the_chosen_states_and_resumes_and_fills_in(tmp_path):
    full = make_small_run(tmp_path / "full", steps=40, keep_states="all")
    one = (state_dir(full) / state_name(40)).stat().st_size
    budget_gb = 3.5 * one / 1e9  # room for 3 states
    run = tmp_path / "thin"
    assert main(small_run_argv(run, steps=40, state_budget=budget_gb)) == 0
    steps = read_json(run / "run.json")["checkpoint_steps"]
    expected: set[int] = set()
    for s in steps:
        expected = disk.states_to_keep(expected | {s}, [], 3)
    assert set(kept_state_steps(run)) == expected and len(expected) == 3 and 40 in expected
    assert sorted(p.name for p in state_dir(run).iterdir() if p.suffix == ".pt") == sorted(map(state_name, expected))
    # the same weights as the run that kept everything
    for ck in list_checkpoints(full):
        a, _ = load_checkpoint(ck)
        b, _ = load_checkpoint(run / "checkpoints" / ck.name)
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert va.equal(vb), (ck.name, k)
    # fill-in starts from the kept state at or before its window and matches the full run's weights there
    start = max(s for s in expected if s < 40)
    assert main(["--out", str(run), "--fill-in", f"{start + 1}:{start + 2}:1"]) == 0
    assert main(["--out", str(full), "--fill-in", f"{start + 1}:{start + 2}:1"]) == 0
    a, _ = load_checkpoint(full / "checkpoints" / f"step_{start + 1:06d}")
    b, _ = load_checkpoint(run / "checkpoints" / f"step_{start + 1:06d}")
    assert all(va.equal(vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values()))
    assert step_of(list_checkpoints(run)[-1]) == 40


def test_a_run_that_would_fill_the_disk_is_refused_with_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 10 ** 6)  # a disk with 1 MB free
    out = tmp_path / "big"
    assert main(small_run_argv(out, steps=40, keep_states="all")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "would write about" in err and "training states" in err and "--keep-states latest" in err, err
    assert f"only 976.6 KiB are free at {out}" in err, err
    assert not out.exists()


def test_the_budget_decides_what_fits_at_small():
    """`small` (124M parameters), 21 checkpoints: every state (about 31 GB) does not fit in 20 GB free,
    the default budget (the latest state and no other, 2 GB holding one) does."""
    cfg = GPTConfig.preset("small")
    ckpts = checkpoint_steps(1500, 100, 100)
    one_ckpt, one_state = disk.file_sizes(cfg)
    assert disk.disk_refusal("x", cfg, ckpts, [], "all", 2.0, free=20 * 10 ** 9) is not None
    need = len(ckpts) * one_ckpt + one_state
    assert disk.disk_refusal("x", cfg, ckpts, [], "budget", 2.0, free=math.ceil(need / disk.DISK_SHARE)) is None
    assert disk.disk_refusal("x", cfg, ckpts, [], "budget", 2.0, free=int(need / disk.DISK_SHARE) - 10) is not None
    # a resumed run counts only what it has still to write
    assert disk.disk_refusal("x", cfg, ckpts, [], "all", 2.0, written=len(ckpts) - 1,
                             free=math.ceil((one_ckpt + one_state) / disk.DISK_SHARE)) is None


@pytest.mark.parametrize("value, message", [("0", "--state-budget must be a positive number of GB"),
                                            ("-1", "--state-budget must be a positive number of GB"),
                                            ("nan", "--state-budget must be a finite number")])
def test_a_bad_state_budget_is_refused(tmp_path, capsys, value, message):
    assert main(small_run_argv(tmp_path / "r", steps=10, state_budget=value)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
