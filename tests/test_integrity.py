"""A checkpoint series that can be trusted: every checkpoint records the sha256 of each tensor's bytes
(a damaged tensor is named on load), a checkpoint folder copied over another step's is refused and
skipped by the probes, and two steps with identical weights are reported in summary.json, by the
importer and on the Runs page (store/integrity.py, store/checkpoint.py)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from _importer import nano_file, nano_state, probe_text, run_import
from store.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint_meta, run_integrity, save_checkpoint,
                              seal, verify_checkpoint)
from store.integrity import RULE, TENSOR_DIGESTS, compare_checkpoints
from store.runlayout import META, WEIGHTS, checkpoint_dir, result_path, summary_path
from probes import run_probes
from probes.analyse.summary import write_summary

pytestmark = pytest.mark.usefixtures("one_thread")
CHEAP = "attention_entropy"  # one cheap probe is enough to drive the runner and the summary


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def tensor_spans(weights: bytes) -> dict[str, tuple[int, int]]:
    """{name: (start, end)} of each tensor's bytes in a safetensors file, read from its header here
    (independently of store.integrity)."""
    n = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__"}


def flip_byte(path: Path, tensor: str) -> None:
    """Flip one byte in the middle of one tensor of a weights file."""
    data = bytearray(path.read_bytes())
    start, end = tensor_spans(bytes(data))[tensor]
    data[(start + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# -- per-tensor digests ----------------------------------------------------------------------------
def test_every_tensor_digest_is_recorded_at_save_time(fake_run):
    run = fake_run()
    ck = checkpoint_dir(run, 1)
    model, meta = load_checkpoint(ck)
    recorded = meta[TENSOR_DIGESTS]
    state = model.state_dict()
    assert sorted(recorded) == sorted(state)
    for name, t in state.items():  # the sha256 of the tensor's own bytes (float32, C order)
        assert recorded[name] == hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest(), name
    other = read_checkpoint_meta(checkpoint_dir(run, 2))[TENSOR_DIGESTS]
    assert all(other[k] != recorded[k] for k in recorded)  # different weights, different digests


def test_one_flipped_byte_of_one_tensor_is_refused_naming_that_tensor(fake_run, tmp_path):
    run = copy_of(fake_run(), tmp_path)
    ck = checkpoint_dir(run, 2)
    victim = "blocks.1.attn.c_proj.weight"
    flip_byte(ck / WEIGHTS, victim)
    for read in (load_checkpoint, verify_checkpoint):
        with pytest.raises(CheckpointError) as e:
            read(ck)
        assert e.value.path == ck / WEIGHTS
        assert e.value.problem.startswith(f"tensor {victim} does not match its sha256"), e.value.problem
    load_checkpoint(checkpoint_dir(run, 1))  # the other checkpoints are untouched


def test_a_checkpoint_without_tensor_digests_still_loads(fake_run, tmp_path):
    """Checkpoints saved before per-tensor digests existed load as before, checked by the file's hash."""
    run = copy_of(fake_run(), tmp_path)
    ck = checkpoint_dir(run, 1)
    meta = json.loads((ck / META).read_text())
    del meta[TENSOR_DIGESTS]
    (ck / META).write_text(json.dumps(seal(meta), indent=1))
    model, loaded = load_checkpoint(ck)
    assert TENSOR_DIGESTS not in loaded and model.cfg.n_layer == 2
    flip_byte(ck / WEIGHTS, "wte.weight")
    with pytest.raises(CheckpointError, match="sha256 .* does not match meta.json"):
        load_checkpoint(ck)


# -- a checkpoint folder copied over another step's --------------------------------------------------
def test_a_folder_copied_over_another_step_is_refused_and_not_probed(fake_run, tmp_path):
    run = copy_of(fake_run(), tmp_path)
    shutil.rmtree(checkpoint_dir(run, 2))
    shutil.copytree(checkpoint_dir(run, 1), checkpoint_dir(run, 2))  # step_000002 holds step 1's files
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(checkpoint_dir(run, 2))
    assert e.value.path == checkpoint_dir(run, 2) / META
    assert e.value.problem == "says step 1, but lies in the folder of step 2"
    logged: list[str] = []
    assert run_probes(run, only=CHEAP, jobs=1, log=logged.append) == [0, 1, 4]
    assert not result_path(run, 2).exists() and result_path(run, 4).exists()
    assert any("step 2" in line and "says step 1" in line for line in logged), logged
    integrity = json.loads(summary_path(run).read_text())["integrity"]
    assert [b["step"] for b in integrity["bad_checkpoints"]] == [2]
    assert integrity["checked"] == 3 and integrity["identical_weights"] == []


# -- identical weights in a series ------------------------------------------------------------------
def test_a_normal_trained_run_has_no_identical_weights_or_tensors(small_run):
    """The real small run: every trained tensor changes between any two checkpoints (steps 0 and 1
    included: the warm-up's learning rate is above 0 at the first step)."""
    integrity = run_integrity(small_run)
    assert integrity["checked"] == integrity["with_tensor_digests"] == 9
    assert integrity["identical_weights"] == [] and integrity["identical_tensors"] == []
    assert integrity["frozen_tensors"] == [] and integrity["bad_checkpoints"] == []


def test_two_identical_checkpoints_are_listed_in_the_summary(fake_run, tmp_path):
    run = copy_of(fake_run(), tmp_path)
    assert run_probes(run, only=CHEAP, jobs=1) == [0, 1, 2, 4]
    clean = json.loads(summary_path(run).read_text())["integrity"]
    assert clean["identical_weights"] == [] and clean["identical_tensors"] == [] and clean["checked"] == 4
    assert clean["rule"] == RULE and "stale or mislabelled" in clean["rule"]
    model, meta = load_checkpoint(checkpoint_dir(run, 1))
    save_checkpoint(run, 4, model, {"tokens": 4 * 4 * 32})  # step 4 holds step 1's weights, its own meta
    load_checkpoint(checkpoint_dir(run, 4))  # a stale checkpoint is a valid one: only the series shows it
    integrity = write_summary(run)["integrity"]
    assert integrity["identical_weights"] == [[1, 4]]
    assert integrity["identical_tensors"] == []  # a whole identical checkpoint is not also a partial finding
    assert json.loads(summary_path(run).read_text())["integrity"] == integrity


def test_a_stale_tensor_is_listed_with_its_name(fake_run, tmp_path):
    run = copy_of(fake_run(), tmp_path)
    older, _ = load_checkpoint(checkpoint_dir(run, 1))
    model, _ = load_checkpoint(checkpoint_dir(run, 4))
    with torch.no_grad():
        model.wpe.weight.copy_(older.wpe.weight)  # one stale tensor at step 4
    save_checkpoint(run, 4, model)
    integrity = run_integrity(run)
    assert integrity["identical_weights"] == []
    assert integrity["identical_tensors"] == [{"steps": [1, 4], "tensors": ["wpe.weight"]}]


def test_identical_checkpoints_pair_with_the_earliest_and_frozen_tensors_are_not_findings():
    """compare_checkpoints on meta.json dicts: three steps with one set of weights give two pairs, each
    with the earliest; a tensor equal in every checkpoint is frozen, not shared; a tensor shared by two
    of several different checkpoints is; an old checkpoint (file hash only) is compared by that hash."""
    def meta(file: str, **tensors: str) -> dict:
        return {"sha256": file, TENSOR_DIGESTS: {"frozen": "f", **tensors}}
    metas = {0: meta("a", w="0", b="0"), 10: meta("b", w="1", b="1"), 20: meta("c", w="2", b="1"),
             30: meta("b", w="1", b="1"), 40: {"sha256": "b"}, 50: meta("d", w="5", b="5")}
    found = compare_checkpoints(metas, {60: "meta.json: broken"})
    assert found["identical_weights"] == [[10, 30], [10, 40]]
    assert found["frozen_tensors"] == ["frozen"]
    assert found["identical_tensors"] == [{"steps": [10, 20], "tensors": ["b"]}]
    assert found["checked"] == 6 and found["with_tensor_digests"] == 5
    assert found["bad_checkpoints"] == [{"step": 60, "problem": "meta.json: broken"}]
    # two different checkpoints sharing a tensor: too few to call it frozen, so it is a finding
    two = compare_checkpoints({0: meta("a", w="0"), 1: meta("b", w="1")})
    assert two["frozen_tensors"] == [] and two["identical_tensors"] == [{"steps": [0, 1], "tensors": ["frozen"]}]


# -- the importer and the Runs page say so -----------------------------------------------------------
def test_the_importer_says_when_two_steps_have_identical_weights(tmp_path, capsys):
    """A nanoGPT series whose step 200 file holds step 100's weights (as Pythia's stale branches did)."""
    src = tmp_path / "src"
    src.mkdir()
    same = nano_state(11)
    nano_file(src / "ckpt_100.pt", same, 100)
    nano_file(src / "ckpt_200.pt", same, 200)
    nano_file(src / "ckpt_300.pt", nano_state(12), 300)
    text = probe_text(tmp_path / "probe.txt")
    out = tmp_path / "runs" / "nano"
    assert run_import("--from", f"nanogpt:{src}", "--data", f"text:{text}", "--out", out, "--sample-tokens", 0) == 0
    err = capsys.readouterr().err
    assert "Steps 100 and 200 have identical weights: one of them is probably stale or mislabelled." in err
    assert "300" not in err.split("Steps 100")[1]
    assert run_integrity(out)["identical_weights"] == [[100, 200]]


def test_the_importer_is_quiet_about_distinct_weights(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nano_file(src / "ckpt_100.pt", nano_state(11), 100)
    nano_file(src / "ckpt_200.pt", nano_state(12), 200)
    text = probe_text(tmp_path / "probe.txt")
    out = tmp_path / "runs" / "nano"
    assert run_import("--from", f"nanogpt:{src}", "--data", f"text:{text}", "--out", out, "--sample-tokens", 0) == 0
    assert "identical weights" not in capsys.readouterr().err


def test_the_runs_page_says_when_two_steps_have_identical_weights(fake_run, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    runs = tmp_path / "runs"
    runs.mkdir()
    run = copy_of(fake_run(), runs)
    assert run_probes(run, only=CHEAP, jobs=1) == [0, 1, 2, 4]
    model, _ = load_checkpoint(checkpoint_dir(run, 2))
    save_checkpoint(run, 4, model)
    write_summary(run)
    monkeypatch.setenv("WORKBENCH_RUNS", str(runs))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"), default_timeout=120)
    at.query_params["run"] = run.name
    at.run()
    at.switch_page("views/runs.py").run()
    assert not at.exception
    warnings = [str(w.value) for w in at.warning]
    assert "Steps 2 and 4 have identical weights: one of them is probably stale or mislabelled." in warnings, warnings


def test_a_checkpoint_linked_from_outside_the_run_is_not_opened(fake_run, tmp_path):
    """The app runs probe jobs in its own process, confined to the runs folder: the integrity pass
    must not open a meta.json that a link points outside the run (it is a bad checkpoint)."""
    run = copy_of(fake_run(), tmp_path)
    outside = Path(shutil.copytree(checkpoint_dir(run, 2), tmp_path / "elsewhere"))
    shutil.rmtree(checkpoint_dir(run, 2))
    checkpoint_dir(run, 2).symlink_to(outside)
    integrity = run_integrity(run)
    assert integrity["checked"] == 3
    assert [b["step"] for b in integrity["bad_checkpoints"]] == [2]
    assert "outside the run folder" in integrity["bad_checkpoints"][0]["problem"]
