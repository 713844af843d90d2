"""Checkpoint and training-state I/O: exact round trips, atomic writes, and refusal of every bad
file (truncated, flipped byte, wrong hash, malicious pickle) without executing anything."""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from model import GPT, GPTConfig
from model import checkpoint as ck
from model.checkpoint import (CheckpointError, checkpoint_dir, list_checkpoints, load_checkpoint, load_state,
                              read_jsonl, save_checkpoint, save_state, step_of)

CFG = dict(n_layer=2, n_head=2, n_embd=16, n_ctx=8, vocab_size=31)


class Evil:
    """Unpickling this would create `marker` (a stand-in for running arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"step": 3, "payload": Evil(marker)}, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


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
    tokens = torch.randint(0, 31, (2, 8))
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
    ck.write_json_atomic(target, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError):
        ck.write_json_atomic(target, {"a": 2})
    monkeypatch.undo()
    assert ck.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


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
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"] = "0" * 64
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match meta.json"):
        load_checkpoint(ckpt)


def test_pickle_in_place_of_safetensors_is_refused_without_running(tmp_path, ckpt):
    """Even with a matching hash in meta.json, a pickle is never unpickled."""
    marker = tmp_path / "pwned"
    payload = evil_bytes(marker)
    (ckpt / "model.safetensors").write_bytes(payload)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"] = sha256(payload)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    # and the payload really would have run under a plain pickle load
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


def test_weights_that_do_not_fit_the_config_are_refused(ckpt):
    data = st_save({"wte.weight": torch.zeros(5, 5)})
    (ckpt / "model.safetensors").write_bytes(data)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"] = sha256(data)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("content, message", [
    (None, "file is missing"), ("{not json", "not readable JSON"), ('{"step": 1}', "lacks the sha256"),
])
def test_bad_meta_is_refused(ckpt, content, message):
    if content is None:
        (ckpt / "meta.json").unlink()
        # a folder without meta.json is incomplete: not listed, and refused when named
        assert list_checkpoints(ckpt.parents[1]) == []
    else:
        (ckpt / "meta.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)


def test_invalid_config_in_meta_is_refused(ckpt):
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config"]["n_head"] = 3
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid model config.*n_head"):
        load_checkpoint(ckpt)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step_000001")


# -- training state ------------------------------------------------------------------------------
STATE = {"step": 7, "optimizer": {"state": {0: {"exp_avg": torch.randn(3, 4)}}, "param_groups": [{"lr": 1e-3}]},
         "rng": {"torch": torch.get_rng_state(), "python": [3, (1, 2), None]}, "data_position": 1234, "name": "x"}


def test_state_round_trip_and_only_latest_kept(tmp_path):
    run = tmp_path / "run"
    assert not ck.has_state(run)
    save_state(run, 5, {"step": 5})
    save_state(run, 7, STATE)
    assert ck.has_state(run)
    loaded = load_state(run)
    assert loaded["step"] == 7 and loaded["data_position"] == 1234 and loaded["rng"]["python"] == [3, (1, 2), None]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], STATE["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(loaded["rng"]["torch"], STATE["rng"]["torch"])
    assert sorted(p.name for p in (run / "state").iterdir()) == ["latest.json", "state_000007.pt"]


def corrupt_state(run: Path, how: str) -> Path:
    path = run / "state" / "state_000007.pt"
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        path.write_bytes(bytes(b))
    elif how == "wrong_hash":
        latest = json.loads((run / "state" / "latest.json").read_text())
        latest["sha256"] = "f" * 64
        (run / "state" / "latest.json").write_text(json.dumps(latest))
    return path


@pytest.mark.parametrize("how", ["truncated", "flipped", "wrong_hash"])
def test_corrupt_state_is_refused(tmp_path, how):
    run = tmp_path / "run"
    save_state(run, 7, STATE)
    path = corrupt_state(run, how)
    with pytest.raises(CheckpointError, match="sha256 does not match") as e:
        load_state(run)
    assert e.value.path == path


def test_malicious_state_pickle_is_refused_without_running(tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "pwned"
    save_state(run, 7, {"step": 7})
    payload = evil_bytes(marker)
    (run / "state" / "state_000007.pt").write_bytes(payload)
    latest = json.loads((run / "state" / "latest.json").read_text())
    latest["sha256"] = sha256(payload)  # the hash matches: only weights_only stands in the way
    (run / "state" / "latest.json").write_text(json.dumps(latest))
    with pytest.raises(CheckpointError, match="not a loadable training state"):
        load_state(run)
    assert not marker.exists()
    (tmp_path / "evil.pt").write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a loadable torch file"):
        ck.load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_latest_json_may_not_point_outside_the_state_folder(tmp_path):
    run = tmp_path / "run"
    save_state(run, 7, STATE)
    (run / "state" / "latest.json").write_text(json.dumps({"file": "../../etc/passwd", "sha256": "0"}))
    with pytest.raises(CheckpointError, match="does not name a state file"):
        load_state(run)


def test_jsonl_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    ck.append_jsonl(path, {"step": 1, "loss": 2.0})
    ck.append_jsonl(path, {"step": 2, "loss": 1.5})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert read_jsonl(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError):
        ck.append_jsonl(path, {"loss": float("nan")})  # never write what JSON readers choke on
