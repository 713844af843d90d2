"""Running a model through the hook interface only, so every probe works on `model.GPT` and on a
TransformerLens bridge (`model.interop.to_transformer_lens`) alike: `model(tokens)` -> logits,
`run_with_hooks`, and `model.cfg.n_layers / n_heads / n_ctx / d_vocab`.
"""
from __future__ import annotations

import math
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


# The blocked readout (`model.GPT`): the unembedding runs READOUT_ROWS positions by
# READOUT_VOCAB_BLOCK logits at a time (4 MiB of float32, the size of this machine's L2 caches
# together), and the log-sum-exp, argmax and entropy are carried across the vocabulary blocks
# (online softmax), so the logits of a position never exist whole. Measured on a 2-core CPU at
# GPT-2's vocabulary: 1.6-2.5x faster than reading out 167 whole rows of logits at a time, since
# the [rows, 50257] logits no longer go to main memory and back for the log-softmax; the losses
# agree to float32 rounding (2e-6 nats).
READOUT_ROWS = 512
READOUT_VOCAB_BLOCK = 2048


@dataclass
class Readout:
    """The map from the residual stream after the last block [1, n, M] to logits [1, n, V]:
    `norm` (ln_final), then the unembedding. `weight` [V, M] (and `bias` [V] or None) when the
    unembedding is a plain matrix, so the losses can be read out block by block
    (`blocked_stats`); `unembed` otherwise."""

    norm: Callable[[torch.Tensor], torch.Tensor]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    unembed: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(self.norm(x), self.weight, self.bias)
        return self.unembed(self.norm(x))


def readout(model: Any) -> Readout | None:
    """ln_final then the unembedding of `model`. On `model.GPT` it is the fused LayerNorm and the
    tied (or separate) unembedding its forward uses, so it computes the same numbers; on a
    TransformerLens model or bridge it is its own `ln_final` and `unembed` modules. None when the
    model offers neither (then callers fall back to whole logits, row by row)."""
    if isinstance(model, GPT):
        return Readout(model.ln_final, model.wte.weight if model.lm_head is None else model.lm_head.weight)
    ln, unembed = getattr(model, "ln_final", None), getattr(model, "unembed", None)
    if callable(ln) and callable(unembed) and hasattr(model, "run_with_hooks"):
        return Readout(ln, unembed=unembed)
    return None


def target_logits(x: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """Each position's logit of its own target [n], from its unembedding row alone (in x's dtype)."""
    return (x * weight[targets].to(x.dtype)).sum(-1) + (0 if bias is None else bias[targets].to(x.dtype))


def blocked_stats(x: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  argmax: bool, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(losses, argmax, entropy) of normed positions x [n, M] under the unembedding weight [V, M],
    READOUT_VOCAB_BLOCK logits at a time: the running maximum m, s = sum exp(z - m) and
    t = sum exp(z - m)(z - m) are rescaled whenever m grows, so log-sum-exp = m + log s, the
    loss = log-sum-exp - z[target] and the entropy = log s - t / s. The argmax keeps the first
    maximum, as torch.argmax does."""
    x = x.float()
    n, V = len(x), weight.shape[0]
    m = torch.full((n,), -math.inf, device=x.device)
    s = torch.zeros(n, device=x.device)
    t = torch.zeros(n, device=x.device) if entropy else None
    best = torch.zeros(n, dtype=torch.long, device=x.device) if argmax else None
    for v0 in range(0, V, READOUT_VOCAB_BLOCK):
        z = F.linear(x, weight[v0:v0 + READOUT_VOCAB_BLOCK].float(),
                     None if bias is None else bias[v0:v0 + READOUT_VOCAB_BLOCK].float())
        if argmax:
            idx = z.argmax(-1)
            top = z.gather(-1, idx[:, None])[:, 0]
            best = torch.where(top > m, idx + v0, best)
        else:
            top = z.amax(-1)
        new_m = torch.maximum(m, top)
        scale = torch.exp(m - new_m)  # 0 on the first block, where m is -inf and s, t are 0
        z.sub_(new_m[:, None])
        if entropy:  # t rebased to new_m: sum e^(z-m) scale ((z - m) + (m - new_m))
            t = torch.where(s > 0, scale * (t + (m - new_m) * s), 0.0)
            e = z.exp()
            t = t + torch.einsum("rv,rv->r", e, z)
            s = s * scale + e.sum(-1)
        else:
            s = s * scale + z.exp_().sum(-1)
        m = new_m
    log_s = torch.log(s)
    losses = m + log_s - target_logits(x, targets, weight, bias)
    return losses, best, (log_s - t / s) if entropy else None


def blocked_loss_grad(x: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-position losses [n], d summed loss / d x [n, M]) of normed positions x under the
    unembedding weight [V, M], in one pass over READOUT_VOCAB_BLOCK logits at a time. The softmax-
    weighted unembedding u = sum e^(z - m) W_v is carried across blocks beside s = sum e^(z - m)
    (both rescaled when the running maximum m grows), so d loss / d x = u / s - W[target] without
    the [n, V] logits or their gradient ever existing. In x's precision (float64 stays float64)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    n, V = len(x), weight.shape[0]
    m = torch.full((n,), -math.inf, dtype=dtype, device=x.device)
    s = torch.zeros(n, dtype=dtype, device=x.device)
    u = torch.zeros_like(x)
    for v0 in range(0, V, READOUT_VOCAB_BLOCK):
        w = weight[v0:v0 + READOUT_VOCAB_BLOCK].to(dtype)
        z = F.linear(x, w, None if bias is None else bias[v0:v0 + READOUT_VOCAB_BLOCK].to(dtype))
        new_m = torch.maximum(m, z.amax(-1))
        scale = torch.exp(m - new_m)
        e = torch.exp(z.sub_(new_m[:, None]))
        s = s * scale + e.sum(-1)
        u = u * scale[:, None] + e @ w
        m = new_m
    return m + torch.log(s) - target_logits(x, targets, weight, bias), u / s[:, None] - weight[targets].to(dtype)


def stats_from_residual(resid: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                        chunk: int, argmax: bool = False, entropy: bool = False) -> TokenStats:
    """Per-token cross-entropy (and argmax, entropy) from the residual stream after the last block.

    `resid` [B, P, M] is the last block's output, *before* ln_final (what `blocks.{L-1}.hook_resid_post`
    holds on every hooked model); `head` is `readout(model)`. With a plain unembedding matrix the
    losses are read out block by block (`blocked_stats`, READOUT_ROWS positions at a time);
    otherwise `head` is applied to `chunk` positions at a time, so no more than [chunk, V] logits
    exist at once, never [B, P, V]. LayerNorm acts per position, so chunking across sequence
    boundaries changes nothing."""
    B, P, M = resid.shape
    flat, tgt = resid.reshape(B * P, M), targets.reshape(B * P).to(resid.device)
    losses = torch.empty(B * P, dtype=torch.float32, device=resid.device)
    preds = torch.empty(B * P, dtype=torch.long, device=resid.device) if argmax else None
    ent = torch.empty(B * P, dtype=torch.float32, device=resid.device) if entropy else None
    blocked = isinstance(head, Readout) and head.weight is not None
    step = READOUT_ROWS if blocked else max(1, int(chunk))
    for start in range(0, B * P, step):
        sl = slice(start, start + step)
        if blocked:
            loss, pred, h = blocked_stats(head.norm(flat[sl][None])[0], tgt[sl], head.weight, head.bias, argmax, entropy)
            losses[sl] = loss
            if preds is not None:
                preds[sl] = pred
            if ent is not None:
                ent[sl] = h
            continue
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
    return residual_with_grad(model, inputs, fwd_hooks, **forward_kwargs)


def residual_with_grad(model: Any, inputs: torch.Tensor, fwd_hooks: Iterable[Hook] = (), **forward_kwargs) -> torch.Tensor:
    """`final_residual` under the caller's grad mode (attribution differentiates through it)."""
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
        # Greedy rows are independent, so a large batch runs in parts whose first forward fits
        # the budget: GPT.generate reads out the last position only, so its activations; other
        # models' whole [rows, P, V] logits. Sampling is not split: its seeded generator draws
        # for the whole batch at once.
        positions = min(tokens.shape[1], shape_of(model)[2])
        rows = forward_rows(model, positions) if isinstance(model, GPT) else logit_rows(model, positions)
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
