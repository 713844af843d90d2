"""The app's view of the runs folder: it reads only runs inside it, lists what each run
holds, and finds a corrupt checkpoint by its hash without loading it."""
from __future__ import annotations

import os
import shutil

import pytest

from app.analysis import attention_patterns
from probes.measure.ablation import generation_hooks, head_means
from app.runfolder import (inside, metrics_series, run_files, run_names, runs_root, safe_run_dir,
                           sample_steps, samples_at, verify_checkpoint)
from app_fixtures import corrupt_checkpoint, write_fake_run
from store.checkpoint import checkpoint_dir, load_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("runfolder")
    runs = base / "runs"
    runs.mkdir()
    write_fake_run(runs, "good", steps=(0, 1, 2))
    outside = write_fake_run(base, "secret", steps=(0,))  # a run that lives outside the folder
    os.symlink(outside, runs / "escape")
    os.symlink(runs / "good", runs / "alias")  # a symlink that stays inside is fine
    (runs / ".cache").mkdir()
    (runs / "not_a_run").mkdir()
    return runs


@pytest.mark.parametrize("name, why", [
    ("..", "'..'"), ("../secret", "'..'"), ("good/../../secret", "'..'"), ("a/b", "separators"),
    ("/etc", "absolute"), ("~root", "absolute"), (".cache", "hidden"), ("", "non-empty"),
    ("escape", "outside"), ("nope", "no run named"),
])
def test_names_that_leave_the_runs_folder_are_refused(root, name, why):
    with pytest.raises(ValueError, match=why):
        safe_run_dir(root, name)


def test_only_runs_inside_the_folder_are_listed(root):
    assert run_names(root) == ["alias", "good"]
    assert safe_run_dir(root, "good") == root / "good"
    assert inside(root, root / "alias") and not inside(root, root / "escape")
    with pytest.raises(ValueError):
        run_files(root, "escape")


@pytest.mark.parametrize("entry", ["metrics.jsonl", "data.json", "checkpoints", "probes"])
def test_a_run_whose_files_link_outside_is_refused(tmp_path, entry):
    runs = tmp_path / "runs"
    run = write_fake_run(runs, "r", steps=(0,))
    elsewhere = write_fake_run(tmp_path, "elsewhere", steps=(0,))
    target = run / entry
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.symlink(elsewhere / entry, target)
    with pytest.raises(ValueError, match=f"{entry} is a symlink that points outside"):
        run_files(runs, "r")
    assert run_names(runs) == ["r"]  # listed, but refused when opened


def test_runs_root_prefers_the_environment(tmp_path, monkeypatch):
    assert runs_root({"WORKBENCH_RUNS": str(tmp_path)}) == tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert runs_root({}) == (tmp_path / "runs").resolve()


def test_read_run_lists_checkpoints_probe_files_metrics_and_samples(root):
    run = run_files(root, "good")
    assert run.status == "complete" and not run.training and not run.problems
    assert run.checkpoint_steps == [0, 1, 2]
    assert sorted(run.probe_files) == [0, 1, 2] and run.missing_probes == []
    curves = metrics_series(run.path)
    assert curves["train"][0] == [0, 1, 2] and curves["train"][1] == pytest.approx([5.0, 4.9, 4.8])
    assert curves["val"] == ([0, 1, 2], pytest.approx([5.1, 5.0, 4.9]))
    assert sample_steps(run.path) == [0, 1, 2]
    assert {r["decoding"] for r in samples_at(run.path, 1)} == {"greedy", "sampled"}


def test_missing_probe_files_and_unreadable_run_json_are_reported(tmp_path):
    run_dir = write_fake_run(tmp_path, "r", steps=(0, 1, 2))
    (run_dir / "probes" / "step_000001.json").unlink()
    (run_dir / "run.json").write_text("{not json")
    run = run_files(tmp_path, "r")
    assert run.missing_probes == [1]
    assert len(run.problems) == 1 and "run.json" in run.problems[0]


def test_verify_checkpoint_names_a_damaged_file_and_key_changes_with_it(tmp_path):
    run_dir = write_fake_run(tmp_path, "r", steps=(0, 1), with_probes=False)
    assert verify_checkpoint(checkpoint_dir(run_dir, 1)) is None
    bad = corrupt_checkpoint(run_dir, 1)
    problem = verify_checkpoint(checkpoint_dir(run_dir, 1))
    assert problem is not None and str(bad) in problem and "sha256" in problem
    assert verify_checkpoint(checkpoint_dir(run_dir, 0)) is None
    (checkpoint_dir(run_dir, 0) / "model.safetensors").unlink()
    assert "model.safetensors" in verify_checkpoint(checkpoint_dir(run_dir, 0))


def test_generation_ablation_hooks_zero_or_mean_the_chosen_heads_only(tmp_path):
    import torch
    run_dir = write_fake_run(tmp_path, "r", steps=(0,), with_probes=False)
    model, _ = load_checkpoint(checkpoint_dir(run_dir, 0))
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    seen = {}

    def grab(z, hook):
        seen[hook.name] = z.clone()

    name = "blocks.1.attn.hook_z"
    for kind, means in (("zero", None), ("mean", head_means(model, tokens))):
        hooks = generation_hooks(model, [(1, 0)], kind, tokens) + [(name, grab)]
        with model.hooks(fwd_hooks=hooks):
            model(tokens)
        z = seen[name]
        want = torch.zeros_like(z[:, :, 0]) if means is None else means[1][0].expand_as(z[:, :, 0])
        assert torch.allclose(z[:, :, 0], want)
        _, clean = model.run_with_cache(tokens, names_filter=name)
        assert torch.allclose(z[:, :, 1], clean[name][:, :, 1], atol=1e-6)  # other head untouched
    # the pattern the viewer shows is the model's own hook_pattern
    ids = tokens[0].tolist()
    pats = attention_patterns(model, ids)
    _, cache = model.run_with_cache(torch.tensor([ids]))
    assert torch.allclose(torch.tensor(pats[1][1]), cache["blocks.1.attn.hook_pattern"][0, 1])
