"""Memorization probe: Pythia-style extraction of training sequences the checkpoint had seen,
the same on held-out sequences as the control, canary extraction and exposure per duplication
count, and the train/held-out loss gap.

For an imported run the training data is unknown, so the seen-sequence scores, the loss gap and
the canaries are reported as unknown (null, with "training_data": "unknown" and a note saying
so), never computed on stand-in text; the held-out scores are measured as for any run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .forward import forward_in_chunks, generate, model_device, rows_for, token_losses
from .inputs import Canary, ProbeInputs
from .metrics import exposure, extrapolated_exposure, memorization_score

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
    """Per-position teacher-forced losses [N, P] of [N, P+1] rows."""
    rows = rows.to(model_device(model))
    out = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.float32, device=rows.device)

    def keep(logits: torch.Tensor, sl: slice) -> None:
        out[sl] = token_losses(logits, rows[sl, 1:])

    forward_in_chunks(model, rows[:, :-1], rows_for(model, rows.shape[1]), keep)
    return out


def score_summary(scores: list[float]) -> dict:
    if not scores:
        return {"mean_score": None, "memorized_fraction": None, "n": 0}
    s = np.asarray(scores)
    return {"mean_score": float(s.mean()), "memorized_fraction": float((s >= EXTRACTED).mean()), "n": int(len(s))}


@torch.no_grad()
def candidate_nll(model: Any, candidates: list[list[int]]) -> list[float]:
    """Summed negative log-likelihood of each token sequence (all tokens after the first), in
    right-padded batches: padding comes after each sequence, so a causal model never sees it."""
    width = max(len(c) for c in candidates)
    dev = model_device(model)
    rows = torch.zeros(len(candidates), width, dtype=torch.long, device=dev)
    mask = torch.zeros(len(candidates), width - 1, dtype=torch.bool, device=dev)
    for i, c in enumerate(candidates):
        rows[i, :len(c)] = torch.tensor(c, device=dev)
        mask[i, :len(c) - 1] = True
    losses = sequence_losses(model, rows)
    return [float(v) for v in (losses.double() * mask).sum(-1)]


def exposures(model: Any, canaries: list[Canary]) -> list[tuple[float | None, float | None]]:
    """(rank exposure, extrapolated exposure) of each canary among its candidates (None without
    alternatives), with all candidates of all canaries in one batched pass."""
    flat = [cand for c in canaries if len(c.candidates) > 1 for cand in c.candidates]
    nll = candidate_nll(model, flat) if flat else []
    out: list[tuple[float | None, float | None]] = []
    for c in canaries:
        if len(c.candidates) > 1:
            mine, nll = nll[:len(c.candidates)], nll[len(c.candidates):]
            out.append((exposure(mine), extrapolated_exposure(mine[0], mine[1:])))
        else:
            out.append((None, None))
    return out


def mean_of(values) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


@torch.no_grad()
def canary_results(model: Any, tokenizer: Any, canaries: list[Canary]) -> list[dict]:
    """Per duplication count: fraction of canaries extracted by greedy decoding from their
    prefix, their mean Pythia score, and their mean exposure against the alternatives."""
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
    exps = exposures(model, canaries)
    for i, c in enumerate(canaries):
        if i not in generated:
            continue
        score = memorization_score(generated[i], c.suffix)
        items.append({"id": c.id, "copies": c.copies, "score": score, "extracted": score >= EXTRACTED,
                      "exposure": exps[i][0], "exposure_extrapolated": exps[i][1], "n_candidates": len(c.candidates),
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
            "n_candidates": max(it["n_candidates"] for it in members),
            "items": members,
        })
    return groups


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
        "held_out": {**score_summary(held_scores), "loss": held_loss},
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
        "held_out": {**score_summary(held_scores), "loss": float(heldout_losses.double().mean())},
        "loss_gap": None,
        "prefix_len": prefix, "suffix_len": suffix,
        "canaries": [],  # none measured; "training_data" says whether any were planted is unknown
        "seen_examples": [],
        "training_data": "unknown",
        "note": UNKNOWN_NOTE,
    }
