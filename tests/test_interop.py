"""Interop with Hugging Face GPT2LMHeadModel and a TransformerLens TransformerBridge: the same
weights give the same logits and the same activations at the TransformerLens hook names."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in here may reach the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, GPTConfig
from model.interop import from_hf, to_hf, to_transformer_lens

V, N_CTX = 211, 32
HOOKS = ["hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "mlp.hook_post", "hook_resid_post"]


def perturb(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Move LayerNorm gains/biases and all biases away from their init (1 and 0), where a
    swapped or dropped one would go unnoticed."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="module")
def hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=N_CTX, vocab_size=V,
                     bos_token_id=V - 1, eos_token_id=V - 1)
    m = GPT2LMHeadModel(cfg).eval()
    perturb(m)
    return m


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(1)
    g = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, n_ctx=N_CTX, vocab_size=V)).eval()
    perturb(g)
    return g


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def bridge(gpt):
    return to_transformer_lens(gpt)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def test_from_hf_matches_hf(hf_model, tokens):
    ours = from_hf(hf_model)
    with torch.no_grad():
        assert max_diff(ours(tokens), hf_model(tokens).logits) <= 1e-4
    assert ours.cfg.n_layer == 2 and ours.cfg.n_ctx == N_CTX and ours.cfg.vocab_size == V


def test_to_hf_of_from_hf_reproduces_hf(hf_model, tokens):
    back = to_hf(from_hf(hf_model))
    with torch.no_grad():
        assert max_diff(back(tokens).logits, hf_model(tokens).logits) <= 1e-5
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # still tied


def test_to_hf_matches_ours(gpt, tokens):
    hf = to_hf(gpt)
    with torch.no_grad():
        assert max_diff(hf(tokens).logits, gpt(tokens)) <= 1e-5
        assert max_diff(from_hf(hf)(tokens), gpt(tokens)) <= 1e-5


def test_untied_and_biasless_models_cross_over(tokens):
    torch.manual_seed(3)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=N_CTX, vocab_size=V,
                                    tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)).eval()
    ours = from_hf(hf)
    assert ours.lm_head is not None and not ours.cfg.tie_embeddings
    no_bias = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, n_ctx=N_CTX, vocab_size=V, bias=False)).eval()
    perturb(no_bias)
    with torch.no_grad():
        assert max_diff(ours(tokens), hf(tokens).logits) <= 1e-5
        assert max_diff(to_hf(no_bias)(tokens).logits, no_bias(tokens)) <= 1e-5


def test_unsupported_hf_options_are_refused():
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        from_hf(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=20,
                                           activation_function="relu", bos_token_id=0, eos_token_id=0)))


@pytest.mark.parametrize("kind", ["gated", "linear"])
def test_only_standard_attention_crosses_over(kind):
    g = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, n_ctx=8, vocab_size=20, attention=kind))
    for convert, name in ((to_hf, "to_hf"), (to_transformer_lens, "to_transformer_lens")):
        with pytest.raises(ValueError, match=rf"{name} supports only attention='standard'.*{kind}"):
            convert(g)


def test_bridge_logits_and_activations_equal_ours(gpt, bridge, tokens):
    ours_logits, ours = gpt.run_with_cache(tokens)
    tl_logits, theirs = bridge.run_with_cache(tokens)
    assert max_diff(tl_logits, ours_logits) <= 1e-4
    with torch.no_grad():
        assert max_diff(bridge(tokens), ours_logits) <= 1e-4
    for layer in range(gpt.cfg.n_layer):
        for hook in HOOKS:
            name = f"blocks.{layer}.{hook}"
            assert theirs[name].shape == ours[name].shape, name
            assert max_diff(theirs[name], ours[name]) <= 1e-4, name


def test_bridge_cfg_and_head_ablation_agree_with_ours(gpt, bridge, tokens):
    assert bridge.cfg.n_layers == gpt.cfg.n_layer and bridge.cfg.n_heads == gpt.cfg.n_head

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    hooks = [("blocks.1.attn.hook_z", ablate)]
    with torch.no_grad():
        ours = gpt.run_with_hooks(tokens, fwd_hooks=hooks)
        theirs = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        plain = gpt(tokens)
    assert max_diff(ours, plain) > 1e-3  # the ablation does something
    assert max_diff(theirs, ours) <= 1e-4
