"""Induction probe: per-head previous-token, duplicate-token and induction scores on repeated
random tokens (out of distribution: the only way to predict the second half is to copy), the
in-context copying score on spans repeated inside held-out text (in distribution: a model can
copy through a corpus's structure without any general induction head, so the two are reported
side by side and never merged), the in-context-learning score of Olsson et al. (2022), and the
per-token held-out losses the summary's loss trajectory is built from.

The random-token scores are means over several repeat periods (probes.measure.random_tokens.random_periods),
with a control on fresh tokens beside them, so that a head attending to q - period + 1 by position
alone cannot pass for an induction head.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from probes.measure.attention import HeldoutPatternStats
from probes.measure.forward import (final_residual, forward_rows, loss_chunk_positions, model_device, pattern_name, readout,
                      shape_of, stats_from_residual, token_stats)
from probes.measure.metrics import duplicate_token_score, induction_score, previous_token_score

ICL_EARLY, ICL_LATE = 50, 500  # Olsson et al.: loss at token 500 minus loss at token 50 ...
ICL_WINDOW = 10  # ... here a mean over this many positions at each end (a few dozen sequences: too noisy per token)


@torch.no_grad()
def random_token_scores(model: Any, tokens: torch.Tensor, period: int) -> dict:
    """Scores per head on [BOS, r_1..r_T, r_1..r_T] rows, plus the loss on each half."""
    scores, losses = _scores_and_losses(model, tokens, period)
    # Targets 1..T-1 are fresh random tokens (the first half); targets T+1..2T repeat them.
    first, second = losses[:, 1:period], losses[:, period + 1:2 * period]
    out = {key: [[float(v) for v in layer[key]] for layer in scores]
           for key in ("induction", "previous_token", "duplicate_token")}
    out["random_repeat_loss"] = {"first_half": float(first.mean()), "second_half": float(second.mean())}
    return out


@torch.no_grad()
def control_scores(model: Any, tokens: torch.Tensor, period: int) -> list[list[float]]:
    """Per head, mean attention from the induction score's query positions to q - period + 1 on
    rows of fresh random tokens that never repeat: what a head attends there by position alone."""
    scores, _ = _scores_and_losses(model, tokens, period)
    return [[float(v) for v in layer["induction"]] for layer in scores]


def _scores_and_losses(model: Any, tokens: torch.Tensor, period: int) -> tuple[list[dict], torch.Tensor]:
    n_layers = shape_of(model)[0]
    scores: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]

    def hook_for(layer: int):
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            scores[layer]["induction"] = induction_score(pattern, period, start=1)
            scores[layer]["duplicate_token"] = duplicate_token_score(pattern, period, start=1)
            scores[layer]["previous_token"] = previous_token_score(pattern, start=1)
        return hook

    tokens = tokens.to(model_device(model))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    hooks = [(pattern_name(l), hook_for(l)) for l in range(n_layers)]
    return scores, token_stats(model, inputs, targets, hooks).losses.double()


def _mean_matrix(matrices: list[list[list[float]]]) -> list[list[float]]:
    """Element-wise mean of equally shaped [L][H] matrices."""
    return [[sum(m[l][h] for m in matrices) / len(matrices) for h in range(len(matrices[0][l]))]
            for l in range(len(matrices[0]))]


def multi_period_scores(model: Any, sets: Sequence[Any], n_ctx: int,
                        training_periods: tuple[int, int] | None = None) -> dict:
    """Induction, previous-token and duplicate-token scores per head, each the mean over several
    repeat periods, with the positional-shortcut control beside them.

    `sets` hold `period`, `repeated` and `control` rows (probes.measure.random_tokens.RandomTokenSet); a set whose
    rows do not fit the model's context is left out. One period can be aced by a head that attends
    to q - period + 1 by position alone (a model trained on repeats at one fixed offset learns
    exactly that); averaged over periods that training did not use, such a head scores near 0,
    and on fresh tokens (`induction_control`) it scores as high as on the repeat, while a real
    induction head scores near 0 there."""
    usable = [s for s in sets if 2 * s.period <= n_ctx]
    if not usable:
        raise ValueError(f"no repeat period fits the model's context of {n_ctx} positions.")
    by_period = {s.period: random_token_scores(model, s.repeated, s.period) for s in usable}
    control = {s.period: control_scores(model, s.control, s.period) for s in usable}
    periods = sorted(by_period)
    out = {key: _mean_matrix([by_period[t][key] for t in periods])
           for key in ("induction", "previous_token", "duplicate_token")}
    out["induction_control"] = _mean_matrix([control[t] for t in periods])
    out["induction_by_period"] = {str(t): by_period[t]["induction"] for t in periods}
    out["induction_control_by_period"] = {str(t): control[t] for t in periods}
    out["random_repeat_loss"] = {half: sum(by_period[t]["random_repeat_loss"][half] for t in periods) / len(periods)
                                 for half in ("first_half", "second_half")}
    out["random_periods"] = periods
    out["training_repeat_periods"] = list(training_periods) if training_periods else None
    out["unseen_periods"] = [t for t in periods
                             if training_periods is None or not training_periods[0] <= t <= training_periods[1]]
    return out


ICL_MIN_LATE = 200  # below this late position the score says little (Olsson et al. compare token 500 with 50)
ICL_MIN_ROWS = 4   # document-aligned rows needed to put the late window where they reach


def icl_positions(n_positions: int, reach: int | None = None) -> tuple[int, int]:
    """(early, late) input positions for the ICL score: 50 and 500 when the context (and, for
    document-aligned rows, `reach`, the last position the documents typically still cover)
    allows, otherwise the latest position available and 50 (or half of it, for short contexts)."""
    late = min(ICL_LATE, n_positions - 1, reach if reach is not None else n_positions - 1)
    early = min(ICL_EARLY, late // 2)
    return early, late


def document_reach(valid: torch.Tensor) -> int:
    """The last position the document-aligned rows typically cover: at least half of them, and at
    least ICL_MIN_ROWS, still predict tokens of their own document there."""
    v = torch.sort(valid.long(), descending=True).values
    k = min(len(v), max(ICL_MIN_ROWS, (len(v) + 1) // 2))
    return int(v[k - 1]) - 1


def icl_windows(n_positions: int, valid: torch.Tensor | None = None, window: int = ICL_WINDOW
                ) -> tuple[int | None, int, int, tuple[int, int], tuple[int, int]]:
    """(reach, early, late, early_range, late_range) of the ICL score on rows of `n_positions`
    (see `icl_score`); the ranges are [start, end) of input positions."""
    reach = document_reach(valid) if valid is not None else None
    early, late = icl_positions(n_positions, reach)
    w = max(1, min(window, late - early))
    e0 = max(0, early - w // 2)
    return reach, early, late, (e0, e0 + w), (late - w + 1, late + 1)


@torch.no_grad()
def document_window_losses(model: Any, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[N, P] per-position losses of document-aligned rows [N, P+1] where `icl_score(losses, valid)`
    reads them, NaN elsewhere: only the rows whose document reaches the late window, only their
    positions up to it (a causal model's earlier positions do not see later ones), and the
    readout (the [.., V] unembedding, most of a small model's forward) only at the two windows'
    positions. The score is the one full per-position losses give, at a fraction of the cost."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    N, P = inputs.shape
    _, _, late, early_range, late_range = icl_windows(P, valid)
    out = torch.full((N, P), float("nan"))
    keep = torch.nonzero(valid.cpu() > late).flatten()
    positions = torch.cat([torch.arange(*early_range), torch.arange(*late_range)])
    head, dev = readout(model), model_device(model)
    step = forward_rows(model, late + 1)
    for start in range(0, len(keep), step):
        idx = keep[start:start + step]
        x, y = inputs[idx, :late + 1].to(dev), targets[idx, :late + 1].to(dev)
        if head is None:  # no readout to apply to chosen positions: whole losses, then pick
            losses = token_stats(model, x, y).losses[:, positions]
        else:
            resid = final_residual(model, x)[:, positions]
            losses = stats_from_residual(resid, y[:, positions], head, loss_chunk_positions(model)).losses
        out[idx[:, None], positions[None, :]] = losses.float().cpu()
    return out


def icl_score(position_losses: torch.Tensor, valid: torch.Tensor | None = None, window: int = ICL_WINDOW) -> dict:
    """The in-context-learning score after Olsson et al. (2022), from [N, P] per-position held-out
    losses (position i predicts token i+1 from tokens 0..i): the mean loss over the late window
    minus the mean over the early one, all sequences pooled. Negative when later tokens are
    predicted better, i.e. the model uses its context.

    Olsson et al. subtract single positions (500 and 50); with a few dozen held-out sequences a
    single position is too noisy, so each end averages `window` positions: the early window is
    centred on `early_position`, the late one ends at `late_position`. The windows are returned
    as [start, end) in early_positions / late_positions, and `definition` says it in words, so no
    reader mistakes the score for "position 127 minus position 50".

    With `valid` ([N]: how many leading positions of each row predict tokens of the document the
    row starts with) the rows are document-aligned: positions count from the start of a story,
    the late window ends where the documents still reach, and only rows whose document covers it
    count, so the score never measures the step into the next, unrelated document. `meaningful`
    is False when the late window ends before ICL_MIN_LATE: the late tokens then have too little
    more context than the early ones for the score to say much."""
    P = position_losses.shape[1]
    reach, early, late, early_range, late_range = icl_windows(P, valid, window)
    rows = position_losses if valid is None else position_losses[valid.to(position_losses.device) > late]
    e = float(rows[:, early_range[0]:early_range[1]].double().mean())
    l = float(rows[:, late_range[0]:late_range[1]].double().mean())
    notes = []
    if late < ICL_LATE:
        why = (f"the documents (half of the sampled ones) end by position {reach + 1}" if reach is not None and reach < P - 1
               else f"the context has {P} positions")
        notes.append(f"{why}, so the late window ends at position {late} instead of {ICL_LATE}")
    if late < ICL_MIN_LATE:
        notes.append(f"below position {ICL_MIN_LATE} the late tokens have too little more context than the early "
                     "ones for the score to mean much")
    return {"value": l - e, "definition": icl_definition(early_range, late_range),
            "early_position": early, "late_position": late,
            "early_positions": list(early_range), "late_positions": list(late_range),
            "early_loss": e, "late_loss": l, "n_sequences": int(rows.shape[0]),
            "aligned": "document start" if valid is not None else "held-out chunk",
            "meaningful": late >= ICL_MIN_LATE,
            "note": "; ".join(notes) or None}


def icl_definition(early_range: tuple[int, int], late_range: tuple[int, int]) -> str:
    """The ICL score in words, naming exactly which positions each mean covers."""
    return (f"mean held-out loss over positions {late_range[0]}-{late_range[1] - 1} minus mean over positions "
            f"{early_range[0]}-{early_range[1] - 1} (position i predicts token i+1)")


@torch.no_grad()
def repeated_text_loss(model: Any, heldout: torch.Tensor) -> dict:
    """Loss on held-out text seen for the first time and on the same text repeated right after it.

    Each row is a held-out span of `span` tokens followed by the same span again (2*span - 1 inputs
    fit the context). The first copy's targets 1..span-1 and the repeat's are the same tokens, so
    `gap` = second_copy - first_copy is what having seen the span is worth: near 0 for a model
    that predicts text from its statistics alone, clearly negative once an induction head copies
    inside natural text (the in-distribution counterpart of the random-token repeat loss)."""
    n_ctx = shape_of(model)[2]
    span = min((n_ctx + 1) // 2, heldout.shape[1])
    rows = torch.cat([heldout[:, :span], heldout[:, :span]], dim=1).to(model_device(model))
    losses = token_stats(model, rows[:, :-1], rows[:, 1:]).losses.double()
    first = float(losses[:, :span - 1].mean())        # predicting span tokens 1..span-1 the first time
    second = float(losses[:, span:2 * span - 1].mean())  # ... and the same tokens in the repeat
    return {"first_copy": first, "second_copy": second, "gap": second - first, "span": int(span),
            "n_sequences": int(rows.shape[0]),
            "definition": f"mean held-out loss on tokens 1-{span - 1} of a {span}-token span repeated right "
                          "after itself, second copy minus first copy"}


TRAJECTORY_TOKENS = 4096  # held-out target tokens whose losses every checkpoint stores (loss trajectory)


def trajectory_losses(position_losses: torch.Tensor, n_tokens: int = TRAJECTORY_TOKENS) -> dict:
    """The per-token losses of the first `n_tokens` held-out target tokens (row by row, rounded to
    4 decimals) and the mean loss per position: the same tokens at every checkpoint of a run, so
    probes.analyse.summary can follow the whole loss vector through training (Olsson et al. 2022)."""
    flat = position_losses.double().reshape(-1)[:n_tokens]
    return {"token_losses": {"values": [round(float(v), 4) for v in flat], "n_tokens": int(flat.numel())},
            "position_loss": [round(float(v), 4) for v in position_losses.double().mean(0)]}


def induction_result(model: Any, random_sets: Sequence[Any], stats: HeldoutPatternStats,
                     position_losses: torch.Tensor, training_periods: tuple[int, int] | None = None,
                     heldout: torch.Tensor | None = None,
                     documents: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Every induction measure of one checkpoint. `documents` = (per-position losses on held-out
    rows that start at a document start, positions of each row inside its document): the ICL
    score is taken on them when given, else on the held-out chunks."""
    n_ctx = shape_of(model)[2]
    result = multi_period_scores(model, random_sets, n_ctx, training_periods)
    if heldout is not None:
        result["repeated_text_loss"] = repeated_text_loss(model, heldout)
    result["in_context_copying"] = stats.matrix("copying")
    result["in_context_copying_positions"] = int(stats.layers[0].get("copy_positions", 0))
    result["in_context_copying_loss"] = dict(stats.copy_loss)
    result["n_random"] = int(random_sets[0].repeated.shape[0])
    flat = [(v, l, h) for l, row in enumerate(result["induction"]) for h, v in enumerate(row)]
    best = max(flat)
    result["best_induction"] = {"score": best[0], "layer": best[1], "head": best[2],
                                "control": result["induction_control"][best[1]][best[2]]}
    result["icl_score"] = icl_score(*documents) if documents is not None else icl_score(position_losses)
    result.update(trajectory_losses(position_losses))
    return result
