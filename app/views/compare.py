"""Compare runs: several runs overlaid over training steps, each labelled with its attention kind —
the attention-variants study (`make study`: the nano preset with each --attention kind on the same
data and seed). Loss, grad norm with loss spikes, attention entropy and sink mass, repetition, and
induction/copying/ICL, plus a summary table. Runs without probe results show their loss and grad
norm only."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from app import cache, compare as C, figures, ui
from probes.analyse import loss_spikes as S
from probes.analyse.run_pairs import RULE as PAIRS_RULE
from app.runfolder import RunFiles, run_files, run_names, runs_root

STUDY_COMMAND = "make study"
LR_STUDY_COMMAND = "make lr-study"
PICK_KEY = "compare_runs"


@dataclass
class Compared:
    """One chosen run with everything the page plots about it."""

    run: RunFiles
    kind: str
    metrics: dict
    results: dict = field(default_factory=dict)
    summary: dict | None = None

    @property
    def label(self) -> str:
        return C.run_label(self.run.name, self.kind)


def default_runs(names: list[str], current: str | None) -> list[str]:
    """A study's runs when there are any (attn-*, else lr-*), else the run chosen in the sidebar."""
    for prefix in ("attn-", "lr-"):
        study = [n for n in names if n.startswith(prefix)]
        if study:
            return study
    return [current] if current in names else names[-1:]


def pick_runs(names: list[str]) -> list[str]:
    chosen = st.session_state.get(PICK_KEY)
    if chosen is None:
        st.session_state[PICK_KEY] = default_runs(names, st.session_state.get(ui.RUN_KEY))
    elif any(n not in names for n in chosen):  # a run folder went away
        st.session_state[PICK_KEY] = [n for n in chosen if n in names]
    return st.multiselect("Runs to compare", names, key=PICK_KEY,
                          help="Runs trained on the same data and seed compare best, e.g. the study's "
                               "attn-standard, attn-linear and attn-gated.")


def load(root, name: str) -> Compared | None:
    """Read one run (problems shown as warnings); None when the run is refused or unreadable."""
    try:
        run = run_files(root, name)
    except ValueError as e:
        st.warning(ui.one_sentence(e))
        return None
    for problem in run.problems:
        st.warning(f"{name}: {problem}")
    results, problems = cache.probe_results(run)
    for problem in problems:
        st.warning(f"{name}: {problem}")
    if run.training:
        st.info(f"Run {name} is still training: its curves end at the last step logged. Refresh to extend them.")
    return Compared(run=run, kind=C.attention_kind(run.info), metrics=cache.metrics(run), results=results,
                    summary=cache.probe_summary(run))


def spike_ratio() -> float:
    """The loss-spike line, as a fraction above the trailing median (SPIKE_RATIO by default)."""
    pct = st.number_input("Loss-spike line: % above the median of the previous "
                          f"{S.SPIKE_WINDOW} logged losses", min_value=5, max_value=1000,
                          value=int(round(100 * S.SPIKE_RATIO)), step=5, key="spike_pct",
                          help="Lower it to see the hardest batches too; they come at the same steps in "
                               "every run trained on the same data order.")
    return float(pct) / 100.0


def summary_section(runs: list[Compared], ratio: float) -> None:
    rows = [C.summary_row(c.run.name, c.kind, c.run.status, c.metrics, c.summary, len(c.results), ratio,
                          lr=C.peak_lr(c.run.info)) for c in runs]
    table = pd.DataFrame(rows)
    for col in table.columns:  # steps and counts stay integers even where some runs have none
        if col.endswith("step") or col in ("loss spikes", "checkpoints probed"):
            table[col] = table[col].astype("Int64")
    st.dataframe(table, hide_index=True, key="compare_table")
    st.caption("Emergence steps come from each run's probes/summary.json (empty: not detected, or no "
               "probe results); the rules are on the Repetition, Induction and Memorization pages.")


def pairs_section(runs: list[Compared]) -> None:
    """Which parts first, the text or the loss? For each pair of runs, the first checkpoint where
    their generations differ beyond noise and the first where their held-out losses do."""
    probed = [c for c in runs if c.results]
    if len(probed) < 2:
        return
    st.subheader("When do they part: the text or the loss?")
    table = pd.DataFrame(C.pair_rows([(c.run.name, c.results) for c in probed]))
    for col in table.columns:
        if col.endswith(" at") or col.endswith("from"):
            table[col] = table[col].astype("Int64")
    st.dataframe(table, hide_index=True, key="compare_pairs")
    st.caption("For sibling runs on the same data and seed, e.g. the learning-rate study made by "
               f"`{LR_STUDY_COMMAND}`. Rule: {PAIRS_RULE}")


def training_section(runs: list[Compared], ratio: float) -> None:
    st.subheader("Training")
    if not any(c.metrics["train"][0] for c in runs):
        st.info("None of these runs has logged training metrics yet.")
        return
    log_x = ui.log_x_toggle("compare_log_x", False)
    spikes = {c.label: S.loss_spikes(*c.metrics["train"], ratio=ratio) for c in runs}
    losses = {c.label: {"train": c.metrics["train"], "held-out": c.metrics["val"]} for c in runs}
    loss_marks = {c.label: (spikes[c.label], C.values_at(*c.metrics["train"], spikes[c.label])) for c in runs}
    st.plotly_chart(figures.run_overlay(losses, "Train and held-out loss", "cross-entropy (nats)", log_x=log_x,
                                        markers=loss_marks), key="compare_loss")
    grads = {c.label: {"grad norm": c.metrics["grad_norm"]} for c in runs}
    grad_marks = {}
    for c in runs:  # a spike is marked on the grad-norm curve at the same step
        at = [s for s in spikes[c.label] if s in set(c.metrics["grad_norm"][0])]
        grad_marks[c.label] = (at, C.values_at(*c.metrics["grad_norm"], at))
    if any(c.metrics["grad_norm"][0] for c in runs):
        st.plotly_chart(figures.run_overlay(grads, "Gradient norm (before clipping), loss spikes marked",
                                            "grad norm", log_x=log_x, log_y=True, markers=grad_marks),
                        key="compare_grad")
    st.caption(f"Loss spikes: {S.spike_rule(ratio)} Counts: " +
               ", ".join(f"{c.label} {len(spikes[c.label])}" for c in runs) + ".")


PROBE_CHARTS = [  # (key, title, y axis, {legend quantity: PROBE_SERIES name})
    ("compare_entropy_raw", "Mean attention entropy over heads (raw)", "nats", {"": "entropy_raw"}),
    ("compare_entropy_normalized", "Mean attention entropy over heads (normalized by log(i+1))", "entropy / max",
     {"": "entropy_normalized"}),
    ("compare_sink", "Mean attention-sink mass over heads (attention on position 0)", "mass",
     {"": "sink_mass"}),
    ("compare_repetition", "Repeated 4-grams in continuations (seq-rep-4)", "seq-rep-4",
     {"greedy": "seq_rep_4_greedy", "sampled": "seq_rep_4_sampled"}),
    ("compare_induction", "Best head: induction (random tokens) and in-context copying", "score",
     {"induction": "induction_best", "copying": "copying_best"}),
    ("compare_icl", "In-context-learning score (loss late − early; lower uses context more)", "nats",
     {"": "icl"}),
]


def probes_section(runs: list[Compared]) -> None:
    st.subheader("Probes over training")
    for c in runs:
        if not c.results:
            st.info(f"Run {c.run.name} has no probe results yet, so only its loss and grad norm are shown. "
                    f"Compute them with `python -m probes {c.run.path}` (or on any other page).")
    probed = [c for c in runs if c.results]
    if not probed:
        return
    log_x = ui.log_x_toggle("compare_probe_log_x", True)
    series = {c.label: C.probe_series(c.results) for c in probed}
    cols = st.columns(2)
    drawn = 0
    for key, title, y_title, quantities in PROBE_CHARTS:
        data = {label: {q: s[name] for q, name in quantities.items()} for label, s in series.items()}
        if not any(len(v[0]) for per_run in data.values() for v in per_run.values()):
            continue
        cols[drawn % 2].plotly_chart(figures.run_overlay(data, title, y_title, log_x=log_x), key=key)
        drawn += 1
    if not drawn:
        st.info("The chosen runs' probe results hold none of the compared quantities.")


def render() -> None:
    st.title("Compare runs")
    root = runs_root()
    names = run_names(root)
    if not names:
        ui.empty_state(root)
        st.caption("For the attention-variants study (nano with standard, linear and gated attention):")
        st.code(STUDY_COMMAND, language="bash")
        return
    st.caption(f"Overlay runs trained on the same data and seed — e.g. the attention-variants study made by "
               f"`{STUDY_COMMAND}` (runs/attn-standard, runs/attn-linear, runs/attn-gated) or the learning-rate "
               f"study made by `{LR_STUDY_COMMAND}` (runs/lr-*).")
    chosen = pick_runs(names)
    if not chosen:
        st.info("Pick one or more runs to compare.")
        return
    runs = [c for c in (load(root, n) for n in chosen) if c is not None]
    if not runs:
        return
    ratio = spike_ratio()
    ui.guarded(lambda: summary_section(runs, ratio))
    ui.guarded(lambda: pairs_section(runs))
    ui.guarded(lambda: training_section(runs, ratio))
    ui.guarded(lambda: probes_section(runs))


ui.guarded(render)
