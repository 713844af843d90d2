"""Weights in and out of Hugging Face `GPT2LMHeadModel` and a TransformerLens `TransformerBridge`.

So that a checkpoint trained here can be read by anything that reads GPT-2, and so that results
from our hooks can be checked against TransformerLens' own. Only the `standard` attention kind
is a GPT-2; the other kinds have no counterpart outside this workbench.

HF's GPT-2 keeps its projections in `Conv1D` modules whose weights are [in, out]; our
`nn.Linear` weights are [out, in], so every projection is transposed on the way across.
Nothing here downloads anything: the HF model is built from a config, the bridge from the HF
model.

An attention-only model (`attn_only`) goes out as a GPT-2 whose MLPs compute exactly zero: every
MLP weight and bias is 0 (so the pre-activation is 0, GELU(0) = 0, and the output is 0) and ln_2
is the identity LayerNorm (weight 1, bias 0). The logits are the same; the HF model and the bridge
merely have MLP tensors and hooks (`hook_resid_mid` = `hook_resid_post`, `hook_mlp_out` = 0) that
ours lacks. `from_hf` always gives a model with MLPs.
"""
from __future__ import annotations

from typing import Any

import torch

from model.config import GPTConfig
from model.gpt import GPT

# HF activation names that are the tanh-approximated GELU GPT-2 uses.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")

# (our suffix, HF suffix, transpose?) for the tensors of one block.
BLOCK_PARAMS = (
    ("ln1.weight", "ln_1.weight", False),
    ("ln1.bias", "ln_1.bias", False),
    ("attn.c_attn.weight", "attn.c_attn.weight", True),
    ("attn.c_attn.bias", "attn.c_attn.bias", False),
    ("attn.c_proj.weight", "attn.c_proj.weight", True),
    ("attn.c_proj.bias", "attn.c_proj.bias", False),
    ("ln2.weight", "ln_2.weight", False),
    ("ln2.bias", "ln_2.bias", False),
    ("mlp.c_fc.weight", "mlp.c_fc.weight", True),
    ("mlp.c_fc.bias", "mlp.c_fc.bias", False),
    ("mlp.c_proj.weight", "mlp.c_proj.weight", True),
    ("mlp.c_proj.bias", "mlp.c_proj.bias", False),
)


def require_standard(gpt: GPT, target: str) -> None:
    """Refuse kinds that GPT-2 implementations outside this workbench cannot represent."""
    if gpt.cfg.attention != "standard":
        raise ValueError(f"{target} supports only attention='standard' (a GPT-2); this model uses "
                         f"attention={gpt.cfg.attention!r}, which has no {target} counterpart.")


def config_from_hf(hf_config: Any) -> GPTConfig:
    """Our config for an HF GPT2Config, refusing the GPT-2 options we do not implement."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in TANH_GELUS + ("gelu",):
        raise ValueError(f"activation_function {act!r} is not supported; GPT-2 uses one of {', '.join(TANH_GELUS)} "
                         "(or the exact 'gelu').")
    n_inner = getattr(hf_config, "n_inner", None)
    if n_inner not in (None, 4 * hf_config.n_embd):
        raise ValueError(f"n_inner={n_inner} is not supported; the MLP must be 4 x n_embd = {4 * hf_config.n_embd}.")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if getattr(hf_config, flag, False):
            raise ValueError(f"{flag}=True is not supported by this GPT-2.")
    if not getattr(hf_config, "scale_attn_weights", True):
        raise ValueError("scale_attn_weights=False is not supported; attention scores are scaled by 1/sqrt(d_head).")
    return GPTConfig(
        n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
        n_ctx=hf_config.n_positions, vocab_size=hf_config.vocab_size, dropout=0.0, bias=True,
        attention="standard", ln_eps=float(hf_config.layer_norm_epsilon),
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        activation="gelu" if act == "gelu" else "gelu_new",
    )


@torch.no_grad()
def from_hf(hf_model: Any) -> GPT:
    """Our GPT (eval mode, float32) with the weights of an HF `GPT2LMHeadModel`."""
    cfg = config_from_hf(hf_model.config)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in hf_model.state_dict().items()}
    ours: dict[str, torch.Tensor] = {
        "wte.weight": sd["transformer.wte.weight"],
        "wpe.weight": sd["transformer.wpe.weight"],
        "ln_final.weight": sd["transformer.ln_f.weight"],
        "ln_final.bias": sd["transformer.ln_f.bias"],
    }
    if not cfg.tie_embeddings:
        ours["lm_head.weight"] = sd["lm_head.weight"]
    for layer in range(cfg.n_layer):
        for mine, theirs, transpose in BLOCK_PARAMS:
            w = sd[f"transformer.h.{layer}.{theirs}"]
            ours[f"blocks.{layer}.{mine}"] = w.t().contiguous() if transpose else w
    gpt = GPT(cfg)
    gpt.load_state_dict(ours, strict=True)
    return gpt.eval()


def hf_config_for(cfg: GPTConfig) -> Any:
    from transformers import GPT2Config

    eot = cfg.vocab_size - 1  # <|endoftext|> is the last id in both the GPT-2 and compact vocabs
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=None, activation_function=cfg.activation, resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.ln_eps,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eot, eos_token_id=eot,
    )


@torch.no_grad()
def to_hf(gpt: GPT) -> Any:
    """An HF `GPT2LMHeadModel` (eval mode, float32) with our weights; logits agree within 1e-5.

    A model trained with bias=False gets zero biases, and an attention-only model zero MLPs (and
    an identity ln_2), which compute the same function."""
    from transformers import GPT2LMHeadModel

    require_standard(gpt, "to_hf")
    cfg = gpt.cfg
    hf = GPT2LMHeadModel(hf_config_for(cfg))
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in gpt.state_dict().items()}
    target = hf.state_dict()
    theirs: dict[str, torch.Tensor] = {
        "transformer.wte.weight": sd["wte.weight"],
        "transformer.wpe.weight": sd["wpe.weight"],
        "transformer.ln_f.weight": sd["ln_final.weight"],
        "transformer.ln_f.bias": sd.get("ln_final.bias", torch.zeros(cfg.n_embd)),
        "lm_head.weight": sd["wte.weight"] if cfg.tie_embeddings else sd["lm_head.weight"],
    }
    for layer in range(cfg.n_layer):
        for mine, hf_name, transpose in BLOCK_PARAMS:
            key = f"transformer.h.{layer}.{hf_name}"
            w = sd.get(f"blocks.{layer}.{mine}")
            if w is None and cfg.attn_only and mine == "ln2.weight":  # the identity LayerNorm
                theirs[key] = torch.ones_like(target[key])
            elif w is None:  # bias=False, or attn_only's MLP: a zero tensor is the same function
                theirs[key] = torch.zeros_like(target[key])
            else:
                theirs[key] = w.t().contiguous() if transpose else w
    missing = [k for k in target if k not in theirs]
    if missing:  # a transformers version with extra tensors we do not know how to fill
        raise ValueError(f"to_hf does not know how to fill HF GPT-2 tensor {missing[0]!r}.")
    for key, value in theirs.items():
        target[key].copy_(value)
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def to_transformer_lens(gpt: GPT, compatibility_mode: bool = True) -> Any:
    """A TransformerLens 4.x `TransformerBridge` around `to_hf(gpt)`, built offline.

    With `compatibility_mode` (the default) the bridge exposes the HookedTransformer hook names
    (`blocks.{l}.hook_resid_pre`, `attn.hook_pattern`, `attn.hook_z` [B,P,H,D], `mlp.hook_post`,
    `hook_resid_post`, ...) with the weights left exactly as trained: no LayerNorm folding or
    centering, so every activation equals ours and probes give the same numbers on both.
    `bridge(tokens)` returns logits; `bridge.cfg.n_layers` and `n_heads` are set. The bridge has
    no tokenizer: tokenize with `model.tokenizer` and pass ids.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    require_standard(gpt, "to_transformer_lens")
    hf = to_hf(gpt).to(gpt.device)
    bridge = build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=hf.config,
                                      model_name="gpt2-workbench")
    if compatibility_mode:
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    return bridge
