"""What every page shares: the guard that turns any exception into one sentence, the run picker,
and the states that are not errors (no runs yet, still training, probes missing, a corrupt
checkpoint), each with what the user can do about it.
"""
from __future__ import annotations

import logging
import traceback
from typing import Callable, Sequence

import streamlit as st

from store.runio import RunFileError
from model.tokenizer import gpt2_encoding

from . import cache, jobs, launch, live
from probes.measure.metrics import repeated_ngram_mask

from .plot_data import highlight_html
from .runfolder import (DEMO_COMMAND, DEMO_TRAIN_COMMAND, RunFiles, run_files, run_names, runs_root,
                        safe_run_dir)

log = logging.getLogger("workbench.app")
RUN_KEY = "run"
PENDING_RUN_KEY = "_pending_run"  # a run started from the New-run form, chosen once it is listed


def one_sentence(e: BaseException) -> str:
    """A failure as one sentence for the page (the traceback goes to the server log only)."""
    text = str(e).strip().splitlines()[0].strip() if str(e).strip() else ""
    if isinstance(e, (RunFileError, ValueError)) and text:
        return text if text.endswith((".", "!", "?")) else text + "."
    detail = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"This part of the page could not be drawn ({detail})."


def guarded(render: Callable[[], None]) -> None:
    """Run a page body; any exception becomes an st.error sentence, never a traceback.
    (st.stop and st.rerun raise BaseException subclasses, which pass through untouched.)"""
    try:
        render()
    except Exception as e:  # noqa: BLE001 - the whole point is to catch everything
        log.error("page failed: %s", "".join(traceback.format_exception(e)))
        st.error(one_sentence(e))


# -- run choice -------------------------------------------------------------------------------
def sidebar_run_picker(follow: bool = True) -> None:
    """The run selector in the sidebar, kept across pages (it lives in the entry script).
    A ?run=NAME query parameter preselects a run, after the same safety checks as any name.
    With `follow`, a run that is training or being probed is followed (see `follow`); the New-run
    page does not follow, so a redraw never interrupts a form being filled in."""
    root = runs_root()
    names = run_names(root)
    st.sidebar.caption(f"Runs folder: `{root}`")
    if not names:
        st.session_state.pop(RUN_KEY, None)
        return
    wanted = st.query_params.get("run")
    if wanted and "_query_run_done" not in st.session_state:
        st.session_state["_query_run_done"] = True
        try:
            safe_run_dir(root, wanted)
            if wanted in names:
                st.session_state[RUN_KEY] = wanted
            else:
                st.sidebar.error(f"There is no run named {wanted!r} with a run.json in {root}.")
        except ValueError as e:
            st.session_state["_refused"] = str(e)
    if st.session_state.get(PENDING_RUN_KEY) in names:
        st.session_state[RUN_KEY] = st.session_state.pop(PENDING_RUN_KEY)
    if st.session_state.get(RUN_KEY) not in names:
        st.session_state[RUN_KEY] = "demo" if "demo" in names else names[-1]
    st.sidebar.selectbox("Run", names, key=RUN_KEY)
    if st.session_state.get("_refused"):
        st.sidebar.error(st.session_state["_refused"])
    run_dir = safe_run_dir(root, st.session_state[RUN_KEY])
    if live.progress(run_dir).live:
        with st.sidebar:
            (follow_run if follow else lambda d: st.caption(live.caption(live.progress(d))))(str(run_dir))


LIVE_EVERY = 5.0  # seconds between looks at a run that is training or being probed


@st.fragment(run_every=LIVE_EVERY)
def follow_run(run_dir: str) -> None:
    """While the chosen run trains or its probes follow it: where it stands, in the sidebar of every
    page, and the whole page redrawn whenever the run folder changes (a logged step, a checkpoint,
    a probe result), so curves grow and emergence marks move without a click."""
    p = live.progress(run_dir)
    st.caption(live.caption(p))
    seen = (run_dir, live.fingerprint(run_dir))
    previous = st.session_state.get("_live_seen")
    st.session_state["_live_seen"] = seen
    if previous is not None and previous[0] == run_dir and previous != seen:
        st.rerun()


def current_run(title: str) -> RunFiles | None:
    """Title the page and return the chosen run, or draw the no-runs state and return None."""
    st.title(title)
    root = runs_root()
    name = st.session_state.get(RUN_KEY)
    if not name:
        empty_state(root)
        return None
    run = run_files(root, name)
    run_header(run)
    return run


def empty_state(root) -> None:
    st.info(f"No runs yet in `{root}`. Train the demo run (about 5 minutes on a laptop CPU) "
            "and compute its probes with one command, then reload this page:")
    st.code(DEMO_COMMAND, language="bash")
    st.caption("or step by step:")
    st.code(f"{DEMO_TRAIN_COMMAND}\npython -m probes runs/demo", language="bash")


def run_header(run: RunFiles) -> None:
    """Status line; a run still training gets a refresh button, a failed one its message."""
    n = len(run.checkpoint_steps)
    st.caption(f"Run **{run.name}** · status **{run.status}** · {n} checkpoint{'s' * (n != 1)} · "
               f"{len(run.probe_files)} with probe results")
    background = launch.supervisor_of(run.path.resolve())
    if run.training:
        cols = st.columns([4, 1])
        cols[0].info("This run is still training: the pages show the checkpoints written so far and follow it, "
                     f"redrawn within {LIVE_EVERY:g} s of each new step, checkpoint or probe result.")
        cols[1].button("Refresh", key="refresh", help="Re-read the run folder")
    elif run.status == "stopped":
        st.info(f"Training of this run was stopped by the user at step {run.info.get('stopped_at_step')}; "
                "`python -m train --out RUN --resume` continues it. The checkpoints it wrote are shown.")
    elif run.status == "failed":
        st.warning(f"Training of this run failed: {run.info.get('error') or run.info.get('message') or 'see its log'}. "
                   "The checkpoints it wrote are shown.")
    if background is not None:
        stop_button(run)
    for problem in run.problems:
        st.warning(problem)
    for step, problem in cache.corrupt_checkpoints(run, run.missing_probes).items():
        st.warning(f"Checkpoint step {step} is corrupt and was skipped: {problem}")


def stop_button(run: RunFiles) -> None:
    """Stop the background training and probes of a run started by `make demo` or the New-run form
    (the run is marked stopped at its last saved state; starting it again continues it)."""
    if st.button("Stop training and probes", key="stop_run", help="Training stops at its last saved state; "
                 "results written so far stay, and starting the run again continues it."):
        if launch.stop_background(run.path):
            st.info("Stopping: training saves its state and the probes finish the checkpoint they are on.")


def needs_checkpoints(run: RunFiles) -> bool:
    if run.checkpoint_steps:
        return True
    if run.training:
        st.info("No checkpoint has been written yet; the first appears at step 0 of training. Refresh in a moment.")
    else:
        st.info(f"Run {run.name} has no checkpoints, so there is nothing to measure. "
                f"Train one with `{DEMO_TRAIN_COMMAND}`.")
    return False


def probe_results(run: RunFiles, key: str) -> dict[int, dict] | None:
    """The run's probe results, after naming corrupt checkpoints and offering to compute missing
    results; None (with a message already shown) when there is nothing to plot yet."""
    if not needs_checkpoints(run):
        return None
    results, problems = cache.probe_results(run)
    for p in problems:
        st.warning(p)
    corrupt = cache.corrupt_checkpoints(run, run.missing_probes)  # named by run_header
    todo = [s for s in run.missing_probes if s not in corrupt]
    if todo:
        offer_probes(run, todo, key)
    if not results:
        st.info("There are no probe results to show yet." + (" Compute them above." if todo else ""))
        return None
    return results


def finding(caption: str | None, rule: str | None, how: str) -> None:
    """A detector's finding under its chart: the caption (when there is one), and the rule it
    follows in words inside an expander titled `how` (when the summary states it)."""
    if caption:
        st.caption(caption)
    if rule:
        with st.expander(how):
            st.caption(rule)


def results_page(title: str, key: str, body: Callable[[RunFiles, dict[int, dict]], None]) -> None:
    """A page over the picked run's probe results: the run (current_run), its results (probe_results:
    each says why when there are none), then `body(run, results)`; an error is shown on the page
    rather than as a traceback. Every results page is built this way."""
    def render() -> None:
        run = current_run(title)
        if run is None:
            return
        results = probe_results(run, key)
        if results is not None:
            body(run, results)
    guarded(render)


def offer_probes(run: RunFiles, steps: Sequence[int], key: str) -> None:
    """Offer to run the probes on checkpoints that lack results. The computation runs once per run
    whichever session asks (app/jobs.py); every session then watches its progress bar, which a
    fragment refreshes each second until the page reloads with the new results."""
    job = jobs.running(run.path)
    if job is None and launch.supervisor_of(run.path.resolve()) is not None:
        st.info(f"{len(steps)} checkpoint{'s' * (len(steps) != 1)} of this run still wait for probe results: the "
                "probes follow the run in the background and this page redraws as each one lands.")
        return
    if job is None:
        shown = ", ".join(map(str, steps[:12])) + (" …" if len(steps) > 12 else "")
        st.info(f"{len(steps)} checkpoint{'s' * (len(steps) != 1)} of this run ha{'ve' if len(steps) != 1 else 's'} "
                f"no probe results yet (steps {shown}).")
        if not st.button("Compute probe results", key=f"compute-{key}", type="primary"):
            return
        job = jobs.start_probes(run.path, steps)
    probe_progress(job)


def probe_progress_text(job: jobs.ProbeJob) -> str:
    where = f" (step {job.step})" if job.step is not None else ""
    return f"Computing probes for this run: {job.done}/{job.total} checkpoints{where}"


@st.fragment(run_every=1.0)
def probe_progress(job: jobs.ProbeJob) -> None:
    if job.finished:
        if job.error:
            st.error(f"Computing probe results failed: {job.error}")
            return
        st.rerun()  # the whole page, which now finds the new results
    st.info("Probe results of this run are being computed; this page updates when they are ready "
            "(every session watching this run sees the same computation).")
    st.progress(job.fraction(), text=probe_progress_text(job))


def step_picker(steps: Sequence[int], key: str = "step", label: str = "Checkpoint step") -> int:
    """A slider over checkpoint steps (the last one by default)."""
    steps = list(steps)
    if len(steps) == 1:
        st.caption(f"{label}: {steps[0]} (the only one)")
        return steps[0]
    if st.session_state.get(key) not in steps:
        st.session_state[key] = steps[-1]
    return st.select_slider(label, options=steps, key=key)


def log_x_toggle(key: str = "log_x", value: bool = True, where=st) -> bool:
    """The "Log-scale steps" checkbox every page with a step axis has (in `where`: a column or
    st). Step 0 cannot sit on a log axis: the figures draw it at 0.5 and say so."""
    return where.checkbox("Log-scale steps", value=value, key=key)


def ngram_mask(tokens: Sequence[int], n: int = 4) -> list[bool]:
    """The probes' repeated-n-gram mask (the one seq-rep-n counts), so highlight and metric agree."""
    return list(map(bool, repeated_ngram_mask(list(tokens), n)))


def text_pieces(text: str) -> tuple[list[int], list[str]]:
    """GPT-2 BPE ids of `text` and the exact substring each one covers. Display goes through the
    full GPT-2 encoding, not the run's compact vocabulary, so no character is lost to <|unk|>."""
    enc = gpt2_encoding()
    ids = enc.encode(text, allowed_special="all")
    decoded, offsets = enc.decode_with_offsets(ids)
    bounds = list(offsets) + [len(decoded)]
    return ids, [decoded[bounds[i]:bounds[i + 1]] for i in range(len(ids))]


def highlighted_text(text: str, n: int = 4, prefix: str = "") -> None:
    """Show model output with its repeated n-grams highlighted (`prefix` is trusted HTML)."""
    ids, pieces = text_pieces(text)
    body = highlight_html(pieces, ngram_mask(ids, n))
    st.markdown(f'<div style="font-family:monospace;white-space:pre-wrap">{prefix}{body}</div>',
                unsafe_allow_html=True)


def usable_steps(run: RunFiles) -> list[int]:
    """Checkpoint steps whose model can be loaded: known-corrupt ones (checked among those
    without probe results; the others were loaded by the probes already) are left out."""
    corrupt = cache.corrupt_checkpoints(run, run.missing_probes)
    return [s for s in run.checkpoint_steps if s not in corrupt]
