"""Figure builders and result reshaping: the numbers that go in come back out of the figure, in
the right place (layer vs head, step vs value, run vs run)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from app import figures, results as R
from app_fixtures import fake_result, fake_summary

STEPS = [0, 1, 2, 4, 8, 16]
RESULTS = {s: fake_result(s, L=3, H=4) for s in STEPS}


def trace_named(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def test_head_heatmap_puts_layers_on_y_and_heads_on_x():
    m = [[0.1, 0.2, 0.3], [1.1, 1.2, 1.3]]
    fig = figures.head_heatmap(m, "t", "Δ loss", selected=[(1, 2)])
    hm = fig.data[0]
    assert hm.type == "heatmap"
    assert [list(r) for r in hm.z] == m
    assert list(hm.x) == [0, 1, 2] and list(hm.y) == [0, 1]
    # the selected head (layer 1, head 2) is boxed exactly around its cell
    (box,) = fig.layout.shapes
    assert (box.x0, box.x1, box.y0, box.y1) == (1.5, 2.5, 0.5, 1.5)


def test_small_multiples_one_line_per_head_per_layer_with_values_over_steps():
    steps, mats = R.matrices(RESULTS, "head_ablation.zero")
    assert steps == STEPS
    fig = figures.head_small_multiples(steps, mats, "t", "Δ", log_x=False)
    assert len(fig.data) == 3 * 4
    for tr in fig.data:
        l, h = tr.meta["layer"], tr.meta["head"]
        assert list(tr.x) == STEPS
        assert list(tr.y) == pytest.approx([RESULTS[s]["head_ablation"]["zero"][l][h] for s in STEPS])
    # one panel per layer: the traces of layer 2 live on the third x-axis
    assert {tr.xaxis for tr in fig.data if tr.meta["layer"] == 2} == {"x3"}


def test_log_x_moves_step_zero_to_half_and_marks_emergence():
    steps, mats = R.matrices(RESULTS, "induction.induction")
    fig = figures.head_small_multiples(steps, mats, "t", "s", log_x=True, marks={"phase change": 4, "none": None})
    assert list(fig.data[0].x) == [0.5, 1, 2, 4, 8, 16]
    assert fig.layout.xaxis.type == "log"
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 3 and {s.x0 for s in lines} == {4}  # one per layer panel
    (label,) = [a for a in fig.layout.annotations if a.name == "mark"]
    assert label.text == "phase change: step 4" and label.x == pytest.approx(math.log10(4))


def test_scalar_series_values_and_secondary_axis():
    seq = R.scalar(RESULTS, "repetition.greedy.seq_rep_4")
    val = ([0, 8, 16], [5.0, 3.0, 2.5])
    fig = figures.scalar_series({"greedy": seq}, "t", "seq-rep-4", log_x=False, secondary={"held-out loss": val},
                                marks={"repetition": 8})
    g = trace_named(fig, "greedy")
    assert list(g.x) == STEPS
    assert list(g.y) == pytest.approx([RESULTS[s]["repetition"]["greedy"]["seq_rep_4"] for s in STEPS])
    v = trace_named(fig, "held-out loss")
    assert list(v.y) == [5.0, 3.0, 2.5] and v.yaxis == "y2"
    assert [s.x0 for s in fig.layout.shapes] == [8]


def test_loss_curves_mark_checkpoints_on_the_train_curve_per_run():
    a = {"train": ([0, 10, 20], [6.0, 4.0, 3.0]), "val": ([0, 20], [6.1, 3.2])}
    b = {"train": ([0, 10], [7.0, 5.0]), "val": ([], [])}
    fig = figures.loss_curves({"a": a, "b": b}, {"a": [0, 5, 20], "b": [10]})
    assert list(trace_named(fig, "a train").y) == [6.0, 4.0, 3.0]
    assert list(trace_named(fig, "a held-out").y) == [6.1, 3.2]
    ck = trace_named(fig, "a checkpoints")
    assert list(ck.x) == [0, 5, 20] and list(ck.y) == pytest.approx([6.0, 5.0, 3.0])  # 5 interpolated
    assert list(trace_named(fig, "b checkpoints").y) == [5.0]
    assert not [t for t in fig.data if t.name == "b held-out"]  # no val rows, no empty trace


def test_attention_pattern_keeps_repeated_tokens_apart_on_the_axes():
    pat = np.tril(np.ones((4, 4)))
    pat = (pat / pat.sum(1, keepdims=True)).tolist()
    fig = figures.attention_pattern(pat, [" the", " cat", " the", "\n"], "t")
    hm = fig.data[0]
    assert [list(r) for r in hm.z] == pat
    assert list(hm.x) == ["0:␣the", "1:␣cat", "2:␣the", "3:⏎"] and list(hm.y) == list(hm.x)


def test_canary_figures_match_the_canary_results():
    canaries = RESULTS[8]["memorization"]["canaries"]
    fig = figures.canaries_vs_copies(list(reversed(canaries)), "t")
    ext = [t for t in fig.data if t.meta["series"] == "extracted"][0]
    exp = [t for t in fig.data if t.meta["series"] == "exposure"][0]
    assert list(ext.x) == [1, 2, 4, 8, 16, 32, 64]  # sorted by copies whatever the input order
    assert list(ext.y) == pytest.approx([c["extracted_fraction"] for c in canaries])
    assert list(exp.y) == pytest.approx([c["exposure"] for c in canaries])
    assert fig.layout.xaxis.type == "log"

    per_step = [RESULTS[s]["memorization"]["canaries"] for s in STEPS]
    over = figures.canaries_over_training(STEPS, per_step, "extracted_fraction", "t", log_x=False)
    line64 = trace_named(over, "64 copies")
    assert list(line64.y) == pytest.approx([min(1.0, 0.64 * math.log2(s + 1)) for s in STEPS])


def test_result_helpers_tolerate_missing_keys_and_find_emergence():
    partial = {0: {"step": 0}, 4: RESULTS[4]}
    assert R.scalar(partial, "memorization.loss_gap") == ([4], [RESULTS[4]["memorization"]["loss_gap"]])
    assert R.matrices(partial, "attention_entropy.raw")[0] == [4]
    steps, best = R.best_head(RESULTS, "induction.previous_token")
    assert best == pytest.approx([max(max(r) for r in RESULTS[s]["induction"]["previous_token"]) for s in steps])
    summary = fake_summary(STEPS)
    assert R.emergence_step(summary, "repetition") == STEPS[3]
    assert R.emergence_step(summary, "memorization") == STEPS[1]
    assert R.emergence_step(summary, "head_concentration") is None
    assert R.emergence_step(None, "repetition") is None
    assert R.emergence_rule(summary, "repetition").startswith("greedy")


def test_repeated_ngram_mask_and_highlight_escape_model_output():
    toks = [1, 2, 3, 4, 1, 2, 3, 4, 9]
    assert R.repeated_ngram_mask(toks, 4) == [False] * 4 + [True] * 4 + [False]
    assert R.repeated_ngram_mask([5, 5, 5, 5, 5], 2) == [False, True, True, True, True]
    html = R.highlight_html(["<b>", " wave", " wave", "\n"], [False, True, True, False])
    assert html == '&lt;b&gt;<mark style="background:#ffd166;padding:0"> wave wave</mark><br>'


def test_app_mask_agrees_with_the_probes_definition():
    from probes import metrics
    for toks in ([1, 2, 3, 4, 1, 2, 3, 4, 9], [5] * 9, [1, 2, 1, 2, 1, 2, 3], list(range(10))):
        assert [bool(x) for x in metrics.repeated_ngram_mask(toks, 4)] == R.repeated_ngram_mask(toks, 4)
