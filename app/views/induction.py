"""Induction: induction, previous-token and duplicate-token scores per head over training (on
repeated random tokens, averaged over several repeat periods), the positional-shortcut control
beside them, the in-distribution copying score, the in-context learning score with the phase
change marked, the heads of the circuit as they form, and the per-token loss trajectory."""
import streamlit as st

from app import cache, figures, figures_induction as FI, plot_data as R, ui
from app.runfolder import RunFiles

SCORES = {
    "induction": "induction (repeated random tokens)",
    "induction_control": "induction control (fresh random tokens)",
    "previous_token": "previous token",
    "duplicate_token": "duplicate token",
    "in_context_copying": "in-context copying (spans repeated in held-out text)",
}


def overview_section(run, results, log_x) -> None:
    summary = cache.probe_summary(run)
    marks = {**R.emergence_mark(summary, "induction", "phase change"), **R.prediction_mark(run.info)}
    best = {f"best head · {SCORES[k].split(' (')[0]}": R.best_head(results, f"induction.{k}")
            for k in ("induction", "in_context_copying", "previous_token")}
    best = {k: v for k, v in best.items() if v[0]}
    if not best:
        st.info("The probe results hold no induction data.")
        return
    icl = R.icl_series(results)
    last = R.get(results[max(results)], "induction.icl_score")
    st.plotly_chart(figures.scalar_series(
        best, "Best head per score, and the in-context-learning score", "score", log_x=log_x, marks=marks,
        secondary={R.icl_label(last): icl} if icl[0] else None, secondary_title="ICL score (nats)"),
        key="induction_overview")
    definition = R.icl_definition(last)
    if definition:
        note = last.get("note") if isinstance(last, dict) else None
        st.caption(f"ICL score = {definition}" + (f" ({note})" if note else "") + ".")
    found = R.emergence_entry(summary, "induction")
    caption = R.rise_caption(found, "induction phase change (best induction score)")
    if caption:
        best_reached = found.get("best_score_reached") if found else None
        st.caption(caption + (f" Best score reached: {best_reached:.3f}." if isinstance(best_reached, (int, float))
                              and found.get("detected") is False else ""))
    predicted = R.prediction_caption(run.info, summary)
    if predicted:
        st.caption(predicted)
    if isinstance(found, dict) and found.get("icl_note"):
        st.caption(f"ICL: {found['icl_note']}.")
    change = R.change_caption(found)
    if change:
        st.caption(change)
    copying = R.rise_caption(found.get("in_context_copying") if found else None, "rise of the in-context copying score")
    if copying:
        st.caption(copying)
    rule = R.emergence_rule(summary, "induction")
    if rule:
        st.caption(f"Phase-change rule: {rule}")


def periods_caption(last: dict) -> str | None:
    """Which repeat periods the scores average over, and which ones training could have used."""
    periods = R.get(last, "induction.random_periods")
    if not periods:
        return None
    text = f"Induction scores are means over repeat periods {', '.join(map(str, periods))}"
    planted = R.get(last, "induction.training_repeat_periods")
    if planted:
        unseen = R.get(last, "induction.unseen_periods") or []
        text += (f"; training planted repeats with periods {planted[0]}–{planted[1]}, so "
                 + (f"{len(unseen)} of them are unseen in training" if unseen else "none of them is unseen in training"))
    return text + (". The control is the same attention (query to q − period + 1) on fresh random tokens that never "
                   "repeat: a real induction head scores ≈ 0 there, a head attending by position alone scores as "
                   "high as on the repeat.")


def heads_forming_section(run, results, log_x) -> None:
    summary = cache.probe_summary(run)
    series = {name: R.matrices(results, f"induction.{key}") for name, key in
              (("induction", "induction"), ("previous token", "previous_token"),
               ("in-context copying", "in_context_copying"))}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        st.info("The probe results hold no per-head induction scores.")
        return
    control = R.matrices(results, "induction.induction_control")
    circuit = R.get(summary, "induction_circuit") if summary else None
    highlight = {"induction head": circuit.get("induction_head"),
                 "previous-token head": circuit.get("previous_token_head")} if isinstance(circuit, dict) else {}
    st.plotly_chart(FI.induction_head_panels(
        series, control if control[0] else None, "Heads forming: each head's scores over training", log_x=log_x,
        marks=R.emergence_mark(summary, "induction", "phase change"), highlight=highlight), key="per_head")
    caption = R.circuit_caption(circuit)
    if caption:
        st.caption(caption + " Boxed panels: the circuit's heads.")
    periods = periods_caption(results[max(results)])
    if periods:
        st.caption(periods)


def trajectory_section(run, results) -> None:
    summary = cache.probe_summary(run)
    path = R.trajectory(summary)
    steps, curves = R.position_losses(results)
    left, right = st.columns(2)
    with left:
        if path is None:
            reason = R.get(summary, "trajectory.reason") if summary else None
            st.info(f"No loss trajectory: {reason}." if reason else "No loss trajectory in the probe summary.")
        else:
            st.plotly_chart(FI.loss_trajectory(path["steps"], path["pc1"], path["pc2"], path.get("explained") or [],
                                               mark_step=R.emergence_step(summary, "induction")), key="trajectory")
            turn = path.get("turn") if isinstance(path.get("turn"), dict) else {}
            turned = (f" The path turns most at step {turn['turn_step']} ({turn['angle_deg']:.0f}°)."
                      if turn.get("turn_step") is not None else "")
            st.caption(f"{path.get('n_tokens')} held-out tokens, the same at every checkpoint.{turned} "
                       f"{path.get('rule', '')}")
    with right:
        if steps:
            st.plotly_chart(FI.position_loss_curves(steps, curves), key="position_loss")
        else:
            st.info("The probe results hold no loss by token position.")


def per_head_section(results) -> None:
    cols = st.columns([2, 2])
    key = cols[0].selectbox("Score per head", list(SCORES), format_func=SCORES.get, key="score")
    steps, mats = R.matrices(results, f"induction.{key}")
    if not steps:
        st.info(f"No {SCORES[key]} scores in the probe results.")
        return
    with cols[1]:
        step = ui.step_picker(steps, key="induction_step")
    st.plotly_chart(figures.head_heatmap(mats[steps.index(step)], f"{SCORES[key]} · step {step}", "score"),
                    key="induction_map")


def render(run: RunFiles, results: dict[int, dict]) -> None:
    log_x = ui.log_x_toggle("log_x", True)
    ui.guarded(lambda: overview_section(run, results, log_x))
    ui.guarded(lambda: heads_forming_section(run, results, log_x))
    ui.guarded(lambda: trajectory_section(run, results))
    ui.guarded(lambda: per_head_section(results))


ui.results_page("Induction", "induction", render)
