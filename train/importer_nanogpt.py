"""nanoGPT checkpoints (`ckpt.pt` files of Karpathy's nanoGPT) read as GPT-2 sources for the
importer: the state dict and model args with torch.load(weights_only=True), nanoGPT's nn.Linear
weights transposed to GPT-2's Conv1D layout, its padded vocabulary and bias=False handled, its
exact GELU kept (activation_function "gelu")."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .args import BadInput
from .importer_sources import (GPT2_DEFAULTS, NANOGPT_SUFFIXES, TRANSPOSED, SourceCheckpoint, StateDict, canonical_name,
                               check_shapes, expected_shapes, torch_load)


NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")


def nanogpt_checkpoints(path: Path) -> list[SourceCheckpoint]:
    """One nanoGPT checkpoint file, or every checkpoint file (.pt/.pth/.ckpt) in a folder."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in NANOGPT_SUFFIXES)
        if not files:
            raise BadInput(f"{path} holds no nanoGPT checkpoints (files ending in {', '.join(NANOGPT_SUFFIXES)}).")
    return [nanogpt_checkpoint(f) for f in files]


def nanogpt_model(obj: Any, path: Path) -> tuple[StateDict, dict]:
    """(state dict without torch.compile's "_orig_mod." prefix, model_args) of a loaded file."""
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or not isinstance(obj.get("model_args"), dict):
        raise BadInput(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' state dict or 'model_args'.")
    args = obj["model_args"]
    bad = [k for k in NANOGPT_ARGS if isinstance(args.get(k), bool) or not isinstance(args.get(k), int)]
    if bad:
        raise BadInput(f"{path}: model_args lacks an integer {bad[0]!r}, so the model's shape is unknown.")
    sd = {}
    for key, value in obj["model"].items():
        if not isinstance(value, torch.Tensor):
            raise BadInput(f"{path}: the model state dict entry {key!r} is not a tensor.")
        sd[key.removeprefix("_orig_mod.")] = value
    return sd, args


def nanogpt_tied(sd: StateDict) -> bool:
    """nanoGPT ties lm_head to wte; a file whose two differ has its own unembedding."""
    head, wte = sd.get("lm_head.weight"), sd.get("transformer.wte.weight")
    return head is None or wte is None or (head.shape == wte.shape and torch.equal(head, wte))


def nanogpt_config(args: dict, tied: bool) -> SimpleNamespace:
    return SimpleNamespace(**{**GPT2_DEFAULTS, "n_layer": args["n_layer"], "n_head": args["n_head"],
                              "n_embd": args["n_embd"], "n_positions": args["block_size"],
                              "vocab_size": args["vocab_size"], "layer_norm_epsilon": 1e-5,
                              "tie_word_embeddings": tied,
                              "activation_function": "gelu"})  # nanoGPT's nn.GELU() is the exact (erf) GELU


def to_hf_layout(sd: StateDict, want: dict[str, tuple[int, ...]], zero_biases: bool) -> StateDict:
    """nanoGPT tensors in HF GPT-2 layout: Linear weights transposed to Conv1D's; with
    `zero_biases` (nanoGPT's bias=False) the biases it lacks are zeros, which is the same function."""
    out: StateDict = {}
    for key, value in sd.items():
        name = canonical_name(key)
        if name is not None:
            out[name] = value.t() if name.endswith(TRANSPOSED) and value.dim() == 2 else value
    if zero_biases:
        for name, shape in want.items():
            if name.endswith(".bias") and name not in out:
                out[name] = torch.zeros(shape)
    return out


def nanogpt_tokens(obj: dict, step: int) -> int | None:
    """Training tokens by `step` as nanoGPT counts them: iterations x gradient_accumulation_steps
    x batch_size x block_size, from the config it saved (recorded before DDP divides the
    accumulation steps, so it is the global figure)."""
    cfg = obj.get("config")
    if not isinstance(cfg, dict):
        return None
    parts = [cfg.get(k) for k in ("gradient_accumulation_steps", "batch_size", "block_size")]
    if any(isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in parts):
        return None
    return step * parts[0] * parts[1] * parts[2]


def nanogpt_checkpoint(path: Path) -> SourceCheckpoint:
    obj = torch_load(path)
    sd, args = nanogpt_model(obj, path)
    config = nanogpt_config(args, nanogpt_tied(sd))
    label = str(path)
    found = {k: tuple(v.shape) for k, v in to_hf_layout(sd, {}, False).items()}
    want = expected_shapes(config, label, found)
    zero_biases = args.get("bias", True) is False
    check_shapes(label, config, {k: tuple(v.shape) for k, v in to_hf_layout(sd, want, zero_biases).items()}, want)
    it = obj.get("iter_num")
    step = it if isinstance(it, int) and not isinstance(it, bool) and it >= 0 else None
    notes = ["nanoGPT bias=False: imported with zero biases (the same function)."] if zero_biases else []

    def read() -> StateDict:
        fresh, _ = nanogpt_model(torch_load(path), path)
        return {k: v.to(torch.float32).contiguous() for k, v in to_hf_layout(fresh, want, zero_biases).items()}

    return SourceCheckpoint(label=label, step=step, tokens=None if step is None else nanogpt_tokens(obj, step),
                            config=config, read=read,
                            mtime=path.stat().st_mtime, notes=notes)
