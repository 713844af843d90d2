"""Running a model through the hook interface only, so every probe works on `model.GPT` and on a
TransformerLens bridge (`model.interop.to_transformer_lens`) alike: `model(tokens)` -> logits,
`run_with_hooks`, and `model.cfg.n_layers / n_heads / n_ctx / d_vocab`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from model.gpt import GPT, check_sampling_args, sample_next

Hook = tuple[str, Callable]


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def resid_pre_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def shape_of(model: Any) -> tuple[int, int, int]:
    """(n_layers, n_heads, n_ctx) from a GPT's or a TransformerLens model's cfg."""
    cfg = model.cfg
    return int(cfg.n_layers), int(cfg.n_heads), int(cfg.n_ctx)


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def split_tokens(model: Any, tokens: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a [B, P+1] batch: inputs tokens[:, :-1], targets tokens[:, 1:]."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.shape[0] < 1:
        raise ValueError(f"tokens must have shape [batch, positions + 1] with at least 2 positions, "
                         f"got {tuple(tokens.shape)}.")
    n_ctx = shape_of(model)[2]
    if tokens.shape[1] - 1 > n_ctx:
        raise ValueError(f"tokens hold {tokens.shape[1] - 1} input positions, more than the model's "
                         f"context n_ctx={n_ctx}.")
    vocab = int(model.cfg.d_vocab)
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}), got ids from {int(tokens.min())} to {int(tokens.max())}.")
    tokens = tokens.to(model_device(model))
    return tokens[:, :-1], tokens[:, 1:]


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position [B, P], in float32."""
    B, P, V = logits.shape
    return F.cross_entropy(logits.reshape(B * P, V).float(), targets.reshape(B * P), reduction="none").view(B, P)


def entropy_of_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax of each row of logits [..., V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def forward_in_chunks(model: Any, inputs: torch.Tensor, rows: int, fn: Callable[[torch.Tensor, slice], None]) -> None:
    """Call fn(logits, row_slice) for `rows` rows at a time, so that logits of a large batch with a
    large vocabulary never sit in memory all at once."""
    for start in range(0, len(inputs), rows):
        sl = slice(start, start + rows)
        fn(model(inputs[sl]), sl)


def rows_for(model: Any, positions: int, budget_bytes: int = 256 * 2**20) -> int:
    """How many rows of `positions` float32 logits fit in the budget (at least 1)."""
    return max(1, budget_bytes // max(1, positions * int(model.cfg.d_vocab) * 4))


@torch.no_grad()
def generate(model: Any, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_p: float | None = None, seed: int | None = None) -> torch.Tensor:
    """prompt + continuation [B, P+N]. On `model.GPT` this is `GPT.generate` (KV cache); on any
    other hooked model the same sampling rule and seeded generator run over full recomputation,
    so both give the same tokens for the same logits."""
    tokens = torch.as_tensor(tokens, dtype=torch.long).to(model_device(model))
    if isinstance(model, GPT):
        return model.generate(tokens, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    check_sampling_args(max_new_tokens, temperature, None, top_p)
    n_ctx = shape_of(model)[2]
    gen = torch.Generator(device=tokens.device).manual_seed(int(seed)) if seed is not None else None
    out = tokens
    for _ in range(max_new_tokens):
        logits = model(out[:, -n_ctx:])
        out = torch.cat([out, sample_next(logits[:, -1, :], temperature, None, top_p, gen)], dim=1)
    return out
