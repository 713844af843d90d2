"""Figure builders and result reshaping: the numbers that go in come back out of the figure, in
the right place (layer vs head, step vs value, run vs run)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import probes
from app import figures, results as R
from app_fixtures import probe_result

STEPS = [0, 1, 2, 4, 8, 16]
RESULTS = {s: probe_result(s, L=3, H=4) for s in STEPS}  # the real probes' output on a fixture run


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


def emerging_summary() -> dict:
    """probes.summarize on the fixture's real results, edited (in the probes' own schema) so that
    learning starts at step 1, repetition emerges at step 4 and the 64-copy canary is extracted
    from step 1: the summary the app reads, with known emergence steps."""
    results = copy.deepcopy(RESULTS)
    for i, s in enumerate(STEPS):
        results[s]["head_ablation"]["clean_loss"] = 5.0 if s == 0 else 3.0
        results[s]["repetition"]["greedy"]["seq_rep_4"] = 0.9 if s >= 4 else 0.05
        for c in results[s]["memorization"]["canaries"]:
            c["extracted_fraction"] = 1.0 if (c["copies"] == 64 and s >= 1) else 0.0
        for row in results[s]["head_ablation"]["zero"]:
            row[:] = [0.0] * len(row)  # no head matters: no concentration step
    return probes.summarize(results)


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
    """A group as probes.memorization.canary_results writes it for a stories run (36 words from 437)."""
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
    from probes import metrics
    for toks in ([1, 2, 3, 4, 1, 2, 3, 4, 9], [5] * 9, [1, 2, 1, 2, 1, 2, 3], list(range(10))):
        assert [bool(x) for x in metrics.repeated_ngram_mask(toks, 4)] == ngram_mask(toks, 4)


# -- run comparison (attention-variants study) ------------------------------------------------
def test_loss_spikes_known_answer():
    from probes import loss_spikes as C
    assert (C.SPIKE_RATIO, C.SPIKE_WINDOW) == (1.0, 20)  # the rule the page states by default
    assert "more than 100% above (over 2x) the median of the 20 logged" in C.SPIKE_RULE
    losses = [2.0] * 41
    losses[5] = 10.0             # fewer than 20 rows before it: not judged
    losses[20] = 5.0             # 5.0 > 2 * median 2.0: a spike
    losses[30], losses[31] = 4.5, 4.8  # two rows in a row above 4.0: one spike, at the first
    losses[40] = 4.0             # exactly 100% above: not a spike (the rule says "more than")
    steps = [10 * i for i in range(41)]
    flags = C.spike_flags(losses)
    assert [i for i, f in enumerate(flags) if f] == [20, 30, 31]
    assert C.loss_spikes(steps, losses) == [200, 300]
    assert C.loss_spikes(steps, losses, ratio=1.3) == [200, 310]  # line at 4.6: 4.5 is below it, 4.8 above
    assert C.loss_spikes(steps, losses, ratio=0.5) == [200, 300, 400]  # line at 3.0: now 4.0 counts too
    # a falling loss (early training) never spikes: earlier losses are all higher than the current one
    falling = [10.0 * 0.97 ** i for i in range(200)]
    assert C.loss_spikes(list(range(200)), falling, ratio=0.01) == []
    # the median, not the mean: one huge outlier in the window does not hide the next spike
    window = [2.0] * 20 + [40.0] + [4.4]  # mean of the 20 before 4.4 is 3.9, their median 2.0
    assert C.spike_flags(window) == [False] * 20 + [True, True]
    from app import compare
    assert compare.values_at([0, 10, 20], [1.0, 2.0, 3.0], [20, 0, 15]) == [3.0, 1.0]


def test_run_overlay_one_colour_per_run_one_dash_per_quantity_and_spike_counts():
    a = {"train": ([1, 2, 3], [5.0, 4.0, 4.5]), "held-out": ([0, 3], [5.1, 4.2])}
    b = {"train": ([1, 2], [6.0, 5.5]), "held-out": ([], [])}
    fig = figures.run_overlay({"attn-standard (standard)": a, "attn-linear (linear)": b}, "t", "loss",
                              markers={"attn-standard (standard)": ([3], [4.5]), "attn-linear (linear)": ([], [])})
    at = trace_named(fig, "attn-standard (standard) · train")
    av = trace_named(fig, "attn-standard (standard) · held-out")
    bt = trace_named(fig, "attn-linear (linear) · train")
    assert (list(at.x), list(at.y)) == ([1, 2, 3], [5.0, 4.0, 4.5])
    assert (list(av.x), list(av.y)) == ([0, 3], [5.1, 4.2])
    assert (list(bt.x), list(bt.y)) == ([1, 2], [6.0, 5.5])
    assert not [t for t in fig.data if t.name == "attn-linear (linear) · held-out"]  # empty: left out
    assert at.line.color == av.line.color != bt.line.color
    assert at.line.dash != av.line.dash and at.line.dash == bt.line.dash
    spikes = trace_named(fig, "attn-standard (standard) · 1 loss spikes")
    assert (list(spikes.x), list(spikes.y)) == ([3], [4.5]) and spikes.marker.color == at.line.color
    assert trace_named(fig, "attn-linear (linear) · 0 loss spikes").x == ()
    one = figures.run_overlay({"r": {"": ([0, 1], [1.0, 2.0])}}, "t", "y", log_x=True, log_y=True)
    assert one.data[0].name == "r" and list(one.data[0].x) == [0.5, 1]
    assert one.layout.xaxis.type == "log" and one.layout.yaxis.type == "log"


def test_compared_probe_series_match_the_results():
    from app import compare as C
    series = C.probe_series(RESULTS)
    for name, path in (("entropy_raw", "raw"), ("entropy_normalized", "normalized"), ("sink_mass", "sink_mass")):
        steps, values = series[name]
        assert steps == STEPS
        assert values == pytest.approx([np.mean(RESULTS[s]["attention_entropy"][path]) for s in STEPS])
    assert series["seq_rep_4_sampled"][1] == pytest.approx([RESULTS[s]["repetition"]["sampled"]["seq_rep_4"] for s in STEPS])
    assert series["induction_best"][1] == pytest.approx([np.max(RESULTS[s]["induction"]["induction"]) for s in STEPS])
    assert series["copying_best"][1] == pytest.approx(
        [np.max(RESULTS[s]["induction"]["in_context_copying"]) for s in STEPS])
    assert series["icl"][1] == pytest.approx([RESULTS[s]["induction"]["icl_score"]["value"] for s in STEPS])
    # the probes write the ICL score under "value"; the app reads that one format and nothing else
    assert R.icl_series({3: {"induction": {"icl_score": {"value": -0.25, "early_position": 5}}},
                         4: {"induction": {"icl_score": {"score": 0.5}}}, 5: {"induction": {}}}) == ([3], [-0.25])
    assert C.probe_series({}) == {name: ([], []) for name in C.PROBE_SERIES}


def test_summary_row_and_attention_kind():
    from app import compare as C
    assert C.attention_kind({"model": {"attention": "gated"}}) == "gated"
    assert C.attention_kind({"model": {"n_layer": 2}}) == "standard"  # written before attention kinds
    assert C.attention_kind({}) == "unknown"
    losses = [3.0] * 25
    losses[22] = 7.0
    metrics = {"train": (list(range(25)), losses), "val": ([0, 10, 24], [3.2, 2.9, 3.1]),
               "grad_norm": (list(range(1, 25)), [0.5] * 23 + [7.25])}
    row = C.summary_row("attn-gated", "gated", "complete", metrics, emerging_summary(), n_probed=6)
    assert row["run"] == "attn-gated" and row["attention"] == "gated"
    assert row["last step"] == 24 and row["final held-out loss"] == 3.1 and row["best held-out loss"] == 2.9
    assert row["loss spikes"] == 1 and row["max grad norm"] == 7.25 and row["checkpoints probed"] == 6
    assert C.summary_row("g", "gated", "complete", metrics, None, 6, spike_ratio=1.5)["loss spikes"] == 0
    assert row["repetition step"] == STEPS[3] and row["memorization step"] == STEPS[1]
    assert row["head concentration step"] is None
    bare = C.summary_row("new", "linear", "training", {"train": ([], []), "val": ([], []), "grad_norm": ([], [])},
                         None, 0)
    assert bare["final held-out loss"] is None and bare["loss spikes"] == 0 and bare["induction step"] is None


# -- emergence and ICL wording ------------------------------------------------------------------
def issue_summary(late_only: bool = False) -> dict:
    """summarize() of the issue's example (0.01 to step 100, 0.35 from 200, 0.33 -> 0.40 at
    700 -> 800), or of a flat series with only that late wobble."""
    from probes import summarize
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600, 700, 800]
    values = [0.01 if s <= 100 else 0.35 for s in steps[:-2]] + [0.33, 0.40]
    if late_only:
        values = [0.33] * 15 + [0.40]
    return summarize({s: {"step": s, "induction": {"induction": [[v, 0.0]]}} for s, v in zip(steps, values)})


def test_the_induction_page_wording_names_the_bracket_size_and_kind():
    summary = issue_summary()
    assert R.emergence_step(summary, "induction") == 200
    caption = R.rise_caption(R.emergence_entry(summary, "induction"), "induction phase change")
    assert caption == ("Induction phase change at step 200, between checkpoints 100 and 200: level 0.010 → 0.350 "
                       "(+0.340); abrupt, climbing from step 100 to 200 (1 checkpoint interval).")
    assert "No " not in caption
    assert R.emergence_mark(summary, "induction", "phase change") == {"phase change (abrupt, from step 100)": 200}


def test_the_induction_page_says_why_when_nothing_was_detected():
    summary = issue_summary(late_only=True)
    assert R.emergence_step(summary, "induction") is None
    caption = R.rise_caption(R.emergence_entry(summary, "induction"), "induction phase change")
    assert caption.startswith("No induction phase change detected: the level rose by 0.07, below the minimum 0.1.")
    assert "between checkpoints 700 and 800" in caption
    assert "Note: the after level rests on one checkpoint." in caption
    assert R.emergence_mark(summary, "induction", "phase change") == {"phase change": None}
    # older summaries (a bare step, or nothing) still read
    assert R.rise_caption(None, "x") is None and R.rise_caption({"step": None, "reason": "fewer than two values"},
                                                                 "x") == "No x detected: fewer than two values."
    assert R.emergence_mark({"emergence": {"induction": 5}}, "induction", "phase change") == {"phase change": 5}
    assert R.rise_caption({"step": 8}, "induction phase change") == "Induction phase change at step 8."


def test_icl_wording_names_the_averaged_positions():
    import torch
    from probes.induction import icl_score
    real = icl_score(torch.ones(2, 128))
    assert R.icl_definition(real) == real["definition"]
    assert "118-127" in R.icl_definition(real) and "45-54" in R.icl_definition(real)
    assert R.icl_label(real) == "ICL score (loss at 118–127 − 45–54)"
    without_text = {k: v for k, v in real.items() if k != "definition"}
    assert R.icl_definition(without_text) == "mean held-out loss over positions 118-127 minus mean over positions 45-54"
    old = {"score": -0.1, "early_position": 5, "late_position": 30}  # an older file: single positions
    assert R.icl_definition(old) == "held-out loss near position 30 minus near position 5"
    assert R.icl_label(old) == "ICL score (loss late − early)"
    assert R.icl_definition(0.5) is None and R.icl_definition({"value": 1.0}) is None


# -- induction page: heads forming, loss trajectory, loss by position ---------------------------
def test_induction_head_panels_one_panel_per_head_with_each_score_and_the_control():
    series = {name: R.matrices(RESULTS, f"induction.{key}") for name, key in
              (("induction", "induction"), ("previous token", "previous_token"),
               ("in-context copying", "in_context_copying"))}
    control = R.matrices(RESULTS, "induction.induction_control")
    assert control[0] == STEPS
    fig = figures.induction_head_panels(series, control, "t", log_x=False, marks={"phase change": 4},
                                        highlight={"induction head": [2, 3], "previous-token head": [1, 0]})
    assert len(fig.data) == 4 * 3 * 4  # 3 scores + the control, for each of 3 layers x 4 heads
    for trace in fig.data:
        layer, head, name = trace.meta["layer"], trace.meta["head"], trace.meta["score"]
        key = {"induction": "induction", "previous token": "previous_token", "in-context copying": "in_context_copying",
               "induction control (fresh tokens)": "induction_control"}[name]
        assert list(trace.x) == STEPS
        assert list(trace.y) == [RESULTS[s]["induction"][key][layer][head] for s in STEPS]
        assert (trace.line.dash == "dash") == trace.meta["control"] == (key == "induction_control")
        # every head sits in its own panel: layer as the row, head as the column
        suffix = figures._axis_suffix(layer + 1, head + 1, 4)
        assert trace.xaxis == f"x{suffix}" and trace.yaxis == f"y{suffix}"
    titles = [a.text for a in fig.layout.annotations]
    assert "L2H3 · induction head" in titles and "L1H0 · previous-token head" in titles and "L0H0" in titles
    boxes = {(s.xref, s.name) for s in fig.layout.shapes if s.type == "rect"}
    assert boxes == {(f"x{figures._axis_suffix(3, 4, 4)} domain", "induction head"),
                     (f"x{figures._axis_suffix(2, 1, 4)} domain", "previous-token head")}
    assert any(a.text == "phase change: step 4" for a in fig.layout.annotations)


def test_loss_trajectory_draws_the_checkpoints_in_order_and_stars_the_change():
    fig = figures.loss_trajectory([0, 10, 20], [-1.0, 0.5, 0.5], [0.2, -0.4, 0.2], [0.7, 0.2], mark_step=10)
    path, star = fig.data
    assert list(path.x) == [-1.0, 0.5, 0.5] and list(path.y) == [0.2, -0.4, 0.2]
    assert list(path.text) == ["0", "10", "20"] and "lines" in path.mode
    assert star.marker.symbol == "star" and (star.x[0], star.y[0]) == (0.5, -0.4) and "step 10" in star.name
    assert fig.layout.xaxis.title.text == "PC1 (70% of variance)" and fig.layout.yaxis.title.text == "PC2 (20% of variance)"
    assert len(figures.loss_trajectory([0, 10], [0, 1], [0, 0], [1.0, 0.0], mark_step=None).data) == 1


def test_position_loss_one_line_per_checkpoint_coloured_by_step():
    steps, curves = R.position_losses(RESULTS)
    assert steps == STEPS and all(len(c) == 64 for c in curves)  # the fixture run's context
    assert curves[2] == RESULTS[2]["induction"]["position_loss"]
    fig = figures.position_loss_curves(steps, curves)
    assert [t.meta["step"] for t in fig.data] == STEPS and [list(t.y) for t in fig.data] == curves
    colours = [t.line.color for t in fig.data]
    assert len(set(colours)) == len(STEPS) and colours[0] == "rgb(68, 1, 84)"  # Viridis starts dark


def test_circuit_caption_and_trajectory_helpers():
    circuit = {"induction_head": [1, 2], "previous_token_head": [0, 3], "step": 200, "at_step": 800,
               "induction_score": 0.61, "control": 0.02, "previous_token_score": 0.9}
    text = R.circuit_caption(circuit)
    assert text == ("Induction head: L1H2 (score 0.610, control on fresh tokens 0.020); previous-token head in an "
                    "earlier layer: L0H3 (score 0.900), at step 800. Phase change at step 200.")
    assert "No induction phase change" in R.circuit_caption(dict(circuit, step=None))
    assert R.circuit_caption({"induction_head": None}) is None and R.circuit_caption(None) is None
    assert R.trajectory({"trajectory": {"steps": [0], "pc1": [0.0], "pc2": [0.0]}}) is None
    good = {"steps": [0, 1], "pc1": [0.0, 1.0], "pc2": [0.0, 0.0]}
    assert R.trajectory({"trajectory": good}) == good and R.trajectory(None) is None


def test_change_caption_says_what_moved_at_the_phase_change_and_which_way():
    from app.results import change_caption
    entry = {"step": 725, "icl_before": -0.0105, "icl_after": 0.0634,
             "repeated_text_gap_before": 0.0388, "repeated_text_gap_after": -0.0914}
    text = change_caption(entry)
    assert "ICL score -0.011 → +0.063 nats (did not improve" in text
    assert "repeat minus first copy +0.039 → -0.091 nats (improved" in text
    assert change_caption({"step": None, "icl_before": 1.0, "icl_after": 0.0}) is None
    assert change_caption({"step": 5}) is None
