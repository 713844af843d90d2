"""Circuits: what each head does at every checkpoint and how the heads connect, over training
(docs/circuits.md). A role map (heads x checkpoints, each cell coloured by the attention role the
head plays there, beside the copying score of its OV circuit), the composition graph of a chosen
checkpoint (an edge wherever a Q-, K- or V-composition score exceeds its chance baseline) with a
slider and Play that animate the run, and the table of summary.json["circuits"]'s events: when
each role appears, when one moves to another head, when each edge rises. Results without
head_roles or composition (older ones, or --only) are offered their computation, as the Stages
page offers the LLC: one shared background job per run (app/jobs.py)."""
import streamlit as st

from app import cache, figures_circuits as FX, jobs, launch, plot_data as R, ui
from app.runfolder import RunFiles
from probes.measure.compute import RESULT_VERSION
from probes.measure.head_roles import ROLES

PROBES = ("head_roles", "composition")


def steps_with(results, key: str) -> list[int]:
    return [s for s in sorted(results) if isinstance(results[s].get(key), dict)]


def role_data(results, steps) -> tuple[list[int], list[dict], list[dict]]:
    """(steps, {role: [L][H]} per step, chance levels per step) over the checkpoints whose
    head_roles holds every role."""
    kept, scores, chance = [], [], []
    for s in steps:
        entry = results[s]["head_roles"]
        if not all(R.is_matrix(entry.get(r)) for r in ROLES):
            continue
        kept.append(s)
        scores.append({r: entry[r] for r in ROLES})
        levels = entry.get("chance") if isinstance(entry.get("chance"), dict) else {}
        chance.append({k: float(v) for k, v in levels.items() if R.as_number(v) is not None})
    return kept, scores, chance


def compute_section(run: RunFiles, results) -> None:
    """Offer head_roles and composition on the checkpoints whose results lack them, through the
    probes runner. A result of an older probe version is rewritten whole by the runner, so there
    the whole default set (which includes both) is computed, never the two alone."""
    missing = [s for s in sorted(results) if any(not isinstance(results[s].get(k), dict) for k in PROBES)]
    if not missing:
        return
    job = jobs.running(run.path)
    if job is not None:
        if not run.missing_probes:  # else ui.probe_results shows this job's progress already
            ui.probe_progress(job)
        return
    n = len(missing)
    if launch.supervisor_of(run.path.resolve()) is not None:
        st.info(f"{n} checkpoint{'s' * (n != 1)} of this run lack head roles or composition: the probes following "
                "the run in the background compute them, and this page redraws as each one lands.")
        return
    older = [s for s in missing if results[s].get("version") != RESULT_VERSION]
    st.caption(f"{n} of {len(results)} checkpoints have no head roles or composition yet "
               "(results from before these probes were in the default set, or computed with --only)."
               + (f" {len(older)} of them are from an older version of the probes, whose files the runner rewrites "
                  "whole: the whole default set is computed there." if older else ""))
    if st.button(f"Compute head roles and composition at {n} checkpoint{'s' * (n != 1)}", key="circuits_compute",
                 type="primary"):
        ui.probe_progress(jobs.start_probes(run.path, missing, only=None if older else list(PROBES)))
    steps = "" if len(missing) == len(results) else f" --steps {','.join(map(str, missing))}"
    st.caption("The same from a terminal:")
    st.code(f"python -m probes {run.path}" + ("" if older else " --only head_roles,composition") + steps,
            language="bash")


def role_map_section(results, steps, step) -> None:
    kept, scores, chance = role_data(results, steps)
    if not kept:
        st.info("No checkpoint's results hold head roles, so there is no role map.")
        return
    st.plotly_chart(FX.role_map(kept, scores, chance, mark_step=step), key="role_map")
    st.caption(FX.ROLE_RULE + " The outlined column is the checkpoint of the composition graph.")


def graph_section(results, steps, step) -> None:
    if not steps:
        st.info("No checkpoint's results hold composition scores, so there is no composition graph.")
        return
    shown = step if step in steps else steps[-1]
    kept, scores, chance = role_data(results, steps)
    cells = {s: FX.role_cells({r: m for r, m in sc.items() if r in FX.ATTENTION_ROLES}, c)
             for s, sc, c in zip(kept, scores, chance)}
    copying = {s: sc["copying"] for s, sc in zip(kept, scores)}
    comps = [results[s]["composition"] for s in steps]
    st.plotly_chart(FX.composition_graph(steps, comps, roles=[cells.get(s) for s in steps],
                                         copying=[copying.get(s) for s in steps], start_step=shown),
                    key="composition_graph")
    at = results[shown]["composition"]
    edges = FX.edges_above(at)
    counts = ", ".join(f"{sum(e['kind'] == k for e in edges)} {k.upper()}" for k in ("q", "k", "v"))
    base = at.get("baseline") or {}
    st.caption(f"Step {shown}: {counts} pairs above their baselines. An edge joins a head to a later one where their "
               f"composition score exceeds the pair's threshold (the {base.get('quantile')} quantile of its score "
               "under random relative orientation); the wider, the further above, in quarters of the run's largest "
               f"excess. Chance level (rms) of every pair: {R.as_number(base.get('chance_rms')) or 0:.3f}. Nodes are "
               "coloured as the role map. The slider and Play move through the checkpoints; the checkpoint picker "
               "above sets where it opens.")
    if at.get("note"):
        st.caption(f"Note: {at['note']}.")
    ui.finding(None, base.get("definition"), "How the baseline is drawn")


def events_section(summary) -> None:
    circuits = R.get(summary, "circuits") if summary else None
    if not isinstance(circuits, dict):
        st.info("The probe summary holds no circuit events yet; it is rewritten whenever probes are computed.")
        return
    rows = FX.event_rows(circuits)
    st.markdown("**Circuit events** (summary.json)")
    if rows:
        st.dataframe(rows, key="circuit_events", hide_index=True, width="stretch")
    else:
        st.info("No circuit events: no role appeared, no head took over a role and no composition edge rose above "
                "its baseline.")
    for caption in (FX.appearances_caption(circuits), FX.k_edge_caption(circuits.get("induction_k_edge"))):
        if caption:
            st.caption(caption)
    ui.finding(None, circuits.get("rule"), "How the events are found")


def render(run: RunFiles, results: dict[int, dict]) -> None:
    roles, comps = steps_with(results, "head_roles"), steps_with(results, "composition")
    if not roles and not comps:
        st.info("The probe results hold no head roles or composition: they were computed before these probes joined "
                "the default set, or with --only. Compute them below.")
        ui.guarded(lambda: compute_section(run, results))
        return
    step = ui.step_picker(comps or roles, key="circuits_step", label="Checkpoint of the composition graph")
    ui.guarded(lambda: role_map_section(results, roles, step))
    left, right = st.columns(2)
    with left:
        ui.guarded(lambda: graph_section(results, comps, step))
    with right:
        ui.guarded(lambda: events_section(cache.probe_summary(run)))
    ui.guarded(lambda: compute_section(run, results))


ui.results_page("Circuits", "circuits", render)
