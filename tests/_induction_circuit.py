"""A two-layer attention-only GPT whose weights are written by hand to hold the induction circuit of
Olsson et al. (2022): head L0H0 is a previous-token head that writes the previous token into a
subspace of its own, and head L1H0 an induction head whose key reads that subspace (K-composition
with L0H0) and whose query reads the current token, so it attends to the token after an earlier
occurrence of the current one and copies it (its OV circuit maps each token to itself). The other
head of each layer keeps small random weights, unless `moved` puts the induction head there.
Shared by the head-role, composition and circuit tests.

Residual stream (d_model = 2 V + n_ctx): dims [0, V) the token, [V, V + n_ctx) the position,
[V + n_ctx, 2 V + n_ctx) the previous token (written by L0H0). Each layer's two heads have
d_head = d_model / 2, enough room for a head dim per token and per position.
"""
from __future__ import annotations

import torch

from model.config import GPTConfig
from model.gpt import GPT

V, N_CTX = 40, 32
M = 2 * V + N_CTX
H = 2
D = M // H
TOK, POS, PREV = 0, V, V + N_CTX  # where each block of the residual stream starts
BOS = 0
QK_PREV, QK_INDUCTION, OV_SCALE = 2.0, 3.0, 0.15  # sharp attention; L0H0's output about 1 in the stream


def circuit_parts() -> dict[str, torch.Tensor]:
    """The hand-written per-head matrices, TransformerLens layout: W_Q, W_K, W_V [M, D], W_O [D, M]."""
    parts = {f"{l}.{n}": torch.zeros(M, D) if n != "W_O" else torch.zeros(D, M)
             for l in range(2) for n in ("W_Q", "W_K", "W_V", "W_O")}
    for p in range(N_CTX):  # L0H0: query at position p matches the key at p - 1
        parts["0.W_Q"][POS + p, p] = QK_PREV
        if p + 1 < D:
            parts["0.W_K"][POS + p, p + 1] = QK_PREV
    for t in range(V):
        parts["0.W_V"][TOK + t, t] = OV_SCALE    # L0H0 moves the attended token ...
        parts["0.W_O"][t, PREV + t] = 1.0        # ... into the previous-token block
        parts["1.W_Q"][TOK + t, t] = QK_INDUCTION   # L1H0: the current token ...
        parts["1.W_K"][PREV + t, t] = QK_INDUCTION  # ... against each key's previous token
        parts["1.W_V"][TOK + t, t] = OV_SCALE    # and copies the attended token
        parts["1.W_O"][t, TOK + t] = 1.0
    return parts


@torch.no_grad()
def circuit_model(previous: float = 1.0, induction: float = 1.0, seed: int = 0, jitter: float = 0.0,
                  jitter_seed: int = 0, moved: float = 0.0) -> GPT:
    """The model with L0H0's weights at `previous` x the circuit and L1H0's at `induction` x it (0:
    only the random init's weights, N(0, 0.02) from `seed`, which every head keeps underneath);
    `moved` x the induction head's weights go to L1H1 (the job moving to another head).
    `jitter` adds N(0, jitter) noise from `jitter_seed` to every attention weight: a checkpoint's
    wobble."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=H, n_embd=M, n_ctx=N_CTX, vocab_size=V, attn_only=True)).eval()
    model.wte.weight.zero_()
    model.wte.weight[torch.arange(V), TOK + torch.arange(V)] = 1.0
    model.wpe.weight.zero_()
    model.wpe.weight[torch.arange(N_CTX), POS + torch.arange(N_CTX)] = 1.0
    parts = circuit_parts()
    gen = torch.Generator().manual_seed(jitter_seed)
    for layer, head, scale in ((0, 0, previous), (1, 0, induction), (1, 1, moved)):
        attn, rows = model.blocks[layer].attn, slice(head * D, (head + 1) * D)
        for i, name in enumerate(("W_Q", "W_K", "W_V")):  # head h's rows of c_attn [3M, M]: i*M + h*D ...
            attn.c_attn.weight[i * M:(i + 1) * M][rows] += scale * parts[f"{layer}.{name}"].t()
        attn.c_proj.weight[:, rows] += scale * parts[f"{layer}.W_O"].t()
    for block in model.blocks:
        for w in (block.attn.c_attn.weight, block.attn.c_proj.weight):
            w += jitter * torch.randn(w.shape, generator=gen)
    return model
