"""New run: a form that starts training and its probes in the background (app/launch.py), with the
command line's own checks (train.cli.refusal: the same sentences, the memory estimate included)
before anything starts. It offers what the command line offers for a run: the preset's sizes shown
and editable (switching the preset shows its own), attention-only blocks, the stories' burstiness,
episodes and size, a text's document cap, a held-out file (--val-data), and the schedule, so that
`make induction-text`'s recipe can be started from it. Runs are written under the runs folder only;
an uploaded text is kept in <runs>/.uploads; a text file from disk is offered only from the folder
named at start ($WORKBENCH_DATA), never from a path typed into the form."""
from __future__ import annotations


import os
from pathlib import Path

import streamlit as st

from app import launch, ui
from app.runfolder import inside, keep_upload, run_dir_for, runs_root
from model.config import PRESETS
from train.args import KEEP_STATES, TrainArgs
from train.cli import refusal

DATA_ENV = "WORKBENCH_DATA"
MESSAGE = "new_run_message"
SOURCES = ("built-in stories", "a text file from the data folder", "an uploaded text file")


def data_folder() -> Path | None:
    folder = os.environ.get(DATA_ENV)
    return Path(folder).resolve() if folder else None


def text_files(folder: Path) -> list[str]:
    """The .txt files directly inside `folder` (no links leading out of it)."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.suffix == ".txt" and p.is_file() and inside(folder, p))
    except OSError:
        return []


SIZES = (("n_layer", "Layers"), ("n_head", "Heads"), ("n_embd", "Width"), ("n_ctx", "Context"))
DEFAULTS = TrainArgs()  # what `python -m train` takes for an option not given: the form starts there
NO_FILE = "(none: a seeded share of the training text)"


def preset_sizes(preset: str) -> dict[str, int]:
    """The model sizes a preset stands for (layers, heads, width, context): what the form shows."""
    return {k: int(PRESETS[preset][k]) for k, _ in SIZES}


def train_argv(v: dict) -> list[str]:
    """The training options the form's values stand for: every value the form shows, so the run
    records what the user saw (the preset's sizes included); the stories-only options with stories
    data, --max-docs with a text corpus, --val-data when a held-out file is chosen. Numbers are
    written in full (str, not a rounded format), so the command gets exactly what was typed."""
    shown = ["steps", "lr", *(k for k, _ in SIZES), "batch_size", "warmup", "min_lr_ratio", "ckpt_every",
             "keep_states"]
    shown += ["burstiness", "story_episodes", "corpus_mb"] if v["data"] == "stories" else ["max_docs"]
    argv = ["--preset", v["preset"], "--data", v["data"]]
    for name in shown:
        if v.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(v[name])]
    if v.get("attn_only"):
        argv.append("--attn-only")
    if v.get("val_data"):
        argv += ["--val-data", v["val_data"]]
    if v.get("repeat_fraction"):
        argv += ["--repeat-fraction", str(v["repeat_fraction"])]
    if v.get("ckpt_window", "").strip():
        argv += ["--ckpt-window", v["ckpt_window"].strip()]
    return argv


def chosen_data(source: str, root: Path, name: str, picked: str | None, upload, created: list[Path]) -> str | None:
    """The --data value of the form's choice; an upload is kept in <runs>/.uploads (keep_upload)."""
    if source == SOURCES[0]:
        return "stories"
    if source == SOURCES[1]:
        folder = data_folder()
        return f"text:{folder / picked}" if folder is not None and picked else None
    return None if upload is None else keep_upload(root, name, ".txt", upload.getvalue(), created)


def held_out_data(root: Path, name: str, picked: str | None, upload, created: list[Path]) -> str:
    """The --val-data value of the form's held-out choice ("" for none): a file of the data folder,
    or an upload kept in <runs>/.uploads (keep_upload)."""
    if upload is not None:
        return keep_upload(root, name, ".val.txt", upload.getvalue(), created)
    folder = data_folder()
    return f"text:{folder / picked}" if folder is not None and picked and picked != NO_FILE else ""


def apply_preset() -> None:
    """Switching the preset shows its sizes, which the user edits from there."""
    for k, v in preset_sizes(st.session_state["new_preset"]).items():
        st.session_state[f"new_{k}"] = v


def model_fields(preset: str) -> dict:
    """Layers, heads, width and context (the preset's until edited) and attention-only."""
    for k, v in preset_sizes(preset).items():
        if f"new_{k}" not in st.session_state:
            st.session_state[f"new_{k}"] = v
    c = st.columns(5)
    v = {k: c[i].number_input(label, min_value=0, step=1, key=f"new_{k}") for i, (k, label) in enumerate(SIZES)}
    v["attn_only"] = c[4].checkbox("Attention only (no MLP)", key="new_attn_only",
                                   help="attention-only blocks, as in Olsson et al. 2022 (--attn-only)")
    return v


def data_fields(source: str, folder: Path | None) -> dict:
    """The corpus: the file to train on, the stories' knobs or a text's document cap, the held-out file."""
    v: dict = {"picked": None, "upload": None, "val_picked": None}
    if source == SOURCES[1]:
        v["picked"] = st.selectbox(f"Text file in {folder}", text_files(folder) or [None], key="new_file")
    elif source == SOURCES[2]:
        v["upload"] = st.file_uploader("Text file to upload (one document per paragraph)", type=["txt"],
                                       key="new_upload")
    c = st.columns(3)
    if source == SOURCES[0]:
        v["burstiness"] = c[0].number_input("Burstiness", min_value=0.0, value=DEFAULTS.burstiness, step=0.1,
                                            format="%g", key="new_burstiness",
                                            help="chance in [0, 1] that each character and a story's object gets "
                                                 "a made-up name of several tokens, repeated within the story")
        v["story_episodes"] = c[1].number_input("Story episodes", min_value=0, value=DEFAULTS.story_episodes, step=1,
                                                key="new_episodes", help="plots per story, same characters")
        v["corpus_mb"] = c[2].number_input("Corpus (MB)", min_value=0.0, value=DEFAULTS.corpus_mb, step=0.5,
                                           format="%g", key="new_corpus_mb")
    else:
        v["max_docs"] = c[0].number_input("Documents (0 = all)", min_value=0, value=DEFAULTS.max_docs, step=1,
                                          key="new_max_docs", help="train on the text's first N documents")
    if folder is not None:
        v["val_picked"] = st.selectbox(f"Held-out text in {folder}", [NO_FILE, *text_files(folder)], key="new_val_file")
    v["val_upload"] = st.file_uploader("Held-out text to upload (instead)", type=["txt"], key="new_val_upload")
    return v


def schedule_fields() -> dict:
    """Steps, learning rate, planted repeats and checkpoints; the rest of the schedule folded away."""
    c = st.columns(4)
    v = {"steps": c[0].number_input("Steps", min_value=1, value=DEFAULTS.steps, step=100, key="new_steps"),
         "lr": c[1].number_input("Peak learning rate", min_value=0.0, value=DEFAULTS.lr, step=1e-4, format="%g",
                                 key="new_lr"),
         "repeat_fraction": c[2].number_input("Planted repeats (share of each batch)", min_value=0.0, max_value=1.0,
                                              value=0.0, step=0.1, key="new_repeats"),
         "ckpt_window": c[3].text_input("Extra checkpoints START:END:EVERY", key="new_window",
                                        help="e.g. 400:1200:25 for dense checkpoints where something is expected")}
    with st.expander("Batch, warm-up, decay and checkpoints"):
        c = st.columns(5)
        v["batch_size"] = c[0].number_input("Batch size", min_value=0, value=DEFAULTS.batch_size, step=1,
                                            key="new_batch")
        v["warmup"] = c[1].number_input("Warm-up steps", min_value=0, value=DEFAULTS.warmup, step=10, key="new_warmup")
        v["min_lr_ratio"] = c[2].number_input("Final LR (share of peak)", min_value=0.0, value=DEFAULTS.min_lr_ratio,
                                              step=0.05, format="%g", key="new_min_lr")
        v["ckpt_every"] = c[3].number_input("Checkpoint every N steps", min_value=0, value=DEFAULTS.ckpt_every,
                                            step=50, key="new_ckpt_every")
        v["keep_states"] = c[4].selectbox("Training states kept", list(KEEP_STATES),
                                          index=list(KEEP_STATES).index(DEFAULTS.keep_states), key="new_keep")
    return v


def form() -> None:
    root = runs_root()
    folder = data_folder()
    sources = [s for s in SOURCES if s != SOURCES[1] or folder is not None]
    c = st.columns([1, 3])
    preset = c[0].selectbox("Preset", list(PRESETS), key="new_preset", on_change=apply_preset)
    source = c[1].radio("Data", sources, horizontal=True, key="new_source")
    with st.form("new_run"):
        name = st.text_input("Run name (a folder in the runs folder)", key="new_name")
        values = {"preset": preset, **model_fields(preset), **data_fields(source, folder), **schedule_fields()}
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        st.session_state[MESSAGE] = submit(root, name, source, values)
    kind, text = st.session_state.get(MESSAGE) or (None, None)
    if kind == "error":
        st.error(text)
    elif kind == "success":
        st.success(text)


def submit(root: Path, name: str, source: str, values: dict) -> tuple[str, str]:
    """("error", the sentence) or ("success", what was started): the form's outcome, kept in the
    session so that a redraw does not lose it."""
    try:
        run_dir = run_dir_for(root, name.strip())
    except ValueError as e:
        return "error", ui.one_sentence(e)
    created: list[Path] = []  # uploads this submission wrote: removed again when it is refused
    data = chosen_data(source, root, run_dir.name, values.pop("picked"), values.pop("upload"), created)
    if data is None:
        return "error", "Choose a text file for the run's data."
    values["val_data"] = held_out_data(root, run_dir.name, values.pop("val_picked"), values.pop("val_upload"), created)
    argv = train_argv({**values, "data": data})
    problem = refusal(argv + ["--out", str(run_dir)])
    if problem is None:
        try:
            pid = launch.start_background(run_dir, argv)
        except ValueError as e:
            problem = str(e)
    if problem is not None:
        for path in created:
            path.unlink(missing_ok=True)
        return "error", f"error: {problem}"
    st.session_state[ui.PENDING_RUN_KEY] = run_dir.name  # the sidebar picks it once its run.json exists
    return "success", (f"Run {run_dir.name} is training in the background (process {pid}); its probes follow it. "
                       f"The Runs page shows it live; the command: python -m train {' '.join(argv)} --out {run_dir}")


def render() -> None:
    st.title("New run")
    st.caption("Starts training and the probes in the background: they go on when this tab closes, and each page "
               "follows the run as it learns. The same checks as `python -m train` are made first.")
    form()


ui.guarded(render)
