"""Figure builders and result reshaping for the run comparison (the attention-variants study): loss
spikes, the overlay of runs, the compared probe series and the summary row."""
from __future__ import annotations

import numpy as np
import pytest

from app import figures, plot_data as R
from _figures import RESULTS, STEPS, emerging_summary, trace_named


# -- run comparison (attention-variants study) ------------------------------------------------
def test_loss_spikes_known_answer():
    from probes.analyse import loss_spikes as C
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
