"""Heads: which heads matter (ablation heatmap at a checkpoint), since when (their evolution and
the head-importance concentration over training), and what ablating any set of them does to the
held-out loss and to a greedy generation."""
import html

import streamlit as st

from app import cache, figures, jobs, plot_data as R, ui
from app import failure_captions as FC
from app.runfolder import RunFiles
from probes import KINDS
HEADS_KEY = "ablate_heads"


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def parse_label(label: str) -> tuple[int, int]:
    layer, head = label[1:].split("H")
    return int(layer), int(head)


def add_clicked_heads() -> None:
    """Clicking heatmap cells adds those heads to the ablation set."""
    event = st.session_state.get("ablation_heatmap")
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", []) or []
    chosen = list(st.session_state.get(HEADS_KEY, []))
    for p in points:
        x, y = p.get("x"), p.get("y")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            label = head_label(int(y), int(x))
            if label not in chosen:
                chosen.append(label)
    st.session_state[HEADS_KEY] = chosen


SOURCES = ("exact ablation", "attribution estimate")


def agreement_caption(res, kind: str, step: int) -> str | None:
    """The sentence that must accompany the attribution estimate: what it is and how well it
    agreed with the exact sweep at this checkpoint. None when the result holds no agreement."""
    agree = R.get(res, R.ablation_path(res, kind, "attribution_agreement"))
    if not isinstance(agree, dict):
        return None
    rho, overlap = agree.get("spearman"), agree.get("top3_overlap")
    rho_text = f"{rho:.2f}" if isinstance(rho, (int, float)) else "undefined (a constant matrix)"
    overlap_text = f"{overlap:.2f}" if isinstance(overlap, (int, float)) else "unknown"
    n = R.get(res, R.ablation_path(res, kind, "attribution_sequences"))
    on = f" on the first {n} held-out sequences" if isinstance(n, int) else ""
    return (f"First-order estimate (attribution patching: one forward and one backward pass{on}), not a "
            f"measured ablation. Agreement with the exact {kind}-ablation sweep at step {step}: Spearman "
            f"rank correlation {rho_text}, top-3 overlap {overlap_text}.")


def estimate_of(res, kind: str):
    """The attribution estimate of `kind`: beside its exact sweep when there is one, else the one
    the default head-ablation probe stores for every kind."""
    estimate = R.get(res, R.ablation_path(res, kind, "attribution"))
    return estimate if R.is_matrix(estimate) else R.get(res, f"head_ablation.attribution.{kind}")


def heatmap_section(results, steps, kind, step) -> None:
    res = results[step]
    clean = R.get(res, R.ablation_path(res, kind, "clean_loss"))
    selected = [parse_label(h) for h in st.session_state.get(HEADS_KEY, [])]
    exact = R.is_matrix(R.get(res, R.ablation_path(res, kind)))
    source = st.radio("Heatmap shows", list(SOURCES), horizontal=True, key="heatmap_source",
                      index=0 if exact else 1)
    if source == SOURCES[1]:
        estimate = estimate_of(res, kind)
        caption = agreement_caption(res, kind, step)
        if not R.is_matrix(estimate):
            st.info("This result predates the attribution estimate: recompute the probes to see it.")
            return
        if caption is None:
            caption = (f"First-order estimate (attribution patching), not a measured ablation. No exact "
                       f"{kind}-ablation sweep at step {step} yet, so how far it agrees is unknown: compute it "
                       "above.")
        fig = figures.head_heatmap(estimate, f"Estimated loss increase (first order) when one head is "
                                   f"{kind}-ablated · step {step}", "Δ loss (estimate)", selected=selected,
                                   clickable=True)
        st.plotly_chart(fig, key="ablation_heatmap", on_select=add_clicked_heads, selection_mode="points")
        st.caption(caption)
        return
    if not exact:
        st.info(f"No exact {kind}-ablation sweep at step {step}: compute it above, or show the estimate.")
        return
    errors = R.get(res, R.ablation_path(res, kind, "delta_se"))
    fig = figures.head_heatmap(R.get(res, R.ablation_path(res, kind)), f"Loss increase when one head is "
                               f"{kind}-ablated · step {step}", "Δ loss", selected=selected, clickable=True,
                               errors=errors if R.is_matrix(errors) else None)
    st.plotly_chart(fig, key="ablation_heatmap", on_select=add_clicked_heads, selection_mode="points")
    if isinstance(clean, (int, float)):
        st.caption(f"Clean held-out loss at step {step}: {clean:.4f} nats. Click cells to add heads to the ablation.")
    note = figures.ablation_precision_note(R.get(res, R.ablation_path(res, kind, "precision")))
    st.caption(note or "This result predates standard errors: recompute the probes to see them.")


def interactive_section(run, step, n_layer, n_head, res) -> None:
    """Ablate any heads on the held-out sequences the probe used at this step for the chosen kind
    (its first `n_sequences`: precision sizing may have used more than the first block), so the
    loss change of one ablated head is the heatmap's number."""
    st.subheader("Interactive ablation")
    options = [head_label(l, h) for l in range(n_layer) for h in range(n_head)]
    st.session_state[HEADS_KEY] = [h for h in st.session_state.get(HEADS_KEY, []) if h in options]
    labels = st.multiselect("Heads to ablate", options, key=HEADS_KEY)
    kind = st.radio("Ablation", list(KINDS), horizontal=True, key="interactive_kind")
    n_sequences = R.get(res, R.ablation_path(res, kind, "n_sequences"))
    n = n_sequences if isinstance(n_sequences, int) and n_sequences >= 2 else 16
    clean_loss = R.get(res, R.ablation_path(res, kind, "clean_loss"))
    prompt = st.text_input("Prompt for the greedy generation", "Once upon a time", key="ablate_prompt")
    heads = [parse_label(h) for h in labels]
    if heads:
        ablated = cache.ablation(run, step, heads, kind, n=n)
        clean = ablated["loss"] - ablated["delta"]
    else:  # nothing ablated: the probe's clean loss on the same held-out batch, no forward pass
        clean = clean_loss if isinstance(clean_loss, (int, float)) else cache.ablation(run, step, [], kind, n=n)["loss"]
        ablated = {"loss": clean, "delta": 0.0}
    cols = st.columns(3)
    cols[0].metric("Clean held-out loss", f"{clean:.4f}")
    cols[1].metric("Loss with ablation", f"{ablated['loss']:.4f}", delta=f"{ablated['delta']:+.4f}",
                   delta_color="inverse" if heads else "off")
    cols[2].metric("Heads ablated", len(heads))
    if not prompt.strip():
        st.info("Type a prompt to compare generations.")
        return
    before = cache.generation(run, step, [], kind, prompt)
    after = cache.generation(run, step, heads, kind, prompt)
    left, right = st.columns(2)
    left.markdown("**Without ablation**")
    right.markdown(f"**With {', '.join(labels) or 'no heads'} {kind}-ablated**")
    with left:
        ui.highlighted_text(before["text"], prefix=f"<b>{html.escape(prompt)}</b>")
    with right:
        ui.highlighted_text(after["text"], prefix=f"<b>{html.escape(prompt)}</b>")
    if kind == "mean":
        st.caption("Mean ablation: each chosen head's output is replaced by its mean over the held-out "
                   "batch's positions, in the loss and in the generation alike.")
    elif kind == "resample":
        st.caption("Resample ablation: in the loss, each sequence takes the chosen heads' outputs from "
                   "another held-out sequence (the probes' seeded derangement); in the generation, the "
                   "prompt takes them from one held-out sequence at the same positions.")


def evolution_section(run, results, kind, log_x) -> None:
    steps, mats = R.ablation_matrices(results, kind)
    if len(steps) < 2:
        st.info(f"The evolution over training needs exact {kind}-ablation results for at least two checkpoints"
                + ("." if kind == "zero" else ": compute them above for every checkpoint."))
        return
    summary = cache.probe_summary(run)
    errors = [R.get(results[s], R.ablation_path(results[s], kind, "delta_se")) for s in steps]
    errors = [e if R.is_matrix(e) else None for e in errors]
    st.plotly_chart(figures.head_small_multiples(steps, mats, f"Per-head loss increase ({kind}) over training, ± SE",
                                                 "Δ loss", log_x=log_x,
                                                 errors=errors if any(e is not None for e in errors) else None),
                    key="evolution")
    gini = R.ablation_scalar(results, kind, "gini")
    top = R.ablation_scalar(results, kind, "top_share")
    series = {k: v for k, v in {"Gini": gini, "top-10% share": top}.items() if v[0]}
    if series:
        entry = R.emergence_entry(summary, "head_concentration") or {}
        if kind == "zero" and entry.get("level_steps") and entry.get("equal_heads_gini"):
            bound = [(s, b) for s, b in zip(entry["level_steps"], entry["equal_heads_gini"]) if b is not None]
            if bound:
                series["Gini equal heads would show (bound)"] = ([s for s, _ in bound], [b for _, b in bound])
        st.plotly_chart(figures.scalar_series(
            series, "Head-importance concentration over training", "share / coefficient", log_x=log_x,
            marks={"concentration": R.emergence_step(summary, "head_concentration"),
                   **(FC.inequality_mark(summary) if kind == "zero" else {})}), key="gini")
        caption = FC.concentration_caption(entry) if entry else None
        ui.finding(caption and ("" if kind == "zero" else "Zero ablation: ") + caption,
                   R.emergence_rule(summary, "head_concentration"), "How head inequality is measured and tested")


def on_demand_section(run, results, steps, kind, step) -> None:
    """Mean and resample sweeps are not in the default probe set (each costs as much as the zero
    sweep): offer to compute them, at this checkpoint or at every one, through the probes runner
    (the same computation as `python -m probes RUN --only head_ablation_<kind>`)."""
    missing = [s for s in steps if not R.is_matrix(R.get(results[s], R.ablation_path(results[s], kind)))]
    job = jobs.running(run.path)
    if job is not None:
        ui.probe_progress(job)
        return
    if not missing:
        return
    st.caption(f"The exact {kind} ablation is computed on demand: {len(steps) - len(missing)} of {len(steps)} "
               f"checkpoints have it (the default probes measure zero ablation exactly, and estimate {kind} "
               "ablation to first order).")
    here, every = st.columns(2)
    todo = [step] if step in missing else []
    if todo and here.button(f"Compute exact {kind} ablation at step {step}", key=f"demand-{kind}-{step}"):
        ui.probe_progress(jobs.start_probes(run.path, todo, only=[f"head_ablation_{kind}"]))
    elif every.button(f"… at all {len(missing)} checkpoints without it", key=f"demand-{kind}-all"):
        ui.probe_progress(jobs.start_probes(run.path, missing, only=[f"head_ablation_{kind}"]))


def render(run: RunFiles, results: dict[int, dict]) -> None:
    steps = R.steps_having(results, "head_ablation")
    if not steps:
        st.info("The probe results hold no head-ablation data (computed with --only?).")
        return
    top = st.columns([3, 1, 1])
    with top[0]:
        step = ui.step_picker(steps)
    kind = top[1].radio("Heatmap ablation", list(KINDS), key="kind")
    log_x = ui.log_x_toggle("log_x", True, where=top[2])
    matrix = R.get(results[step], "head_ablation.zero")
    if not R.is_matrix(matrix):
        st.info(f"No head-ablation results at step {step}.")
        return
    if kind != "zero":
        ui.guarded(lambda: on_demand_section(run, results, steps, kind, step))
    n_layer, n_head = len(matrix), len(matrix[0])
    left, right = st.columns([1, 1])
    with left:
        ui.guarded(lambda: heatmap_section(results, steps, kind, step))
    with right:
        ui.guarded(lambda: interactive_section(run, step, n_layer, n_head, results[step]))
    ui.guarded(lambda: evolution_section(run, results, kind, log_x))


ui.results_page("Heads", "heads", render)
