"""Pluggable causal self-attention. Adding a kind is one class with its @register_attention line.

Every kind exposes the TransformerLens hook vocabulary: `hook_q`, `hook_k`, `hook_v`, `hook_z`
[B,P,H,D], `hook_attn_scores` and `hook_pattern` [B,H,P,P], and `hook_result` [B,P,H,M] (computed
only when hooked). During cached generation the query axis has the new positions only and the
key axis every position so far, as in TransformerLens.

Kinds: `standard` (GPT-2 softmax attention), `gated` (softmax attention with a sigmoid output
gate, Qiu et al. 2025) and `linear` (causal linear attention, Katharopoulos et al. 2020).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from model.config import GPTConfig, register_attention
from model.layers import causal_mask, is_hooked


@register_attention("standard")
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


@register_attention("gated")
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


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1 (Katharopoulos et al. 2020): strictly positive, so every kernel value
    phi(q).phi(k) is positive and the normalised weights form a distribution. In float32: the
    prefix sums add up to P terms."""
    return F.elu(x.float()) + 1.0


def causal_linear_attention(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor,
                            state: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int = 64,
                            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """z_i = phi(q_i).S_i / phi(q_i).s_i with S_i = S_0 + sum_{j<=i} phi(k_j) v_j^T and
    s_i = s_0 + sum_{j<=i} phi(k_j), computed chunk by chunk in O(P) memory.

    fq, fk: [B,P,H,D] feature-mapped queries/keys; v: [B,P,H,E]; state: (S_0 [B,H,D,E],
    s_0 [B,H,D]) carried over from earlier positions, or None. Within a chunk of C positions the
    causal C x C kernel is formed explicitly; across chunks the exclusive prefix sums of the
    per-chunk states carry the past. Memory is O(P*C + (P/C)*D*E), linear in P. Returns z
    [B,P,H,E] and the state after the last position.
    """
    B, P, H, D = fq.shape
    E = v.shape[-1]
    C = max(1, min(chunk, P))
    pad = (-P) % C
    if pad:  # zero keys/values add nothing to the sums; padded queries are dropped below
        fq, fk, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (fq, fk, v))
    N = (P + pad) // C
    q, k, v = fq.view(B, N, C, H, D), fk.view(B, N, C, H, D), v.view(B, N, C, H, E)
    kv = torch.einsum("bnchd,bnche->bnhde", k, v)  # each chunk's contribution to S
    ks = k.sum(dim=2)  # [B,N,H,D], each chunk's contribution to s
    S_before = kv.cumsum(dim=1) - kv  # state entering each chunk (exclusive prefix sum)
    s_before = ks.cumsum(dim=1) - ks
    if state is not None:
        S_before = S_before + state[0][:, None]
        s_before = s_before + state[1][:, None]
    mask = torch.ones(C, C, dtype=torch.bool, device=fq.device).tril()
    kernel = torch.einsum("bnchd,bnjhd->bnhcj", q, k).masked_fill(~mask, 0.0)
    num = torch.einsum("bnchd,bnhde->bnche", q, S_before) + torch.einsum("bnhcj,bnjhe->bnche", kernel, v)
    den = torch.einsum("bnchd,bnhd->bnch", q, s_before) + kernel.sum(dim=-1).transpose(2, 3)
    z = (num / den.unsqueeze(-1)).reshape(B, N * C, H, E)[:, :P]
    new_state = (S_before[:, -1] + kv[:, -1], s_before[:, -1] + ks[:, -1])
    return z, new_state


@register_attention("linear")
class LinearAttention(StandardAttention):
    """Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), feature map
    elu(x)+1, no 1/sqrt(d) scaling and no attention dropout (dropout stays on the output).

    Training and prompt processing run in O(P) memory through chunked prefix sums; generation
    carries a constant-size recurrent state (S [B,H,D,D], s [B,H,D]) per layer in the
    GenerationCache layer dict instead of keys and values.

    Hooks: `hook_q/k/v` hold q, k, v before the feature map. When `hook_attn_scores` or
    `hook_pattern` is hooked the equivalent attention matrix is materialised:
    `hook_attn_scores` holds log(phi(q_i).phi(k_j)) for j <= i and -inf above the diagonal, so
    that softmax over keys gives exactly the linear-attention weights, which are what
    `hook_pattern` holds (rows sum to 1); z is then pattern @ v, so an edited pattern takes
    effect, as in TransformerLens. During cached generation with those hooks attached, the
    feature-mapped keys and the values are kept as well (they must be hooked from the start).
    """

    chunk_size = 64

    def forward(self, x: torch.Tensor, layer_cache: dict | None = None, offset: int = 0) -> torch.Tensor:
        q, k, v = self.qkv(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            fq, fk, vf = feature_map(q), feature_map(k), v.float()
            if is_hooked(self.hook_attn_scores) or is_hooked(self.hook_pattern):
                z = self.explicit(fq, fk, vf, layer_cache, offset)
            else:
                z = self.recurrent(fq, fk, vf, layer_cache, offset)
        z = self.hook_z(z.to(v.dtype))
        return self.project(z)

    def recurrent(self, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor,
                  layer_cache: dict | None, offset: int) -> torch.Tensor:
        """The O(P) path; with a cache, continues from and updates its recurrent state."""
        state = None
        if layer_cache is not None:
            if "fk" in layer_cache:  # the explicit path ran before: keep its history in step
                self.extend_history(layer_cache, fk, v)
            state = layer_cache.get("state")
        z, new_state = causal_linear_attention(fq, fk, v, state, self.chunk_size)
        if layer_cache is not None:
            layer_cache["state"] = new_state
        return z

    @staticmethod
    def extend_history(layer_cache: dict, fk: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if "fk" in layer_cache:
            fk, v = torch.cat([layer_cache["fk"], fk], dim=1), torch.cat([layer_cache["v"], v], dim=1)
        layer_cache["fk"], layer_cache["v"] = fk, v
        return fk, v

    def explicit(self, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor,
                 layer_cache: dict | None, offset: int) -> torch.Tensor:
        """The O(P^2) path that exposes scores and pattern through their hooks."""
        if layer_cache is not None:
            if "state" in layer_cache and "fk" not in layer_cache:
                raise ValueError("linear attention cannot show hook_pattern/hook_attn_scores for positions "
                                 "generated before the hook was attached; attach it before generation starts.")
            S, s = layer_cache.get("state", (0.0, 0.0))
            layer_cache["state"] = (S + torch.einsum("bphd,bphe->bhde", fk, v), s + fk.sum(dim=1))
            fk, v = self.extend_history(layer_cache, fk, v)
        kernel = torch.einsum("bqhd,bkhd->bhqk", fq, fk)
        mask = causal_mask(fq.shape[1], fk.shape[1], offset, fq.device)
        scores = self.hook_attn_scores(kernel.log().masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)
