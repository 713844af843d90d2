"""Memorization: seen vs held-out memorization score over training, canary extraction and exposure
against the number of planted copies, and the sequences the model actually reproduces."""
import pandas as pd
import streamlit as st

from app import cache, figures, plot_data as R, ui
from app import failure_captions as FC
from app.runfolder import RunFiles


def scores_section(run, results, log_x) -> None:
    summary = cache.probe_summary(run)
    onset = {"memorization onset": R.emergence_step(summary, "memorization"),
             **R.emergence_mark(summary, "overfitting", "overfitting onset")}
    series = {
        "seen · mean score": R.scalar(results, "memorization.seen.mean_score"),
        "held-out · mean score": R.scalar(results, "memorization.held_out.mean_score"),
        "seen · memorized fraction": R.scalar(results, "memorization.seen.memorized_fraction"),
        "held-out · memorized fraction": R.scalar(results, "memorization.held_out.memorized_fraction"),
    }
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        st.info("The probe results hold no memorization data.")
        return
    gap = R.scalar(results, "memorization.loss_gap")
    st.plotly_chart(figures.scalar_series(
        series, "Pythia memorization score (32-token prefix → 32 greedy tokens)", "score / fraction",
        log_x=log_x, marks=onset, secondary={"held-out − seen loss": gap} if gap[0] else None,
        secondary_title="loss gap (nats)"), key="memorization")
    ui.finding(FC.overfitting_caption(R.emergence_entry(summary, "overfitting")),
               R.emergence_rule(summary, "overfitting"), "How the overfitting onset is found")


def training_data_unknown(results) -> str | None:
    """The probes' note when the run's training data is unknown (an imported run), else None."""
    latest = results[max(results)]
    if R.get(latest, "memorization.training_data") == "unknown":
        return str(R.get(latest, "memorization.note") or "The training data of this run is unknown.")
    return None


def canary_section(results, log_x) -> None:
    steps = R.steps_having(results, "memorization.canaries")
    per_step = [R.get(results[s], "memorization.canaries") or [] for s in steps]
    steps = [s for s, c in zip(steps, per_step) if c]
    per_step = [c for c in per_step if c]
    if not steps:
        if training_data_unknown(results):
            st.info("Canaries are unknown for an imported run: its training data is unknown.")
        else:
            st.info("No canaries were measured (the run's data has none).")
        return
    st.subheader("Canaries: planted sequences repeated 1, 2, 4, … times")
    step = ui.step_picker(steps, key="canary_step")
    left, right = st.columns(2)
    left.plotly_chart(figures.canaries_vs_copies(per_step[steps.index(step)], f"Canaries at step {step}"),
                      key="canaries_at_step")
    right.plotly_chart(figures.canaries_over_training(steps, per_step, "extracted_fraction",
                                                      "Canary extraction over training", log_x=log_x),
                       key="canaries_over_training")
    method = next((g.get("exposure_method") for g in per_step[steps.index(step)] if g.get("exposure_method")), None)
    st.caption(method or "Exposure here is the rank of each canary among the candidates listed for it "
               "(log2 of their count minus log2 of its rank), so it cannot exceed log2 of that count; "
               "re-run the probes for the extrapolated exposure and |R|.")


def examples_section(results) -> None:
    """What the model generates from each canary's prefix (and training sequences it reproduces),
    as the memorization probe recorded them at a checkpoint."""
    steps = [s for s in sorted(results) if R.get(results[s], "memorization.canaries")]
    if not steps:
        return
    st.subheader("Extracted sequences")
    step = ui.step_picker(steps, key="example_step", label="Checkpoint for the examples")
    rows = []
    for group in R.get(results[step], "memorization.canaries") or []:
        for item in group.get("items") or []:
            rows.append({"copies": item.get("copies", group.get("copies")), "score": item.get("score"),
                         "extracted": bool(item.get("extracted")), "exposure (bits)": item.get("exposure"),
                         "rank exposure (bits)": item.get("exposure_rank"),
                         "prefix": item.get("prefix"), "true continuation": item.get("truth"),
                         "model's greedy continuation": item.get("generated")})
    if rows:
        rows.sort(key=lambda r: (-(r["copies"] or 0), -(r["score"] or 0)))
        st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
            "score": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0, format="%.2f")})
        n = sum(r["extracted"] for r in rows)
        st.caption(f"{n} of {len(rows)} canaries are extracted verbatim at step {step} "
                   "(score = fraction of the greedy tokens after the prefix that match).")
    seen = R.get(results[step], "memorization.seen_examples") or []
    if seen:
        st.markdown("**Training sequences reproduced from their prefix**")
        st.dataframe(pd.DataFrame(seen), hide_index=True)
    elif rows:
        st.caption("No training sequence is reproduced verbatim at this checkpoint.")


def render(run: RunFiles, results: dict[int, dict]) -> None:
    unknown = training_data_unknown(results)
    if unknown:
        st.info(unknown)
    log_x = ui.log_x_toggle("log_x", True)
    ui.guarded(lambda: scores_section(run, results, log_x))
    ui.guarded(lambda: canary_section(results, log_x))
    ui.guarded(lambda: examples_section(results))


ui.results_page("Memorization", "memorization", render)
