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


def test_exact_gelu_models_cross_over_both_ways(tokens):
    """activation='gelu' (nanoGPT's exact GELU) is HF's activation_function='gelu'; weights scaled
    up so that the tanh approximation would differ visibly."""
    torch.manual_seed(4)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_CTX, vocab_size=V,
                                    activation_function="gelu", bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(8.0)
    ours = from_hf(hf)
    assert ours.cfg.activation == "gelu"
    tanh = GPT(GPTConfig(**{**ours.cfg.to_dict(), "activation": "gelu_new"})).eval()
    tanh.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert max_diff(ours(tokens), hf(tokens).logits) <= 1e-4
        assert max_diff(tanh(tokens), hf(tokens).logits) > 1e-3
        back = to_hf(ours)
        assert back.config.activation_function == "gelu"
        assert max_diff(back(tokens).logits, hf(tokens).logits) <= 1e-4


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


def max_diff_masked(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| where -inf/inf (masked attention scores) must sit in the same places with the
    same sign in both; inf if they do not."""
    a, b = a.detach().float(), b.detach().float()
    if not torch.equal(torch.isinf(a), torch.isinf(b)) or not torch.equal(a[torch.isinf(a)], b[torch.isinf(b)]):
        return float("inf")
    finite = torch.isfinite(a)
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


@pytest.fixture(scope="module")
def both_caches(gpt, tokens):
    """Our cache and the bridge's on the same tokens; the bridge with per-head results switched on
    (off by default in TransformerLens), so `attn.hook_result` is compared too. A bridge of its
    own, so the shared `bridge` fixture keeps TransformerLens' defaults."""
    bridge = to_transformer_lens(gpt)
    bridge.set_use_attn_result(True)
    ours_logits, ours = gpt.run_with_cache(tokens)
    tl_logits, theirs = bridge.run_with_cache(tokens)
    return ours_logits, ours, tl_logits, theirs


def test_bridge_logits_equal_ours(gpt, bridge, tokens, both_caches):
    ours_logits, _, tl_logits, _ = both_caches
    assert max_diff(tl_logits, ours_logits) <= 1e-4
    with torch.no_grad():
        assert max_diff(bridge(tokens), ours_logits) <= 1e-4


def test_every_hook_we_share_with_the_bridge_holds_the_same_values(gpt, both_caches):
    """Every hook name our model and TransformerBridge both cache, not a sample: same shape, and
    values within 1e-4 (masked attention scores: -inf in the same places)."""
    _, ours, _, theirs = both_caches
    shared = sorted(set(ours.keys()) & set(theirs.keys()))
    only_ours = sorted(set(ours.keys()) - set(theirs.keys()))
    only_theirs = sorted(set(theirs.keys()) - set(ours.keys()))
    print(f"{len(shared)} shared hook names; only ours: {only_ours}; only the bridge's: {only_theirs}")
    # every hook point we define is one the bridge has (and so is compared below)
    assert set(gpt.hook_dict) <= set(shared), f"hooks of ours the bridge does not cache: {only_ours}"
    per_block = {n.split(".", 2)[2] for n in gpt.hook_dict if n.startswith("blocks.0.")}
    assert len(per_block) >= 18 and len(shared) >= 4 + 18 * gpt.cfg.n_layer
    bad = {}
    for name in shared:
        if ours[name].shape != theirs[name].shape:
            bad[name] = f"shape {tuple(ours[name].shape)} vs {tuple(theirs[name].shape)}"
            continue
        d = max_diff_masked(ours[name], theirs[name])
        if not d <= 1e-4:
            bad[name] = f"max abs diff {d:.3g}"
    assert not bad, f"hooks that differ from TransformerBridge's: {bad}"


def test_layernorm_hooks_are_before_the_affine_transform_as_in_transformer_lens(gpt, both_caches):
    """The issue's case: ln hook_normalized is (x - mean) / scale, which TransformerLens code (logit
    lens, direct logit attribution) relies on, not the post-gain-and-bias output."""
    _, ours, _, theirs = both_caches
    x = ours[f"blocks.{gpt.cfg.n_layer - 1}.hook_resid_post"]
    centred = x - x.mean(-1, keepdim=True)
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + gpt.cfg.ln_eps).sqrt()
    assert max_diff(theirs["ln_final.hook_normalized"], expected) <= 1e-5
    assert max_diff(ours["ln_final.hook_normalized"], expected) <= 1e-5
    post_affine = expected * gpt.ln_final.weight + gpt.ln_final.bias
    assert max_diff(ours["ln_final.hook_normalized"], post_affine) > 0.1  # the gains were perturbed


def test_an_edit_of_hook_normalized_has_the_same_effect_on_both(gpt, bridge, tokens):
    """TransformerLens: output = hook_normalized * w + b, so an edit of the hook reaches the logits."""
    def double_dim_3(x, hook):
        x = x.clone()
        x[..., 3] = 2.0 * x[..., 3]
        return x

    hooks = [("ln_final.hook_normalized", double_dim_3), ("blocks.1.ln2.hook_normalized", double_dim_3)]
    with torch.no_grad():
        plain = gpt(tokens)
        ours = gpt.run_with_hooks(tokens, fwd_hooks=hooks)
        theirs = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    assert max_diff(ours, plain) > 1e-2  # the edit does something
    assert max_diff(theirs, ours) <= 1e-4


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
