"""Head ablation: how much the held-out loss rises when one head (or any set of heads) is
knocked out at `attn.hook_z`.

Three ways to knock a head out, as in the interpretability literature:
  zero      its z is replaced by 0 (the head then adds only its share of the output bias);
  mean      by the mean of its z over the batch and positions (removes the information, keeps
            the average signal downstream layers are used to);
  resample  by its z on a different sequence of the batch at the same position (a seeded
            derangement of the batch), as in causal scrubbing / resample ablation.

Token convention: `tokens` is [B, P+1]; the model reads tokens[:, :-1] and the loss is the mean
cross-entropy of predicting tokens[:, 1:] (what `probes.heldout_tokens` returns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from .forward import resid_pre_name, rows_for, shape_of, split_tokens, token_losses, z_name
from .metrics import gini, top_share

KINDS = ("zero", "mean", "resample")
TOP_FRACTION = 0.1


@dataclass
class CleanRun:
    """The unablated forward pass: its loss, every layer's z [B,P,H,D], and its logits."""

    loss: float
    z: list[torch.Tensor]
    logits: torch.Tensor


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"ablation kind must be one of {', '.join(KINDS)}, got {kind!r}.")


def mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(token_losses(logits, targets).double().mean())


@torch.no_grad()
def clean_run(model: Any, inputs: torch.Tensor, targets: torch.Tensor, extra_hooks: Iterable = ()) -> CleanRun:
    """One forward pass that keeps every layer's z (for mean and resample ablation); extra hooks
    (e.g. attention statistics) ride along on the same pass."""
    n_layers = shape_of(model)[0]
    zs: list[torch.Tensor | None] = [None] * n_layers

    def keep(layer: int):
        def hook(z: torch.Tensor, hook: Any) -> None:
            zs[layer] = z.detach().clone()
        return hook

    hooks = [(z_name(l), keep(l)) for l in range(n_layers)] + list(extra_hooks)
    logits = model.run_with_hooks(inputs, fwd_hooks=hooks)
    return CleanRun(loss=mean_loss(logits, targets), z=zs, logits=logits)


def resample_permutation(batch: int, seed: int = 0) -> torch.Tensor:
    """A seeded derangement of the batch: row b takes its replacement from row perm[b] != b."""
    if batch < 2:
        raise ValueError("resample ablation needs at least 2 sequences in the batch, to take each "
                         "head's activation from a different one.")
    order = np.random.default_rng(seed).permutation(batch)
    perm = np.empty(batch, dtype=np.int64)
    perm[order] = np.roll(order, -1)  # each row points at the next one in a random cycle
    return torch.from_numpy(perm)


def replacement(kind: str, z: torch.Tensor, head: int, perm: torch.Tensor | None) -> torch.Tensor:
    """What head `head`'s z [B,P,D] becomes under ablation `kind`, given the clean z [B,P,H,D]."""
    zh = z[:, :, head]
    if kind == "zero":
        return torch.zeros_like(zh)
    if kind == "mean":
        return zh.mean(dim=(0, 1)).expand_as(zh)
    return zh[perm.to(zh.device)]


def check_heads(model: Any, heads: Iterable) -> list[tuple[int, int]]:
    n_layers, n_heads, _ = shape_of(model)
    out = set()
    for item in heads:
        try:
            layer, head = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"each head must be a (layer, head) pair of integers, got {item!r}.") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head ({layer}, {head}) is outside this model's {n_layers} layers x {n_heads} heads.")
        out.add((layer, head))
    return sorted(out)


@torch.no_grad()
def ablate(model: Any, tokens: Any, heads: Iterable, kind: str = "zero", seed: int = 0,
           clean: CleanRun | None = None) -> dict:
    """Ablate any set of (layer, head) pairs at once.

    Returns {"loss": ablated mean loss, "delta": loss − clean loss, "logits": ablated logits
    [B,P,V]}. With no heads the clean pass is returned as is, so delta is exactly 0.
    """
    check_kind(kind)
    heads = check_heads(model, heads)
    inputs, targets = split_tokens(model, tokens)
    clean = clean or clean_run(model, inputs, targets)
    if not heads:
        return {"loss": clean.loss, "delta": 0.0, "logits": clean.logits}
    perm = resample_permutation(inputs.shape[0], seed) if kind == "resample" else None

    def ablate_layer(layer: int, layer_heads: list[int]):
        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            z = z.clone()
            for h in layer_heads:
                z[:, :, h] = replacement(kind, clean.z[layer], h, perm)
            return z
        return hook

    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = [(z_name(l), ablate_layer(l, hs)) for l, hs in by_layer.items()]
    logits = model.run_with_hooks(inputs, fwd_hooks=hooks)
    loss = mean_loss(logits, targets)
    return {"loss": loss, "delta": loss - clean.loss, "logits": logits}


@torch.no_grad()
def ablated_losses(model: Any, inputs: torch.Tensor, targets: torch.Tensor, layer: int, heads: list[int],
                   kind: str, clean: CleanRun, perm: torch.Tensor | None) -> list[float]:
    """Losses with each head of `heads` (all in `layer`) ablated alone, in one batched pass.

    The batch is copied once per head at the layer's input (`hook_resid_pre`), so the layers
    below run once; copy i then has head heads[i] ablated at `hook_z`."""
    r, B = len(heads), inputs.shape[0]
    repl = [replacement(kind, clean.z[layer], h, perm) for h in heads]

    def expand(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x.repeat(r, *([1] * (x.dim() - 1))) if x.shape[0] == B else x

    def ablate_copies(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone().view(r, B, *z.shape[1:])
        for i, h in enumerate(heads):
            z[i, :, :, h] = repl[i]
        return z.view(r * B, *z.shape[2:])

    logits = model.run_with_hooks(inputs, fwd_hooks=[(resid_pre_name(layer), expand), (z_name(layer), ablate_copies)])
    if logits.shape[0] != r * B:
        raise RuntimeError(f"expected {r * B} rows after expanding the batch at layer {layer}, got {logits.shape[0]}.")
    losses = token_losses(logits, targets.repeat(r, 1)).double().view(r, -1).mean(1)
    return [float(v) for v in losses]


@torch.no_grad()
def head_ablation_sweep(model: Any, tokens: Any, kind: str = "zero", seed: int = 0,
                        clean: CleanRun | None = None) -> np.ndarray:
    """Loss increase [L, H] when each head alone is ablated: the same numbers as one
    `ablate(model, tokens, [(l, h)], kind)` per head, computed with all heads of a layer in one
    batched pass and the layers below it run once (see `ablated_losses`)."""
    check_kind(kind)
    inputs, targets = split_tokens(model, tokens)
    clean = clean or clean_run(model, inputs, targets)
    n_layers, n_heads, _ = shape_of(model)
    B, P = inputs.shape
    perm = resample_permutation(B, seed) if kind == "resample" else None
    group = max(1, min(n_heads, rows_for(model, P) // B))
    out = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        for start in range(0, n_heads, group):
            heads = list(range(start, min(n_heads, start + group)))
            losses = ablated_losses(model, inputs, targets, layer, heads, kind, clean, perm)
            out[layer, heads] = np.asarray(losses) - clean.loss
    return out


def head_ablation_probe(model: Any, tokens: Any, clean: CleanRun | None = None) -> dict:
    """The `head_ablation` entry of a result file: clean loss, [L][H] loss increases for every
    kind, and how unequal head importance is (Gini, share held by the top 10% of heads)."""
    inputs, targets = split_tokens(model, tokens)
    clean = clean or clean_run(model, inputs, targets)
    result: dict[str, Any] = {"clean_loss": clean.loss, "n_sequences": int(inputs.shape[0]),
                              "n_positions": int(inputs.shape[1])}
    for kind in KINDS:
        result[kind] = head_ablation_sweep(model, tokens, kind, clean=clean).tolist()
    result["gini"] = {k: gini(result[k]) for k in KINDS}
    result["top_share"] = {k: top_share(result[k], TOP_FRACTION) for k in KINDS}
    result["top_fraction"] = TOP_FRACTION
    return result


@torch.no_grad()
def head_means(model: Any, tokens: Any) -> list[torch.Tensor]:
    """Each layer's z averaged over the batch and input positions [H, D]: what mean ablation
    substitutes, the same numbers `ablate(..., kind="mean")` uses on these tokens. `tokens` is
    [B, P+1] as everywhere here, so the target column never enters the mean."""
    inputs, targets = split_tokens(model, tokens)
    return [z.mean(dim=(0, 1)) for z in clean_run(model, inputs, targets).z]


def resample_source(batch: int, seed: int = 0) -> int:
    """Which held-out row a single prompt resamples its heads from (seeded, like the sweep's
    derangement)."""
    return int(np.random.default_rng([int(seed), 7]).integers(batch))


@torch.no_grad()
def generation_hooks(model: Any, heads: Iterable, kind: str, tokens: Any, seed: int = 0) -> list:
    """hook_z hooks that ablate `heads` of `model` while it generates from one prompt.

    zero      the head's z becomes 0, as in the sweep;
    mean      its mean z over the held-out inputs `tokens` [B, P+1] (`head_means`), as in the sweep;
    resample  its z at the same position of one held-out sequence (row `resample_source`), which
              is what resample ablation means for a single prompt: the sweep swaps z between the
              sequences of its batch, a prompt has no batch to swap within.

    Generation feeds the whole window (a prompt, or the last n_ctx tokens once the KV cache is
    restarted) and then one token at a time; the hooks follow the window positions that way, so
    they are valid on cached and uncached generation alike. Positions past the end of the held-out
    sequence (only when it is shorter than the context) take its last position."""
    check_kind(kind)
    chosen = check_heads(model, heads)
    if not chosen:
        return []
    if kind == "zero":
        source = None
    else:
        inputs, targets = split_tokens(model, tokens)
        clean = clean_run(model, inputs, targets)
        if kind == "mean":
            source = [z.mean(dim=(0, 1))[None] for z in clean.z]          # [1, H, D] for every position
        else:
            row = resample_source(inputs.shape[0], seed)
            source = [z[row] for z in clean.z]                          # [P, H, D] position by position
    by_layer: dict[int, list[int]] = {}
    for layer, head in chosen:
        by_layer.setdefault(layer, []).append(head)

    def layer_hook(layer: int, hs: list[int]):
        position = [0]  # the window position of the next z this hook sees

        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            P = z.shape[1]
            start = 0 if P > 1 else position[0]  # a multi-token call starts a window afresh
            position[0] = start + P
            z = z.clone()
            if source is None:
                z[:, :, hs] = 0.0
            else:
                src = source[layer]
                if src.shape[0] > 1:
                    idx = torch.arange(start, start + P).clamp(max=src.shape[0] - 1)
                    src = src[idx]
                z[:, :, hs] = src[:, hs].to(z.dtype)  # [1 or P, h, D] broadcasts over batch and positions
            return z
        return hook

    return [(z_name(l), layer_hook(l, hs)) for l, hs in by_layer.items()]
