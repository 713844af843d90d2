"""Greedy loops measured directly: the longest repeated loop a continuation ends in (by hand), the
repetition probe's loop lengths, path entropy and seq-rep-4 standard errors on a real (random-init)
run, summary.json's entropy_collapse entry on series whose loops begin and end at known checkpoints,
and the Repetition page showing the loops."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app import failure_captions as FC
from app_fixtures import probe_result, write_fake_run
from probes import summarize
from probes.analyse.emergence_rules import THRESHOLDS, rules
from probes.measure.inputs import REPETITION_PROMPTS
from probes.measure.metrics import find_loop, longest_loop, periodic_tail, seq_rep_n
from probes.analyse.phenomena import COLLAPSE_KEYS
from probes.measure.repetition import SAMPLES_PER_PROMPT, prompt_se


# -- the loop measure --------------------------------------------------------------------------
def test_the_longest_loop_on_hand_made_sequences():
    assert longest_loop([1, 2, 3, 1, 2, 3, 1, 2, 3]) == (3, 9)
    assert longest_loop([1, 2, 3, 4, 5]) == (0, 0) and longest_loop([]) == (0, 0)
    assert longest_loop([5] * 10) == (1, 10)  # period 2 spans as much; the smallest period is reported
    assert longest_loop([9, 1, 2, 3, 1, 2, 3, 1, 2]) == (3, 8)  # the last copy cut short still counts
    assert longest_loop([4, 1, 2, 1, 2, 3]) == (0, 0)  # a loop that stopped before the end is none
    assert longest_loop([7, 8, 7]) == (0, 0) and longest_loop([7, 8, 7, 8]) == (2, 4)  # twice at least
    assert longest_loop([1, 2, 3, 1, 2, 3], min_repeats=3) == (0, 0)
    # the longest span wins: "2 2" ends it (period 1, length 2), but all 9 tokens loop with period 3
    assert longest_loop([1, 2, 2] * 3) == (3, 9) and longest_loop([1, 2, 2, 5, 2, 2]) == (1, 2)
    assert periodic_tail([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == 9 and periodic_tail([1, 2, 3, 4], 2) == 2
    assert find_loop([7, 8, 9] * 6, min_span=16) == (0, 3)  # the older measure reads the same tail


def test_prompt_se_by_hand():
    # greedy, four prompts: sd (ddof 1) of (0, 0.5, 1, 0.5) is sqrt(1/6); / sqrt(4)
    assert prompt_se([0.0, 0.5, 1.0, 0.5], 1) == pytest.approx(np.sqrt(1 / 6) / 2)
    # sampled, two prompts x two samples: variances 0.02 and 0, mean 0.01, / 4 rows -> sqrt(0.0025)
    assert prompt_se([0.1, 0.3, 0.5, 0.5], 2) == pytest.approx(0.05)
    assert prompt_se([0.3], 1) is None


def test_the_repetition_probe_measures_loops_path_entropy_and_its_own_noise():
    """Real probe results of a random-init run: every greedy continuation's longest loop recomputed from
    its tokens, the means the probe reports, and the standard errors from the rows it lists."""
    rep = probe_result(8)["repetition"]
    greedy, sampled = rep["greedy"], rep["sampled"]
    prompts = len(REPETITION_PROMPTS)
    assert "They wave to each other." in REPETITION_PROMPTS
    assert {c["prompt"] for c in rep["continuations"]} == set(REPETITION_PROMPTS)
    assert rep["sampling"]["samples_per_prompt"] == SAMPLES_PER_PROMPT == sampled["samples_per_prompt"] >= 2
    assert len(greedy["seq_rep_4_rows"]) == prompts and len(sampled["seq_rep_4_rows"]) == prompts * SAMPLES_PER_PROMPT
    assert sampled["seq_rep_4"] == pytest.approx(np.mean(sampled["seq_rep_4_rows"]))
    assert greedy["seq_rep_4_se"] == pytest.approx(prompt_se(greedy["seq_rep_4_rows"], 1))
    assert sampled["seq_rep_4_se"] == pytest.approx(prompt_se(sampled["seq_rep_4_rows"], SAMPLES_PER_PROMPT))
    rows = [c for c in rep["continuations"] if c["decoding"] == "greedy"]
    assert [c["seq_rep_4"] for c in rows] == pytest.approx(greedy["seq_rep_4_rows"])
    for c in rows:
        assert (c["longest_loop_period"], c["longest_loop_length"]) == longest_loop(c["tokens"])
        assert c["seq_rep_4"] == pytest.approx(seq_rep_n(c["tokens"], 4))
    lengths = [c["longest_loop_length"] for c in rows]
    assert greedy["loop_length"] == pytest.approx(np.mean(lengths)) and greedy["loop_length_max"] == max(lengths)
    assert greedy["loop_share"] == pytest.approx(np.mean([n / len(c["tokens"]) for n, c in zip(lengths, rows)]))
    assert greedy["predictive_entropy"] > 0 and 0 <= greedy["loop_share"] <= 1


# -- the entropy-collapse entry ----------------------------------------------------------------
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600, 700, 800]
# A random init that echoes itself, loops from step 4 to 64 (resolved at 100), back from 400 to 600.
SHARE = [0.9, 0.1, 0.2, 0.7, 0.8, 0.9, 0.8, 0.6, 0.1, 0.1, 0.2, 0.6, 0.7, 0.7, 0.2, 0.1]
ENTROPY = [4.0, 3.0, 2.8, 0.4, 0.3, 0.2, 0.3, 0.5, 1.8, 1.7, 1.6, 0.6, 0.5, 0.5, 1.5, 1.5]


def collapse_results(share: list[float] | None = SHARE) -> dict[int, dict]:
    out = {}
    for i, s in enumerate(STEPS):
        greedy = {"seq_rep_4": 0.2, "predictive_entropy": ENTROPY[i]}
        if share is not None:
            greedy.update(loop_share=share[i], loop_length=share[i] * 120)
        out[s] = {"step": s, "memorization": {"held_out": {"loss": 2.0 + 6.0 * np.exp(-i / 3)}},
                  "repetition": {"greedy": greedy}}
    return out


def test_loops_begin_and_end_at_their_checkpoints_with_the_entropy_beside_them():
    summary = summarize(collapse_results())
    em = summary["emergence"]["entropy_collapse"]
    assert all(k in em for k in COLLAPSE_KEYS) and em["rule"] == rules()["entropy_collapse"] == summary["rules"][
        "entropy_collapse"]
    assert em["detected"] and em["present_at_init"] and em["learning_started_step"] == 1
    assert (em["from_step"], em["step"], em["resolved_step"]) == (2, 4, 100)
    assert em["episodes"] == [{"step": 4, "from_step": 2, "resolved_step": 100},
                              {"step": 400, "from_step": 300, "resolved_step": 700}]
    assert em["threshold"] == THRESHOLDS["collapse_loop_share"] and em["loop_length_at_step"] == pytest.approx(84)
    assert em["entropy_before"] == pytest.approx(2.9) and em["entropy_during"] == pytest.approx(0.3)
    assert em["entropy_after"] == pytest.approx(1.5)  # the median from step 100 on
    assert em["entropy_during"] < em["entropy_before"] / 2  # the path entropy collapses while loops last
    text = FC.collapse_caption(em)
    assert text.startswith("Greedy loops begin at step 4 (after 2") and "end at step 100" in text
    assert "steps 400–700" in text


def test_no_loops_or_no_measure_say_why():
    em = summarize(collapse_results([0.1] * len(STEPS)))["emergence"]["entropy_collapse"]
    assert not em["detected"] and em["step"] is None and "never take 50%" in em["reason"]
    em = summarize(collapse_results(None))["emergence"]["entropy_collapse"]
    assert not em["detected"] and "--only repetition --force" in em["reason"] and em["episodes"] == []
    assert FC.collapse_caption(em).startswith("No greedy loops found") and FC.collapse_caption(None) is None


def test_loops_that_last_to_the_end_are_not_resolved():
    share = [0.1, 0.1, 0.2, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.7, 0.8, 0.9]
    em = summarize(collapse_results(share))["emergence"]["entropy_collapse"]
    assert em["detected"] and em["step"] == 600 and em["resolved_step"] is None and em["entropy_after"] is None
    assert "have not ended" in FC.collapse_caption(em)


def test_the_repetition_page_shows_the_loops(tmp_path, monkeypatch):
    """A real (random-init) run: the loop-length panel, and each generation says its loop."""
    from streamlit.testing.v1 import AppTest
    write_fake_run(tmp_path, "loops", steps=(0, 1, 2, 4, 8))
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/repetition.py").run()
    assert not at.exception
    specs = {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    loop_panel = [k for k, v in specs.items() if "Longest loop" in json.dumps(v.get("layout", {}).get("title", ""))]
    assert loop_panel, sorted(specs)
    shown = "\n".join(m.value for m in at.markdown)
    assert "step 8</b>" in shown and ("· loop: the last" in shown or "· no loop" in shown)
    assert "How greedy loops" in "\n".join(e.label for e in at.expander)
