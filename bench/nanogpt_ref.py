"""A reference of nanoGPT's model.py (Karpathy, github.com/karpathy/nanoGPT), written here from its
public design because nothing can be downloaded at run time. Used only by the bench, as the
"nanoGPT" side of the training-step row: the same modules, names, init and forward as nanoGPT's
GPT, on its flash path (F.scaled_dot_product_attention with is_causal=True, which every torch 2
has), so a timing of it is a timing of nanoGPT's model code.

Faithful to nanoGPT in: LayerNorm with an optional bias (F.layer_norm, eps 1e-5); one nn.Linear
c_attn for q, k, v split along the features; nn.GELU() (the exact, erf GELU); dropout modules;
pre-LN blocks; the unembedding tied to wte; N(0, 0.02) init with zero biases and
N(0, 0.02/sqrt(2 n_layer)) for every c_proj.weight; the loss over all positions with
ignore_index=-1 when targets are given, else the logits of the last position only.
Left out: from_pretrained, crop_block_size, configure_optimizers, estimate_mfu and generate (the
bench builds the same optimizer for both models), and the slow non-flash attention path.
`from_workbench` copies a workbench GPT's weights in, so a test can check that the two compute
the same function (ours with activation="gelu").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class NanoConfig:
    """nanoGPT's GPTConfig (its defaults: GPT-2 small with the vocab padded to 50304)."""

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's nn.LayerNorm had no bias=False then)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: NanoConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: NanoConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: NanoConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT: forward(idx, targets=None) -> (logits, loss)."""

    def __init__(self, config: NanoConfig):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"Cannot forward sequence of length {t}, block size is only {self.config.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # inference: only the last position
            loss = None
        return logits, loss


def config_like(cfg) -> NanoConfig:
    """nanoGPT's config for the shape of a workbench GPTConfig (same vocab, not padded to 50304,
    so both models do the same work)."""
    return NanoConfig(block_size=cfg.n_ctx, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                      n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)


# workbench GPT parameter name in a block -> nanoGPT's (the layouts agree: nn.Linear weights, and
# c_attn's q, k, v in that order along the output features)
BLOCK_NAMES = {"ln1": "ln_1", "ln2": "ln_2", "attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj",
               "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}


@torch.no_grad()
def from_workbench(gpt) -> NanoGPT:
    """A NanoGPT holding a copy of a workbench GPT's weights (standard attention, tied embeddings)."""
    cfg = gpt.cfg
    if cfg.attention != "standard" or not cfg.tie_embeddings or getattr(cfg, "attn_only", False):
        raise ValueError("from_workbench needs a GPT with standard attention, MLPs and tied embeddings, "
                         f"got attention={cfg.attention!r}, attn_only={getattr(cfg, 'attn_only', False)}, "
                         f"tie_embeddings={cfg.tie_embeddings}.")
    ref = NanoGPT(config_like(cfg))
    sd = gpt.state_dict()
    theirs = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
              "transformer.ln_f.weight": sd["ln_final.weight"]}
    if cfg.bias:
        theirs["transformer.ln_f.bias"] = sd["ln_final.bias"]
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, layer, rest = key.split(".", 2)
            module, leaf = rest.rsplit(".", 1)
            if module in BLOCK_NAMES:
                theirs[f"transformer.h.{layer}.{BLOCK_NAMES[module]}.{leaf}"] = value
    target = ref.state_dict()
    missing = sorted(set(target) - set(theirs) - {"lm_head.weight"})
    if missing:
        raise ValueError(f"from_workbench found no workbench tensor for nanoGPT's {missing[0]!r}.")
    for key, value in theirs.items():
        target[key].copy_(value)
    return ref
