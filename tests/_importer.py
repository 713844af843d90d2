"""Sources for the importer tests (test_importer.py, test_importer_inputs.py): a GPT2LMHeadModel
trained here and saved as an HF Trainer's checkpoint-N folders, nanoGPT-format checkpoint files
with large random weights, and nanoGPT's forward written out as the reference for their logits.

The nanoGPT reference is a naive re-implementation of nanoGPT's forward (nn.Linear weights, exact
GELU), independent of model.interop."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from _runs import stories
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


def make_sources(base: Path) -> dict:
    """Under `base`: the probe text, an HF Trainer output folder (checkpoint-1, -3, -6) and a folder
    of nanoGPT files (ckpt_100.pt, a compiled model's ckpt_200.pt, ckpt.pt at 300) with their state
    dicts. conftest.py's session fixture `importer_sources` makes them once per session."""
    text = probe_text(base / "probe.txt")
    hf = make_hf_run(base / "hf-out", text)
    nano = base / "nano"
    nano.mkdir()
    states = {s: nano_state(SEED + s) for s in NANO_STEPS}
    for i, s in enumerate(NANO_STEPS):
        nano_file(nano / ("ckpt.pt" if i == 2 else f"ckpt_{s}.pt"), states[s], s, compiled=(i == 1))
    return {"base": base, "text": text, "hf": hf, "nano": nano, "states": states}
