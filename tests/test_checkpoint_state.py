"""Training-state I/O: round trips, which states are kept, and refusal of every bad state file or
record (truncated, flipped byte, wrong hash, malicious pickle, an edited latest.json or kept
state record) without executing anything; and metrics.jsonl read past a line cut short.

As in test_checkpoint.py, tests that need a loader to get past a hash on purpose reseal the edited
JSON with ck.seal; every such case also has its unsealed twin, refused at the JSON file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from store import checkpoint as ck, runio
from store.checkpoint import load_state, save_state
from store.runio import CheckpointError, read_jsonl

from _checkpoints import edit_json, evil_bytes, sha256


# -- training state ------------------------------------------------------------------------------
STATE = {"step": 7, "optimizer": {"state": {0: {"exp_avg": torch.randn(3, 4, generator=torch.Generator().manual_seed(0))}}, "param_groups": [{"lr": 1e-3}]},
         "rng": {"torch": torch.get_rng_state(), "python": [3, (1, 2), None]}, "data_position": 1234, "name": "x"}


def test_state_round_trip_and_only_latest_kept(tmp_path):
    run = tmp_path / "run"
    assert not ck.has_state(run)
    save_state(run, 5, {"step": 5}, keep_older=False)
    save_state(run, 7, STATE, keep_older=False)
    assert ck.has_state(run)
    loaded = load_state(run)
    assert loaded["step"] == 7 and loaded["data_position"] == 1234 and loaded["rng"]["python"] == [3, (1, 2), None]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], STATE["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(loaded["rng"]["torch"], STATE["rng"]["torch"])
    assert sorted(p.name for p in (run / "state").iterdir()) == ["latest.json", "state_000007.json", "state_000007.pt"]
    assert ck.kept_state_steps(run) == [7]
    with pytest.raises(CheckpointError, match="keeps no training state of step 5"):
        load_state(run, 5)


def test_every_state_is_kept_and_loads_by_step(tmp_path):
    run = tmp_path / "run"
    for step in (0, 5, 7):
        save_state(run, step, {"step": step, "x": torch.full((3,), float(step))})
    assert sorted(p.name for p in (run / "state").iterdir()) == [
        "latest.json", "state_000000.json", "state_000000.pt", "state_000005.json", "state_000005.pt",
        "state_000007.json", "state_000007.pt"]
    assert ck.kept_state_steps(run) == [0, 5, 7]
    for step in (0, 5, 7):
        loaded = load_state(run, step)
        assert loaded["step"] == step and torch.equal(loaded["x"], torch.full((3,), float(step)))
    assert load_state(run)["step"] == 7  # the latest, as --resume reads it
    assert (run / "state" / "latest.json").read_bytes() == (run / "state" / "state_000007.json").read_bytes()
    # keep_older=False drops every older state and record once latest.json points past them
    save_state(run, 9, {"step": 9}, keep_older=False)
    assert ck.kept_state_steps(run) == [9]
    assert sorted(p.name for p in (run / "state").iterdir()) == ["latest.json", "state_000009.json", "state_000009.pt"]


def test_a_run_from_before_state_records_loads_its_latest_by_step(tmp_path):
    run = tmp_path / "run"
    save_state(run, 7, STATE)
    (run / "state" / "state_000007.json").unlink()  # only latest.json, as older runs have
    assert ck.kept_state_steps(run) == [7]
    assert load_state(run, 7)["step"] == 7


STATE_RECORD_EDITS = {
    "step": lambda x: x.update(step=7),
    "sha256": lambda x: x.update(sha256="0" * 64),
    "seal removed": lambda x: x.pop(ck.SEAL),
}


@pytest.mark.parametrize("edit", sorted(STATE_RECORD_EDITS))
def test_every_edit_of_a_kept_state_record_is_refused_naming_it(tmp_path, edit):
    run = tmp_path / "run"
    save_state(run, 5, {"step": 5})
    save_state(run, 7, STATE)
    record = run / "state" / "state_000005.json"
    edit_json(record, STATE_RECORD_EDITS[edit])
    with pytest.raises(CheckpointError, match="edited or is corrupt|written before state_000005.json carried") as e:
        load_state(run, 5)
    assert e.value.path == record
    assert load_state(run)["step"] == 7  # the others are unaffected


def test_a_kept_state_is_verified_like_the_latest(tmp_path):
    run = tmp_path / "run"
    save_state(run, 5, {"step": 5})
    save_state(run, 7, STATE)
    path = run / "state" / "state_000005.pt"
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x10
    path.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="sha256 does not match") as e:
        load_state(run, 5)
    assert e.value.path == path
    # a record resealed to claim another step is refused: it says 7 but lies under step 5's name
    (run / "state" / "state_000005.json").write_bytes((run / "state" / "state_000007.json").read_bytes())
    with pytest.raises(CheckpointError, match="says step 7, but is the record of step 5"):
        load_state(run, 5)


def corrupt_state(run: Path, how: str) -> Path:
    path = run / "state" / "state_000007.pt"
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        path.write_bytes(bytes(b))
    elif how == "wrong_hash":  # resealed: the state file's own check must catch it
        edit_json(run / "state" / "latest.json", lambda x: x.update(sha256="f" * 64), reseal=True)
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
    # the hash matches and latest.json is resealed: only weights_only stands in the way
    edit_json(run / "state" / "latest.json", lambda x: x.update(sha256=sha256(payload)), reseal=True)
    with pytest.raises(CheckpointError, match="not a loadable training state"):
        load_state(run)
    assert not marker.exists()


def test_latest_json_may_not_point_outside_the_state_folder(tmp_path):
    run = tmp_path / "run"
    save_state(run, 7, STATE)
    latest = run / "state" / "latest.json"
    edit_json(latest, lambda x: x.update(file="../../etc/passwd"), reseal=True)
    with pytest.raises(CheckpointError, match="does not name a state file") as e:
        load_state(run)
    assert e.value.path == latest


LATEST_EDITS = {
    "step": lambda x: x.update(step=5),
    "file": lambda x: x.update(file="state_000005.pt"),
    "sha256": lambda x: x.update(sha256="0" * 64),
    "run_files": lambda x: x["run_files"].update({"data.json": "0" * 64}),
    "model": lambda x: x.update(model={"n_layer": 1}),
    "seal removed": lambda x: x.pop(ck.SEAL),
}


@pytest.mark.parametrize("edit", sorted(LATEST_EDITS))
def test_every_edit_of_latest_json_is_refused_naming_it(tmp_path, edit):
    run = tmp_path / "run"
    save_state(run, 5, {"step": 5})  # an older state file, as a resumed run may have left
    save_state(run, 7, STATE)
    (run / "state" / "state_000005.pt").write_bytes((run / "state" / "state_000007.pt").read_bytes())
    latest = run / "state" / "latest.json"
    edit_json(latest, LATEST_EDITS[edit])
    with pytest.raises(CheckpointError, match="edited or is corrupt|written before latest.json carried") as e:
        load_state(run)
    assert e.value.path == latest and str(latest) in str(e.value)


def test_jsonl_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    runio.append_jsonl(path, {"step": 1, "loss": 2.0})
    runio.append_jsonl(path, {"step": 2, "loss": 1.5})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert read_jsonl(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError):
        runio.append_jsonl(path, {"loss": float("nan")})  # never write what JSON readers choke on
