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

The sweep over every head never holds [B, P, V] logits: losses come from the residual stream after
the last block, read out a chunk of positions at a time (`probes.measure.forward.stats_from_residual`).
On `model.GPT` the clean pass keeps every layer's input, and the ablations of layer l recompute
only layers l..L-1 and the readout (`sweep_flops` counts exactly that); on any other hooked model
(the TransformerLens bridge) the layers below l run again, once per group of heads, on the
unwidened batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from model.gpt import GPT

from probes.measure.forward import (final_residual, forward_rows, loss_chunk_positions, readout, resid_pre_name, shape_of,
                      split_tokens, stats_from_residual, token_losses, token_stats, z_name)
from probes.measure.attribution import attribution_result
from probes.measure.head_replacement import KINDS, check_kind, replacement, resample_permutation
from probes.measure.metrics import gini, top_share

TOP_FRACTION = 0.1


@dataclass
class CleanRun:
    """The unablated forward pass: its loss, every layer's z [B,P,H,D], its per-token losses
    [B,P], and, when asked for, its logits [B,P,V] and every layer's input (`hook_resid_pre`)."""

    loss: float
    z: list[torch.Tensor]
    logits: torch.Tensor | None = None
    token_losses: torch.Tensor | None = None
    resid_pre: list[torch.Tensor] | None = None


def mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(token_losses(logits, targets).double().mean())


@torch.no_grad()
def clean_run(model: Any, inputs: torch.Tensor, targets: torch.Tensor, extra_hooks: Iterable = (),
              logits: bool = True, known_losses: torch.Tensor | None = None) -> CleanRun:
    """One forward pass that keeps every layer's z (for mean and resample ablation); extra hooks
    (e.g. attention statistics) ride along on the same pass. With `logits` it returns the whole
    logits (what `ablate` hands back); without, per-token losses from the chunked readout and, on
    `model.GPT`, every layer's input for the sweep to restart from. `known_losses` [B, P] are
    these inputs' per-token losses computed by another pass (the probes' held-out set): the
    forward then stops after the last block, with no readout."""
    n_layers = shape_of(model)[0]
    zs: list[torch.Tensor | None] = [None] * n_layers
    resid: list[torch.Tensor | None] = [None] * n_layers

    def keep(store: list, layer: int):
        def hook(x: torch.Tensor, hook: Any) -> None:
            store[layer] = x.detach().clone()
        return hook

    hooks = [(z_name(l), keep(zs, l)) for l in range(n_layers)] + list(extra_hooks)
    if logits:
        out = model.run_with_hooks(inputs, fwd_hooks=hooks)
        return CleanRun(loss=mean_loss(out, targets), z=zs, logits=out, token_losses=token_losses(out, targets))
    restart = isinstance(model, GPT)
    if restart:
        hooks += [(resid_pre_name(l), keep(resid, l)) for l in range(n_layers)]
    if known_losses is not None:
        if tuple(known_losses.shape) != tuple(inputs.shape):
            raise ValueError(f"known_losses has shape {tuple(known_losses.shape)}, the inputs {tuple(inputs.shape)}.")
        final_residual(model, inputs, hooks)
        losses = known_losses.to(inputs.device)
    else:
        losses = token_stats(model, inputs, targets, hooks).losses
    return CleanRun(loss=float(losses.double().mean()), z=zs, token_losses=losses,
                    resid_pre=resid if restart else None)


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
           clean: CleanRun | None = None, return_logits: bool = True) -> dict:
    """Ablate any set of (layer, head) pairs at once.

    Returns {"loss": ablated mean loss, "delta": loss − clean loss, "logits": ablated logits
    [B,P,V]}. With no heads the clean pass is returned as is, so delta is exactly 0. With
    `return_logits=False` no [B,P,V] tensor is made (losses come from the chunked readout) and
    "logits" is None: what a caller wanting only the loss (the app) should ask for."""
    check_kind(kind)
    heads = check_heads(model, heads)
    inputs, targets = split_tokens(model, tokens)
    clean = clean or clean_run(model, inputs, targets, logits=return_logits)
    if not heads:
        return {"loss": clean.loss, "delta": 0.0, "logits": clean.logits if return_logits else None}
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
    if return_logits:
        logits = model.run_with_hooks(inputs, fwd_hooks=hooks)
        loss = mean_loss(logits, targets)
    else:
        logits, loss = None, float(token_stats(model, inputs, targets, hooks).losses.double().mean())
    return {"loss": loss, "delta": loss - clean.loss, "logits": logits}


def sweep_rows(model: Any, positions: int) -> int:
    """The sweep's memory budget: how many rows of `positions` its widened batch (one copy of the
    batch per head ablated at once) may hold. No logits are held (the readout is chunked), so this
    is the forward's activations only (`probes.measure.forward.forward_rows`)."""
    return forward_rows(model, positions)


@torch.no_grad()
def ablated_token_losses(model: Any, inputs: torch.Tensor, targets: torch.Tensor, layer: int, heads: list[int],
                         kind: str, clean: CleanRun, perm: torch.Tensor | None) -> torch.Tensor:
    """Per-token losses [r, B, P] with each head of `heads` (all in `layer`) ablated alone, in one
    batched pass: copy i of the batch has head heads[i] ablated at `hook_z`.

    On `model.GPT` (when the clean pass kept every layer's input) the copies start from the clean
    `hook_resid_pre` of `layer` and run only blocks layer..L-1; on any other hooked model the batch
    is copied at `hook_resid_pre`, so the layers below run once on B rows. Either way the forward
    stops after the last block and the losses are read out a chunk of positions at a time."""
    r, B = len(heads), inputs.shape[0]
    repl = [replacement(kind, clean.z[layer], h, perm) for h in heads]

    def expand(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x.repeat(r, *([1] * (x.dim() - 1))) if x.shape[0] == B else x

    def ablate_copies(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone().view(r, B, *z.shape[1:])
        for i, h in enumerate(heads):
            z[i, :, :, h] = repl[i]
        return z.view(r * B, *z.shape[2:])

    head = readout(model)
    if head is None:  # a model without a readout to chunk: whole logits, as before
        logits = model.run_with_hooks(inputs, fwd_hooks=[(resid_pre_name(layer), expand), (z_name(layer), ablate_copies)])
        return token_losses(logits, targets.repeat(r, 1)).view(r, B, -1)
    if isinstance(model, GPT) and clean.resid_pre is not None:
        x = clean.resid_pre[layer].repeat(r, 1, 1)
        with model.hooks(fwd_hooks=[(z_name(layer), ablate_copies)]):
            for block in model.blocks[layer:]:
                x = block(x)
        resid = x
    else:
        resid = final_residual(model, inputs, [(resid_pre_name(layer), expand), (z_name(layer), ablate_copies)])
    if resid.shape[0] != r * B:
        raise RuntimeError(f"expected {r * B} rows after expanding the batch at layer {layer}, got {resid.shape[0]}.")
    return stats_from_residual(resid, targets.repeat(r, 1), head, loss_chunk_positions(model)).losses.view(r, B, -1)


@torch.no_grad()
def sequence_deltas(model: Any, inputs: torch.Tensor, targets: torch.Tensor, kind: str = "zero", seed: int = 0,
                    clean: CleanRun | None = None) -> np.ndarray:
    """Per-sequence loss increases [L, H, B]: for each head alone ablated, the mean over the
    sequence's positions of (ablated − clean) per-token loss. Their mean over B is the sweep's
    delta (every sequence has the same positions); their spread gives its standard error."""
    check_kind(kind)
    clean = clean if clean is not None and clean.token_losses is not None else clean_run(model, inputs, targets, logits=False)
    n_layers, n_heads, _ = shape_of(model)
    B, P = inputs.shape
    perm = resample_permutation(B, seed) if kind == "resample" else None
    group = max(1, min(n_heads, sweep_rows(model, P) // B))
    base = clean.token_losses.double()
    out = np.zeros((n_layers, n_heads, B))
    for layer in range(n_layers):
        for start in range(0, n_heads, group):
            heads = list(range(start, min(n_heads, start + group)))
            losses = ablated_token_losses(model, inputs, targets, layer, heads, kind, clean, perm)
            out[layer, heads] = (losses.double() - base).mean(-1).cpu().numpy()
    return out


@torch.no_grad()
def head_ablation_sweep(model: Any, tokens: Any, kind: str = "zero", seed: int = 0,
                        clean: CleanRun | None = None) -> np.ndarray:
    """Loss increase [L, H] when each head alone is ablated: the same numbers as one
    `ablate(model, tokens, [(l, h)], kind)` per head, computed with all heads of a layer (as many
    as `sweep_rows` allows) in one batched pass that restarts at that layer (see `ablated_token_losses`)."""
    check_kind(kind)
    inputs, targets = split_tokens(model, tokens)
    return sequence_deltas(model, inputs, targets, kind, seed, clean).mean(-1)


def standard_errors(per_sequence: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the last axis (sequences), ddof=1.

    Sequences are the independent units: tokens within a sequence share their context and their
    losses are correlated, so a standard error over tokens would be too small. (Under resample
    ablation a sequence also borrows another's z; the sequences are still treated as independent.)"""
    n = per_sequence.shape[-1]
    if n < 2:
        return np.full(per_sequence.shape[:-1], np.nan)
    return per_sequence.std(axis=-1, ddof=1) / math.sqrt(n)


def sweep_flops(cfg: Any, batch: int, positions: int, include_clean: bool = True) -> int:
    """Matmul FLOPs of one kind's exact sweep (`head_ablation_sweep`) on [batch, positions] inputs.

    Per ablated head of layer l: blocks l..L-1 on the batch (per block, q/k/v 6·P·C², the
    causal attention scores and mix 2·C·P(P+1), the output projection 2·P·C² and the MLP 16·P·C²
    (none for attention-only blocks) per row) and the readout 2·P·C·V per row. With
    `include_clean` (the sweep runs one itself unless given one) add one clean pass: all L blocks and the readout once. LayerNorms, softmax,
    GELU and the cross-entropy are not counted: they are O(P·C) or O(P·V) per row, not matmuls.
    Accepts a `GPTConfig` or a TransformerLens cfg."""
    L = int(getattr(cfg, "n_layer", None) or cfg.n_layers)
    H = int(getattr(cfg, "n_head", None) or cfg.n_heads)
    C = int(getattr(cfg, "n_embd", None) or cfg.d_model)
    V = int(getattr(cfg, "vocab_size", None) or cfg.d_vocab)
    B, P = int(batch), int(positions)
    mlp = 0 if getattr(cfg, "attn_only", False) else 16
    block = B * ((8 + mlp) * P * C * C + 2 * C * P * (P + 1))
    unembed = 2 * B * P * C * V
    total = sum(H * ((L - l) * block + unembed) for l in range(L))
    if include_clean:
        total += L * block + unembed
    return total


DEFAULT_KINDS = ("zero",)  # exact kinds in the default probe set; the others on demand (probes.measure.compute)


def head_ablation_probe(model: Any, tokens: Any, clean: CleanRun | None = None, block: int | None = None,
                        target_se: float | None = None, max_sequences: int | None = None,
                        attribution: bool = True, kinds: Sequence[str] = DEFAULT_KINDS,
                        estimates: Sequence[str] = KINDS, known_losses: torch.Tensor | None = None) -> dict:
    """The `head_ablation` entry of a result file: clean loss, [L][H] loss increases for every
    kind in `kinds` with their standard errors (`delta_se`), how unequal head importance is (Gini,
    share held by the top 10% of heads), and the precision reached. `kinds` lists the kinds
    measured exactly; every kind is an exact sweep of its own, so the default is one (zero, the
    one the summary's head-inequality rule reads) and mean and resample are computed when asked.

    Sized by precision: the sweep runs on `block` sequences of `tokens` at a time (the first
    block is exactly the batch an unsized sweep would use; mean and resample replacements are
    taken within each block) and adds blocks until the largest standard error over every head
    and kind is at most `target_se`, `max_sequences` are used, or `tokens` run out. Without
    `block` all of `tokens` is one block. `clean` applies to the first block only;
    `known_losses` [K, P] are the per-token losses of the first K rows of `tokens`, already
    computed elsewhere, which the clean passes of the blocks they cover use instead of a readout.

    With `attribution` it also stores the first-order estimate of every kind in `estimates` on the first
    block (`probes.measure.attribution.attribution_result`: one forward and one backward for all kinds),
    with its agreement for each kind measured exactly here, so the estimate is never shown without
    it where an exact sweep exists."""
    kinds = tuple(kinds)
    for kind in kinds:
        check_kind(kind)
    if not kinds:
        raise ValueError(f"head ablation needs at least one kind of {', '.join(KINDS)}.")
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens[None]
    total = len(tokens) if max_sequences is None else min(len(tokens), int(max_sequences))
    block = total if block is None else int(block)
    if block < 2:
        raise ValueError(f"head ablation needs blocks of at least 2 sequences (resample swaps z between them), "
                         f"got {block}.")
    per_kind: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    clean_losses: list[torch.Tensor] = []
    n, P, se = 0, None, float("nan")
    while n < total and total - n >= 2:
        inputs, targets = split_tokens(model, tokens[n:min(total, n + block)])
        P = int(inputs.shape[1])
        if clean is None or n > 0 or clean.token_losses is None:
            end = n + int(inputs.shape[0])
            known = known_losses[n:end] if known_losses is not None and len(known_losses) >= end else None
            clean = clean_run(model, inputs, targets, logits=False, known_losses=known)
        clean_losses.append(clean.token_losses.double().mean(-1).cpu())
        for kind in kinds:
            per_kind[kind].append(sequence_deltas(model, inputs, targets, kind, clean=clean))
        n += int(inputs.shape[0])
        se = max(float(np.nanmax(standard_errors(np.concatenate(per_kind[k], axis=-1)))) for k in kinds)
        if target_se is None or se <= target_se:
            break
    if n == 0:
        raise ValueError(f"head ablation needs at least 2 sequences, got {len(tokens)}.")
    result: dict[str, Any] = {"clean_loss": float(torch.cat(clean_losses).mean()), "n_sequences": n,
                              "n_positions": P, "kinds": list(kinds)}
    result["delta_se"] = {}
    for kind in kinds:
        deltas = np.concatenate(per_kind[kind], axis=-1)
        result[kind] = deltas.mean(-1).tolist()
        result["delta_se"][kind] = standard_errors(deltas).tolist()
    result["gini"] = {k: gini(result[k]) for k in kinds}
    result["top_share"] = {k: top_share(result[k], TOP_FRACTION) for k in kinds}
    result["top_fraction"] = TOP_FRACTION
    result["precision"] = {"target_se": None if target_se is None else float(target_se), "achieved_se": se,
                           "n_sequences": n, "tokens": n * P, "block": block, "max_sequences": total,
                           "unit": "sequence"}
    if attribution:
        result.update(attribution_result(model, tokens[:min(total, block)], {k: result[k] for k in kinds},
                                         kinds=estimates))
    return result


@torch.no_grad()
def head_means(model: Any, tokens: Any) -> list[torch.Tensor]:
    """Each layer's z averaged over the batch and input positions [H, D]: what mean ablation
    substitutes, the same numbers `ablate(..., kind="mean")` uses on these tokens. `tokens` is
    [B, P+1] as everywhere here, so the target column never enters the mean."""
    inputs, targets = split_tokens(model, tokens)
    return [z.mean(dim=(0, 1)) for z in clean_run(model, inputs, targets, logits=False).z]


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
        clean = clean_run(model, inputs, targets, logits=False)
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
