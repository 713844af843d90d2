"""The few model computations the app runs itself (everything measured across checkpoints comes
from the probes): greedy generation with hooks attached, every head's attention pattern on a typed
prompt. Plain torch through the hook interface, no Streamlit.

Both attach hooks to the model they are given, so the caller passes a model no other thread uses
(`GPT.private_copy()` of the shared one: see app/cache.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from model.tokenizer import Tokenizer

Hook = tuple[str, Callable]


@torch.no_grad()
def greedy_continuation(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                        hooks: Sequence[Hook] = ()) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids) of a greedy generation, with `hooks` attached throughout."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("The prompt is empty: type at least one word.")
    ids = ids[-model.cfg.n_ctx:]
    with model.hooks(fwd_hooks=list(hooks)):
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, temperature=0.0)
    return ids, out[0, len(ids):].tolist()


@torch.no_grad()
def attention_patterns(model, tokens: Sequence[int]) -> list:
    """[layer][head][query][key] attention of every head on one prompt (one forward pass, so
    switching layer or head in the viewer costs nothing)."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(torch.tensor([list(tokens)]), names_filter=lambda n: n in names)
    return [cache[n][0].tolist() for n in names]
