"""Head ablation during generation (what the app's side-by-side generation uses) against a naive
reference written out here: full recomputation of the whole window at every step, with a hook that
replaces the head's z by hand. Also the shared-weights private copy the app hooks instead of the
shared model."""
from __future__ import annotations

import pytest
import torch

from model.config import GPTConfig
from model.gpt import GPT
from probes.measure.ablation import generation_hooks, head_means, resample_source

N_CTX = 16


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, n_ctx=N_CTX, vocab_size=61)).eval()
    with torch.no_grad():  # large enough weights that ablating one head changes the greedy tokens
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def heldout() -> torch.Tensor:
    """[B, n_ctx + 1] like probes.heldout_tokens: inputs and the shifted target column."""
    return torch.randint(0, 61, (6, N_CTX + 1), generator=torch.Generator().manual_seed(3))


def naive_generate(model: GPT, prompt: list[int], steps: int, replace) -> list[int]:
    """Greedy, recomputing the last n_ctx tokens each step; replace(z, positions) edits z [1,P,H,D]."""
    out = list(prompt)
    for _ in range(steps):
        window = out[-N_CTX:]

        def hook(z, hook):
            z = z.clone()
            replace(z, torch.arange(len(window)))
            return z
        with torch.no_grad():
            logits = model.run_with_hooks(torch.tensor([window]), fwd_hooks=[("blocks.1.attn.hook_z", hook)])
        out.append(int(logits[0, -1].argmax()))
    return out[len(prompt):]


def clean_z(model: GPT, inputs: torch.Tensor) -> torch.Tensor:
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    return cache["blocks.1.attn.hook_z"]


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
@pytest.mark.parametrize("prompt_len", [1, 5])
def test_generation_hooks_equal_a_naive_recomputation(model, heldout, kind, prompt_len):
    """30 new tokens from a short prompt run past n_ctx=16, so the KV cache restarts its window."""
    prompt = list(range(3, 3 + prompt_len))
    z = clean_z(model, heldout[:, :-1])  # inputs only: the target column is not the model's input
    if kind == "zero":
        def replace(zz, pos):
            zz[:, :, 2] = 0.0
    elif kind == "mean":
        mean = z[:, :, 2].mean(dim=(0, 1))
        def replace(zz, pos):
            zz[:, :, 2] = mean
    else:
        row = resample_source(heldout.shape[0])
        def replace(zz, pos):
            zz[0, :, 2] = z[row, pos, 2]
    want = naive_generate(model, prompt, 30, replace)
    hooks = generation_hooks(model, [(1, 2)], kind, heldout)
    with model.hooks(fwd_hooks=hooks):
        got = model.generate(torch.tensor([prompt]), 30, temperature=0.0)[0, prompt_len:].tolist()
    assert got == want
    clean = model.generate(torch.tensor([prompt]), 30, temperature=0.0)[0, prompt_len:].tolist()
    assert clean != want, "this ablation should change the greedy tokens, or the test proves nothing"


def test_head_means_leave_the_target_column_out(model, heldout):
    means = head_means(model, heldout)
    z = clean_z(model, heldout[:, :-1])
    assert torch.allclose(means[1], z.mean(dim=(0, 1)), atol=1e-6)
    with_target = clean_z(model, heldout[:, 1:])  # a different set of positions gives other means
    assert not torch.allclose(means[1], with_target.mean(dim=(0, 1)), atol=1e-4)


def test_generation_hooks_refuse_bad_heads_and_kinds(model, heldout):
    with pytest.raises(ValueError, match="outside this model"):
        generation_hooks(model, [(2, 0)], "zero", heldout)
    with pytest.raises(ValueError, match="ablation kind"):
        generation_hooks(model, [(0, 0)], "mean-ish", heldout)
    assert generation_hooks(model, [], "mean", heldout) == []


def test_private_copy_shares_weights_but_not_hooks(model):
    copy = model.private_copy()
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters()))
    tokens = torch.tensor([[1, 2, 3, 4]])
    seen = []
    copy.add_hook("blocks.0.attn.hook_z", lambda z, hook: seen.append(1))
    with torch.no_grad():
        assert torch.equal(model(tokens), copy(tokens))
    assert len(seen) == 1  # fired for the copy's forward only, not the shared model's
    copy.reset_hooks()
    model.add_hook("blocks.0.attn.hook_z", lambda z, hook: None)
    try:
        with pytest.raises(RuntimeError, match="hooks attached"):
            model.private_copy()
    finally:
        model.reset_hooks()
