"""Runs: config, train and held-out loss with checkpoint markers (several runs comparable) and the
loss-generation mismatch, the overfitting onset and the early-stopping point marked on it, generation
quality beside the held-out loss, and the fixed-prompt generations at a chosen checkpoint with
repeated n-grams highlighted."""
import streamlit as st

from app import cache, figures, plot_data as R, ui
from app import failure_captions as FC
from app.runfolder import metrics_series, run_files, run_names, runs_root, sample_steps, samples_at
from store.integrity import identical_sentence


def integrity_section(run) -> None:
    """One sentence when two steps have identical weights (summary.json's integrity section, from the
    checkpoints' per-tensor digests): one of them is probably stale or mislabelled."""
    sentence = identical_sentence((cache.probe_summary(run) or {}).get("integrity"))
    if sentence:
        st.warning(sentence)


def loss_section(run) -> None:
    root = runs_root()
    others = [n for n in run_names(root) if n != run.name]
    left, right = st.columns([3, 1])
    compare = left.multiselect("Compare with other runs", others, key="compare") if others else []
    log_x = ui.log_x_toggle("log_x", False, where=right)
    curves, checkpoints = {}, {}
    for r in [run] + [run_files(root, n) for n in compare]:
        curves[r.name] = metrics_series(r.path)
        checkpoints[r.name] = r.checkpoint_steps
    if not any(c["train"][0] for c in curves.values()):
        st.info("No training metrics have been logged yet." + (" Refresh in a moment." if run.training else ""))
        return
    summary = cache.probe_summary(run)
    st.plotly_chart(figures.loss_curves(curves, checkpoints, log_x=log_x, marks=failure_marks(summary)),
                    key="loss_chart")
    for name in ("loss_generation_mismatch", "overfitting"):
        caption = (FC.mismatch_caption if name == "loss_generation_mismatch" else FC.overfitting_caption)(
            R.emergence_entry(summary, name))
        if caption:
            st.caption(caption)


def failure_marks(summary) -> dict:
    """The loss-generation mismatch, the overfitting onset and the early-stopping point (once the
    held-out loss has risen after it), as the summary found them."""
    return {**R.emergence_mark(summary, "loss_generation_mismatch", "loss–generation mismatch"),
            **R.emergence_mark(summary, "overfitting", "overfitting onset"), **FC.early_stop_mark(summary)}


def quality_section(run, log_x: bool) -> None:
    """Generation quality measured apart from the loss (tone and repetition of the checkpoint's own
    continuations), beside the held-out loss, with the mismatch marked; nothing without probe results."""
    results, _ = cache.probe_results(run)
    series = {"tone: JSD from held-out unigrams (bits)": R.scalar(results, "repetition.tone.jsd_unigram"),
              "sampled seq-rep-4": R.scalar(results, "repetition.sampled.seq_rep_4"),
              "greedy seq-rep-4": R.scalar(results, "repetition.greedy.seq_rep_4")}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return
    summary = cache.probe_summary(run)
    val = metrics_series(run.path)["val"]
    floor = R.scalar(results, "repetition.tone.floor_unigram")
    if floor[0]:
        series["tone of held-out text of the same size (floor)"] = floor
    st.plotly_chart(figures.scalar_series(
        series, "Generation quality (higher is worse) vs held-out loss", "bits / fraction", log_x=log_x,
        marks=R.emergence_mark(summary, "loss_generation_mismatch", "loss–generation mismatch"),
        secondary={"held-out loss": val} if val[0] else None, secondary_title="held-out loss (nats)"),
        key="quality_chart")
    rule = R.emergence_rule(summary, "loss_generation_mismatch")
    if rule:
        with st.expander("How the mismatch, the overfitting onset and the early-stopping point are found"):
            st.caption(f"Loss–generation mismatch: {rule}")
            over = R.emergence_rule(summary, "overfitting")
            if over:
                st.caption(f"Overfitting: {over}")


def config_section(run) -> None:
    with st.expander("Configuration", expanded=False):
        cols = st.columns(3)
        cols[0].markdown("**Model**")
        cols[0].json(run.info.get("model", {}))
        cols[1].markdown("**Training**")
        cols[1].json(run.info.get("train", {}))
        cols[2].markdown("**Data & tokenizer**")
        data = {k: v for k, v in cache.data_manifest(run).items() if k not in ("canaries",)}
        data["canaries"] = len(cache.data_manifest(run).get("canaries", []) or [])
        cols[2].json({"tokenizer": run.info.get("tokenizer", {}), "data": data})


def samples_section(run) -> None:
    st.subheader("Generations of the fixed prompts")
    steps = sample_steps(run.path)
    if not steps:
        st.info("No generations have been written yet (they are made at every checkpoint).")
        return
    left, right = st.columns([4, 1])
    with left:
        step = ui.step_picker(steps, key="sample_step")
    n = right.number_input("Highlight repeated n-grams of length", 2, 8, 4, key="ngram")
    stretch = FC.mismatch_stretch_at(cache.probe_summary(run), step)
    if stretch is not None:
        st.info(f"Step {step} lies in a loss–generation mismatch stretch (steps {stretch['step']}–"
                f"{stretch['to_step']}): {FC.MISMATCH_LABELS.get(str(stretch.get('metric')), stretch.get('metric'))} is worse than at step "
                f"{stretch.get('reference_step')} while the held-out loss is lower. Compare with that checkpoint.")
    for row in samples_at(run.path, step):
        st.markdown(f"**{row.get('prompt', '')!s}** · _{row.get('decoding', '')}_")
        ui.highlighted_text(str(row.get("text", "")), n=int(n))


def render() -> None:
    run = ui.current_run("Runs")
    if run is None:
        return
    ui.guarded(lambda: integrity_section(run))
    ui.guarded(lambda: loss_section(run))
    ui.guarded(lambda: quality_section(run, bool(st.session_state.get("log_x", False))))
    ui.guarded(lambda: config_section(run))
    ui.guarded(lambda: samples_section(run))


ui.guarded(render)
