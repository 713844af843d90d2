"""Attention: per-head entropy over training (raw and normalized by log(i+1)), the attention-sink
mass on position 0, and a pattern viewer for any typed prompt."""
import streamlit as st

from app import cache, figures, plot_data as R, ui


def entropy_section(results) -> None:
    cols = st.columns([2, 1, 1])
    which = cols[0].radio("Entropy", ["normalized", "raw"], horizontal=True, key="entropy_kind",
                          help="normalized divides each query row's entropy by log(i+1), its maximum")
    log_x = ui.log_x_toggle("log_x", True, where=cols[1])
    steps, mats = R.matrices(results, f"attention_entropy.{which}")
    if not steps:
        st.info("The probe results hold no attention-entropy data.")
        return
    st.plotly_chart(figures.head_small_multiples(
        steps, mats, f"Attention entropy per head ({which}) over training",
        "entropy" + (" / log(i+1)" if which == "normalized" else " (nats)"), log_x=log_x), key="entropy")
    s_steps, sinks = R.matrices(results, "attention_entropy.sink_mass")
    if s_steps:
        st.plotly_chart(figures.head_small_multiples(
            s_steps, sinks, "Attention-sink mass (mean attention on position 0) over training",
            "mass on position 0", log_x=log_x), key="sink")
        with cols[2]:
            step = ui.step_picker(steps, key="entropy_step")
        left, right = st.columns(2)
        left.plotly_chart(figures.head_heatmap(mats[steps.index(step)], f"{which} entropy · step {step}",
                                               "entropy"), key="entropy_map")
        if step in s_steps:
            right.plotly_chart(figures.head_heatmap(sinks[s_steps.index(step)], f"sink mass · step {step}",
                                                    "mass"), key="sink_map")


def pattern_section(run) -> None:
    st.subheader("Attention pattern viewer")
    steps = ui.usable_steps(run)
    if not steps:
        st.info("No intact checkpoint to look at.")
        return
    prompt = st.text_input("Prompt", "Tom and Mia went to the park. Tom and Mia played with a ball.",
                           key="pattern_prompt")
    cols = st.columns(3)
    with cols[0]:
        step = ui.step_picker(steps, key="pattern_step")
    model, _ = cache.load_model(run, step)
    layer = cols[1].selectbox("Layer", list(range(model.cfg.n_layers)), key="pattern_layer")
    head = cols[2].selectbox("Head", list(range(model.cfg.n_heads)), key="pattern_head")
    tok = cache.tokenizer(run)
    ids = tok.encode(prompt)[: model.cfg.n_ctx]
    if not ids:
        st.info("Type a prompt to see its attention pattern.")
        return
    pattern = cache.patterns(run, step, ids)[layer][head]
    st.plotly_chart(figures.attention_pattern(pattern, tok.token_strings(ids),
                                              f"Layer {layer} head {head} · step {step}"), key="pattern")


def render() -> None:
    run = ui.current_run("Attention")
    if run is None:
        return
    results = ui.probe_results(run, "attention")
    if results is not None:
        ui.guarded(lambda: entropy_section(results))
    if run.checkpoint_steps:
        ui.guarded(lambda: pattern_section(run))


ui.guarded(render)
