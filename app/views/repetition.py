"""Repetition: when greedy generations fall into loops ("wave wave wave"), beside the held-out loss
that keeps improving meanwhile; the longest loop the greedy continuations end in and the entropy along
the greedy path, with when loops begin and end (summary.json's entropy_collapse); and one prompt's
generations across every checkpoint, each with its loop."""
import html

import streamlit as st

from app import cache, figures, plot_data as R, ui
from app import failure_captions as FC
from app.runfolder import RunFiles, metrics_series, sample_steps, samples_at


def metrics_section(run, results, log_x) -> None:
    summary = cache.probe_summary(run)
    collapse = R.emergence_entry(summary, "entropy_collapse") or {}
    marks = {"repetition emerges": R.emergence_step(summary, "repetition"),
             **R.emergence_mark(summary, "entropy_collapse", "loops begin"),
             "loops end": collapse.get("resolved_step") if collapse.get("detected") else None}
    val = metrics_series(run.path)["val"]
    main = {f"{d} seq-rep-4": R.scalar(results, f"repetition.{d}.seq_rep_4") for d in ("greedy", "sampled")}
    main = {k: v for k, v in main.items() if v[0]}
    if not main:
        st.info("The probe results hold no repetition data.")
        return
    st.plotly_chart(figures.scalar_series(
        main, "Repeated 4-grams in continuations vs held-out loss", "seq-rep-4", log_x=log_x, marks=marks,
        secondary={"held-out loss": val} if val[0] else None, secondary_title="held-out loss (nats)"),
        key="seq_rep")
    rule = R.emergence_rule(summary, "repetition")
    if rule:
        st.caption(f"Emergence rule: {rule}")
    ui.finding(FC.collapse_caption(R.emergence_entry(summary, "entropy_collapse")),
               R.emergence_rule(summary, "entropy_collapse"), "How greedy loops and the entropy collapse are found")
    panels = [
        ("Distinct n-grams", "distinct fraction",
         {f"{d} distinct-{n}": f"repetition.{d}.distinct_{n}" for d in ("greedy", "sampled") for n in (1, 2)}),
        ("Continuations ending in a loop", "fraction",
         {f"{d}": f"repetition.{d}.loop_fraction" for d in ("greedy", "sampled")}),
        ("Predictive entropy along the continuation (greedy: along the greedy path)", "nats",
         {f"{d}": f"repetition.{d}.predictive_entropy" for d in ("greedy", "sampled")}),
        ("Teacher-forced repetition (Welleck)", "fraction",
         {"rep/128": "repetition.rep_128", "wrep/128": "repetition.wrep_128"}),
        ("Longest loop the greedy continuations end in", "tokens",
         {"mean over the prompts": "repetition.greedy.loop_length", "longest": "repetition.greedy.loop_length_max"}),
    ]
    cols = st.columns(2)
    for i, (title, y, paths) in enumerate(panels):
        series = {k: R.scalar(results, p) for k, p in paths.items()}
        series = {k: v for k, v in series.items() if v[0]}
        if series:
            cols[i % 2].plotly_chart(figures.scalar_series(series, title, y, log_x=log_x, marks=marks),
                                     key=f"panel{i}")


def loop_note(c: dict) -> str:
    """The longest loop a recorded continuation ends in, in words ("" when none was recorded)."""
    length, period = c.get("longest_loop_length"), c.get("longest_loop_period")
    if not isinstance(length, int) or isinstance(length, bool):
        return ""
    return f" · loop: the last {length} tokens repeat with period {period}" if length else " · no loop"


def continuations_with_loops(run, results) -> dict[tuple[str, str], dict[int, tuple[str, str]]]:
    """{(prompt, decoding): {step: (text, its loop in words)}} from the probe results, else from
    samples.jsonl (whose rows record no loop)."""
    out: dict[tuple[str, str], dict[int, tuple[str, str]]] = {}
    for step in sorted(results):
        for c in R.get(results[step], "repetition.continuations") or []:
            if isinstance(c, dict):
                out.setdefault((str(c.get("prompt", "")), str(c.get("decoding", ""))), {})[step] = (
                    str(c.get("text", "")), loop_note(c))
    if not out:
        for step in sample_steps(run.path):
            for row in samples_at(run.path, step):
                out.setdefault((str(row.get("prompt", "")), str(row.get("decoding", ""))), {})[step] = (
                    str(row.get("text", "")), "")
    return out


def generations_section(run, results) -> None:
    st.subheader("One prompt across all checkpoints")
    table = continuations_with_loops(run, results)
    if not table:
        st.info("No generations were recorded.")
        return
    prompts = sorted({p for p, _ in table})
    cols = st.columns([3, 1])
    prompt = cols[0].selectbox("Prompt", prompts, key="rep_prompt")
    decodings = sorted({d for p, d in table if p == prompt})
    decoding = cols[1].radio("Decoding", decodings, key="rep_decoding", horizontal=True)
    st.caption("Repeated 4-grams are highlighted; each step says the longest loop its continuation ends in "
               "(probes.measure.metrics.longest_loop: a tail that repeats with one period at least twice).")
    for step, (text, loop) in sorted(table.get((prompt, decoding), {}).items()):
        ui.highlighted_text(text, prefix=f"<b>step {step}</b>{html.escape(loop)} · ")


def render(run: RunFiles, results: dict[int, dict]) -> None:
    log_x = ui.log_x_toggle("log_x", True)
    ui.guarded(lambda: metrics_section(run, results, log_x))
    ui.guarded(lambda: generations_section(run, results))


ui.results_page("Repetition", "repetition", render)
