"""Attribution patching of head ablation: a first-order estimate of the zero / mean / resample
sweep (`probes.measure.ablation.head_ablation_sweep`) from one forward and one backward pass.

Ablating head h of layer l replaces its z [B,P,D] by z_repl (0, its mean, or its z on another
sequence). To first order the loss then changes by

    sum over batch, positions and d of (z_repl - z)[:, :, h] * dL/dz[:, :, h]

(Nanda 2023, "Attribution Patching"; Syed et al. 2023). The exact sweep needs one forward pass per
head (L x H of them, batched per layer); this needs one forward and one backward for every head at
once, so it is the figure to show where the sweep is too slow, always labelled as an estimate next
to its measured agreement with the sweep (`agreement`).

Same token convention as the sweep: `tokens` is [B, P+1]; the model reads tokens[:, :-1] and the
loss is the mean cross-entropy of predicting tokens[:, 1:]. Only the hook interface is used, so it
also runs on a TransformerLens bridge.
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from probes.measure.head_replacement import KINDS, check_kind, replacement, resample_permutation
from probes.measure.forward import (Readout, blocked_loss_grad, forward_rows, logit_rows, readout, residual_with_grad, shape_of,
                      split_tokens, z_name)

TOP_K = 3


def summed_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the per-position cross-entropies, in float32 (as the sweep's `token_losses`) or in
    float64 for a float64 model, so a finite-difference check can reach float64 precision."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V).to(dtype), targets.reshape(-1), reduction="sum").double()


def z_and_grads(model: Any, inputs: torch.Tensor, targets: torch.Tensor,
                rows: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's clean z [B,P,H,D] and the gradient of the mean loss with respect to it.

    Each hook_z adds a zero leaf tensor `delta` to z and returns the sum: the forward pass is
    unchanged, d loss / d delta is d loss / d z through everything downstream (later heads
    included), and `torch.autograd.grad` with respect to the deltas only leaves no .grad on the
    parameters. Rows go `rows` at a time (the loss is a sum, so gradients add up), which bounds
    the memory of logits and their backward pass for large batches.

    With a plain unembedding matrix (`model.GPT`) the forward stops after the last block and the
    loss and its gradient at ln_final's output come from one blocked pass over the vocabulary
    (`probes.measure.forward.blocked_loss_grad`): no [rows, P, V] logits, so rows are bounded by the
    activations the backward pass keeps, not by logits."""
    n_layers = shape_of(model)[0]
    B, P = inputs.shape
    head = readout(model)
    blocked = isinstance(head, Readout) and head.weight is not None
    if rows is None:  # blocked: every layer's activations kept for the backward pass; else logits,
        # their softmax and two gradients
        rows = max(1, forward_rows(model, P) // n_layers) if blocked else max(1, logit_rows(model, P) // 4)
    total = float(B * P)
    zs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    grads: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    for start in range(0, B, rows):
        chunk = slice(start, min(B, start + rows))
        deltas: list[torch.Tensor | None] = [None] * n_layers

        def perturb(layer: int):
            def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
                zs[layer].append(z.detach().clone())
                deltas[layer] = torch.zeros_like(z, requires_grad=True)
                return z + deltas[layer]
            return hook

        hooks = [(z_name(l), perturb(l)) for l in range(n_layers)]
        with torch.enable_grad():
            if blocked:
                normed = head.norm(residual_with_grad(model, inputs[chunk], hooks))
            else:
                logits = model.run_with_hooks(inputs[chunk], fwd_hooks=hooks)
            missing = [l for l, d in enumerate(deltas) if d is None]
            if missing:
                raise RuntimeError(f"the model never ran hook {z_name(missing[0])}, so attribution has no z there.")
            if blocked:
                with torch.no_grad():
                    flat = normed.detach().reshape(-1, normed.shape[-1])
                    _, grad = blocked_loss_grad(flat, targets[chunk].reshape(-1), head.weight, head.bias)
                found = torch.autograd.grad(normed, deltas, grad_outputs=(grad / total).to(normed.dtype).view_as(normed))
            else:
                found = torch.autograd.grad(summed_losses(logits, targets[chunk]) / total, deltas)
                del logits
            for layer, g in enumerate(found):
                grads[layer].append(g.detach())
    return [torch.cat(z) for z in zs], [torch.cat(g) for g in grads]


def head_attribution(model: Any, tokens: Any, kind: str = "zero", seed: int = 0) -> np.ndarray:
    """First-order estimate [L, H] of `head_ablation_sweep(model, tokens, kind, seed)`: the loss
    increase when each head alone is ablated, from one forward and one backward pass.

    The replacement of each head's z is the sweep's own (`replacement`, with the same seeded
    derangement for resample), so the two differ only by the terms of second and higher order.
    Works under torch.no_grad() and leaves no gradients on the model's parameters."""
    return head_attributions(model, tokens, (kind,), seed)[kind]


def head_attributions(model: Any, tokens: Any, kinds: Sequence[str] = KINDS, seed: int = 0) -> dict[str, np.ndarray]:
    """`head_attribution` for several kinds at once: z and its gradient do not depend on the kind,
    so every kind shares one forward and one backward pass."""
    for kind in kinds:
        check_kind(kind)
    inputs, targets = split_tokens(model, tokens)
    n_layers, n_heads, _ = shape_of(model)
    perm = resample_permutation(inputs.shape[0], seed) if "resample" in kinds else None
    zs, grads = z_and_grads(model, inputs, targets)
    out = {kind: np.zeros((n_layers, n_heads)) for kind in kinds}
    for layer in range(n_layers):
        z, g = zs[layer].double(), grads[layer].double()
        if z.dim() != 4 or z.shape[2] != n_heads:
            raise RuntimeError(f"{z_name(layer)} gave shape {tuple(z.shape)}, expected [batch, positions, "
                               f"{n_heads} heads, d_head].")
        for kind in kinds:
            for head in range(n_heads):
                change = replacement(kind, z, head, perm) - z[:, :, head]
                out[kind][layer, head] = float((change * g[:, :, head]).sum())
    return out


def attribution_result(model: Any, tokens: Any, exact: Mapping[str, Any], seed: int = 0,
                       kinds: Sequence[str] = KINDS) -> dict:
    """The attribution part of the `head_ablation` result: the estimate [L][H] of every kind in
    `kinds` on `tokens` (the sweep's first block; all kinds share one forward and one backward),
    and, for each kind with an exact matrix in `exact`, their agreement, so the app can show the
    estimate with how far it can be trusted at this checkpoint.

    A Spearman correlation that is undefined (a constant matrix) is stored as None: the result
    files are strict JSON."""
    start = time.perf_counter()
    estimates = head_attributions(model, tokens, tuple(dict.fromkeys([*kinds, *exact])), seed)
    agree = {}
    for kind in exact:
        a = agreement(estimates[kind], exact[kind])
        agree[kind] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in a.items()}
    return {"attribution": {k: v.tolist() for k, v in estimates.items()}, "attribution_agreement": agree,
            "attribution_sequences": int(split_tokens(model, tokens)[0].shape[0]),
            "seconds": {"attribution": time.perf_counter() - start}}  # "seconds", as the result's timings


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=float).ravel()
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two equally shaped arrays (nan when either is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two arrays of the same shape with at least 2 values, "
                         f"got shapes {a.shape} and {b.shape}.")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_overlap(estimate: Any, exact: Any, k: int = TOP_K) -> float:
    """Fraction of the k heads with the largest exact loss increase that are also among the k
    largest estimates: whether the estimate finds the heads that matter most."""
    estimate, exact = np.asarray(estimate, dtype=float).ravel(), np.asarray(exact, dtype=float).ravel()
    if estimate.shape != exact.shape:
        raise ValueError(f"estimate and exact sweep must have the same shape, got {estimate.size} and {exact.size} heads.")
    k = min(k, exact.size)
    top = lambda x: set(np.argsort(-x, kind="stable")[:k].tolist())  # noqa: E731
    return len(top(estimate) & top(exact)) / k


def agreement(estimate: Any, exact: Any, k: int = TOP_K) -> dict:
    """How far the estimate can be trusted for one checkpoint: Spearman rank correlation with the
    exact sweep over all heads, and the top-k overlap."""
    return {"spearman": spearman(estimate, exact), f"top{k}_overlap": top_overlap(estimate, exact, k)}
