"""Runs: config, train and held-out loss with checkpoint markers (several runs comparable), and
the fixed-prompt generations at a chosen checkpoint with repeated n-grams highlighted."""
import streamlit as st

from app import cache, figures, ui
from app.runfolder import metrics_series, read_run, run_names, runs_root, sample_steps, samples_at


def loss_section(run) -> None:
    root = runs_root()
    others = [n for n in run_names(root) if n != run.name]
    left, right = st.columns([3, 1])
    compare = left.multiselect("Compare with other runs", others, key="compare") if others else []
    log_x = ui.log_x_toggle("log_x", False, where=right)
    curves, checkpoints = {}, {}
    for r in [run] + [read_run(root, n) for n in compare]:
        curves[r.name] = metrics_series(r.path)
        checkpoints[r.name] = r.checkpoint_steps
    if not any(c["train"][0] for c in curves.values()):
        st.info("No training metrics have been logged yet." + (" Refresh in a moment." if run.training else ""))
        return
    st.plotly_chart(figures.loss_curves(curves, checkpoints, log_x=log_x), key="loss_chart")


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
    for row in samples_at(run.path, step):
        st.markdown(f"**{row.get('prompt', '')!s}** · _{row.get('decoding', '')}_")
        ui.highlighted_text(str(row.get("text", "")), n=int(n))


def render() -> None:
    run = ui.current_run("Runs")
    if run is None:
        return
    ui.guarded(lambda: loss_section(run))
    ui.guarded(lambda: config_section(run))
    ui.guarded(lambda: samples_section(run))


ui.guarded(render)
