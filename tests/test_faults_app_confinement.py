"""The app reads only runs inside its runs folder, checked end to end: every page of the
Streamlit app, driven by AppTest, is opened on runs that try to reach a "secret" run outside the
folder: through their name (`..`, absolute paths, a symlinked run), through symlinked top-level
files (samples.jsonl, vocab.json), and through symlinks deep inside (one checkpoint's weights, a
whole checkpoint folder, a probe result file). An audit hook records every file the process opens
meanwhile; none may resolve into the secret run, and no page may show an exception.

Beside it, hypothesis throws random names at the run-name check: each is refused with ValueError
or resolves to a folder directly inside the runs folder, on a fixed seed in `make test` and a fresh
one in `make stress`, either printed; HYPOTHESIS_SEED=N replays it (tests/_fuzzing.py).
(tests/test_app_runfolder.py covers the named cases one by one; this adds the whole-app audit and
the fuzzing.)
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from app.runfolder import run_files, safe_run_dir
from store.checkpoint import checkpoint_dir

import _fuzzing
from app_fixtures import write_fake_run

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
PAGES = ["runs", "heads", "attention", "memorization", "repetition", "induction"]

OPENED: dict = {"on": False, "paths": []}


def audit(event: str, args) -> None:
    if OPENED["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED["paths"].append(os.fsdecode(args[0]))


sys.addaudithook(audit)  # cannot be removed; a dict lookup per event while not recording


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("confine")
    runs = base / "runs"
    secret = write_fake_run(base, "secret", steps=(0, 1, 2))  # same weights as the runs below
    write_fake_run(runs, "good", steps=(0, 1, 2))
    deep = write_fake_run(runs, "deep", steps=(0, 1, 2))
    for name in ("model.safetensors", "meta.json"):  # a checkpoint whose files live outside
        target = checkpoint_dir(deep, 1) / name
        target.unlink()
        os.symlink(checkpoint_dir(secret, 1) / name, target)
    shutil.rmtree(checkpoint_dir(deep, 2))  # a whole checkpoint folder that lives outside
    os.symlink(checkpoint_dir(secret, 2), checkpoint_dir(deep, 2))
    (deep / "probes" / "step_000000.json").unlink()  # a probe result that lives outside
    os.symlink(secret / "probes" / "step_000000.json", deep / "probes" / "step_000000.json")
    os.symlink(secret / "probes" / "step_000002.json", deep / "probes" / "step_000007.json")  # and one more
    top = Path(shutil.copytree(runs / "good", runs / "top"))
    for name in ("samples.jsonl", "vocab.json"):
        (top / name).unlink()
        os.symlink(secret / name, top / name)
    os.symlink(secret, runs / "escape")
    return {"base": base, "runs": runs, "secret": secret.resolve()}


def leaks(world: dict) -> list[str]:
    secret = str(world["secret"]) + os.sep
    return sorted({p for p in OPENED["paths"] if os.path.realpath(p).startswith(secret)})


def drive_every_page(world: dict, monkeypatch, run: str) -> list[str]:
    """Open every page with ?run=RUN, move the checkpoint sliders to each step offered, and ablate
    a head; return what the pages said (errors and warnings)."""
    monkeypatch.setenv("WORKBENCH_RUNS", str(world["runs"]))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run
    said = []
    OPENED["paths"], OPENED["on"] = [], True
    try:
        at.run()
        for page in PAGES:
            at.switch_page(f"views/{page}.py").run()
            assert not at.exception, f"{run} {page}: {[e.value for e in at.exception]}"
            for key in ("step", "pattern_step"):
                sliders = [s for s in at.select_slider if s.key == key]
                for slider in sliders:
                    for step in slider.options:
                        slider.set_value(type(slider.value)(step)).run()
                        assert not at.exception, f"{run} {page} {key}={step}: {[e.value for e in at.exception]}"
            if page == "heads" and [m for m in at.multiselect if m.key == "ablate_heads"]:
                at.multiselect(key="ablate_heads").set_value(["L0H0"]).run()
                assert not at.exception, [e.value for e in at.exception]
            for button in [b for b in at.button if str(b.key).startswith("compute-")]:
                button.click().run()  # the app asks the probes runner to fill in missing results
                assert not at.exception, [e.value for e in at.exception]
            said += [str(e.value) for e in at.error] + [str(w.value) for w in at.warning]
    finally:
        OPENED["on"] = False
    return said


def test_the_deep_run_is_shown_without_its_outside_checkpoints(world):
    run = run_files(world["runs"], "deep")
    assert run.checkpoint_steps == [0]  # step 1's files and step 2's folder live outside
    assert sorted(run.probe_files) == [1, 2]  # step 0's and step 7's results live outside


@pytest.mark.parametrize("run", ["deep", "top", "escape", "../secret", str(Path("/")), "good/../../secret"])
def test_no_page_reads_a_file_outside_the_runs_folder(world, monkeypatch, run):
    drive_every_page(world, monkeypatch, run)
    assert not leaks(world), f"?run={run}: the app opened {leaks(world)}"


def test_the_audit_sees_reads_of_the_secret_when_they_happen(world, monkeypatch):
    """The audit itself works: the same pages on the secret run, put inside the folder, do open its
    files (so an empty list above means the app refused, not that the hook was blind)."""
    inside = Path(shutil.copytree(world["secret"], world["runs"] / "copy"))
    world_copy = {**world, "secret": inside.resolve()}
    try:
        drive_every_page(world_copy, monkeypatch, "copy")
        opened = leaks(world_copy)
        assert any(p.endswith("model.safetensors") for p in opened) and any(p.endswith("run.json") for p in opened)
    finally:
        shutil.rmtree(inside)


names = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(["..", ".", "/", "\\", "good", "escape", "deep", "~", "\x00", "%2e", "runs", " ",
                              "secret", "C:", "//", "./", "top"]), max_size=5).map("".join),
)


@pytest.mark.parametrize("n", [pytest.param(200, id="fast"), pytest.param(5000, id="stress", marks=pytest.mark.stress)])
def test_random_run_names_are_refused_or_stay_inside(world, n):
    root = world["runs"]

    @_fuzzing.fuzz(n, stress=n == 5000, deadline_ms=2000)
    @given(name=names)
    def check(name):
        try:
            path = safe_run_dir(root, name)
        except ValueError as e:
            assert str(e)
            return
        assert path.parent == root and path.resolve().parent == root.resolve(), (name, path)
        try:
            run_files(root, name)
        except ValueError as e:  # refused for a file inside it that leads outside
            assert "refused" in str(e)

    check()
