"""The naive head-ablation reference the batched sweeps of probes.measure.ablation are checked against:
one plain run_with_hooks per head, written out here and never through probes.measure.ablation's own
ablate() or sweeps."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probes.measure.ablation import resample_permutation


@torch.no_grad()
def token_losses(model, tokens: torch.Tensor, hooks=()) -> torch.Tensor:
    """Per-token cross-entropy [B, P] of tokens[:, 1:] from whole logits, with `hooks` on."""
    logits = model.run_with_hooks(tokens[:, :-1], fwd_hooks=list(hooks))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1),
                           reduction="none").view(len(tokens), -1)


def naive_head_ablation(model, tokens: torch.Tensor, kind: str) -> np.ndarray:
    """[L, H, B]: each sequence's mean per-token loss with head (l, h) ablated minus its clean one.
    The head's z is replaced by zeros ("zero"), its mean over the batch and positions ("mean"), or
    another sequence's z by resample_permutation(B, 0) ("resample"). Every sequence has the same
    length, so `.mean(-1)` is the [L, H] matrix of the sweep (the change of the mean loss)."""
    L, H, B = model.cfg.n_layer, model.cfg.n_head, len(tokens)
    clean_z = {}
    clean = token_losses(model, tokens, [
        (f"blocks.{l}.attn.hook_z", lambda z, hook: clean_z.__setitem__(hook.name, z.clone())) for l in range(L)])
    perm = resample_permutation(B, 0)
    out = np.zeros((L, H, B))
    for l in range(L):
        for h in range(H):
            src = clean_z[f"blocks.{l}.attn.hook_z"][:, :, h]
            new = {"zero": torch.zeros_like(src), "mean": src.mean((0, 1)).expand_as(src), "resample": src[perm]}[kind]

            def hook(z, hook, h=h, new=new):
                z = z.clone()
                z[:, :, h] = new
                return z
            ablated = token_losses(model, tokens, [(f"blocks.{l}.attn.hook_z", hook)])
            out[l, h] = (ablated.double() - clean.double()).mean(-1).numpy()
    return out
