"""Checkpoint I/O: exact round trips, atomic writes, and refusal of every bad checkpoint file
(truncated, flipped byte, wrong hash, malicious pickle, an edited meta.json, a changed vocab.json,
data.json or run.json model) without executing anything. The training state's files are in
test_checkpoint_state.py.

Tests that need a loader to get past a hash on purpose (to reach the parser behind it) reseal the
edited JSON with ck.seal, as someone who recomputes hashes would; every such case also has its
unsealed twin, refused at the JSON file."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from app.runfolder import verify_checkpoint
from model import GPT, GPTConfig
from store import checkpoint as ck, runio
from store.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, load_state, save_checkpoint, save_state, step_of
from store.runio import CheckpointError

from _checkpoints import Evil, edit_json, evil_bytes, sha256

CFG = dict(n_layer=2, n_head=2, n_embd=16, n_ctx=8, vocab_size=31)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**CFG))


@pytest.fixture
def ckpt(tmp_path, model) -> Path:
    return save_checkpoint(tmp_path / "run", 12, model, {"tokens": 1200, "train_loss": 3.5, "val_loss": 3.7})


def test_exact_round_trip(tmp_path, model, ckpt):
    loaded, meta = load_checkpoint(ckpt)
    assert not loaded.training and loaded.cfg == model.cfg
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert meta["step"] == 12 and meta["tokens"] == 1200 and meta["val_loss"] == 3.7
    assert meta["config"] == model.cfg.to_dict() and len(meta["sha256"]) == 64
    tokens = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model.eval()(tokens))
    assert load_checkpoint(ckpt / "model.safetensors")[1] == meta  # the weights file works too


def test_listing_is_sorted_and_ignores_partial_folders(tmp_path, model):
    run = tmp_path / "run"
    for step in (100, 2, 1000000, 0):
        save_checkpoint(run, step, model)
    (run / "checkpoints" / ".tmp-step_000005-1").mkdir()
    (run / "checkpoints" / "step_000007").mkdir()  # no meta.json yet: not complete
    assert [step_of(p) for p in list_checkpoints(run)] == [0, 2, 100, 1000000]
    assert checkpoint_dir(run, 2).name == "step_000002"
    assert list_checkpoints(tmp_path / "missing") == []
    with pytest.raises(ValueError, match="step_NNNNNN"):
        step_of("foo")
    ck.remove_partial_checkpoints(run)
    assert not (run / "checkpoints" / ".tmp-step_000005-1").exists()


def test_resaving_a_step_replaces_it(tmp_path, model):
    run = tmp_path / "run"
    save_checkpoint(run, 4, model, {"tokens": 1})
    with torch.no_grad():
        model.wte.weight.add_(1.0)
    save_checkpoint(run, 4, model, {"tokens": 2})
    loaded, meta = load_checkpoint(checkpoint_dir(run, 4))
    assert meta["tokens"] == 2 and torch.equal(loaded.wte.weight, model.wte.weight)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000004"]


def test_crash_mid_write_leaves_no_checkpoint(tmp_path, model, monkeypatch):
    run = tmp_path / "run"
    save_checkpoint(run, 1, model)
    real_fsync = os.fsync
    calls = {"n": 0}

    def dying_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # after the weights, before meta.json is complete
            raise OSError("simulated crash")
        real_fsync(fd)

    monkeypatch.setattr(ck.os, "fsync", dying_fsync)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(run, 2, model)
    monkeypatch.undo()
    assert [step_of(p) for p in list_checkpoints(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]


def test_write_bytes_atomic_keeps_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    runio.write_json_atomic(target, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError):
        runio.write_json_atomic(target, {"a": 2})
    monkeypatch.undo()
    assert runio.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_every_writers_temporary_name_is_recognised_and_only_dead_writers_leftovers_go(tmp_path, model, monkeypatch):
    """store.runio owns the temporary names: what each writer really leaves when it dies before its
    rename (an atomic file write, a checkpoint folder, the folder a re-save parks) is recognised,
    with its writer's pid; a live writer's temporary survives a sweep that spares live writers."""
    real_replace = os.replace

    def dies(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(ck.os, "replace", dies)
    for write in (lambda: runio.write_json_atomic(tmp_path / "run.json", {}),
                  lambda: save_checkpoint(tmp_path, 5, model)):
        with pytest.raises(OSError):
            write()
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert runio.temp_writer(runio.temp_path(tmp_path / "run.json")) == os.getpid()
    assert runio.temp_writer(runio.temp_folder(tmp_path / "step_000005", old=True)) == os.getpid()
    assert runio.temp_writer(tmp_path / ".tmp-step_000005-12") == 12  # an older version's folder
    for name in ("run.json", ".hidden", "step_000005", ".run.json.tmp-x", ".tmp-step"):
        assert runio.temp_writer(tmp_path / name) is None, name
    # the writers cleaned up after themselves; now leave what a killed one would
    dead = 2 ** 22 + 12345  # above the default pid_max, so no live process has it
    left = [runio.temp_path(tmp_path / "run.json"), tmp_path / f".probes.json.tmp-{dead}"]
    for p in left:
        p.write_text("{}")
    (tmp_path / f".tmp-step_000007-{dead}").mkdir()
    runio.remove_temporaries(tmp_path, live_writers_too=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [left[0].name]
    runio.remove_temporaries(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncated_weights_are_refused(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sha256.*truncated or corrupt") as e:
        load_checkpoint(ckpt)
    assert e.value.path == w


def test_flipped_byte_is_refused(ckpt):
    w = ckpt / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) - 10] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(ckpt)


def test_wrong_hash_in_meta_is_refused(ckpt):
    edit_json(ckpt / "meta.json", lambda m: m.update(sha256="0" * 64))
    with pytest.raises(CheckpointError, match="edited or is corrupt") as e:
        load_checkpoint(ckpt)
    assert e.value.path == ckpt / "meta.json"
    edit_json(ckpt / "meta.json", lambda m: None, reseal=True)  # a forged seal: the weights' hash still fails
    with pytest.raises(CheckpointError, match="does not match meta.json") as e:
        load_checkpoint(ckpt)
    assert e.value.path == ckpt / "model.safetensors"


def test_pickle_in_place_of_safetensors_is_refused_without_running(tmp_path, ckpt):
    """Even with a matching hash in meta.json, a pickle is never unpickled."""
    marker = tmp_path / "pwned"
    payload = evil_bytes(marker)
    (ckpt / "model.safetensors").write_bytes(payload)
    edit_json(ckpt / "meta.json", lambda m: m.update(sha256=sha256(payload)), reseal=True)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    # and the payload really would have run under a plain pickle load
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


def test_weights_that_do_not_fit_the_config_are_refused(ckpt):
    data = st_save({"wte.weight": torch.zeros(5, 5)})
    (ckpt / "model.safetensors").write_bytes(data)
    edit_json(ckpt / "meta.json", lambda m: m.update(sha256=sha256(data)), reseal=True)
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("content, message", [
    (None, "file is missing"), ("{not json", "not readable JSON"), ("[1, 2]", "not a JSON object"),
    ('{"step": 12}', "has no 'self_sha256' field: it was written before meta.json carried its own hash"),
    (json.dumps(ck.seal({"step": 12})), "lacks the sha256 or config"),
])
def test_bad_meta_is_refused(ckpt, content, message):
    if content is None:
        (ckpt / "meta.json").unlink()
        # a folder without meta.json is incomplete: not listed, and refused when named
        assert list_checkpoints(ckpt.parents[1]) == []
    else:
        (ckpt / "meta.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(ckpt)
    assert e.value.path == ckpt / "meta.json"


def test_invalid_config_in_meta_is_refused(ckpt):
    edit_json(ckpt / "meta.json", lambda m: m["config"].update(n_head=3), reseal=True)
    with pytest.raises(CheckpointError, match="invalid model config.*n_head"):
        load_checkpoint(ckpt)


def test_a_checkpoint_written_before_meta_json_was_sealed_is_refused_with_a_sentence(ckpt):
    edit_json(ckpt / "meta.json", lambda m: m.pop(ck.SEAL))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    assert e.value.path == ckpt / "meta.json"
    assert "written before meta.json carried its own hash" in e.value.problem and "re-save" in e.value.problem


# The edits of the issue: each changes what a loaded checkpoint does or reports, and each loaded
# silently while meta.json had no hash of its own.
META_EDITS = {
    "ln_eps": lambda m: m["config"].update(ln_eps=1e-1),
    "n_head": lambda m: m["config"].update(n_head=4),  # another divisor of n_embd=16: same parameters
    "attention": lambda m: m["config"].update(attention="linear"),  # same parameters as standard
    "dropout": lambda m: m["config"].update(dropout=0.5),
    "step": lambda m: m.update(step=13),
    "tokens": lambda m: m.update(tokens=1300),
    "train_loss": lambda m: m.update(train_loss=0.5),
    "val_loss": lambda m: m.update(val_loss=0.7),
    "time": lambda m: m.update(time=0.0),
    "run_files": lambda m: m["run_files"].update({"vocab.json": "0" * 64}),
    "extra field": lambda m: m.update(note="hello"),
}


@pytest.mark.parametrize("edit", sorted(META_EDITS))
def test_every_edit_of_meta_json_is_refused_naming_it(ckpt, edit):
    before = (ckpt / "meta.json").read_bytes()
    edit_json(ckpt / "meta.json", META_EDITS[edit])
    assert (ckpt / "meta.json").read_bytes() != before
    with pytest.raises(CheckpointError, match="edited or is corrupt") as e:
        load_checkpoint(ckpt)
    assert e.value.path == ckpt / "meta.json" and str(e.value.path) in str(e.value)
    assert "edited or is corrupt" in (verify_checkpoint(ckpt) or "")  # the app's cheap check agrees


@pytest.mark.parametrize("edit", ["ln_eps", "n_head", "attention"])
def test_the_config_edits_would_change_the_logits_if_they_loaded(tmp_path, model, edit):
    """Why the seal matters: resealed (so the loader accepts it), each edit loads without a
    shape error and moves the logits, so only the seal stood between it and a silently different
    model. (Weights scaled up from init, so that attention patterns are not near uniform.)"""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ckpt = save_checkpoint(tmp_path / "run", 12, model)
    tokens = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.eval()(tokens)
        assert torch.equal(load_checkpoint(ckpt)[0](tokens), want)  # unedited: exactly the same
    edit_json(ckpt / "meta.json", META_EDITS[edit], reseal=True)
    loaded, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        got = loaded(tokens)
    assert (got - want).abs().max() > 1e-2, (edit, (got - want).abs().max())


def test_meta_json_reformatted_without_changing_content_still_loads(ckpt):
    """The seal covers what a reader gets, not indentation or key order."""
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps(dict(reversed(list(meta.items()))), indent=4))
    assert load_checkpoint(ckpt)[1] == meta


def test_a_meta_json_copied_into_another_step_is_refused(tmp_path, model):
    run = tmp_path / "run"
    a, b = save_checkpoint(run, 1, model), save_checkpoint(run, 2, model)
    (b / "meta.json").write_bytes((a / "meta.json").read_bytes())  # same weights: the hash matches
    with pytest.raises(CheckpointError, match="says step 1, but lies in the folder of step 2") as e:
        load_checkpoint(b)
    assert e.value.path == b / "meta.json"


# -- run files a checkpoint depends on -------------------------------------------------------------
@pytest.fixture
def run_with_files(tmp_path, model) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "vocab.json").write_text(json.dumps({"format": "compact-gpt2", "gpt2_ids": list(range(29))}))
    (run / "data.json").write_text(json.dumps({"seed": 0, "chunk_len": 8, "global_batch": 4}))
    (run / "run.json").write_text(json.dumps({"model": model.cfg.to_dict(), "status": "training"}))
    save_checkpoint(run, 3, model)
    save_state(run, 3, {"step": 3}, model_config=model.cfg.to_dict())
    return run


@pytest.mark.parametrize("name", ["vocab.json", "data.json"])
@pytest.mark.parametrize("how", ["edited", "missing"])
def test_a_changed_run_file_is_refused_by_checkpoint_and_state(run_with_files, name, how):
    run = run_with_files
    assert load_checkpoint(checkpoint_dir(run, 3))[1]["run_files"] == {
        n: sha256((run / n).read_bytes()) for n in ("vocab.json", "data.json")}
    if how == "edited":
        edit_json(run / name, lambda d: d.update(seed=1) if "seed" in d else d["gpt2_ids"].reverse())
        message = "does not match .* recorded in .*: the file was edited or is corrupt"
    else:
        (run / name).unlink()
        message = "is missing, but .* was written with it"
    for load in (lambda: load_checkpoint(checkpoint_dir(run, 3)), lambda: load_state(run)):
        with pytest.raises(CheckpointError, match=message) as e:
            load()
        assert e.value.path == run / name


def test_a_run_file_added_after_the_checkpoint_is_refused(tmp_path, model):
    """A checkpoint saved in a run without vocab.json was read with the full GPT-2 tokenizer: a
    vocab.json appearing later would change its text."""
    run = tmp_path / "run"
    save_checkpoint(run, 1, model)
    save_state(run, 1, {"step": 1})
    (run / "vocab.json").write_text("{}")
    for load in (lambda: load_checkpoint(checkpoint_dir(run, 1)), lambda: load_state(run)):
        with pytest.raises(CheckpointError, match="did not exist when .* was written") as e:
            load()
        assert e.value.path == run / "vocab.json"


def test_a_checkpoint_folder_outside_a_run_loads_without_run_files(run_with_files, tmp_path, model):
    import shutil

    loose = Path(shutil.copytree(checkpoint_dir(run_with_files, 3), tmp_path / "elsewhere" / "step_000003"))
    loaded, _ = load_checkpoint(loose)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_run_json_model_edited_after_the_state_was_saved_is_refused(run_with_files):
    run = run_with_files
    assert load_state(run) == {"step": 3}
    edit_json(run / "run.json", lambda r: r.update(status="complete", updated="now"))  # not the model: fine
    assert load_state(run) == {"step": 3}
    edit_json(run / "run.json", lambda r: r["model"].update(ln_eps=0.1))
    with pytest.raises(CheckpointError, match="model config is not the one the training state") as e:
        load_state(run)
    assert e.value.path == run / "run.json"


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step_000001")
