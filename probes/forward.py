"""Running a model through the hook interface only, so every probe works on `model.GPT` and on a
TransformerLens bridge (`model.interop.to_transformer_lens`) alike: `model(tokens)` -> logits,
`run_with_hooks`, and `model.cfg.n_layers / n_heads / n_ctx / d_vocab`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

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


# Logits materialised at once by the chunked readout: 32 MiB of float32, so 167 positions at GPT-2's
# vocabulary of 50257 (2048 at the nano demo's 4096). Small enough to stay out of the way of a
# [16, 512] batch (whose logits would be 1.5 GiB), large enough that the unembedding matmul runs at
# full speed.
LOSS_CHUNK_BYTES = 32 * 2**20
# Rows of one forward that fit FORWARD_BUDGET_BYTES when no logits are held: the residual stream and
# one layer's intermediates, about 14 floats of the width per position (model.memory.FORWARD_PER_POSITION).
FORWARD_BUDGET_BYTES = 256 * 2**20
FORWARD_FLOATS_PER_WIDTH = 14


def final_resid_name(model: Any) -> str:
    """The hook holding the residual stream after the last block (the input of ln_final)."""
    return f"blocks.{shape_of(model)[0] - 1}.hook_resid_post"


def width_of(model: Any) -> int:
    cfg = model.cfg
    return int(getattr(cfg, "d_model", None) or getattr(cfg, "n_embd"))


@dataclass
class TokenStats:
    """Per-position results of one teacher-forced forward, each [B, P]: the cross-entropy of the
    target (float32), and when asked the argmax prediction and the predictive entropy (nats)."""

    losses: torch.Tensor
    argmax: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


def loss_chunk_positions(model: Any) -> int:
    """Positions whose logits the chunked readout holds at once (LOSS_CHUNK_BYTES)."""
    return max(1, LOSS_CHUNK_BYTES // (4 * int(model.cfg.d_vocab)))


def readout(model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The map from the residual stream after the last block [1, n, M] to logits [1, n, V]:
    ln_final, then the unembedding. On `model.GPT` it is the fused LayerNorm and the tied (or
    separate) unembedding its forward uses, so it computes the same numbers; on a TransformerLens
    model or bridge it is its own `ln_final` and `unembed` modules. None when the model offers
    neither (then callers fall back to whole logits, row by row)."""
    if isinstance(model, GPT):
        weight = model.wte.weight if model.lm_head is None else model.lm_head.weight
        return lambda x: F.linear(model.ln_final(x), weight)
    ln, unembed = getattr(model, "ln_final", None), getattr(model, "unembed", None)
    if callable(ln) and callable(unembed) and hasattr(model, "run_with_hooks"):
        return lambda x: unembed(ln(x))
    return None


def stats_from_residual(resid: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                        chunk: int, argmax: bool = False, entropy: bool = False) -> TokenStats:
    """Per-token cross-entropy (and argmax, entropy) from the residual stream after the last block.

    `resid` [B, P, M] is the last block's output, *before* ln_final (what `blocks.{L-1}.hook_resid_post`
    holds on every hooked model); `head` is `readout(model)`, applied to `chunk` positions at a time,
    so no more than [chunk, V] logits exist at once, never [B, P, V]. LayerNorm acts per position,
    so chunking across sequence boundaries changes nothing."""
    B, P, M = resid.shape
    flat, tgt = resid.reshape(B * P, M), targets.reshape(B * P).to(resid.device)
    losses = torch.empty(B * P, dtype=torch.float32, device=resid.device)
    preds = torch.empty(B * P, dtype=torch.long, device=resid.device) if argmax else None
    ent = torch.empty(B * P, dtype=torch.float32, device=resid.device) if entropy else None
    for start in range(0, B * P, max(1, int(chunk))):
        sl = slice(start, start + max(1, int(chunk)))
        logits = head(flat[sl][None])[0].float()
        losses[sl] = F.cross_entropy(logits, tgt[sl], reduction="none")
        if preds is not None:
            preds[sl] = logits.argmax(-1)
        if ent is not None:
            ent[sl] = entropy_of_logits(logits)
    return TokenStats(losses.view(B, P), None if preds is None else preds.view(B, P),
                      None if ent is None else ent.view(B, P))


def stats_from_logits(logits: torch.Tensor, targets: torch.Tensor, argmax: bool = False,
                      entropy: bool = False) -> TokenStats:
    """The same numbers from whole logits [B, P, V] (the fallback, and the reference in tests)."""
    return TokenStats(token_losses(logits, targets), logits.argmax(-1) if argmax else None,
                      entropy_of_logits(logits) if entropy else None)


class _Stop(Exception):
    """Raised by a hook to end a forward once the residual stream it needs has been seen."""

    def __init__(self, value: torch.Tensor):
        super().__init__("forward stopped after the last block")
        self.value = value


@torch.no_grad()
def final_residual(model: Any, inputs: torch.Tensor, fwd_hooks: Iterable[Hook] = (), **forward_kwargs) -> torch.Tensor:
    """The residual stream after the last block [B, P, M] of one forward with `fwd_hooks`: the
    forward stops there (a hook raises), so neither ln_final nor the [B, P, V] unembedding runs."""
    def stop(x: torch.Tensor, hook: Any) -> None:
        raise _Stop(x)

    try:
        model.run_with_hooks(inputs, fwd_hooks=[*fwd_hooks, (final_resid_name(model), stop)], **forward_kwargs)
    except _Stop as done:
        return done.value
    raise RuntimeError(f"the forward never reached {final_resid_name(model)}; this model does not offer the "
                       "hook the chunked losses need.")


@torch.no_grad()
def token_stats(model: Any, inputs: torch.Tensor, targets: torch.Tensor, fwd_hooks: Iterable[Hook] = (),
                argmax: bool = False, entropy: bool = False, **forward_kwargs) -> TokenStats:
    """Per-token losses (and argmax, entropy) of one forward over `inputs` [B, P] against
    `targets` [B, P], holding at most `loss_chunk_positions` positions of logits at once.

    Works on any hooked model that offers `readout`; on any other (only `model(tokens)`) the
    logits are computed whole, row by row within the old logit budget (`logit_rows`), or in one
    call when hooks must see the whole batch."""
    fwd_hooks = list(fwd_hooks)
    head = readout(model)
    if head is not None:
        resid = final_residual(model, inputs, fwd_hooks, **forward_kwargs)
        return stats_from_residual(resid, targets, head, loss_chunk_positions(model), argmax, entropy)
    if fwd_hooks or forward_kwargs:
        logits = model.run_with_hooks(inputs, fwd_hooks=fwd_hooks, **forward_kwargs)
        return stats_from_logits(logits, targets.to(logits.device), argmax, entropy)
    parts: list[TokenStats] = []
    forward_in_chunks(model, inputs, logit_rows(model, inputs.shape[1]),
                      lambda logits, sl: parts.append(stats_from_logits(logits, targets[sl].to(logits.device),
                                                                        argmax, entropy)))
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    return TokenStats(cat([p.losses for p in parts]), cat([p.argmax for p in parts]), cat([p.entropy for p in parts]))


def forward_rows(model: Any, positions: int, budget_bytes: int = FORWARD_BUDGET_BYTES) -> int:
    """How many rows of `positions` fit one forward within the budget when no logits are held
    (the chunked readout's are a fixed LOSS_CHUNK_BYTES): at least 1."""
    per_row = 4 * max(1, int(positions)) * FORWARD_FLOATS_PER_WIDTH * width_of(model)
    return max(1, budget_bytes // per_row)


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


def logit_rows(model: Any, positions: int, budget_bytes: int = 256 * 2**20) -> int:
    """How many rows of `positions` float32 logits fit in the budget (at least 1)."""
    return max(1, budget_bytes // max(1, positions * int(model.cfg.d_vocab) * 4))


@torch.no_grad()
def generate(model: Any, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_p: float | None = None, seed: int | None = None) -> torch.Tensor:
    """prompt + continuation [B, P+N]. On `model.GPT` this is `GPT.generate` (KV cache); on any
    other hooked model the same sampling rule and seeded generator run over full recomputation,
    so both give the same tokens for the same logits."""
    tokens = torch.as_tensor(tokens, dtype=torch.long).to(model_device(model))
    if tokens.dim() == 2 and temperature == 0:
        # Greedy rows are independent, so a large batch runs in parts whose first forward (the
        # whole prompt's [rows, P, V] logits) fits the logit budget. Sampling is not split: its
        # seeded generator draws for the whole batch at once.
        rows = logit_rows(model, min(tokens.shape[1], shape_of(model)[2]))
        if len(tokens) > rows:
            return torch.cat([generate(model, tokens[i:i + rows], max_new_tokens, temperature, top_p, seed)
                              for i in range(0, len(tokens), rows)])
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
