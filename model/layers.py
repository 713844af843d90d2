"""The pieces of a GPT-2 block, each with TransformerLens hook points at the same names and shapes."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from model.config import GPTConfig


def is_hooked(hook: HookPoint) -> bool:
    """True when a forward or backward hook is attached: lets us skip work (explicit attention,
    per-head results, manual LayerNorm) that nobody will look at. Backward hooks count too: a
    HookPoint that the fast path never calls would silently never fire them."""
    return len(hook.fwd_hooks) > 0 or len(hook.bwd_hooks) > 0


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens' hooks: `hook_scale` [B,P,1] holds sqrt(var(x) + eps) and
    `hook_normalized` [B,P,M] holds (x - mean(x)) / scale, before the gain and bias, as in
    TransformerLens' LayerNorm and TransformerBridge's NormalizationBridge; the output is
    normalized * weight + bias. So logit-lens or direct-logit-attribution code written for
    TransformerLens reads the same numbers here, and an edit of either hook flows to the output.

    When neither hook is hooked the fused F.layer_norm runs instead (same numbers within float
    rounding, <= 1e-6 for unit-scale activations)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.eps = cfg.ln_eps
        self.weight = nn.Parameter(torch.ones(cfg.n_embd))
        self.bias = nn.Parameter(torch.zeros(cfg.n_embd)) if cfg.bias else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (is_hooked(self.hook_scale) or is_hooked(self.hook_normalized)):
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return self.hooked_forward(x)

    def hooked_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The LayerNorm spelled out so that both hooks see their values; in float32 (as F.layer_norm
        computes internally, and as TransformerLens does) and cast back to the input dtype."""
        in_dtype = x.dtype
        x = x.float() if in_dtype not in (torch.float32, torch.float64) else x
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(centred / scale)
        y = normalized * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.to(in_dtype)


GELU_C = 2 * math.sqrt(2 / math.pi)   # tanh GELU: 0.5 x (1 + tanh(z)) = x sigmoid(2z), with
GELU_K = 0.044715                     # z = sqrt(2/pi) (x + 0.044715 x^3)
GELU_BLOCK = 1 << 16                  # values per block of TanhGELUOnCPU's passes (256 KiB in float32)


class TanhGELUOnCPU(torch.autograd.Function):
    """GPT-2's tanh GELU in its sigmoid form, x * sigmoid(2z), computed in place block by block: on
    CPU torch's tanh-GELU kernel is slow (on one thread of the development machine 3.8 ns a value
    at a million values and 7.4 at 16 million, against 2.4 and 4.5 for this form and 0.9 for the
    erf GELU), and the probes' forwards spent 13% of their time in it. Values agree with torch's kernel within 5e-7; the gradient is torch's own
    gelu_backward (it is fast), so training gains the forward's saving too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        flat_x, flat_out = x.reshape(-1), out.view(-1)
        for i in range(0, flat_x.numel(), GELU_BLOCK):  # five passes over a block that stays in cache
            xb, ob = flat_x[i:i + GELU_BLOCK], flat_out[i:i + GELU_BLOCK]
            torch.mul(xb, xb, out=ob).mul_(GELU_K * GELU_C).add_(GELU_C).mul_(xb).sigmoid_().mul_(xb)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """F.gelu, but the tanh form on CPU through TanhGELUOnCPU (elsewhere torch's fused kernel is
    the fast one)."""
    if approximate == "tanh" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return TanhGELUOnCPU.apply(x)
    return F.gelu(x, approximate=approximate)


class MLP(nn.Module):
    """Position-wise 4x MLP with tanh-GELU (GPT-2's `gelu_new`), or the exact GELU when the config
    says `activation="gelu"` (nanoGPT's)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d_mlp = cfg.d_mlp
        self.c_fc = nn.Linear(cfg.n_embd, d_mlp, bias=cfg.bias)
        self.c_proj = nn.Linear(d_mlp, cfg.n_embd, bias=cfg.bias)
        self.approximate = "tanh" if cfg.activation == "gelu_new" else "none"
        self.c_proj.residual_projection = True  # scaled init, see GPT._init_weights
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.c_fc(x))
        post = self.hook_post(gelu(pre, self.approximate))
        return self.dropout(self.c_proj(post))


class Block(nn.Module):
    """Pre-LN transformer block: resid_pre -> +attn -> resid_mid -> +mlp -> resid_post.

    With `cfg.attn_only` (Olsson et al. 2022) the block has no ln2 and no MLP, and so, as
    TransformerLens' attn-only HookedTransformer, no hook_resid_mid, hook_mlp_out, ln2.* or mlp.*
    hooks: resid_pre -> +attn -> resid_post."""

    def __init__(self, cfg: GPTConfig, attention_cls: type[nn.Module]):
        super().__init__()
        self.attn_only = cfg.attn_only
        self.ln1 = LayerNorm(cfg)
        self.attn = attention_cls(cfg)
        if not self.attn_only:
            self.ln2 = LayerNorm(cfg)
            self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        if not self.attn_only:
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor, layer_cache: dict | None = None, offset: int = 0) -> torch.Tensor:
        resid_pre = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), layer_cache, offset))
        if self.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


def causal_mask(n_query: int, n_key: int, offset: int, device: torch.device) -> torch.Tensor:
    """Boolean [n_query, n_key] mask, True where query i (at absolute position offset+i) may see key j."""
    q_pos = torch.arange(offset, offset + n_query, device=device)[:, None]
    k_pos = torch.arange(n_key, device=device)[None, :]
    return k_pos <= q_pos


def init_scale(cfg: GPTConfig) -> float:
    """GPT-2 init std for projections that write into the residual stream."""
    return 0.02 / math.sqrt(2 * cfg.n_layer)
