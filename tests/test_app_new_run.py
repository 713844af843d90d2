"""The New-run form driven by AppTest: it shows the preset's sizes and follows a change of preset,
offers the natural-text options (burstiness, story episodes, corpus size, attention-only, a
held-out file, a text's document cap), refuses a bad value with the command line's own sentence,
and launches what `make induction-text` trains (the Makefile's INDUCTION_TEXT_TRAIN, resolved to
the same training arguments). The launch itself is replaced by a recorder: nothing trains here."""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from app import launch
from model.config import PRESETS
from test_app import open_app
from train import main as train_main
from train.args import resolve
from train.options import requested

REPO = Path(__file__).resolve().parents[1]
SIZES = {"new_n_layer": "n_layer", "new_n_head": "n_head", "new_n_embd": "n_embd", "new_n_ctx": "n_ctx"}


@pytest.fixture
def launched(monkeypatch) -> list[tuple[Path, list[str]]]:
    """Every (run folder, training options) the form hands to app.launch.start_background."""
    calls: list[tuple[Path, list[str]]] = []

    def record(run_dir, argv):
        calls.append((Path(run_dir), list(argv)))
        return 4242
    monkeypatch.setattr(launch, "start_background", record)
    return calls


def new_run_page(root: Path, monkeypatch, data: Path | None = None):
    root.mkdir(parents=True, exist_ok=True)
    if data is not None:
        monkeypatch.setenv("WORKBENCH_DATA", str(data))
    else:
        monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    at = open_app(root, monkeypatch, "new_run")
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_sizes(at) -> dict[str, int]:
    return {field: at.number_input(key=key).value for key, field in SIZES.items()}


def makefile_recipe() -> list[str]:
    """`make induction-text`'s training options, read from the Makefile (its steps variable filled in)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    steps = re.search(r"^INDUCTION_TEXT_STEPS \?= (\d+)", text, re.M).group(1)
    recipe = re.search(r"^INDUCTION_TEXT_TRAIN := (.*)$", text, re.M).group(1)
    return shlex.split(recipe.replace("$(INDUCTION_TEXT_STEPS)", steps))


def test_the_form_shows_the_presets_sizes_and_follows_a_change_of_preset(tmp_path, monkeypatch):
    at = new_run_page(tmp_path / "runs", monkeypatch)
    assert at.selectbox(key="new_preset").value == "nano"
    assert shown_sizes(at) == {k: PRESETS["nano"][k] for k in SIZES.values()} == dict(
        n_layer=4, n_head=4, n_embd=128, n_ctx=128)
    at.number_input(key="new_n_layer").set_value(2).run()
    at.selectbox(key="new_preset").set_value("tiny").run()
    assert shown_sizes(at) == {k: PRESETS["tiny"][k] for k in SIZES.values()}
    # the stories' knobs are offered with stories data only; a text's document cap with a text
    assert {"new_burstiness", "new_episodes", "new_corpus_mb"} <= {w.key for w in at.number_input}
    at.radio(key="new_source").set_value("an uploaded text file").run()
    keys = {w.key for w in at.number_input}
    assert "new_max_docs" in keys and "new_burstiness" not in keys and "new_episodes" not in keys
    assert at.checkbox(key="new_attn_only").value is False


def test_a_bad_value_is_refused_with_the_command_lines_sentence(tmp_path, monkeypatch, launched):
    root = tmp_path / "runs"
    at = new_run_page(root, monkeypatch)
    at.text_input(key="new_name").set_value("bursty")
    at.number_input(key="new_burstiness").set_value(1.5)
    at.button[0].click().run()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train_main(["--preset", "nano", "--data", "stories", "--burstiness", "1.5", "--out", str(root / "bursty")])
    assert code == 2 and [e.value for e in at.error] == [err.getvalue().strip()]
    assert "--burstiness must lie in [0, 1], got 1.5." in at.error[0].value
    at.number_input(key="new_burstiness").set_value(0.5)
    at.number_input(key="new_episodes").set_value(0)
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["error: --story-episodes must be an integer from 1 to 50, got 0."]
    assert launched == [] and not (root / "bursty").exists()


def test_make_induction_text_is_startable_from_the_form(tmp_path, monkeypatch, launched):
    root = tmp_path / "runs"
    at = new_run_page(root, monkeypatch)
    recipe = makefile_recipe()
    opts = dict(zip(recipe[::2], recipe[1::2]))
    assert opts["--preset"] == "nano" and opts["--data"] == "stories"  # the form's defaults
    at.text_input(key="new_name").set_value("induction-text")
    for key, flag, kind in (("new_n_layer", "--n-layer", int), ("new_n_ctx", "--n-ctx", int),
                            ("new_burstiness", "--burstiness", float), ("new_episodes", "--story-episodes", int),
                            ("new_corpus_mb", "--corpus-mb", float), ("new_batch", "--batch-size", int),
                            ("new_lr", "--lr", float), ("new_warmup", "--warmup", int),
                            ("new_min_lr", "--min-lr-ratio", float), ("new_steps", "--steps", int),
                            ("new_ckpt_every", "--ckpt-every", int)):
        at.number_input(key=key).set_value(kind(opts.pop(flag)))
    at.text_input(key="new_window").set_value(opts.pop("--ckpt-window"))
    at.selectbox(key="new_keep").set_value(opts.pop("--keep-states"))
    assert set(opts) == {"--preset", "--data"}  # every option of the recipe has a field
    at.button[0].click().run()
    assert not at.error, at.error[0].value
    ((run_dir, argv),) = launched
    assert run_dir.name == "induction-text" and run_dir.parent.resolve() == root.resolve()
    out = ["--out", str(root / "induction-text")]
    form, make = requested(argv + out)[0], requested(recipe + out)[0]
    assert form["n_head"] == 4 and form["n_embd"] == 128  # the preset's sizes, as shown, recorded explicitly
    ours, theirs = resolve(form, None, out[1]), resolve(make, None, out[1])
    assert ours.model_config(1000) == theirs.model_config(1000)  # the same model, sizes given or the preset's
    sizes = set(SIZES.values())
    assert {k: v for k, v in asdict(ours).items() if k not in sizes} == \
        {k: v for k, v in asdict(theirs).items() if k not in sizes}
    assert "is training in the background (process 4242)" in at.success[0].value


def test_a_held_out_file_and_a_document_cap_reach_the_command(tmp_path, monkeypatch, launched):
    data = tmp_path / "texts"
    data.mkdir()
    (data / "train.txt").write_text("Once upon a time there was a cat.\n\nThe cat sat on the mat.\n" * 50)
    (data / "held.txt").write_text("A dog ran to the park and played with a red ball.\n" * 20)
    root = tmp_path / "runs"
    at = new_run_page(root, monkeypatch, data)
    at.radio(key="new_source").set_value("a text file from the data folder").run()
    at.text_input(key="new_name").set_value("texty")
    at.selectbox(key="new_file").set_value("train.txt")
    at.selectbox(key="new_val_file").set_value("train.txt")  # the training text itself: the CLI refuses it
    at.number_input(key="new_max_docs").set_value(40)
    at.checkbox(key="new_attn_only").check()
    at.button[0].click().run()
    assert launched == [] and at.error[0].value == (f"error: --val-data {data / 'train.txt'} is the training text "
                                                     f"{data / 'train.txt'} itself; hold out text the model does not "
                                                     "train on.")
    at.selectbox(key="new_val_file").set_value("held.txt")
    at.button[0].click().run()
    assert not at.error, at.error[0].value
    ((_, argv),) = launched
    explicit = requested(argv + ["--out", str(root / "texty")])[0]
    assert explicit["val_data"] == f"text:{data / 'held.txt'}" and explicit["data"] == f"text:{data / 'train.txt'}"
    assert explicit["max_docs"] == 40 and explicit["attn_only"] is True and "burstiness" not in explicit


def test_an_upload_is_kept_by_its_content_and_never_replaces_another_runs_text(tmp_path):
    """keep_upload: the same name with other bytes is another file (the text an earlier run of that
    name trains on stays as it was); the same bytes again are the same file, written once."""
    from app.runfolder import keep_upload
    created: list[Path] = []
    first = Path(keep_upload(tmp_path, "story", ".txt", b"Once upon a time.\n", created)[5:])
    second = Path(keep_upload(tmp_path, "story", ".txt", b"Another text.\n", created)[5:])
    assert first != second and created == [first, second]
    assert first.read_bytes() == b"Once upon a time.\n" and second.read_bytes() == b"Another text.\n"
    again: list[Path] = []
    assert keep_upload(tmp_path, "story", ".txt", b"Once upon a time.\n", again) == f"text:{first}" and again == []
    assert first.parent == tmp_path / ".uploads" and first.name.startswith("story-") and first.suffix == ".txt"
