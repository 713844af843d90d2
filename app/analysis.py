"""The few model computations the app runs itself (everything measured across checkpoints comes
from the probes): greedy generation with heads ablated, one head's attention pattern on a typed
prompt. Plain torch through the hook interface, no Streamlit.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from model.tokenizer import Tokenizer

Head = tuple[int, int]
Hook = tuple[str, Callable]


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in sorted(set((int(l), int(h)) for l, h in heads)):
        out.setdefault(layer, []).append(head)
    return out


@torch.no_grad()
def head_means(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each layer's z averaged over batch and positions [H, D]: what mean-ablation substitutes."""
    names = {f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {l: cache[f"blocks.{l}.attn.hook_z"].mean(dim=(0, 1)) for l in range(model.cfg.n_layers)}


def ablation_hooks(heads: Iterable[Head], means: dict[int, torch.Tensor] | None = None) -> list[Hook]:
    """hook_z hooks that replace the chosen heads' outputs by zero, or by their mean when `means`
    is given. Works position by position, so it also applies during KV-cached generation."""
    hooks = []
    for layer, hs in heads_by_layer(heads).items():
        def fn(z: torch.Tensor, hook=None, hs=hs, layer=layer) -> torch.Tensor:
            z = z.clone()
            z[:, :, hs, :] = 0.0 if means is None else means[layer][hs].to(z.dtype)
            return z
        hooks.append((f"blocks.{layer}.attn.hook_z", fn))
    return hooks


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
