"""`python -m train.importer` on inputs beyond the plain imports of test_importer.py: re-running adds
only new checkpoints and refuses another source for the same --out, a lone save_pretrained folder
and a bias-free nanoGPT file import; every bad input exits 2 with one sentence and leaves no --out
behind. The sources (conftest.py's importer_sources) are shared: every test copies what it changes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from _importer import (HF_STEPS, REPO, SEED, make_hf_run, nano_file, nano_forward, nano_state, probe_text,
                       random_tokens, run_import)
from store.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, step_of
from store.runio import read_json, read_jsonl
from store.rundata import read_data_meta


# -- re-running ------------------------------------------------------------------------------------
def test_rerun_adds_only_new_checkpoints(importer_sources, tmp_path, capsys):
    source = tmp_path / "hf"
    source.mkdir()
    for step in HF_STEPS[:2]:
        shutil.copytree(importer_sources["hf"] / f"checkpoint-{step}", source / f"checkpoint-{step}")
    out = tmp_path / "runs" / "grow"
    argv = ["--from", f"hf:{source}", "--data", f"text:{importer_sources['text']}", "--out", out, "--sample-tokens", 4]
    assert run_import(*argv) == 0
    before = {s: (checkpoint_dir(out, s) / "model.safetensors").stat().st_ino for s in HF_STEPS[:2]}
    meta_before = {s: (checkpoint_dir(out, s) / "meta.json").read_bytes() for s in HF_STEPS[:2]}
    data_before = (out / "data.json").read_bytes()
    shutil.copytree(importer_sources["hf"] / f"checkpoint-{HF_STEPS[2]}", source / f"checkpoint-{HF_STEPS[2]}")
    capsys.readouterr()
    assert run_import(*argv) == 0
    assert f"imported 1 checkpoint(s) (steps {HF_STEPS[2]}); 2 already there" in capsys.readouterr().out
    assert [step_of(p) for p in list_checkpoints(out)] == list(HF_STEPS)
    for s in HF_STEPS[:2]:  # untouched: same file, same meta
        assert (checkpoint_dir(out, s) / "model.safetensors").stat().st_ino == before[s]
        assert (checkpoint_dir(out, s) / "meta.json").read_bytes() == meta_before[s]
    assert (out / "data.json").read_bytes() == data_before  # earlier checkpoints' meta.json hashes it
    for s in HF_STEPS:
        load_checkpoint(checkpoint_dir(out, s))  # every integrity check passes
    samples = read_jsonl(out / "samples.jsonl")
    assert [sum(r["step"] == s for r in samples) for s in HF_STEPS] == [8, 8, 8]
    assert read_json(out / "run.json")["checkpoint_steps"] == list(HF_STEPS)
    assert run_import(*argv) == 0
    assert "imported 0 checkpoint(s)" in capsys.readouterr().out

    # another --data or --from for the same --out is refused, and nothing changes
    other = probe_text(tmp_path / "other.txt", 30)
    snapshot = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
    for bad in (["--data", f"text:{other}"], ["--from", f"nanogpt:{importer_sources['nano']}"]):
        args = list(argv)
        args[args.index(bad[0]) + 1] = bad[1]
        assert run_import(*args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "choose another --out" in err
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()) == snapshot


def test_a_lone_save_pretrained_folder_and_a_bias_free_nanogpt_file(importer_sources, tmp_path):
    """A save_pretrained folder without Trainer state is step 0 with tokens unknown; nanoGPT's
    bias=False becomes zero biases, the same function."""
    single = tmp_path / "final"
    shutil.copytree(importer_sources["hf"] / f"checkpoint-{HF_STEPS[-1]}", single)
    (single / "trainer_state.json").unlink()
    out = tmp_path / "runs" / "single"
    assert run_import("--from", f"hf:{single}", "--data", f"text:{importer_sources['text']}", "--out", out,
                      "--sample-tokens", 0, "--seq-len", 32) == 0
    (path,) = list_checkpoints(out)
    model, meta = load_checkpoint(path)
    assert step_of(path) == 0 and "tokens" not in meta and not (out / "samples.jsonl").exists()
    assert read_data_meta(out)["chunk_len"] == 32
    assert any("step 0" in n for n in read_json(out / "run.json")["imported"]["notes"])

    sd = nano_state(SEED + 9, bias=False, vocab=50257)
    file = nano_file(tmp_path / "nobias.pt", sd, 50, bias=False, vocab_size=50257)
    out = tmp_path / "runs" / "nobias"
    assert run_import("--from", f"nanogpt:{file}", "--data", f"text:{importer_sources['text']}", "--out", out,
                      "--sample-tokens", 0) == 0
    model, _ = load_checkpoint(checkpoint_dir(out, 50))
    tokens = random_tokens(SEED + 4)
    with torch.no_grad():
        gap = float((model(tokens) - nano_forward(sd, tokens)).abs().max())  # exact GELU, as nanoGPT
    assert gap <= 1e-4, f"logits differ by {gap} (seed {SEED + 4})"


# -- bad input -------------------------------------------------------------------------------------
class Evil:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def bad_sources(importer_sources, tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (--from, what the message must mention)."""
    hf = importer_sources["hf"]
    empty = tmp / "empty"
    empty.mkdir()
    neox = tmp / "neox"
    shutil.copytree(hf / "checkpoint-1", neox)
    cfg = json.loads((neox / "config.json").read_text())
    (neox / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    mixed = tmp / "mixed"
    shutil.copytree(hf / "checkpoint-1", mixed / "checkpoint-1")
    make_hf_run(tmp / "wide", importer_sources["text"], steps=(2,), n_embd=64)
    shutil.copytree(tmp / "wide" / "checkpoint-2", mixed / "checkpoint-2")
    lying = tmp / "lying"
    shutil.copytree(hf / "checkpoint-1", lying)
    (lying / "config.json").write_text(json.dumps(cfg | {"n_embd": 64}))
    deep = tmp / "deep"
    shutil.copytree(hf / "checkpoint-1", deep)
    (deep / "config.json").write_text(json.dumps(cfg | {"n_layer": 1_000_000}))
    evil_bin = tmp / "evil-hf"
    evil_bin.mkdir()
    (evil_bin / "config.json").write_text(json.dumps(cfg))
    torch.save({"transformer.wte.weight": Evil(tmp / "PWNED-hf")}, evil_bin / "pytorch_model.bin")
    evil_pt = tmp / "evil.pt"
    torch.save({"model": Evil(tmp / "PWNED-nano"), "model_args": {}}, evil_pt)
    small_vocab = nano_file(tmp / "small.pt", nano_state(1, vocab=1000), 10, vocab_size=1000)
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    return {
        "missing folder": (f"hf:{tmp / 'nope'}", "does not exist"),
        "missing file": (f"nanogpt:{tmp / 'nope.pt'}", "does not exist"),
        "folder without checkpoints": (f"hf:{empty}", "holds no checkpoints"),
        "folder without nanoGPT files": (f"nanogpt:{empty}", "holds no nanoGPT checkpoints"),
        "not a GPT-2": (f"hf:{neox}", "gpt_neox"),
        "shapes disagree between checkpoints": (f"hf:{mixed}", "disagree"),
        "weights disagree with their config": (f"hf:{lying}", "has shape"),
        "config claims other layers": (f"hf:{deep}", "n_layer 1000000"),
        "HF pickle that runs code": (f"hf:{evil_bin}", "would run code"),
        "nanoGPT pickle that runs code": (f"nanogpt:{evil_pt}", "would run code"),
        "vocabulary smaller than GPT-2's": (f"nanogpt:{small_vocab}", "fewer than GPT-2"),
        "not a torch file": (f"nanogpt:{junk}", "not a readable PyTorch file"),
        "unknown --from kind": (f"gpt:{hf}", "hf:DIR or nanogpt:PATH"),
    }


def test_every_bad_input_exits_2_with_one_sentence_and_writes_nothing(importer_sources, tmp_path, capsys):
    cases = bad_sources(importer_sources, tmp_path)
    cases["missing --data file"] = (f"hf:{importer_sources['hf']}", "does not exist")
    for name, (source, mention) in cases.items():
        out = tmp_path / "runs" / name.replace(" ", "-")
        data = f"text:{tmp_path / 'no-such.txt'}" if name == "missing --data file" else f"text:{importer_sources['text']}"
        capsys.readouterr()
        assert run_import("--from", source, "--data", data, "--out", out) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and mention in err, f"{name}: {err}"
        assert not out.exists(), f"{name}: {out} was created"
    assert not (tmp_path / "PWNED-hf").exists() and not (tmp_path / "PWNED-nano").exists()


def test_too_little_probe_text_and_a_bad_seq_len_are_refused(importer_sources, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.\n\nThe end.\n")
    for extra, mention in (([], "too few"), (["--seq-len", "65"], "--seq-len")):
        data = short if not extra else importer_sources["text"]
        out = tmp_path / "runs" / "x"
        assert run_import("--from", f"hf:{importer_sources['hf']}", "--data", f"text:{data}", "--out", out, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert mention in err and "\n" not in err and not out.exists(), err


def test_the_module_runs_as_a_command(tmp_path):
    out = tmp_path / "runs" / "x"
    proc = subprocess.run([sys.executable, "-m", "train.importer", "--from", f"hf:{tmp_path / 'missing'}",
                           "--data", "stories", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr, proc.stderr
    assert not out.exists()
