"""Induction: induction, previous-token and duplicate-token scores per head over training (on
repeated random tokens), the in-distribution copying score beside them, and the in-context
learning score, with the phase change marked."""
import streamlit as st

from app import cache, figures, results as R, ui

SCORES = {
    "induction": "induction (repeated random tokens)",
    "previous_token": "previous token",
    "duplicate_token": "duplicate token",
    "in_context_copying": "in-context copying (spans repeated in held-out text)",
}


def overview_section(run, results, log_x) -> None:
    summary = cache.probe_summary(run)
    marks = R.emergence_mark(summary, "induction", "phase change")
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
    copying = R.rise_caption(found.get("in_context_copying") if found else None, "rise of the in-context copying score")
    if copying:
        st.caption(copying)
    rule = R.emergence_rule(summary, "induction")
    if rule:
        st.caption(f"Phase-change rule: {rule}")


def per_head_section(results, log_x) -> None:
    cols = st.columns([2, 2])
    key = cols[0].selectbox("Score per head", list(SCORES), format_func=SCORES.get, key="score")
    steps, mats = R.matrices(results, f"induction.{key}")
    if not steps:
        st.info(f"No {SCORES[key]} scores in the probe results.")
        return
    st.plotly_chart(figures.head_small_multiples(steps, mats, f"{SCORES[key]} per head over training", "score",
                                                 log_x=log_x), key="per_head")
    with cols[1]:
        step = ui.step_picker(steps, key="induction_step")
    st.plotly_chart(figures.head_heatmap(mats[steps.index(step)], f"{SCORES[key]} · step {step}", "score"),
                    key="induction_map")


def render() -> None:
    run = ui.current_run("Induction")
    if run is None:
        return
    results = ui.probe_results(run, "induction")
    if results is None:
        return
    log_x = ui.log_x_toggle("log_x", True)
    ui.guarded(lambda: overview_section(run, results, log_x))
    ui.guarded(lambda: per_head_section(results, log_x))


ui.guarded(render)
