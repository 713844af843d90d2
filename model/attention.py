"""Pluggable causal self-attention. Adding a kind is one class plus one entry in ATTENTION.

Every kind exposes the TransformerLens hook vocabulary: `hook_q`, `hook_k`, `hook_v`, `hook_z`
[B,P,H,D], `hook_attn_scores` and `hook_pattern` [B,H,P,P], and `hook_result` [B,P,H,M] (computed
only when hooked). During cached generation the query axis has the new positions only and the
key axis every position so far, as in TransformerLens.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from .config import GPTConfig
from .layers import causal_mask, is_hooked


class StandardAttention(nn.Module):
    """GPT-2 causal softmax attention. Runs through F.scaled_dot_product_attention (flash on GPU)
    unless the scores or the pattern are hooked, in which case it materialises them."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.d_head, self.n_embd = cfg.n_head, cfg.d_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_projection = True
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()

    # -- pieces -------------------------------------------------------------------------------
    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, P, _ = x.shape
        q, k, v = self.c_attn(x).view(B, P, 3, self.n_head, self.d_head).unbind(2)
        return self.hook_q(q), self.hook_k(k), self.hook_v(v)

    @staticmethod
    def extend_cache(layer_cache: dict | None, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's keys/values to the generation cache and return all of them."""
        if layer_cache is None:
            return k, v
        if "k" in layer_cache:
            k = torch.cat([layer_cache["k"], k], dim=1)
            v = torch.cat([layer_cache["v"], v], dim=1)
        layer_cache["k"], layer_cache["v"] = k, v
        return k, v

    def explicit_pattern(self, q: torch.Tensor, k: torch.Tensor, offset: int) -> torch.Tensor:
        """Softmax pattern [B,H,Q,K] through the hooks; masked scores are -inf as in TransformerLens."""
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        mask = causal_mask(q.shape[1], k.shape[1], offset, q.device)
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        if self.training and self.dropout > 0:
            pattern = F.dropout(pattern, self.dropout)
        return pattern

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int) -> torch.Tensor:
        """z [B,Q,H,D] = pattern @ v, by SDPA when nobody looks at the pattern."""
        if is_hooked(self.hook_attn_scores) or is_hooked(self.hook_pattern):
            return torch.einsum("bhqk,bkhd->bqhd", self.explicit_pattern(q, k, offset), v)
        n_q, n_k = q.shape[1], k.shape[1]
        mask, is_causal = None, False
        if n_q == n_k:
            is_causal = True
        elif n_q > 1:
            mask = causal_mask(n_q, n_k, offset, q.device)
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal,
        )
        return z.transpose(1, 2)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Output projection; per-head results [B,P,H,M] only when `hook_result` is hooked."""
        B, P = z.shape[:2]
        if is_hooked(self.hook_result):
            w = self.c_proj.weight.view(self.n_embd, self.n_head, self.d_head)
            result = self.hook_result(torch.einsum("bphd,mhd->bphm", z, w))
            out = result.sum(dim=2)
            if self.c_proj.bias is not None:
                out = out + self.c_proj.bias
        else:
            out = self.c_proj(z.reshape(B, P, self.n_embd))
        return self.resid_dropout(out)

    def forward(self, x: torch.Tensor, layer_cache: dict | None = None, offset: int = 0) -> torch.Tensor:
        q, k, v = self.qkv(x)
        k, v = self.extend_cache(layer_cache, k, v)
        z = self.hook_z(self.mix(q, k, v, offset))
        return self.project(self.gate(z, x))

    def gate(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return z


class GatedAttention(StandardAttention):
    """Softmax attention whose per-head output is multiplied elementwise by a sigmoid gate computed
    from the attention input (Qiu et al. 2025, "Gated Attention for Large Language Models", the
    SDPA-output gate G1). Exposes the gate at `hook_gate` [B,P,H,D]."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.c_gate = nn.Linear(cfg.n_embd, cfg.n_embd, bias=True)
        self.hook_gate = HookPoint()

    def gate(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, P, _ = x.shape
        g = self.hook_gate(torch.sigmoid(self.c_gate(x)).view(B, P, self.n_head, self.d_head))
        return z * g


ATTENTION: dict[str, type[nn.Module]] = {
    "standard": StandardAttention,
    "gated": GatedAttention,
}
