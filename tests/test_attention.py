"""The attention kinds (standard, gated, linear): each against an independent reference, causal,
fully hooked, and with cached generation equal to recomputation."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import GPT, GPTConfig, GenerationCache
from model.attention import causal_linear_attention
from model.config import ATTENTION, attention_kinds

KINDS = ["standard", "gated", "linear"]
CFG = dict(n_layer=2, n_head=2, n_embd=32, n_ctx=24, vocab_size=53)


def make(kind: str, seed: int = 0, **over) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**CFG, "attention": kind, **over})).eval()
    with torch.no_grad():  # sharper weights than init, so positions and tokens matter
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(6.0)
            elif "ln" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, GPT]:
    return {kind: make(kind) for kind in KINDS}


def toks(n: int, batch: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, CFG["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(seed))


def naive_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Katharopoulos et al. eq. 4-6 with a double loop, in float64: z_i = sum_{j<=i} w_ij v_j with
    w_ij = phi(q_i).phi(k_j) / sum_{j'<=i} phi(q_i).phi(k_j'), phi = elu + 1. q,k,v: [P,D]."""
    phi = lambda x: F.elu(x.double()) + 1
    fq, fk, vd = phi(q), phi(k), v.double()
    out = torch.zeros_like(vd)
    for i in range(q.shape[0]):
        w = fk[: i + 1] @ fq[i]
        out[i] = (w[:, None] * vd[: i + 1]).sum(0) / w.sum()
    return out


def test_registry_and_config_list_the_same_kinds():
    assert set(ATTENTION) == set(attention_kinds()) == set(KINDS)


# -- linear attention against the naive formula --------------------------------------------------
def test_chunked_linear_attention_equals_naive_formula():
    g = torch.Generator().manual_seed(0)
    B, P, H, D = 2, 37, 3, 8
    q, k, v = (torch.randn(B, P, H, D, generator=g) for _ in range(3))
    ref = torch.stack([torch.stack([naive_linear(q[b, :, h], k[b, :, h], v[b, :, h]) for h in range(H)], 1)
                       for b in range(B)])
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    for chunk in (1, 5, 16, 37, 64):
        z, _ = causal_linear_attention(fq, fk, v, chunk=chunk)
        assert (z.double() - ref).abs().max().item() <= 1e-5, chunk
    # continuing from a carried state equals processing everything at once
    z_head, state = causal_linear_attention(fq[:, :20], fk[:, :20], v[:, :20], chunk=6)
    z_tail, _ = causal_linear_attention(fq[:, 20:], fk[:, 20:], v[:, 20:], state, chunk=6)
    assert (torch.cat([z_head, z_tail], 1).double() - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("chunk", [64, 7])
def test_linear_model_hook_z_equals_naive_formula(chunk):
    model = make("linear", n_ctx=160)
    for block in model.blocks:
        block.attn.chunk_size = chunk
    tokens = toks(150, batch=1)
    seen = {}
    names = [f"blocks.1.attn.hook_{x}" for x in "qkvz"]
    model.run_with_hooks(tokens, fwd_hooks=[(n, lambda x, hook: seen.__setitem__(hook.name[-1], x)) for n in names])
    for h in range(CFG["n_head"]):
        ref = naive_linear(seen["q"][0, :, h], seen["k"][0, :, h], seen["v"][0, :, h])
        assert (seen["z"][0, :, h].double() - ref).abs().max().item() <= 1e-5


# -- patterns ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_pattern_rows_sum_to_one_and_reproduce_hook_z(models, kind):
    model = models[kind]
    logits, cache = model.run_with_cache(toks(10))
    for layer in range(CFG["n_layer"]):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (2, CFG["n_head"], 10, 10)
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.all(pattern.triu(1) == 0) and torch.all(pattern >= 0)
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, cache[f"blocks.{layer}.attn.hook_v"])
        assert (z - cache[f"blocks.{layer}.attn.hook_z"]).abs().max().item() <= 1e-5
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        assert torch.allclose(scores.softmax(-1), pattern, atol=1e-6)
    with torch.no_grad():  # hooking the pattern (explicit path) does not change the numbers
        assert (model(toks(10)) - logits).abs().max().item() <= 1e-4


def test_linear_scores_are_log_kernel(models):
    _, cache = models["linear"].run_with_cache(toks(9))
    phi = lambda x: F.elu(x) + 1
    kernel = torch.einsum("bqhd,bkhd->bhqk", phi(cache["blocks.0.attn.hook_q"]), phi(cache["blocks.0.attn.hook_k"]))
    scores = cache["blocks.0.attn.hook_attn_scores"]
    below = torch.ones(9, 9, dtype=torch.bool).tril()
    assert torch.allclose(scores[..., below], kernel.log()[..., below], atol=1e-5)
    assert torch.isneginf(scores[..., ~below]).all()


def test_linear_explicit_and_fast_paths_give_the_same_gradients():
    model = make("linear")
    model.train()
    tokens = toks(20)
    grads = []
    for hooked in (False, True):
        model.zero_grad()
        hooks = [(f"blocks.{l}.attn.hook_pattern", lambda x, hook: None) for l in range(2)] if hooked else []
        with model.hooks(fwd_hooks=hooks):
            _, loss = model(tokens, tokens)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# -- causality and generation --------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    """Changing token t changes the output at t and never at positions before t."""
    model = make(kind, seed=1)
    if kind == "linear":  # small chunks, so changes also cross chunk boundaries
        for block in model.blocks:
            block.attn.chunk_size = 4
    base = toks(16, batch=1)
    with torch.no_grad():
        ref = model(base)
        for t in (0, 3, 9, 15):
            changed = base.clone()
            changed[0, t] = (changed[0, t] + 1) % CFG["vocab_size"]
            out = model(changed)
            assert (out[:, :t] - ref[:, :t]).abs().max().item() <= 1e-6 if t else True, t
            assert (out[:, t] - ref[:, t]).abs().max().item() > 1e-4, t


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompt_len", [3, 30])
def test_cached_greedy_generation_equals_recomputation(models, kind, prompt_len):
    model = models[kind]
    tokens = toks(prompt_len)
    cached = model.generate(tokens, 30, temperature=0)  # runs past n_ctx=24 either way
    out = tokens
    with torch.no_grad():
        for _ in range(30):
            nxt = model(out[:, -CFG["n_ctx"]:])[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], 1)
    assert torch.equal(cached, out)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_forward_logits_equal_full_forward(models, kind):
    model = models[kind]
    tokens = toks(20)
    cache = GenerationCache.empty(CFG["n_layer"])
    with torch.no_grad():
        full = model(tokens)
        pieces = [model(tokens[:, :7], cache=cache)] + [model(tokens[:, i:i + 1], cache=cache) for i in range(7, 12)]
        pieces.append(model(tokens[:, 12:], cache=cache))
    assert cache.offset == 20
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5


def test_linear_generation_state_has_constant_size(models):
    model = models["linear"]
    cache = GenerationCache.empty(CFG["n_layer"])
    H, D = CFG["n_head"], CFG["n_embd"] // CFG["n_head"]
    shapes = []
    with torch.no_grad():
        model(toks(5), cache=cache)
        for i in range(10):
            model(toks(1, seed=i), cache=cache)
            shapes.append([tuple(t.shape) for layer in cache.layers for t in layer["state"]])
            assert all(set(layer) == {"state"} for layer in cache.layers)
    assert all(s == [(2, H, D, D), (2, H, D)] * CFG["n_layer"] for s in shapes)


def test_linear_pattern_hooked_through_generation(models):
    model = models["linear"]
    shapes = []
    hook = ("blocks.1.attn.hook_pattern", lambda x, hook: shapes.append(tuple(x.shape)))
    with model.hooks(fwd_hooks=[hook]):
        out = model.generate(toks(4, batch=1), 3, temperature=0)
    assert torch.equal(out, model.generate(toks(4, batch=1), 3, temperature=0))
    assert shapes == [(1, 2, 4, 4), (1, 2, 1, 5), (1, 2, 1, 6)]
    cache = GenerationCache.empty(CFG["n_layer"])
    with torch.no_grad():
        model(toks(4), cache=cache)
        with model.hooks(fwd_hooks=[hook]), pytest.raises(ValueError, match="attach it before generation starts"):
            model(toks(1), cache=cache)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_and_survives_bf16_autocast(kind):
    model = make(kind)
    model.train()
    tokens = toks(16)
    _, loss = model(tokens, tokens)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(tokens)
    with torch.no_grad():
        assert torch.isfinite(logits).all()
        assert (logits.float() - model(tokens)).abs().max().item() < 0.1 * model(tokens).abs().max().item()


# -- memory ---------------------------------------------------------------------------------------
class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_tensor_in_training_step(model: GPT, P: int, hook_pattern: bool = False) -> int:
    tokens = toks(P, batch=1)
    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda x, hook: None) for l in range(2)] if hook_pattern else []
    with model.hooks(fwd_hooks=hooks), LargestTensor() as probe:
        _, loss = model(tokens, tokens)
        loss.backward()
    return probe.largest


def test_linear_attention_memory_is_linear_in_context():
    """No P x P tensor in a training step unless the pattern is hooked; doubling the context
    doubles the largest tensor."""
    torch.manual_seed(0)
    sizes = {}
    for P in (1024, 2048):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=P, vocab_size=53, attention="linear")).train()
        sizes[P] = largest_tensor_in_training_step(model, P)
        assert sizes[P] < P * P // 4
    assert sizes[2048] <= 2 * sizes[1024]
    assert largest_tensor_in_training_step(model, 2048, hook_pattern=True) >= 2048 * 2048  # the probe sees P x P


# -- gated attention -----------------------------------------------------------------------------
def test_gated_with_gate_forced_open_equals_standard():
    standard = make("standard", seed=3)
    gated = GPT(GPTConfig(**{**CFG, "attention": "gated"})).eval()
    missing, unexpected = gated.load_state_dict(standard.state_dict(), strict=False)
    assert all(".attn.c_gate." in m for m in missing) and missing and not unexpected
    tokens = toks(20)
    with torch.no_grad():
        assert (gated(tokens) - standard(tokens)).abs().max().item() > 1e-2  # gate at ~0.5 matters
        for block in gated.blocks:
            block.attn.c_gate.bias.fill_(1e4)
        assert (gated(tokens) - standard(tokens)).abs().max().item() <= 1e-4


def test_gate_is_hooked_and_multiplies_z_before_the_output_projection(models):
    model = models["gated"]
    _, cache = model.run_with_cache(toks(8))
    attn = model.blocks[1].attn
    gate = cache["blocks.1.attn.hook_gate"]
    assert gate.shape == (2, 8, CFG["n_head"], CFG["n_embd"] // CFG["n_head"])
    ln1 = model.blocks[1].ln1  # hook_normalized is before the LayerNorm's gain and bias, as in TransformerLens
    x = cache["blocks.1.ln1.hook_normalized"] * ln1.weight + ln1.bias
    assert torch.allclose(gate, torch.sigmoid(attn.c_gate(x)).view_as(gate), atol=1e-6)
    gated_z = (cache["blocks.1.attn.hook_z"] * gate).reshape(2, 8, CFG["n_embd"])
    assert torch.allclose(cache["blocks.1.hook_attn_out"], attn.c_proj(gated_z), atol=1e-5)
    # zero-ablating a head's z silences it, gate or no gate
    def ablate(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    def grab(r, hook):
        grab.result = r

    with torch.no_grad():
        model.run_with_hooks(toks(8), fwd_hooks=[("blocks.1.attn.hook_z", ablate), ("blocks.1.attn.hook_result", grab)])
    assert torch.all(grab.result[:, :, 0] == 0)
