"""`python -m train.importer`: checkpoints made by transformers (a small GPT2LMHeadModel trained here
and saved as a Trainer's checkpoint-N folders) and nanoGPT-format files become workbench runs whose
logits are the source's, which the probes and every app page read, and which re-imports extend;
every bad input exits 2 with one sentence and leaves no --out behind.

The nanoGPT reference is a naive re-implementation of nanoGPT's forward (nn.Linear weights, exact
GELU), independent of model.interop."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _runs import stories
from model.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, step_of
from model.runio import read_json, read_jsonl
from model.rundata import read_data_meta
from train.importer import main

REPO = Path(__file__).resolve().parents[1]
HF_STEPS = (1, 3, 6)
NANO_STEPS = (100, 200, 300)
SEED = 20240601
TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)


def probe_text(path: Path, n: int = 60) -> Path:
    path.write_text("\n\n".join(stories(n, 7)) + "\n")
    return path


def run_import(*args: str) -> int:
    return main([str(a) for a in args])


# -- sources --------------------------------------------------------------------------------------
def trainer_state(step: int, tokens_per_step: int, losses: list[float]) -> dict:
    log = [{"step": s, "loss": losses[s - 1], "learning_rate": 1e-2, "grad_norm": 1.0 + s} for s in range(1, step + 1)]
    log.append({"step": step, "eval_loss": losses[step - 1] + 0.5})
    return {"global_step": step, "num_input_tokens_seen": step * tokens_per_step, "log_history": log}


def make_hf_run(root: Path, text: Path, steps=HF_STEPS, **config) -> Path:
    """A GPT2LMHeadModel trained with a plain loop on the probe text, saved with save_pretrained
    as checkpoint-N folders beside a trainer_state.json, as the HF Trainer lays them out."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from model.tokenizer import gpt2_encoding

    torch.manual_seed(SEED)
    hf = GPT2LMHeadModel(GPT2Config(**{**TINY, **config}, initializer_range=0.1, resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0))
    ids = torch.tensor(gpt2_encoding().encode(text.read_text())[: 8 * 65]).view(8, 65)
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-2)
    root.mkdir(parents=True, exist_ok=True)
    losses = []
    for step in range(1, max(steps) + 1):
        loss = hf(ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step in steps:
            folder = root / f"checkpoint-{step}"
            hf.save_pretrained(folder)
            (folder / "trainer_state.json").write_text(json.dumps(trainer_state(step, 8 * 64, losses)))
    return root


def nano_state(seed: int, n_layer=2, n_head=2, n_embd=32, block=64, vocab=50304, bias=True, std=0.3) -> dict:
    """A nanoGPT model state dict with large random weights (so the exact and tanh GELU differ)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=std):
        return torch.randn(*shape, generator=g) * s

    sd = {"transformer.wte.weight": rnd(vocab, n_embd), "transformer.wpe.weight": rnd(block, n_embd),
          "transformer.ln_f.weight": 1 + rnd(n_embd, s=0.1)}
    if bias:
        sd["transformer.ln_f.bias"] = rnd(n_embd, s=0.1)
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes = {"attn.c_attn": (3 * n_embd, n_embd), "attn.c_proj": (n_embd, n_embd),
                  "mlp.c_fc": (4 * n_embd, n_embd), "mlp.c_proj": (n_embd, 4 * n_embd)}
        for name, shape in shapes.items():
            sd[p + name + ".weight"] = rnd(*shape)
            if bias:
                sd[p + name + ".bias"] = rnd(shape[0], s=0.1)
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"] = 1 + rnd(n_embd, s=0.1)
            if bias:
                sd[p + ln + ".bias"] = rnd(n_embd, s=0.1)
        sd[p + "attn.bias"] = torch.tril(torch.ones(block, block)).view(1, 1, block, block)  # the mask buffer
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as nanoGPT does
    return sd


def nano_file(path: Path, sd: dict, step: int, compiled: bool = False, **args) -> Path:
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, bias=True, vocab_size=50304, dropout=0.0) | args
    if compiled:
        sd = {f"_orig_mod.{k}": v for k, v in sd.items()}
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "model_args": model_args,
                "iter_num": step, "best_val_loss": torch.tensor(3.5),
                "config": {"batch_size": 12, "block_size": 64, "gradient_accumulation_steps": 5,
                           "dataset": "openwebtext"}}, path)
    return path


def nano_forward(sd: dict, tokens: torch.Tensor, n_head: int = 2, exact: bool = True) -> torch.Tensor:
    """nanoGPT's GPT.forward written out: pre-LN blocks, causal attention, nn.GELU (exact unless
    `exact` is False), tied head; every projection an nn.Linear (x @ W.T + b)."""
    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd.get(name + ".bias"), 1e-5)

    B, T = tokens.shape
    x = sd["transformer.wte.weight"][tokens] + sd["transformer.wpe.weight"][:T]
    C = x.shape[-1]
    n_layer = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        h = lin(ln(x, p + "ln_2"), p + "mlp.c_fc")
        x = x + lin(F.gelu(h, approximate="none" if exact else "tanh"), p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["lm_head.weight"].T


def random_tokens(seed: int, n: int = 3, length: int = 64) -> torch.Tensor:
    return torch.randint(0, 50257, (n, length), generator=torch.Generator().manual_seed(seed))


# -- shared imports ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One HF Trainer folder and one nanoGPT folder, each imported once into a runs folder."""
    base = tmp_path_factory.mktemp("importer")
    text = probe_text(base / "probe.txt")
    hf = make_hf_run(base / "hf-out", text)
    nano = base / "nano"
    nano.mkdir()
    states = {s: nano_state(SEED + s) for s in NANO_STEPS}
    for i, s in enumerate(NANO_STEPS):
        nano_file(nano / ("ckpt.pt" if i == 2 else f"ckpt_{s}.pt"), states[s], s, compiled=(i == 1))
    runs = base / "runs"
    assert run_import("--from", f"hf:{hf}", "--data", f"text:{text}", "--out", runs / "hf", "--sample-tokens", 8) == 0
    assert run_import("--from", f"nanogpt:{nano}", "--data", f"text:{text}", "--out", runs / "nano",
                      "--sample-tokens", 8) == 0
    return {"base": base, "text": text, "hf": hf, "nano": nano, "states": states, "runs": runs}


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
    assert data["training_data"] == "unknown" and data["n_train_tokens"] == 0 and data["global_batch"] is None
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
    from probes.cli import main as probes_main
    from probes.results import read_results

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
    from probes.cli import main as probes_main

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
    from probes.cli import main as probes_main

    assert probes_main([str(world["runs"] / "hf"), "--jobs", "1"]) == 0
    for page, at in app_pages(world["runs"], monkeypatch):
        if page == "memorization":
            text = shown(at.info) + shown(at.markdown) + shown(at.caption)
            assert "training data is unknown" in text
            assert "the run's data has none" not in text  # not known to be none


# -- re-running ------------------------------------------------------------------------------------
def test_rerun_adds_only_new_checkpoints(world, tmp_path, capsys):
    source = tmp_path / "hf"
    source.mkdir()
    for step in HF_STEPS[:2]:
        shutil.copytree(world["hf"] / f"checkpoint-{step}", source / f"checkpoint-{step}")
    out = tmp_path / "runs" / "grow"
    argv = ["--from", f"hf:{source}", "--data", f"text:{world['text']}", "--out", out, "--sample-tokens", 4]
    assert run_import(*argv) == 0
    before = {s: (checkpoint_dir(out, s) / "model.safetensors").stat().st_ino for s in HF_STEPS[:2]}
    meta_before = {s: (checkpoint_dir(out, s) / "meta.json").read_bytes() for s in HF_STEPS[:2]}
    data_before = (out / "data.json").read_bytes()
    shutil.copytree(world["hf"] / f"checkpoint-{HF_STEPS[2]}", source / f"checkpoint-{HF_STEPS[2]}")
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
    for bad in (["--data", f"text:{other}"], ["--from", f"nanogpt:{world['nano']}"]):
        args = list(argv)
        args[args.index(bad[0]) + 1] = bad[1]
        assert run_import(*args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "choose another --out" in err
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()) == snapshot


def test_a_lone_save_pretrained_folder_and_a_bias_free_nanogpt_file(world, tmp_path):
    """A save_pretrained folder without Trainer state is step 0 with tokens unknown; nanoGPT's
    bias=False becomes zero biases, the same function."""
    single = tmp_path / "final"
    shutil.copytree(world["hf"] / f"checkpoint-{HF_STEPS[-1]}", single)
    (single / "trainer_state.json").unlink()
    out = tmp_path / "runs" / "single"
    assert run_import("--from", f"hf:{single}", "--data", f"text:{world['text']}", "--out", out,
                      "--sample-tokens", 0, "--seq-len", 32) == 0
    (path,) = list_checkpoints(out)
    model, meta = load_checkpoint(path)
    assert step_of(path) == 0 and "tokens" not in meta and not (out / "samples.jsonl").exists()
    assert read_data_meta(out)["chunk_len"] == 32
    assert any("step 0" in n for n in read_json(out / "run.json")["imported"]["notes"])

    sd = nano_state(SEED + 9, bias=False, vocab=50257)
    file = nano_file(tmp_path / "nobias.pt", sd, 50, bias=False, vocab_size=50257)
    out = tmp_path / "runs" / "nobias"
    assert run_import("--from", f"nanogpt:{file}", "--data", f"text:{world['text']}", "--out", out,
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


def bad_sources(world, tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (--from, what the message must mention)."""
    hf = world["hf"]
    empty = tmp / "empty"
    empty.mkdir()
    neox = tmp / "neox"
    shutil.copytree(hf / "checkpoint-1", neox)
    cfg = json.loads((neox / "config.json").read_text())
    (neox / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    mixed = tmp / "mixed"
    shutil.copytree(hf / "checkpoint-1", mixed / "checkpoint-1")
    make_hf_run(tmp / "wide", world["text"], steps=(2,), n_embd=64)
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


def test_every_bad_input_exits_2_with_one_sentence_and_writes_nothing(world, tmp_path, capsys):
    cases = bad_sources(world, tmp_path)
    cases["missing --data file"] = (f"hf:{world['hf']}", "does not exist")
    for name, (source, mention) in cases.items():
        out = tmp_path / "runs" / name.replace(" ", "-")
        data = f"text:{tmp_path / 'no-such.txt'}" if name == "missing --data file" else f"text:{world['text']}"
        capsys.readouterr()
        assert run_import("--from", source, "--data", data, "--out", out) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and mention in err, f"{name}: {err}"
        assert not out.exists(), f"{name}: {out} was created"
    assert not (tmp_path / "PWNED-hf").exists() and not (tmp_path / "PWNED-nano").exists()


def test_too_little_probe_text_and_a_bad_seq_len_are_refused(world, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.\n\nThe end.\n")
    for extra, mention in (([], "too few"), (["--seq-len", "65"], "--seq-len")):
        data = short if not extra else world["text"]
        out = tmp_path / "runs" / "x"
        assert run_import("--from", f"hf:{world['hf']}", "--data", f"text:{data}", "--out", out, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert mention in err and "\n" not in err and not out.exists(), err


def test_the_module_runs_as_a_command(tmp_path):
    out = tmp_path / "runs" / "x"
    proc = subprocess.run([sys.executable, "-m", "train.importer", "--from", f"hf:{tmp_path / 'missing'}",
                           "--data", "stories", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr, proc.stderr
    assert not out.exists()
