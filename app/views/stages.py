"""Stages: the local learning coefficient (the llc probe, computed only on request) over training
beside the held-out loss, with the stage boundaries summary.json["stages"] finds, the emergence
steps of the other phenomena and the per-token-loss trajectory's turn on the same step axis, and
one checkpoint's SGLD loss traces with the diagnostics that say whether its estimate can be
trusted. The LLC is computed on request, for the checkpoints chosen, as a background job every
session watching the run shares (app/jobs.py, as the Heads page's on-demand ablations)."""
import streamlit as st

from app import cache, figures_stages as FS, jobs, plot_data as R, ui
from app.runfolder import RunFiles
from probes.analyse.stages import nearest_boundary

EMERGENCE = {"induction": "induction change", "repetition": "repetition", "memorization": "memorization",
             "head_concentration": "head concentration", "loss_generation_mismatch": "loss–generation mismatch",
             "overfitting": "overfitting onset"}


def pending() -> None:
    st.info("No checkpoint of this run has an LLC estimate yet: the llc probe is not in the default set (it samples "
            f"SGLD chains, {FS.LLC_COST_SENTENCE}). Compute it below for the checkpoints you choose.")


def compute_section(run, results) -> None:
    """Offer the llc probe on the checkpoints the user chooses among those without an estimate, as
    the Heads page offers its on-demand ablations: one shared background job per run (app/jobs.py),
    whose progress every session watching the run sees; the same computation as the command shown."""
    job = jobs.running(run.path)
    if job is not None:
        if not run.missing_probes:  # else ui.probe_results shows this job's progress already
            ui.probe_progress(job)
        return
    missing = [s for s in sorted(results) if not isinstance(results[s].get("llc"), dict)]
    if not missing:
        return
    kept = st.session_state.get("llc_steps")  # a choice made before some of it was computed keeps the rest
    st.session_state["llc_steps"] = missing if kept is None else [s for s in kept if s in missing]
    chosen = st.multiselect("Checkpoints to estimate the LLC at", missing, key="llc_steps")
    each = FS.llc_seconds(run.info.get("model"))
    st.caption(f"The llc probe takes {FS.LLC_COST_SENTENCE}; for this run's model about {FS.duration(each)} per "
               f"checkpoint (scaled by its compute per token), so about {FS.duration(each * len(chosen))} for the "
               f"{len(chosen)} chosen.")
    if st.button(f"Compute the LLC at {len(chosen)} checkpoint{'s' * (len(chosen) != 1)}", key="llc_compute",
                 type="primary", disabled=not chosen):
        ui.probe_progress(jobs.start_probes(run.path, chosen, only=["llc"]))
    steps = f" --steps {','.join(map(str, chosen))}" if chosen and chosen != missing else ""
    st.caption("The same from a terminal:")
    st.code(f"python -m probes {run.path} --only llc{steps}", language="bash")


def marks_of(summary) -> dict:
    """Every emergence step the summary found, and the trajectory's turn, as labelled marks."""
    marks = {}
    for name, label in EMERGENCE.items():
        marks.update(R.emergence_mark(summary, name, label))
    turn = R.get(summary, "trajectory.turn.turn_step") if summary else None
    if isinstance(turn, int):
        marks["loss trajectory turns"] = turn
    return marks


def overview_section(run, results, summary, log_x: bool) -> None:
    found = R.get(summary, "stages") if summary else None
    steps = summary.get("steps") if summary else None
    if not isinstance(found, dict) or not steps:
        st.info("The probe summary holds no stages yet; it is rewritten when probes are computed.")
        return
    untrusted = [s for s, ok in zip(steps, found.get("trusted") or []) if ok is False]
    loss = cache.metrics(run).get("val")
    st.plotly_chart(FS.llc_over_training(steps, found.get("llc") or [], found.get("llc_std") or [], loss=loss,
                                         boundaries=found.get("boundaries") or [], marks=marks_of(summary),
                                         untrusted=untrusted, log_x=log_x), key="stages")
    n = sum(v is not None for v in found.get("llc") or [])
    st.caption(f"{n} of {len(steps)} checkpoints have an LLC estimate; hollow points failed their diagnostics "
               f"({len(untrusted)}). Band: ± 1 standard deviation over SGLD chains.")
    bounds = found.get("boundaries") or []
    if bounds:
        st.caption("Stage boundaries: " + "; ".join(
            f"{b['kind']} at step {b['step']} (between steps {b['from_step']} and {b['to_step']}, LLC "
            f"{b['value']:.1f}{'' if b.get('trusted') is not False else ', an estimate there failed its diagnostics'})"
            for b in bounds) + ".")
    else:
        st.caption(f"No stage boundary: {found.get('reason') or 'none found'}.")
    induction = R.emergence_step(summary, "induction")
    near = nearest_boundary(found, induction)
    if near is not None:
        b = near["boundary"]
        st.caption(f"Induction change at step {induction}; nearest stage boundary: step {b['step']} ({b['kind']}), "
                   f"{near['offset']:+.0%} of the induction step — "
                   f"{'within' if near['within'] else 'outside'} ±{near['share']:.0%}.")
    elif induction is not None:
        st.caption(f"Induction change at step {induction}; no stage boundary to compare it with.")
    st.caption(f"Stage rule: {found.get('rule', '')}")


def traces_section(results) -> None:
    steps = [s for s in sorted(results) if isinstance(R.get(results[s], "llc.trace.loss"), list)]
    if not steps:
        return
    step = ui.step_picker(steps, key="llc_step", label="Checkpoint whose SGLD chains to show")
    llc = results[step]["llc"]
    st.plotly_chart(FS.llc_traces(llc["trace"]["steps"], llc["trace"]["loss"], llc["trace"].get("burnin", 0),
                                  llc.get("init_loss", 0.0), f"SGLD loss traces · step {step}"), key="llc_traces")
    diag = llc.get("diagnostics") or {}
    s = llc.get("settings") or {}
    verdict = "trusted" if diag.get("trusted") else "not trusted: " + "; ".join(diag.get("problems") or [])
    st.caption(f"LLC {llc['mean']:.2f} ± {llc['std']:.2f} over {s.get('chains')} chains ({verdict}). Settings: lr "
               f"{s.get('lr')}, localization {s.get('localization'):g}, n_beta {s.get('n_beta', 0):.1f}, "
               f"{s.get('burnin')} + {s.get('draws')} steps of {s.get('batch_size')} rows, seed {s.get('seed')}; "
               f"{s.get('calibration')}.")


def render(run: RunFiles, results: dict[int, dict]) -> None:
    if not any(isinstance(r.get("llc"), dict) for r in results.values()):
        pending()
        ui.guarded(lambda: compute_section(run, results))
        return
    log_x = ui.log_x_toggle("log_x", True)
    summary = cache.probe_summary(run)
    ui.guarded(lambda: overview_section(run, results, summary, log_x))
    ui.guarded(lambda: traces_section(results))
    ui.guarded(lambda: compute_section(run, results))


ui.results_page("Stages", "stages", render)
