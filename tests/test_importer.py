"""`python -m train.importer`: checkpoints made by transformers (a small GPT2LMHeadModel trained here
and saved as a Trainer's checkpoint-N folders) and nanoGPT-format files become workbench runs whose
logits are the source's, and which the probes and every app page read. Re-imports and bad input are
in test_importer_inputs.py; the sources and the nanoGPT reference forward in _importer.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _importer import HF_STEPS, NANO_STEPS, REPO, SEED, nano_forward, random_tokens, run_import
from store.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, step_of
from store.runio import read_json, read_jsonl
from store.rundata import read_data_meta


# -- shared imports ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(importer_sources, tmp_path_factory):
    """The session's sources (conftest.py's importer_sources), the HF Trainer folder and the nanoGPT
    folder each imported once into this module's runs folder (which the probes below write into)."""
    runs = tmp_path_factory.mktemp("importer") / "runs"
    text, hf, nano = importer_sources["text"], importer_sources["hf"], importer_sources["nano"]
    assert run_import("--from", f"hf:{hf}", "--data", f"text:{text}", "--out", runs / "hf", "--sample-tokens", 8) == 0
    assert run_import("--from", f"nanogpt:{nano}", "--data", f"text:{text}", "--out", runs / "nano",
                      "--sample-tokens", 8) == 0
    return {**importer_sources, "runs": runs}


def test_hf_trainer_checkpoints_import_with_the_sources_logits(world):
    from transformers import GPT2LMHeadModel

    run = world["runs"] / "hf"
    assert [step_of(p) for p in list_checkpoints(run)] == list(HF_STEPS)
    seed = SEED + 1
    tokens = random_tokens(seed)
    for step in HF_STEPS:
        ours, meta = load_checkpoint(checkpoint_dir(run, step))
        source = GPT2LMHeadModel.from_pretrained(world["hf"] / f"checkpoint-{step}").eval()
        with torch.no_grad():
            want, got = source(tokens).logits, ours(tokens)
        assert want.std() > 0.5, "the source logits are too flat for the comparison to mean anything"
        gap = float((got - want).abs().max())
        assert gap <= 1e-4, f"step {step}: logits differ by {gap} (seed {seed})"
        assert meta["tokens"] == step * 8 * 64  # num_input_tokens_seen of trainer_state.json
    info = read_json(run / "run.json")
    assert info["status"] == "complete" and info["checkpoint_steps"] == list(HF_STEPS)
    assert info["imported"]["from"] == f"hf:{world['hf'].resolve()}" and info["imported"]["format"] == "hf-trainer"
    assert info["imported"]["training_data"] == "unknown" and info["tokenizer"] == {"kind": "gpt2", "vocab_size": 50257}
    assert "train" not in info  # so `python -m train --resume` refuses it instead of training it
    data = read_data_meta(run)
    assert data["training_data"] == "unknown" and data["n_train_tokens"] == 0 and data["corpus_rows_per_step"] is None and "global_batch" not in data
    assert data["chunk_len"] == 64 and data["n_val_chunks"] >= 16 and data["canaries"] == []
    assert not (run / "vocab.json").exists()  # the full GPT-2 BPE
    # the Trainer's log becomes the loss curve: one row per logged step, eval loss as held-out loss
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[-1]["val_loss"] == pytest.approx(rows[-1]["loss"] + 0.5)
    samples = read_jsonl(run / "samples.jsonl")
    assert sorted({r["step"] for r in samples}) == list(HF_STEPS) and len(samples) == 8 * len(HF_STEPS)


def test_nanogpt_checkpoints_import_with_equal_logits(world):
    """The imported model is nanoGPT's function (exact GELU, on the 50257 real tokens of the
    50304-row padded vocabulary; compiled-model prefixes stripped; tokens from its config), checked
    against nanoGPT's forward written out in this file. The tanh GELU would be off by more."""
    run = world["runs"] / "nano"
    assert [step_of(p) for p in list_checkpoints(run)] == list(NANO_STEPS)
    seed = SEED + 2
    tokens = random_tokens(seed)
    for step in NANO_STEPS:
        ours, meta = load_checkpoint(checkpoint_dir(run, step))
        assert ours.cfg.vocab_size == 50257 and ours.cfg.activation == "gelu"
        with torch.no_grad():
            got = ours(tokens)
        want = nano_forward(world["states"][step], tokens, exact=True)[..., :50257]
        gap = float((got - want).abs().max())
        assert gap <= 1e-4, f"step {step}: logits differ by {gap} from nanoGPT (seed {seed})"
        tanh = nano_forward(world["states"][step], tokens, exact=False)[..., :50257]
        assert float((tanh - want).abs().max()) > 1e-3  # the GELU choice matters at these weights
        assert meta["tokens"] == step * 5 * 12 * 64  # iter_num x grad accumulation x batch x block
    notes = " ".join(read_json(run / "run.json")["imported"]["notes"])
    assert "padded" in notes


def test_probes_run_on_an_imported_run_and_say_what_is_unknown(world, capsys):
    from probes.run.cli import main as probes_main
    from probes.measure.results import read_results

    run = world["runs"] / "hf"
    assert probes_main([str(run), "--jobs", "1"]) == 0, capsys.readouterr().err
    results = read_results(run)
    assert sorted(results) == list(HF_STEPS)
    for step, result in results.items():
        mem = result["memorization"]
        assert mem["training_data"] == "unknown" and "imported" in mem["note"]
        assert mem["seen"] == {"mean_score": None, "memorized_fraction": None, "n": None, "loss": None}
        assert mem["loss_gap"] is None and mem["canaries"] == [] and mem["held_out"]["n"] > 0
        assert result["tokens"] == step * 8 * 64  # from the checkpoint, not invented from a batch size
        assert result["head_ablation"]["clean_loss"] > 0 and result["induction"]["induction"]
    assert (run / "probes" / "summary.json").is_file()


APP = str(REPO / "app" / "streamlit_app.py")
PAGES = ["runs", "heads", "attention", "memorization", "repetition", "induction", "compare"]


def app_pages(runs: Path, monkeypatch):
    """Every page of the app on the runs folder: (page, AppTest after drawing it)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(runs))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = "hf"
    at.run()
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        yield page, at


def shown(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_every_app_page_renders_an_imported_run(world, monkeypatch, capsys):
    from probes.run.cli import main as probes_main

    run = world["runs"] / "hf"
    assert probes_main([str(run), "--jobs", "1"]) == 0  # a no-op when the probes test ran first
    for page, at in app_pages(world["runs"], monkeypatch):
        assert not at.exception, f"{page}: {shown(at.exception)}"
        assert not at.error, f"{page}: {shown(at.error)}"
        assert not at.warning, f"{page}: {shown(at.warning)}"
        assert "Traceback" not in shown(at.markdown)
        assert at.title[0].value == ("Compare runs" if page == "compare" else page.capitalize())
        assert at.get("plotly_chart"), f"{page}: no chart"  # runs: the Trainer's loss log


def test_memorization_page_says_the_training_data_is_unknown(world, monkeypatch):
    from probes.run.cli import main as probes_main

    assert probes_main([str(world["runs"] / "hf"), "--jobs", "1"]) == 0
    for page, at in app_pages(world["runs"], monkeypatch):
        if page == "memorization":
            text = shown(at.info) + shown(at.markdown) + shown(at.caption)
            assert "training data is unknown" in text
            assert "the run's data has none" not in text  # not known to be none
