"""GPTConfig validation and presets, the hooked GPT's hook names and shapes, and hook semantics
(ablation, caching, SDPA vs explicit attention) checked against hand-computed references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig

B, P = 2, 12
CFG = dict(n_layer=2, n_head=4, n_embd=32, n_ctx=16, vocab_size=97)

PER_BLOCK_SHAPES = {
    "hook_resid_pre": "BPM", "hook_attn_out": "BPM", "hook_resid_mid": "BPM", "hook_mlp_out": "BPM",
    "hook_resid_post": "BPM", "ln1.hook_scale": "BP1", "ln2.hook_scale": "BP1",
    "ln1.hook_normalized": "BPM", "ln2.hook_normalized": "BPM", "attn.hook_q": "BPHD",
    "attn.hook_k": "BPHD", "attn.hook_v": "BPHD", "attn.hook_z": "BPHD",
    "attn.hook_attn_scores": "BHPP", "attn.hook_pattern": "BHPP", "mlp.hook_pre": "BPF",
    "mlp.hook_post": "BPF", "attn.hook_result": "BPHM",
}
GLOBAL_SHAPES = {"hook_embed": "BPM", "hook_pos_embed": "BPM", "ln_final.hook_scale": "BP1",
                 "ln_final.hook_normalized": "BPM"}


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).eval()
    with torch.no_grad():  # move LayerNorms and biases off their init so they matter
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, CFG["vocab_size"], (B, P), generator=torch.Generator().manual_seed(1))


def expected_shape(code: str, cfg: GPTConfig) -> tuple[int, ...]:
    sizes = {"B": B, "P": P, "M": cfg.d_model, "H": cfg.n_heads, "D": cfg.d_head, "F": cfg.d_mlp, "1": 1}
    return tuple(sizes[c] for c in code)


# -- config ------------------------------------------------------------------------------------
def test_small_preset_is_gpt2_small():
    cfg = GPTConfig.preset("small")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_ctx, cfg.vocab_size) == (12, 12, 768, 1024, 50257)
    with torch.device("meta"):  # counts parameters without allocating 124M floats
        model = GPT(cfg)
    assert model.num_params() == 124_439_808


def test_tiny_preset_matches_the_write_up():
    cfg = GPTConfig.preset("tiny")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (4, 4, 256)
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (4, 4, 256, 64, 1024)


def test_presets_and_round_trip():
    for name in ("nano", "tiny", "small", "medium", "large"):
        cfg = GPTConfig.preset(name)
        assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert GPTConfig.preset("medium").n_layer == 24 and GPTConfig.preset("large").n_embd == 1280
    assert GPTConfig.preset("nano", vocab_size=300).vocab_size == 300


@pytest.mark.parametrize("field, value", [
    ("n_layer", 0), ("n_layer", -2), ("n_layer", 2.0), ("n_head", 0), ("n_embd", -8), ("n_ctx", 0),
    ("n_ctx", "128"), ("vocab_size", 0), ("vocab_size", True), ("dropout", 1.0), ("dropout", -0.1),
    ("dropout", "x"), ("attention", "flash"), ("ln_eps", 0.0), ("ln_eps", -1e-5), ("bias", 1),
    ("tie_embeddings", "yes"),
])
def test_invalid_config_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        GPTConfig(**{**CFG, field: value})


def test_n_embd_not_divisible_by_n_head_names_both():
    with pytest.raises(ValueError, match=r"n_embd.*n_head"):
        GPTConfig(**{**CFG, "n_embd": 30, "n_head": 4})


def test_unknown_preset_and_field_are_named():
    with pytest.raises(ValueError, match=r"huge.*nano, tiny, small, medium, large"):
        GPTConfig.preset("huge")
    with pytest.raises(ValueError, match=r"n_layers"):
        GPTConfig.from_dict({**CFG, "n_layers": 3})
    with pytest.raises(ValueError, match=r"attention.*standard"):
        GPTConfig(attention="sparse")


# -- architecture --------------------------------------------------------------------------------
def test_gpt2_init_scales():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=8, n_head=4, n_embd=256, n_ctx=64, vocab_size=512)
    model = GPT(cfg)
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    blk = model.blocks[3]
    assert blk.attn.c_proj.weight.std().item() == pytest.approx(resid_std, rel=0.05)
    assert blk.mlp.c_proj.weight.std().item() == pytest.approx(resid_std, rel=0.05)
    assert blk.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(blk.mlp.c_fc.bias == 0) and torch.all(blk.ln1.weight == 1)
    assert model.lm_head is None  # unembedding tied to the token embedding


def test_forward_matches_hand_written_gpt2(gpt, tokens):
    """An independent, loop-free GPT-2 forward written from the paper's equations."""
    cfg, sd = gpt.cfg, gpt.state_dict()
    H, D = cfg.n_head, cfg.d_head

    def ln(x, prefix):
        return F.layer_norm(x, (cfg.n_embd,), sd[prefix + ".weight"], sd[prefix + ".bias"], cfg.ln_eps)

    x = sd["wte.weight"][tokens] + sd["wpe.weight"][:P]
    mask = torch.ones(P, P, dtype=torch.bool).tril()
    for l in range(cfg.n_layer):
        p = f"blocks.{l}."
        h = ln(x, p + "ln1") @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(B, P, H, D).transpose(1, 2) for t in h.split(cfg.n_embd, dim=-1))
        att = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, float("-inf")).softmax(-1)
        z = (att @ v).transpose(1, 2).reshape(B, P, cfg.n_embd)
        x = x + z @ sd[p + "attn.c_proj.weight"].T + sd[p + "attn.c_proj.bias"]
        m = ln(x, p + "ln2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        m = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m ** 3)))
        x = x + m @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    logits = ln(x, "ln_final") @ sd["wte.weight"].T
    with torch.no_grad():
        assert (gpt(tokens) - logits).abs().max().item() <= 1e-5


def test_loss_is_mean_cross_entropy_ignoring_minus_one(gpt, tokens):
    targets = tokens.roll(-1, dims=1).clone()
    targets[:, -1] = -1
    with torch.no_grad():
        logits, loss = gpt(tokens, targets)
    by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, CFG["vocab_size"]), targets[:, :-1].reshape(-1))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_forward_longer_than_context_names_the_limit(gpt):
    with pytest.raises(ValueError, match=r"n_ctx=16"):
        gpt(torch.zeros(1, 17, dtype=torch.long))


def test_bad_token_ids_are_refused(gpt):
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 97\)"):
        gpt(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="integers"):
        gpt(torch.zeros(1, 3))


# -- hooks ---------------------------------------------------------------------------------------
def test_every_design_hook_exists_with_its_shape(gpt, tokens):
    _, cache = gpt.run_with_cache(tokens)
    names = set(gpt.hook_dict)
    for name, code in GLOBAL_SHAPES.items():
        assert name in names
        assert tuple(cache[name].shape) == expected_shape(code, gpt.cfg), name
    for layer in range(gpt.cfg.n_layer):
        for suffix, code in PER_BLOCK_SHAPES.items():
            name = f"blocks.{layer}.{suffix}"
            assert name in names, name
            assert tuple(cache[name].shape) == expected_shape(code, gpt.cfg), name


def test_hook_values_mean_what_transformer_lens_says(gpt, tokens):
    _, cache = gpt.run_with_cache(tokens)
    resid = cache["blocks.0.hook_resid_pre"]
    assert torch.allclose(resid, cache["hook_embed"] + cache["hook_pos_embed"])
    centred = resid - resid.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + gpt.cfg.ln_eps).sqrt()
    assert torch.allclose(cache["blocks.0.ln1.hook_scale"], scale, atol=1e-6)
    pattern, scores = cache["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_attn_scores"]
    above = torch.ones(P, P, dtype=torch.bool).triu(1)
    assert torch.isneginf(scores[..., above]).all() and torch.isfinite(scores[..., ~above]).all()
    assert torch.allclose(pattern, scores.softmax(-1))
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-6)
    # per-head results sum (plus the bias) to the attention output
    attn_out = cache["blocks.1.attn.hook_result"].sum(2) + gpt.blocks[1].attn.c_proj.bias
    assert torch.allclose(attn_out, cache["blocks.1.hook_attn_out"], atol=1e-5)
    assert torch.allclose(cache["blocks.1.hook_resid_mid"], cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"], atol=1e-6)
    assert torch.allclose(cache["blocks.1.mlp.hook_post"], F.gelu(cache["blocks.1.mlp.hook_pre"], approximate="tanh"))


def by_hand_layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [..,1], normalized) as TransformerLens defines them, in float64."""
    x = x.double()
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return scale, centred / scale


def test_layernorm_hooks_hold_the_values_before_the_affine_transform(gpt, tokens):
    """hook_normalized is (x - mean) / scale, before weight and bias (TransformerLens'
    convention), for ln1, ln2 and ln_final; and normalized * w + b is what the next layer reads."""
    _, cache = gpt.run_with_cache(tokens)
    eps, last = gpt.cfg.ln_eps, gpt.cfg.n_layer - 1
    inputs = {"blocks.0.ln1": cache["blocks.0.hook_resid_pre"], "blocks.1.ln2": cache["blocks.1.hook_resid_mid"],
              "ln_final": cache[f"blocks.{last}.hook_resid_post"]}
    for prefix, x in inputs.items():
        scale, normalized = by_hand_layer_norm(x, eps)
        assert (cache[f"{prefix}.hook_scale"].double() - scale).abs().max().item() <= 1e-6, prefix
        assert (cache[f"{prefix}.hook_normalized"].double() - normalized).abs().max().item() <= 1e-5, prefix
    ln2, mlp = gpt.blocks[1].ln2, gpt.blocks[1].mlp
    mlp_in = cache["blocks.1.ln2.hook_normalized"] * ln2.weight + ln2.bias
    assert torch.allclose(cache["blocks.1.mlp.hook_pre"], mlp.c_fc(mlp_in), atol=1e-5)
    # logit lens as TransformerLens code does it: normalized final residual, then gain, bias, W_U
    ln_f = gpt.ln_final
    logits = (cache["ln_final.hook_normalized"] * ln_f.weight + ln_f.bias) @ gpt.wte.weight.T
    assert torch.allclose(logits, gpt(tokens), atol=1e-4)


@pytest.mark.parametrize("hooked", ["hook_normalized", "hook_scale", "both"])
def test_hooked_layernorm_equals_the_fused_one(hooked):
    """Observing either hook switches to the spelled-out LayerNorm; its output stays within 1e-6 of
    F.layer_norm, and the hooks see the TransformerLens values."""
    seed = 7
    gen = torch.Generator().manual_seed(seed)
    ln = GPT(GPTConfig(**CFG)).ln_final
    with torch.no_grad():
        ln.weight.copy_(1 + 0.5 * torch.randn(ln.weight.shape, generator=gen))
        ln.bias.copy_(0.5 * torch.randn(ln.bias.shape, generator=gen))
    x = 3.0 * torch.randn(B, P, CFG["n_embd"], generator=gen) + 1.5
    seen = {}
    names = ["hook_normalized", "hook_scale"] if hooked == "both" else [hooked]
    for name in names:
        getattr(ln, name).add_hook(lambda t, hook, name=name: seen.__setitem__(name, t.detach().clone()))
    try:
        out = ln(x)
    finally:
        ln.hook_normalized.remove_hooks(), ln.hook_scale.remove_hooks()
    fused = F.layer_norm(x, (CFG["n_embd"],), ln.weight, ln.bias, ln.eps)
    assert (out - fused).abs().max().item() <= 1e-6, f"seed {seed}"
    scale, normalized = by_hand_layer_norm(x, ln.eps)
    if "hook_scale" in seen:
        assert (seen["hook_scale"].double() - scale).abs().max().item() <= 1e-6, f"seed {seed}"
    if "hook_normalized" in seen:
        assert (seen["hook_normalized"].double() - normalized).abs().max().item() <= 1e-6, f"seed {seed}"
    assert set(seen) == set(names)


def test_editing_layernorm_hooks_changes_the_output_as_in_transformer_lens(gpt, tokens):
    """output = hook_normalized * w + b, and hook_normalized = centred / hook_scale: an edit of
    either one reaches the output exactly that way."""
    ln = gpt.blocks[0].ln1
    x = torch.randn(B, P, CFG["n_embd"], generator=torch.Generator().manual_seed(3))
    scale, normalized = by_hand_layer_norm(x, ln.eps)
    w, b = ln.weight.double(), ln.bias.double()
    with torch.no_grad():
        with gpt.hooks(fwd_hooks=[("blocks.0.ln1.hook_normalized", lambda t, hook: t.flip(-1))]):
            flipped = ln(x)
        with gpt.hooks(fwd_hooks=[("blocks.0.ln1.hook_scale", lambda t, hook: 2.0 * t)]):
            halved = ln(x)
    assert (flipped.double() - (normalized.flip(-1) * w + b)).abs().max().item() <= 1e-5
    assert (halved.double() - (normalized / 2 * w + b)).abs().max().item() <= 1e-5


def test_backward_hooks_on_layernorm_fire(gpt, tokens):
    """A backward-only hook must also take the path that calls the hook point."""
    grads = []
    gpt.add_hook("blocks.1.ln2.hook_normalized", lambda g, hook: grads.append(g.detach()), dir="bwd")
    try:
        gpt(tokens).sum().backward()
    finally:
        gpt.reset_hooks(including_permanent=False)
        gpt.zero_grad(set_to_none=True)
    assert len(grads) == 1 and grads[0].shape == (B, P, CFG["n_embd"]) and grads[0].abs().sum() > 0


def test_activation_cache_helpers_work(gpt, tokens):
    """TransformerLens' ActivationCache reads our cfg (n_layers, n_heads, ...)."""
    _, cache = gpt.run_with_cache(tokens)
    stacked = cache.stack_activation("resid_post")
    assert stacked.shape == (gpt.cfg.n_layer, B, P, gpt.cfg.n_embd)
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])


def test_hooks_never_change_the_numbers(gpt, tokens):
    with torch.no_grad():
        plain = gpt(tokens)
    cached, _ = gpt.run_with_cache(tokens)
    assert (plain - cached).abs().max().item() <= 1e-5


def test_sdpa_and_explicit_attention_agree(gpt, tokens):
    """Hooking the pattern forces the explicit path; nothing hooked takes SDPA."""
    with torch.no_grad():
        sdpa = gpt(tokens)
        noop = [(f"blocks.{l}.attn.hook_pattern", lambda x, hook: None) for l in range(gpt.cfg.n_layer)]
        explicit = gpt.run_with_hooks(tokens, fwd_hooks=noop)
    assert (sdpa - explicit).abs().max().item() <= 1e-5


def test_cache_equals_what_a_hook_observes(gpt, tokens):
    seen: dict[str, torch.Tensor] = {}

    def grab(x, hook):
        seen[hook.name] = x.detach().clone()

    names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_pattern"]
    gpt.run_with_hooks(tokens, fwd_hooks=[(n, grab) for n in names])
    _, cache = gpt.run_with_cache(tokens, names_filter=lambda n: n in names)
    assert set(cache.keys()) == set(names)
    for n in names:
        assert torch.allclose(cache[n], seen[n], atol=1e-6), n


def test_zero_ablating_one_head_changes_logits_only_through_that_head(gpt, tokens):
    layer, head = 0, 2
    after: dict[str, torch.Tensor] = {}

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    def grab(z, hook):
        after["z"] = z.detach().clone()

    with torch.no_grad():
        base_logits, base = gpt.run_with_cache(tokens, names_filter=lambda n: n == f"blocks.{layer}.attn.hook_z")
        ablated_logits = gpt.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate),
                                                                (f"blocks.{layer}.attn.hook_z", grab)])
    assert (ablated_logits - base_logits).abs().max().item() > 1e-3
    z0 = base[f"blocks.{layer}.attn.hook_z"]
    others = [h for h in range(gpt.cfg.n_head) if h != head]
    assert torch.equal(after["z"][:, :, others], z0[:, :, others])
    assert torch.all(after["z"][:, :, head] == 0)
    # with no hook left behind the model is back to normal
    assert all(len(h.fwd_hooks) == 0 for h in gpt.hook_dict.values())
    with torch.no_grad():
        assert (gpt(tokens) - base_logits).abs().max().item() <= 1e-5


def test_hooks_context_manager_and_reset(gpt, tokens):
    calls = []
    with gpt.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: calls.append(hook.name))]):
        gpt(tokens)
    gpt(tokens)
    assert calls == ["blocks.1.hook_resid_pre"]
    gpt.add_hook("hook_embed", lambda x, hook: calls.append("embed"))
    gpt(tokens)
    gpt.reset_hooks()
    gpt(tokens)
    assert calls.count("embed") == 1


def test_gradients_flow_in_training_mode(tokens):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CFG, "dropout": 0.1}))
    _, loss = model(tokens, tokens)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert loss.item() == pytest.approx(math.log(CFG["vocab_size"]), rel=0.1)
