"""Heads: which heads matter (ablation heatmap at a checkpoint), since when (their evolution and
the head-importance concentration over training), and what ablating any set of them does to the
held-out loss and to a greedy generation."""
import html

import streamlit as st

from app import cache, figures, results as R, ui
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
    agree = R.get(res, f"head_ablation.attribution_agreement.{kind}")
    if not isinstance(agree, dict):
        return None
    rho, overlap = agree.get("spearman"), agree.get("top3_overlap")
    rho_text = f"{rho:.2f}" if isinstance(rho, (int, float)) else "undefined (a constant matrix)"
    overlap_text = f"{overlap:.2f}" if isinstance(overlap, (int, float)) else "unknown"
    n = R.get(res, "head_ablation.attribution_sequences")
    on = f" on the first {n} held-out sequences" if isinstance(n, int) else ""
    return (f"First-order estimate (attribution patching: one forward and one backward pass{on}), not a "
            f"measured ablation. Agreement with the exact {kind}-ablation sweep at step {step}: Spearman "
            f"rank correlation {rho_text}, top-3 overlap {overlap_text}.")


def heatmap_section(results, steps, kind, step) -> None:
    res = results[step]
    clean = R.get(res, "head_ablation.clean_loss")
    selected = [parse_label(h) for h in st.session_state.get(HEADS_KEY, [])]
    source = st.radio("Heatmap shows", list(SOURCES), horizontal=True, key="heatmap_source")
    if source == SOURCES[1]:
        estimate, caption = R.get(res, f"head_ablation.attribution.{kind}"), agreement_caption(res, kind, step)
        if not R.is_matrix(estimate) or caption is None:
            st.info("This result predates the attribution estimate: recompute the probes to see it.")
            return
        fig = figures.head_heatmap(estimate, f"Estimated loss increase (first order) when one head is "
                                   f"{kind}-ablated · step {step}", "Δ loss (estimate)", selected=selected,
                                   clickable=True)
        st.plotly_chart(fig, key="ablation_heatmap", on_select=add_clicked_heads, selection_mode="points")
        st.caption(caption)
        return
    errors = R.get(res, f"head_ablation.delta_se.{kind}")
    fig = figures.head_heatmap(R.get(res, f"head_ablation.{kind}"), f"Loss increase when one head is "
                               f"{kind}-ablated · step {step}", "Δ loss", selected=selected, clickable=True,
                               errors=errors if R.is_matrix(errors) else None)
    st.plotly_chart(fig, key="ablation_heatmap", on_select=add_clicked_heads, selection_mode="points")
    if isinstance(clean, (int, float)):
        st.caption(f"Clean held-out loss at step {step}: {clean:.4f} nats. Click cells to add heads to the ablation.")
    note = figures.ablation_precision_note(R.get(res, "head_ablation.precision"))
    st.caption(note or "This result predates standard errors: recompute the probes to see them.")


def interactive_section(run, step, n_layer, n_head, clean_loss, n_sequences=None) -> None:
    """Ablate any heads on the held-out sequences the probe used at this step (its first
    `n_sequences`: precision sizing may have used more than the first block), so the loss change
    of one zero-ablated head is the heatmap's number."""
    n = n_sequences if isinstance(n_sequences, int) and n_sequences >= 2 else 16
    st.subheader("Interactive ablation")
    options = [head_label(l, h) for l in range(n_layer) for h in range(n_head)]
    st.session_state[HEADS_KEY] = [h for h in st.session_state.get(HEADS_KEY, []) if h in options]
    labels = st.multiselect("Heads to ablate", options, key=HEADS_KEY)
    kind = st.radio("Ablation", list(KINDS), horizontal=True, key="interactive_kind")
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
    steps, mats = R.matrices(results, f"head_ablation.{kind}")
    if len(steps) < 2:
        st.info("The evolution over training needs probe results for at least two checkpoints.")
        return
    summary = cache.probe_summary(run)
    errors = [R.get(results[s], f"head_ablation.delta_se.{kind}") for s in steps]
    errors = [e if R.is_matrix(e) else None for e in errors]
    st.plotly_chart(figures.head_small_multiples(steps, mats, f"Per-head loss increase ({kind}) over training, ± SE",
                                                 "Δ loss", log_x=log_x,
                                                 errors=errors if any(e is not None for e in errors) else None),
                    key="evolution")
    gini = R.scalar(results, f"head_ablation.gini.{kind}")
    top = R.scalar(results, f"head_ablation.top_share.{kind}")
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
                   **(R.inequality_mark(summary) if kind == "zero" else {})}), key="gini")
        caption = R.concentration_caption(entry) if entry else None
        if caption:
            st.caption(("" if kind == "zero" else "Zero ablation: ") + caption)
        rule = R.emergence_rule(summary, "head_concentration")
        if rule:
            with st.expander("How head inequality is measured and tested"):
                st.caption(rule)


def render() -> None:
    run = ui.current_run("Heads")
    if run is None:
        return
    results = ui.probe_results(run, "heads")
    if results is None:
        return
    steps = R.steps_having(results, "head_ablation")
    if not steps:
        st.info("The probe results hold no head-ablation data (computed with --only?).")
        return
    top = st.columns([3, 1, 1])
    with top[0]:
        step = ui.step_picker(steps)
    kind = top[1].radio("Heatmap ablation", list(KINDS), key="kind")
    log_x = ui.log_x_toggle("log_x", True, where=top[2])
    matrix = R.get(results[step], f"head_ablation.{kind}")
    if not R.is_matrix(matrix):
        st.info(f"No {kind}-ablation results at step {step}.")
        return
    n_layer, n_head = len(matrix), len(matrix[0])
    left, right = st.columns([1, 1])
    with left:
        ui.guarded(lambda: heatmap_section(results, steps, kind, step))
    with right:
        ui.guarded(lambda: interactive_section(run, step, n_layer, n_head,
                                               R.get(results[step], "head_ablation.clean_loss"),
                                               R.get(results[step], "head_ablation.n_sequences")))
    ui.guarded(lambda: evolution_section(run, results, kind, log_x))


ui.guarded(render)
