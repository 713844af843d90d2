"""When two sibling runs part (probes/analyse/run_pairs.py, the learning-rate study's verdicts on the
Compare page): series with a known parting of the text and of the loss are found at the right
checkpoint, in the right order; noise alone never parts; identical runs never part. The series are
built from a real result of the probes (a small run's memorization and repetition entries), with
only the compared numbers changed."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from app import compare as C
from store.vocab import load_tokenizer
from probes.measure.compute import compute_probes
from probes.measure.inputs import ProbeSizes, probe_inputs
from probes.analyse.run_pairs import PAIR_MIN_LOSS, PAIR_MIN_TONE, PAIR_PERSIST, PAIR_Z, loss_difference, pair_verdict
from probes.measure.results import read_results
from probes.run.runner import run_probes

from _runs import write_run

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ProbeSizes(n_ablation=4, n_attention=5, n_memorization=16, n_random=2, max_new_tokens=12, n_frequent=200)
STEPS = list(range(0, 1100, 100))


@pytest.fixture(scope="module")
def real(fake_run) -> dict:
    """One real result (memorization and repetition) of a small run's checkpoint: step 0 of the
    session's default fake run (test_runner.py's), the same files as a fake run of step 0 alone."""
    from store.checkpoint import checkpoint_dir, load_checkpoint
    run = fake_run(steps=(0, 1, 2, 4))
    model, _ = load_checkpoint(checkpoint_dir(run, 0))
    return compute_probes(model, load_tokenizer(run), probe_inputs(run, SMALL), 0, ["memorization", "repetition"])


def with_values(template: dict, rows: list[float], tone: float, tone_sd: float) -> dict:
    r = copy.deepcopy(template)
    r["memorization"]["held_out"]["row_losses"] = list(rows)
    r["memorization"]["held_out"]["loss"] = float(np.mean(rows))
    r["repetition"]["tone"]["jsd_unigram"] = tone
    r["repetition"]["tone"]["floor_unigram_sd"] = tone_sd
    return r


def series(template: dict, rows_at, tone_at, sd: float = 0.02) -> dict[int, dict]:
    return {s: with_values(template, rows_at(s), tone_at(s), sd) for s in STEPS}


def test_the_real_result_holds_what_the_rule_reads(real):
    held = real["memorization"]["held_out"]
    assert len(held["row_losses"]) == 16 and np.mean(held["row_losses"]) == pytest.approx(held["loss"])
    assert isinstance(real["repetition"]["tone"]["jsd_unigram"], float)
    assert real["repetition"]["tone"]["floor_unigram_sd"] > 0


def test_known_partings_are_found_in_order(real):
    rng = np.random.default_rng(0)
    base = list(4.0 + rng.normal(0, 0.5, 16))  # rows differ a lot from each other: the pairing removes it
    a = series(real, lambda s: base, lambda s: 0.30)
    b = series(real, lambda s: [x + (0.05 if s >= 600 else 0.0) + rng.normal(0, 0.002) for x in base],
               lambda s: 0.30 + (0.2 if s >= 300 else 0.0))
    v = pair_verdict(a, b)
    assert v["generation"]["parted"] and v["generation"]["step"] == 300 and v["generation"]["from_step"] == 200
    assert v["loss"]["parted"] and v["loss"]["step"] == 600 and v["loss"]["from_step"] == 500
    assert v["loss"]["difference"] == pytest.approx(-0.05, abs=0.003)
    assert v["first"] == "generation" and v["shared_steps"] == len(STEPS)
    assert v["generation"]["threshold"] == pytest.approx(max(PAIR_MIN_TONE, PAIR_Z * 0.02 * 2 ** 0.5))
    # the other way round: the loss first
    b2 = series(real, lambda s: [x + (0.05 if s >= 200 else 0.0) for x in base], lambda s: 0.30 + (0.2 if s >= 900 else 0))
    assert pair_verdict(a, b2)["first"] == "loss"


def test_unpaired_noise_would_hide_what_the_pairing_shows(real):
    """A 0.02-nat shift against rows spread by 0.5 nats: the paired error finds it; the rows' own
    standard error (0.5/4 = 0.125) would not."""
    rng = np.random.default_rng(1)
    base = list(4.0 + rng.normal(0, 0.5, 16))
    a = with_values(real, base, 0.3, 0.02)
    b = with_values(real, [x + 0.02 + rng.normal(0, 0.001) for x in base], 0.3, 0.02)
    d, se = loss_difference(a, b)
    assert d == pytest.approx(-0.02, abs=0.001) and se < 0.001
    assert 0.02 < PAIR_Z * float(np.std(base, ddof=1)) / 4


def test_a_blip_or_a_crossing_at_the_last_checkpoint_is_not_a_parting(real):
    base = [4.0 + 0.1 * i for i in range(16)]
    a = series(real, lambda s: base, lambda s: 0.3)
    blip = series(real, lambda s: [x + (0.1 if s == 500 else 0.0) for x in base], lambda s: 0.3 + (0.3 if s == 400 else 0))
    last = series(real, lambda s: [x + (0.1 if s == STEPS[-1] else 0.0) for x in base], lambda s: 0.3)
    for b in (blip, last):
        v = pair_verdict(a, b)
        assert not v["generation"]["parted"] and not v["loss"]["parted"] and v["first"] is None
        assert f"{PAIR_PERSIST} consecutive" in v["loss"]["reason"]


def test_noise_alone_never_parts(real):
    seed = random.randrange(2 ** 31)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    parted = 0
    for _ in range(200):
        base = 4.0 + rng.normal(0, 0.5, 16)
        a = series(real, lambda s: list(base + rng.normal(0, 0.01, 16)), lambda s: 0.3 + rng.normal(0, 0.02))
        b = series(real, lambda s: list(base + rng.normal(0, 0.01, 16)), lambda s: 0.3 + rng.normal(0, 0.02))
        v = pair_verdict(a, b)
        parted += v["generation"]["parted"] + v["loss"]["parted"]
    assert parted <= 2, f"seed {seed}: {parted} partings in 400 noise-only comparisons"


def test_unmeasured_results_say_so(real):
    old = copy.deepcopy(real)
    del old["memorization"]["held_out"]["row_losses"]
    v = pair_verdict({0: old, 100: old}, {0: old, 100: old})
    assert not v["loss"]["parted"] and "not measured" in v["loss"]["reason"]
    assert pair_verdict({0: real}, {100: real})["shared_steps"] == 0


def test_identical_real_runs_never_part_and_the_compare_rows(tmp_path):
    """Two real runs with the same checkpoints probed end to end: no parting; a third differing
    run is compared pairwise in the order given."""
    runs = [write_run(tmp_path, name, steps=(0, 1, 2), seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 5))]
    for run in runs:
        run_probes(run, only="memorization,repetition", sizes=SMALL, log=lambda m: None)
    results = [(r.name, read_results(r)) for r in runs]
    v = pair_verdict(results[0][1], results[1][1])
    assert v["loss"]["n"] == 3 and not v["loss"]["parted"] and not v["generation"]["parted"]
    assert v["loss"]["reason"] and v["first"] is None
    rows = C.pair_rows(results)
    assert [r["pair"] for r in rows] == ["a vs b", "a vs c", "b vs c"]
    assert rows[0]["first"] == "neither" and rows[0]["held-out losses differ at"] is None
    assert PAIR_MIN_LOSS > 0
