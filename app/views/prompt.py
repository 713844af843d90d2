"""Prompt: one text followed through every checkpoint of the run (probes.prompt, docs/prompt.md): its
greedy and sampled continuations with the loop each falls into, the loss of each prompt token, and
at a chosen checkpoint the logit lens, the heads' direct logit attribution beside the Heads page's
ablation heatmap and, given a corrupted prompt of the same length, activation patching.

Computed on Compute as a shared background job (app/jobs.py: one per run, prompt and options,
whichever session asks), each checkpoint's entry cached on disk by probes.prompt."""
import streamlit as st

from app import cache, figures, figures_prompt as FP, jobs, plot_data as R, ui
from app.runfolder import RunFiles
from store.runio import RunFileError
from model.tokenizer import Tokenizer
from probes.prompt import DEFAULT_TOKENS, ESSAY_PROMPT, MAX_TOKENS, check_request

SUBMITTED = "prompt_submitted"  # (run, options) of the last Compute press, whose results the page shows
Options = tuple[str, int, int, "str | None"]  # text, tokens, seed, corrupted


def options_section(run: RunFiles, tokenizer: Tokenizer) -> tuple[Options | None, bool]:
    """The text, --tokens, --seed and corrupted-prompt inputs, with each prompt's tokens in the run's
    vocabulary. On Compute the options are checked by probes.prompt's own check_request (a refusal
    shows its one sentence) and become the submitted ones. Returns (the submitted options, pressed)."""
    text = st.text_area("Prompt", ESSAY_PROMPT, key="prompt_text", height=68)
    cols = st.columns([1, 1, 3])
    tokens = cols[0].number_input("Continuation tokens", 1, MAX_TOKENS, DEFAULT_TOKENS, key="prompt_tokens")
    seed = cols[1].number_input("Seed of the sampled one", 0, 2**31 - 1, 0, key="prompt_seed")
    corrupted = cols[2].text_input("Corrupted prompt (optional, for activation patching: the same length in "
                                   "tokens, one detail changed)", "", key="prompt_corrupted")
    for label, value in (("Prompt", text), ("Corrupted", corrupted)):
        if value.strip():
            ids = tokenizer.encode(value)
            st.markdown(f"{label}, {len(ids)} token{'s' * (len(ids) != 1)}: "
                        f"{FP.token_chips_html(tokenizer.token_strings(ids))}", unsafe_allow_html=True)
    st.caption(f"Tokens in the run's vocabulary; {FP.UNK} (red) marks text it does not have: a compact vocabulary "
               "may lack a sentence's first word without a leading space, and the model then sees only "
               f"{FP.UNK} there.")
    options: Options = (text, int(tokens), int(seed), corrupted if corrupted.strip() else None)
    pressed = st.button("Compute", key="prompt_compute", type="primary")
    if pressed:
        try:
            check_request(run.path, options[0], ui.usable_steps(run), *options[1:])
        except (ValueError, RunFileError) as e:
            st.session_state.pop(SUBMITTED, None)
            st.error(ui.one_sentence(e))
            return None, pressed
        st.session_state[SUBMITTED] = (run.name, options)
    submitted = st.session_state.get(SUBMITTED)
    submitted = submitted[1] if submitted is not None and submitted[0] == run.name else None
    if submitted is not None and submitted != options:
        st.caption("The results below are for the options last computed; press Compute for the ones above.")
    return submitted, pressed


def computed(run: RunFiles, options: Options, pressed: bool) -> dict | None:
    """The timelapse of the submitted options: the shared job's result, waited for under a progress
    bar (every session asking the same watches the same job; Compute starts a failed one again).
    None, with the error shown, when it failed."""
    steps = ui.usable_steps(run)
    version = tuple(cache.checkpoint_key(run, s) for s in steps)  # a replaced checkpoint: another job
    job = None if pressed else jobs.prompt_job(jobs.prompt_key(run.path, options[0], steps, *options[1:], version))
    if job is None:
        job = jobs.start_prompt(run.path, options[0], steps, *options[1:], version=version)
    if not job.finished:
        bar = st.progress(0.0, text="Following the prompt through the checkpoints…")
        job.wait(every=0.1, tick=lambda j: bar.progress(
            j.fraction(), text=f"Following the prompt through the checkpoints: {j.done}/{j.total}"))
        bar.empty()
    if job.error is not None:
        st.error(f"Following the prompt failed: {job.error}")
        return None
    return job.result


def continuations_section(result: dict, entries: list[dict], tokenizer: Tokenizer) -> None:
    st.subheader("Continuations at every checkpoint")
    rows = [{"step": e["step"], "loop": e["loop"],
             "greedy": (tokenizer.token_strings(e["greedy_ids"]), ui.ngram_mask(e["greedy_ids"])),
             "sampled": (tokenizer.token_strings(e["sampled_ids"]), ui.ngram_mask(e["sampled_ids"]))}
            for e in entries]
    st.markdown(FP.continuations_table_html(rows, result["seed"]), unsafe_allow_html=True)
    sampling = result["sampling"]
    st.caption(f"{result['new_tokens']} tokens each. Repeated 4-grams are highlighted; ⟳ marks where the loop the "
               "greedy continuation ends in starts, and the loop is underlined (probes.measure.metrics.longest_loop, the "
               "repetition probe's definition: a tail that repeats with one period at least twice). Sampled: "
               f"temperature {sampling['temperature']:g}, top-p {sampling['top_p']:g}, seed {sampling['seed']}.")


def losses_section(result: dict, entries: list[dict]) -> None:
    if len(result["prompt_ids"]) < 2:
        st.info("A one-token prompt has no token after the first to score.")
        return
    st.plotly_chart(FP.token_loss_heatmap([e["step"] for e in entries], result["prompt_tokens"],
                                          [e["token_losses"] for e in entries]), key="prompt_losses")


def lens_section(result: dict, entry: dict) -> None:
    st.plotly_chart(FP.logit_lens_heatmap(entry["logit_lens"], result["prompt_tokens"],
                                          f"Logit lens · step {entry['step']}"), key="prompt_lens")
    st.caption("Each residual stream read through the final LayerNorm (its statistics recomputed) and the "
               "unembedding: the colour is the top token's probability, the text the top token; the hover gives "
               "the rank (0 = top) of the token that actually comes next. final_post is the model's own output.")


def position_picker(tokens: list[str]) -> int:
    """A slider over prompt positions (the last by default), each labelled with its token."""
    positions = list(range(len(tokens)))
    if len(positions) == 1:
        return 0
    if st.session_state.get("prompt_position") not in positions:
        st.session_state["prompt_position"] = positions[-1]
    return st.select_slider("Position (the attribution is to the logit of the token after it)", positions,
                            key="prompt_position", format_func=lambda p: f"{p}:{FP.visible(tokens[p])}")


def dla_section(run: RunFiles, result: dict, entry: dict) -> None:
    position = position_picker(result["prompt_tokens"])
    at = entry["dla"]["positions"][position]
    target = FP.visible(at["target_token"])
    which = "the model's top prediction" if position == len(result["prompt_tokens"]) - 1 else "the prompt's next token"
    left, right = st.columns(2)
    left.plotly_chart(figures.head_heatmap(
        FP.grid(at["heads"]), f"Direct logit attribution to {target!r} after position {position} · step "
        f"{entry['step']}", "logit", zmid=0.0), key="prompt_dla")
    mlp = f"MLPs {sum(at['mlp']):+.3f}, " if at["mlp"] else ""
    left.caption(f"Each head's direct contribution to the logit of {target!r} ({which}), through ln_final's scale "
                 f"as cached for the prompt: logit {at['logit']:.3f} = heads {sum(map(sum, FP.grid(at['heads']))):+.3f}, "
                 f"{mlp}embeddings {at['embed']:+.3f}, biases {at['bias']:+.3f}.")
    with right:
        ui.guarded(lambda: ablation_beside(run, entry["step"]))


def ablation_beside(run: RunFiles, step: int) -> None:
    """The Heads page's zero-ablation heatmap at the same checkpoint, when the probes measured it."""
    results, _ = cache.probe_results(run)
    matrix = R.get(results[step], R.ablation_path(results[step], "zero")) if step in results else None
    if not R.is_matrix(matrix):
        st.info(f"No head-ablation result at step {step}; the Heads page computes the probes.")
        return
    st.plotly_chart(figures.head_heatmap(matrix, f"Loss increase when one head is zero-ablated · step {step}",
                                         "Δ loss"), key="prompt_ablation")
    st.caption("As on the Heads page: the held-out loss increase when one head's output is zeroed.")


def patching_section(result: dict, entries: list[dict], entry: dict) -> None:
    st.subheader("Activation patching: what the answer causally depends on")
    patch = entry["patching"]
    if patch["heads"] is None:
        st.info(f"Step {entry['step']}: {patch['reason']}.")
    else:
        left, right = st.columns(2)
        left.plotly_chart(figures.head_heatmap(FP.grid(patch["heads"]), f"Restored fraction, one head patched · "
                                               f"step {entry['step']}", "restored", zmid=0.0), key="prompt_patch_heads")
        right.plotly_chart(FP.patching_resid_heatmap(patch["resid"], result["prompt_tokens"], "Restored fraction, "
                                                     f"residual stream patched · step {entry['step']}"),
                           key="prompt_patch_resid")
        st.caption(f"Clean answer {FP.visible(patch['clean_answer_token'])!r} against the corrupted prompt's "
                   f"{FP.visible(patch['corrupted_answer_token'])!r}: logit difference {patch['clean_diff']:.3f} "
                   f"clean, {patch['corrupted_diff']:.3f} corrupted. {patch['metric'][:1].upper()}{patch['metric'][1:]}.")
    steps, maps = [e["step"] for e in entries], [e["patching"]["heads"] for e in entries]
    best = FP.best_head(patch["heads"]) if patch["heads"] is not None else None
    best = best or next((FP.best_head(m) for m in reversed(maps) if m is not None), None)
    if best is None:
        st.info("At no checkpoint do the two prompts have different top next tokens: there is nothing to restore.")
        return
    shape = next(m for m in maps if m is not None)
    labels = [f"L{l}H{h}" for l in range(len(shape)) for h in range(len(shape[0]))]
    cols = st.columns([4, 1])
    chosen = cols[0].multiselect("Heads followed over training", labels, default=[f"L{best[0]}H{best[1]}"],
                                 key="prompt_patch_follow")
    log_x = ui.log_x_toggle("prompt_log_x", True, where=cols[1])
    if not chosen:
        st.info("Choose heads to follow their restored fraction over training.")
        return
    series = {label: FP.head_over_steps(steps, maps, tuple(int(x) for x in label[1:].split("H"))) for label in chosen}
    st.plotly_chart(figures.scalar_series(series, f"Restored fraction over training, each head patched alone: "
                                          f"{', '.join(chosen)}", "restored fraction", log_x=log_x),
                    key="prompt_patch_steps")
    st.caption(f"Preselected: the head restoring the most at step {entry['step']}. A checkpoint whose two prompts "
               "agree on the top next token has no point; the answers are each checkpoint's own.")


def render() -> None:
    run = ui.current_run("Prompt")
    if run is None or not ui.needs_checkpoints(run):
        return
    tokenizer = cache.tokenizer(run)
    options, pressed = options_section(run, tokenizer)
    if options is None:
        return
    result = computed(run, options, pressed)
    if result is None:
        return
    for e in result["checkpoints"]:
        if "error" in e:
            st.warning(f"Checkpoint step {e['step']} was skipped: {e['error']}")
    entries = [e for e in result["checkpoints"] if "error" not in e]
    if not entries:
        return
    ui.guarded(lambda: continuations_section(result, entries, tokenizer))
    ui.guarded(lambda: losses_section(result, entries))
    st.subheader("Inside one checkpoint")
    by_step = {e["step"]: e for e in entries}
    step = ui.step_picker(list(by_step), key="prompt_step")
    ui.guarded(lambda: lens_section(result, by_step[step]))
    ui.guarded(lambda: dla_section(run, result, by_step[step]))
    if result["corrupted"] is not None:
        ui.guarded(lambda: patching_section(result, entries, by_step[step]))


ui.guarded(render)
