"""Memorization probe: Pythia-style extraction of training sequences the checkpoint had seen,
the same on held-out sequences as the control, canary extraction and exposure per duplication
count, and the train/held-out loss gap.

Exposure (Carlini et al. 2019) is measured for every canary against candidates drawn from its
randomness space R (see probes.measure.inputs.tokenize_canaries). The headline is the extrapolated
exposure, -log2 of the fitted CDF of the candidates' log-perplexity at the canary's, capped at
log2|R|; the rank exposure is kept beside it but cannot exceed log2 of the number of candidates.
Every result says which, with |R|, in `exposure_method`.

For an imported run the training data is unknown, so the seen-sequence scores, the loss gap and
the canaries are reported as unknown (null, with "training_data": "unknown" and a note saying
so), never computed on stand-in text; the held-out scores are measured as for any run.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from model.gpt import GPT, GenerationCache

from probes.measure.canaries import Canary
from probes.measure.forward import forward_rows, generate, model_device, logit_rows, token_stats
from probes.measure.inputs import ProbeInputs
from probes.measure.metrics import exposure, extrapolated_exposure, extrapolation_fit, memorization_score

EXTRACTED = 1.0       # a sequence is memorized / a canary extracted when every suffix token matches
N_EXAMPLES = 3        # memorized training sequences kept as text for the app
UNKNOWN_NOTE = ("This run was imported: its training data is unknown, so which sequences it had seen, "
                "their memorization and loss gap, and any canaries are unknown and not measured; only "
                "held-out text is scored.")


def split_lengths(row_len: int, n_ctx: int, prefix: int, suffix: int) -> tuple[int, int]:
    """(prefix, suffix) lengths that fit a row and the context: 32 + 32 when possible."""
    prefix = min(prefix, max(1, row_len // 2), n_ctx - 1)
    suffix = min(suffix, row_len - prefix, n_ctx - prefix + 1)
    return prefix, suffix


@torch.no_grad()
def greedy_scores(model: Any, rows: torch.Tensor, prefix: int, suffix: int) -> tuple[list[float], torch.Tensor]:
    """Pythia scores of greedy continuations of rows[:, :prefix] against rows[:, prefix:prefix+suffix]."""
    if len(rows) == 0:
        return [], rows[:, :0]
    rows = rows.to(model_device(model))
    out = generate(model, rows[:, :prefix], suffix, temperature=0.0)[:, prefix:]
    truth = rows[:, prefix:prefix + suffix]
    return [memorization_score(g.tolist(), t.tolist()) for g, t in zip(out, truth)], out


@torch.no_grad()
def sequence_losses(model: Any, rows: torch.Tensor) -> torch.Tensor:
    """Per-position teacher-forced losses [N, P] of [N, P+1] rows, never holding [N, P, V] logits
    (`probes.measure.forward.token_stats`)."""
    rows = rows.to(model_device(model))
    if len(rows) == 0:
        return torch.zeros(0, rows.shape[1] - 1, dtype=torch.float32, device=rows.device)
    step = forward_rows(model, rows.shape[1])
    return torch.cat([token_stats(model, rows[i:i + step, :-1], rows[i:i + step, 1:]).losses
                      for i in range(0, len(rows), step)])


def score_summary(scores: list[float]) -> dict:
    if not scores:
        return {"mean_score": None, "memorized_fraction": None, "n": 0}
    s = np.asarray(scores)
    return {"mean_score": float(s.mean()), "memorized_fraction": float((s >= EXTRACTED).mean()), "n": int(len(s))}


def shared_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix every sequence starts with."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _padded(seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [N, W] tokens (pad 0, which a causal model never sees from earlier positions)
    and the [N, W] mask of real tokens."""
    width = max(len(s) for s in seqs)
    rows = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        rows[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return rows.to(device), mask.to(device)


def _expanded(cache: GenerationCache, rows: int) -> GenerationCache:
    """A copy of a batch-1 cache for `rows` rows (the next forward replaces its tensors, so each
    chunk of continuations needs its own copy)."""
    def grow(value: Any) -> Any:
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == 1:
            return value.expand(rows, *value.shape[1:]).contiguous()
        if isinstance(value, (tuple, list)):
            return type(value)(grow(v) for v in value)
        return value
    return GenerationCache(layers=[{k: grow(v) for k, v in layer.items()} for layer in cache.layers],
                           offset=cache.offset)


@torch.no_grad()
def continuation_nll(model: Any, head: list[int], tails: list[list[int]]) -> list[float]:
    """Summed negative log-likelihood of each tail's tokens following `head` (head + tail read as
    one sequence; the head's own tokens are not counted, as they are the same for every tail).

    On `model.GPT` the head runs once and its keys/values are reused for every tail, so a batch of
    candidates that differ only after a shared opening costs the tails' tokens alone; any other
    hooked model (the TransformerLens bridge) runs every head + tail in full."""
    if not head or any(len(t) < 1 for t in tails):
        raise ValueError("continuation_nll needs a non-empty head and non-empty tails.")
    dev = model_device(model)
    if not isinstance(model, GPT):
        rows, mask = _padded([head + t for t in tails], dev)
        losses = sequence_losses(model, rows)[:, len(head) - 1:]
        return [float(v) for v in (losses.double() * mask[:, len(head):]).sum(-1)]
    cache = GenerationCache.empty(model.cfg.n_layer)
    first = torch.log_softmax(model(torch.tensor([head], device=dev), cache=cache)[0, -1].double(), -1)
    rows, mask = _padded(tails, dev)
    total = -first[rows[:, 0]]
    if rows.shape[1] > 1:
        out = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.float64, device=dev)
        step = logit_rows(model, rows.shape[1] - 1)
        for start in range(0, len(rows), step):
            sl = slice(start, start + step)
            stats = token_stats(model, rows[sl, :-1], rows[sl, 1:], cache=_expanded(cache, len(rows[sl])))
            out[sl] = stats.losses.double()
        total = total + (out * mask[:, 1:]).sum(-1)
    return [float(v) for v in total]


def exposure_method(canary: Canary) -> str:
    """One sentence on how a canary's exposure was measured: which number is the headline, what it
    was fitted to, |R| and the cap of the rank form."""
    n = len(canary.candidates)
    fit = extrapolation_fit(n - 1)
    cap = f"the rank exposure among the {n} candidates is capped at log2 {n} = {math.log2(n):.1f} bits"
    if canary.source == "sampled":
        return (f"Exposure (headline) is extrapolated: −log2 of the {fit} CDF fitted to the secret's "
                f"log-perplexity for {n - 1} candidates drawn uniformly from the randomness space R "
                f"({canary.space}), read at the canary's and capped at log2|R| = {canary.space_log2:.1f}; {cap}.")
    return (f"Exposure (headline) is extrapolated: −log2 of the {fit} CDF fitted to the log-perplexity of "
            f"the {n - 1} alternatives data.json lists (this run does not record its canaries' randomness "
            f"space R, so |R| is unknown), read at the canary's; {cap}.")


def exposures(model: Any, canaries: list[Canary]) -> list[dict]:
    """Exposure of every canary among its candidates: the headline (extrapolated, capped at
    log2|R| when R is known), the rank form (capped at log2 of the candidate count) and how it was
    measured. All None for a canary without alternatives. Only the tokens after the opening the
    candidates share are scored: the opening adds the same log-perplexity to every candidate."""
    out = []
    for c in canaries:
        n = len(c.candidates)
        if n < 2:
            out.append({"exposure": None, "exposure_extrapolated": None, "exposure_rank": None,
                        "exposure_rank_cap": None, "n_candidates": n, "randomness_space_log2": c.space_log2,
                        "randomness_space": c.space, "exposure_method": None})
            continue
        shared = max(1, min(shared_prefix_len(c.candidates), min(len(x) for x in c.candidates) - 1))
        nll = continuation_nll(model, c.candidates[0][:shared], [x[shared:] for x in c.candidates])
        extrapolated = extrapolated_exposure(nll[0], nll[1:], max_bits=c.space_log2)
        out.append({"exposure": extrapolated, "exposure_extrapolated": extrapolated,
                    "exposure_rank": exposure(nll), "exposure_rank_cap": math.log2(n), "n_candidates": n,
                    "randomness_space_log2": c.space_log2, "randomness_space": c.space,
                    "exposure_method": exposure_method(c)})
    return out


def mean_of(values) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _same_or_none(values) -> Any:
    """The value every member shares, else None (members of a group share how they were measured)."""
    values = list(values)
    return values[0] if values and all(v == values[0] for v in values) else None


@torch.no_grad()
def canary_results(model: Any, tokenizer: Any, canaries: list[Canary]) -> list[dict]:
    """Per duplication count: fraction of canaries extracted by greedy decoding from their
    prefix, their mean Pythia score, and the mean exposure of every one of them (see
    `exposures`; each item keeps its own)."""
    items = []
    by_prefix: dict[int, list[int]] = {}
    for i, c in enumerate(canaries):
        if c.suffix:
            by_prefix.setdefault(len(c.prefix), []).append(i)
    generated: dict[int, list[int]] = {}
    dev = model_device(model)
    for plen, idx in by_prefix.items():
        n_new = max(len(canaries[i].suffix) for i in idx)
        prompts = torch.tensor([canaries[i].prefix for i in idx], dtype=torch.long, device=dev)
        out = generate(model, prompts, n_new, temperature=0.0)[:, plen:]
        for i, row in zip(idx, out):
            generated[i] = row[:len(canaries[i].suffix)].tolist()
    exps = exposures(model, [c for i, c in enumerate(canaries) if i in generated])
    for (i, c), exp in zip(((i, c) for i, c in enumerate(canaries) if i in generated), exps):
        score = memorization_score(generated[i], c.suffix)
        items.append({"id": c.id, "copies": c.copies, "score": score, "extracted": score >= EXTRACTED, **exp,
                      "prefix": tokenizer.decode(c.prefix), "generated": tokenizer.decode(generated[i]),
                      "truth": tokenizer.decode(c.suffix)})
    groups = []
    for copies in sorted({it["copies"] for it in items}):
        members = [it for it in items if it["copies"] == copies]
        groups.append({
            "copies": copies, "n": len(members),
            "extracted_fraction": float(np.mean([it["extracted"] for it in members])),
            "mean_score": float(np.mean([it["score"] for it in members])),
            "exposure": mean_of(it["exposure"] for it in members),
            "exposure_extrapolated": mean_of(it["exposure_extrapolated"] for it in members),
            "exposure_rank": mean_of(it["exposure_rank"] for it in members),
            "exposure_rank_cap": max((it["exposure_rank_cap"] for it in members if it["exposure_rank_cap"] is not None),
                                     default=None),
            "n_candidates": max(it["n_candidates"] for it in members),
            "randomness_space_log2": _same_or_none(it["randomness_space_log2"] for it in members),
            "randomness_space": _same_or_none(it["randomness_space"] for it in members),
            "exposure_method": _same_or_none(it["exposure_method"] for it in members)
            or next((it["exposure_method"] for it in members if it["exposure_method"]), None),
            "items": members,
        })
    return groups


def row_losses(heldout_losses: torch.Tensor) -> list[float]:
    """Each held-out row's mean loss. Two runs on the same data share these rows, so the standard
    error of the difference of their held-out losses is the paired one (probes/analyse/run_pairs.py), far
    smaller than either loss's own spread across rows."""
    return [float(v) for v in heldout_losses.double().mean(-1)]


def memorization_result(model: Any, tokenizer: Any, inputs: ProbeInputs, step: int,
                        heldout_losses: torch.Tensor) -> dict:
    """The `memorization` entry of a result file. `heldout_losses` [N, P] are the per-position
    losses of inputs.memorization_heldout (shared with other probes)."""
    if not inputs.training_data_known:
        return unknown_training_result(model, inputs, heldout_losses)
    seen = inputs.seen(step)
    held = inputs.memorization_heldout
    prefix, suffix = split_lengths(held.shape[1], inputs.n_ctx, inputs.sizes.prefix_len, inputs.sizes.suffix_len)
    scores, generated = greedy_scores(model, torch.cat([seen, held]), prefix, suffix)
    seen_scores, held_scores = scores[:len(seen)], scores[len(seen):]
    seen_loss = float(sequence_losses(model, seen).double().mean()) if len(seen) else None
    held_loss = float(heldout_losses.double().mean())
    examples = []
    for i in np.argsort([-s for s in seen_scores], kind="stable")[:N_EXAMPLES]:
        if seen_scores[i] >= EXTRACTED:
            examples.append({"prefix": tokenizer.decode(seen[i, :prefix].tolist()),
                             "generated": tokenizer.decode(generated[i].tolist()), "score": seen_scores[i]})
    return {
        "seen": {**score_summary(seen_scores), "loss": seen_loss},
        "held_out": {**score_summary(held_scores), "loss": held_loss, "row_losses": row_losses(heldout_losses)},
        "loss_gap": None if seen_loss is None else held_loss - seen_loss,
        "prefix_len": prefix, "suffix_len": suffix,
        "canaries": canary_results(model, tokenizer, inputs.canaries),
        "seen_examples": examples,
    }


def unknown_training_result(model: Any, inputs: ProbeInputs, heldout_losses: torch.Tensor) -> dict:
    """The `memorization` entry of an imported run: held-out scores as usual, and everything that
    depends on the training data marked unknown (the same keys as a trained run's, so readers
    need no special case to skip them)."""
    held = inputs.memorization_heldout
    prefix, suffix = split_lengths(held.shape[1], inputs.n_ctx, inputs.sizes.prefix_len, inputs.sizes.suffix_len)
    held_scores, _ = greedy_scores(model, held, prefix, suffix)
    return {
        "seen": {"mean_score": None, "memorized_fraction": None, "n": None, "loss": None},
        "held_out": {**score_summary(held_scores), "loss": float(heldout_losses.double().mean()),
                     "row_losses": row_losses(heldout_losses)},
        "loss_gap": None,
        "prefix_len": prefix, "suffix_len": suffix,
        "canaries": [],  # none measured; "training_data" says whether any were planted is unknown
        "seen_examples": [],
        "training_data": "unknown",
        "note": UNKNOWN_NOTE,
    }
