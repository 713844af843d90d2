"""Figure builders and wording for the Induction page: emergence and ICL wording, the heads forming,
the loss trajectory and the loss by position."""
from __future__ import annotations

from app import figures, plot_data as R
from _figures import RESULTS, STEPS


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
    from probes.measure.induction import icl_score
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
    from app.plot_data import change_caption
    entry = {"step": 725, "icl_before": -0.0105, "icl_after": 0.0634,
             "repeated_text_gap_before": 0.0388, "repeated_text_gap_after": -0.0914}
    text = change_caption(entry)
    assert "ICL score -0.011 → +0.063 nats (did not improve" in text
    assert "repeat minus first copy +0.039 → -0.091 nats (improved" in text
    assert change_caption({"step": None, "icl_before": 1.0, "icl_after": 0.0}) is None
    assert change_caption({"step": 5}) is None
