"""New run: a form that starts training and its probes in the background (app/launch.py), with the
command line's own checks (train.cli.refusal: the same sentences, the memory estimate included)
before anything starts. Runs are written under the runs folder only; an uploaded text is kept in
<runs>/.uploads; a text file from disk is offered only from the folder named at start
($WORKBENCH_DATA), never from a path typed into the form."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from app import launch, ui
from app.runfolder import inside, run_dir_for, runs_root
from model.config import PRESETS
from model.runio import write_bytes_atomic
from train.cli import refusal

DATA_ENV = "WORKBENCH_DATA"
UPLOADS = ".uploads"
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


def train_argv(v: dict) -> list[str]:
    """The training options the form's values stand for (sizes left at 0 keep the preset's)."""
    argv = ["--preset", v["preset"], "--data", v["data"], "--steps", str(v["steps"]), "--lr", f"{v['lr']:g}"]
    for flag in ("n_layer", "n_head", "n_embd", "n_ctx"):
        if v.get(flag):
            argv += [f"--{flag.replace('_', '-')}", str(v[flag])]
    if v.get("repeat_fraction"):
        argv += ["--repeat-fraction", f"{v['repeat_fraction']:g}"]
    if v.get("ckpt_window", "").strip():
        argv += ["--ckpt-window", v["ckpt_window"].strip()]
    return argv


def chosen_data(source: str, root: Path, name: str, picked: str | None, upload) -> str | None:
    """The --data value of the form's choice; an upload is written to <runs>/.uploads/NAME.txt."""
    if source == SOURCES[0]:
        return "stories"
    if source == SOURCES[1]:
        folder = data_folder()
        return f"text:{folder / picked}" if folder is not None and picked else None
    if upload is None:
        return None
    path = root / UPLOADS / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, upload.getvalue())
    return f"text:{path}"


def form() -> None:
    root = runs_root()
    folder = data_folder()
    sources = [s for s in SOURCES if s != SOURCES[1] or folder is not None]
    with st.form("new_run"):
        name = st.text_input("Run name (a folder in the runs folder)", key="new_name")
        c = st.columns(5)
        preset = c[0].selectbox("Preset", list(PRESETS), key="new_preset")
        sizes = {k: c[i + 1].number_input(label, min_value=0, value=0, step=1, key=f"new_{k}",
                                          help="0 keeps the preset's value")
                 for i, (k, label) in enumerate((("n_layer", "Layers"), ("n_head", "Heads"), ("n_embd", "Width"),
                                                 ("n_ctx", "Context")))}
        source = st.radio("Data", sources, horizontal=True, key="new_source")
        picked = upload = None
        if folder is not None:
            picked = st.selectbox(f"Text file in {folder}", text_files(folder) or [None], key="new_file")
        upload = st.file_uploader("Text file to upload (one document per paragraph)", type=["txt"], key="new_upload")
        c = st.columns(4)
        steps = c[0].number_input("Steps", min_value=1, value=800, step=100, key="new_steps")
        lr = c[1].number_input("Peak learning rate", min_value=0.0, value=2e-3, step=1e-4, format="%g", key="new_lr")
        repeats = c[2].number_input("Planted repeats (share of each batch)", min_value=0.0, max_value=1.0, value=0.0,
                                    step=0.1, key="new_repeats")
        window = c[3].text_input("Extra checkpoints START:END:EVERY", key="new_window",
                                 help="e.g. 400:1200:25 for dense checkpoints where something is expected")
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        st.session_state[MESSAGE] = submit(root, name, source, picked, upload, preset, sizes, steps, lr, repeats, window)
    kind, text = st.session_state.get(MESSAGE) or (None, None)
    if kind == "error":
        st.error(text)
    elif kind == "success":
        st.success(text)


def submit(root: Path, name: str, source: str, picked, upload, preset: str, sizes: dict, steps, lr, repeats,
           window: str) -> tuple[str, str]:
    """("error", the sentence) or ("success", what was started): the form's outcome, kept in the
    session so that a redraw does not lose it."""
    try:
        run_dir = run_dir_for(root, name.strip())
    except ValueError as e:
        return "error", ui.one_sentence(e)
    data = chosen_data(source, root, run_dir.name, picked, upload)
    if data is None:
        return "error", "Choose a text file for the run's data."
    argv = train_argv({"preset": preset, "data": data, "steps": int(steps), "lr": float(lr),
                       "repeat_fraction": float(repeats), "ckpt_window": window, **{k: int(v) for k, v in sizes.items()}})
    problem = refusal(argv + ["--out", str(run_dir)])
    if problem is None:
        try:
            pid = launch.start_background(run_dir, argv)
        except ValueError as e:
            problem = str(e)
    if problem is not None:
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
