"""Figure builders and result reshaping: the numbers that go in come back out of the figure, in
the right place (layer vs head, step vs value). Run comparison is in test_figures_compare.py, the
Induction page in test_figures_induction.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from app import figures, plot_data as R
from _figures import RESULTS, STEPS, emerging_summary, trace_named


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


def test_head_heatmap_hover_reads_value_plus_minus_its_standard_error():
    m = [[0.1, 0.2, 0.3], [1.1, 1.2, 1.3]]
    se = [[0.01, 0.02, 0.03], [0.11, 0.12, 0.13]]
    fig = figures.head_heatmap(m, "t", "Δ loss", clickable=True, errors=se)
    hm, cells = fig.data
    assert [list(r) for r in hm.customdata] == se and "± %{customdata:.4f}" in hm.hovertemplate
    # the click targets carry (value, SE) for the cell they sit on: layer 1, head 2 is the last one
    assert list(cells.customdata[-1]) == [1.3, 0.13] and (cells.x[-1], cells.y[-1]) == (2, 1)
    assert "± %{customdata[1]:.4f}" in cells.hovertemplate
    plain = figures.head_heatmap(m, "t", "Δ loss")
    assert plain.data[0].customdata is None and "±" not in plain.data[0].hovertemplate
    with pytest.raises(ValueError, match="shape 2 x 3"):
        figures.head_heatmap(m, "t", "Δ loss", errors=[[0.1, 0.2]])


def test_ablation_precision_note_states_n_tokens_se_and_target():
    note = figures.ablation_precision_note({"target_se": 0.005, "achieved_se": 0.0031, "n_sequences": 32,
                                            "tokens": 16384})
    assert "32 held-out sequences (16,384 tokens)" in note and "0.0031 nats" in note and "met" in note
    missed = figures.ablation_precision_note({"target_se": 0.001, "achieved_se": 0.0031, "n_sequences": 64,
                                              "tokens": 32768})
    assert "not met" in missed
    assert figures.ablation_precision_note(None) is None and figures.ablation_precision_note({}) is None


def test_small_multiples_draw_standard_errors_as_error_bars():
    steps, mats = R.matrices(RESULTS, "head_ablation.zero")
    errors = [[[0.001 * (s + 1) * (l + 1) + h for h in range(4)] for l in range(3)] for s in range(len(steps))]
    errors[0] = None  # a step computed before standard errors were recorded
    fig = figures.head_small_multiples(steps, mats, "t", "Δ", log_x=False, errors=errors)
    for tr in fig.data:
        l, h = tr.meta["layer"], tr.meta["head"]
        assert list(tr.error_y.array) == [None] + [pytest.approx(errors[i][l][h]) for i in range(1, len(steps))]
    assert figures.head_small_multiples(steps, mats, "t", "Δ", log_x=False).data[0].error_y.array is None


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
    assert list(ext.x) == [1, 8, 64]  # the fixture run's copy counts, sorted whatever the input order
    assert list(ext.y) == pytest.approx([c["extracted_fraction"] for c in canaries])
    assert list(exp.y) == pytest.approx([c["exposure"] for c in canaries])
    assert fig.layout.xaxis.type == "log"

    per_step = [RESULTS[s]["memorization"]["canaries"] for s in STEPS]
    over = figures.canaries_over_training(STEPS, per_step, "extracted_fraction", "t", log_x=False)
    line64 = trace_named(over, "64 copies")
    assert list(line64.y) == pytest.approx(
        [next(c["extracted_fraction"] for c in RESULTS[s]["memorization"]["canaries"] if c["copies"] == 64)
         for s in STEPS])


def canary_group(copies: int, exposure: float, rank: float) -> dict:
    """A group as probes.measure.memorization.canary_results writes it for a stories run (36 words from 437)."""
    return {"copies": copies, "n": 4, "extracted_fraction": 1.0 if copies >= 32 else 0.0, "mean_score": 0.5,
            "exposure": exposure, "exposure_extrapolated": exposure, "exposure_rank": rank,
            "exposure_rank_cap": 5.0, "n_candidates": 32, "randomness_space_log2": 36 * math.log2(437),
            "randomness_space": "36 words drawn uniformly from a list of 437: |R| = 437^36 = 2^315.8",
            "exposure_method": "Exposure (headline) is extrapolated: ...", "items": []}


def test_canary_figure_states_the_exposure_method_and_the_randomness_space():
    groups = [canary_group(64, 120.5, 5.0), canary_group(1, 0.7, 0.6), canary_group(8, 6.2, 5.0)]
    fig = figures.canaries_vs_copies(groups, "Canaries at step 800")
    axis = "exposure (bits, extrapolated; log2|R| = 315.8)"
    assert fig.layout.yaxis2.title.text == axis
    assert "extrapolated" in fig.layout.title.text and "log2|R| = 315.8" in fig.layout.title.text
    assert "31 draws from R" in fig.layout.title.text
    exp = [t for t in fig.data if t.meta["series"] == "exposure"][0]
    assert list(exp.y) == [0.7, 6.2, 120.5] and exp.name == axis
    assert "extrapolated; log2|R| = 315.8" in exp.hovertemplate
    rank = [t for t in fig.data if t.meta["series"] == "exposure_rank"][0]
    cap = [t for t in fig.data if t.meta["series"] == "rank_cap"][0]
    assert list(rank.y) == [0.6, 5.0, 5.0] and "log2 n = 5.0" in rank.name
    assert list(cap.y) == [5.0, 5.0] and list(cap.x) == [1, 64]
    # without a recorded space the axis says |R| is unknown
    unknown = [{**g, "randomness_space_log2": None, "randomness_space": None} for g in groups]
    fig = figures.canaries_vs_copies(unknown, "t")
    assert fig.layout.yaxis2.title.text == "exposure (bits, extrapolated; |R| unknown)"
    assert "31 listed alternatives" in fig.layout.title.text
    # results written before the method was recorded held the rank exposure among 16: say so
    old = [{"copies": c, "extracted_fraction": 0.0, "exposure": 4.0, "n_candidates": 16} for c in (1, 64)]
    fig = figures.canaries_vs_copies(old, "t")
    assert fig.layout.yaxis2.title.text == "exposure (bits, rank among 16; max log2 16 = 4.0)"
    assert not [t for t in fig.data if t.meta["series"] in ("exposure_rank", "rank_cap")]


def test_result_helpers_tolerate_missing_keys_and_find_emergence():
    partial = {0: {"step": 0}, 4: RESULTS[4]}
    assert R.scalar(partial, "memorization.loss_gap") == ([4], [RESULTS[4]["memorization"]["loss_gap"]])
    assert R.matrices(partial, "attention_entropy.raw")[0] == [4]
    steps, best = R.best_head(RESULTS, "induction.previous_token")
    assert best == pytest.approx([max(max(r) for r in RESULTS[s]["induction"]["previous_token"]) for s in steps])
    summary = emerging_summary()
    assert R.emergence_step(summary, "repetition") == STEPS[3]
    assert R.emergence_step(summary, "memorization") == STEPS[1]
    assert R.emergence_step(summary, "head_concentration") is None
    assert R.emergence_step(None, "repetition") is None
    assert R.emergence_rule(summary, "repetition").startswith("Metric repetition.greedy.seq_rep_4")


def test_repeated_ngram_mask_and_highlight_escape_model_output():
    from app.ui import ngram_mask
    toks = [1, 2, 3, 4, 1, 2, 3, 4, 9]
    assert ngram_mask(toks, 4) == [False] * 4 + [True] * 4 + [False]
    assert ngram_mask([5, 5, 5, 5, 5], 2) == [False, True, True, True, True]
    html = R.highlight_html(["<b>", " wave", " wave", "\n"], [False, True, True, False])
    assert html == '&lt;b&gt;<mark style="background:#ffd166;padding:0"> wave wave</mark><br>'


def test_app_mask_agrees_with_the_probes_definition():
    from app.ui import ngram_mask
    from probes.measure import metrics
    for toks in ([1, 2, 3, 4, 1, 2, 3, 4, 9], [5] * 9, [1, 2, 1, 2, 1, 2, 3], list(range(10))):
        assert [bool(x) for x in metrics.repeated_ngram_mask(toks, 4)] == ngram_mask(toks, 4)
