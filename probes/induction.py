"""Induction probe: per-head previous-token, duplicate-token and induction scores on repeated
random tokens (out of distribution: the only way to predict the second half is to copy), the
in-context copying score on spans repeated inside held-out text (in distribution: a model can
copy through a corpus's structure without any general induction head, so the two are reported
side by side and never merged), and the in-context-learning score of Olsson et al. (2022).
"""
from __future__ import annotations

from typing import Any

import torch

from .attention import HeldoutPatternStats
from .forward import model_device, pattern_name, shape_of, token_losses
from .metrics import duplicate_token_score, induction_score, previous_token_score

ICL_EARLY, ICL_LATE = 50, 500  # Olsson et al.: loss at token 500 minus loss at token 50 ...
ICL_WINDOW = 10  # ... here a mean over this many positions at each end (a few dozen sequences: too noisy per token)


@torch.no_grad()
def random_token_scores(model: Any, tokens: torch.Tensor, period: int) -> dict:
    """Scores per head on [BOS, r_1..r_T, r_1..r_T] rows, plus the loss on each half."""
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
    logits = model.run_with_hooks(inputs, fwd_hooks=[(pattern_name(l), hook_for(l)) for l in range(n_layers)])
    losses = token_losses(logits, targets).double()
    # Targets 1..T-1 are fresh random tokens (the first half); targets T+1..2T repeat them.
    first, second = losses[:, 1:period], losses[:, period + 1:2 * period]
    out = {key: [[float(v) for v in scores[l][key]] for l in range(n_layers)]
           for key in ("induction", "previous_token", "duplicate_token")}
    out["random_repeat_loss"] = {"first_half": float(first.mean()), "second_half": float(second.mean())}
    return out


def icl_positions(n_positions: int) -> tuple[int, int]:
    """(early, late) input positions for the ICL score: 50 and 500 when the context allows,
    otherwise the latest position available and 50 (or half of it, for very short contexts)."""
    late = min(ICL_LATE, n_positions - 1)
    early = min(ICL_EARLY, late // 2)
    return early, late


def icl_score(position_losses: torch.Tensor, window: int = ICL_WINDOW) -> dict:
    """The in-context-learning score after Olsson et al. (2022), from [N, P] per-position held-out
    losses (position i predicts token i+1 from tokens 0..i): the mean loss over the late window
    minus the mean over the early one, all sequences pooled. Negative when later tokens are
    predicted better, i.e. the model uses its context.

    Olsson et al. subtract single positions (500 and 50); with a few dozen held-out sequences a
    single position is too noisy, so each end averages `window` positions: the early window is
    centred on `early_position`, the late one ends at `late_position`. The windows are returned
    as [start, end) in early_positions / late_positions, and `definition` says it in words, so no
    reader mistakes the score for "position 127 minus position 50"."""
    P = position_losses.shape[1]
    early, late = icl_positions(P)
    w = max(1, min(window, late - early))
    e0 = max(0, early - w // 2)
    early_range, late_range = (e0, e0 + w), (late - w + 1, late + 1)
    e = float(position_losses[:, early_range[0]:early_range[1]].double().mean())
    l = float(position_losses[:, late_range[0]:late_range[1]].double().mean())
    return {"value": l - e, "definition": icl_definition(early_range, late_range),
            "early_position": early, "late_position": late,
            "early_positions": list(early_range), "late_positions": list(late_range),
            "early_loss": e, "late_loss": l, "n_sequences": int(position_losses.shape[0]),
            "note": None if late == ICL_LATE else f"the context has {P} positions, so the late window ends at "
                                                   f"position {late} instead of {ICL_LATE}"}


def icl_definition(early_range: tuple[int, int], late_range: tuple[int, int]) -> str:
    """The ICL score in words, naming exactly which positions each mean covers."""
    return (f"mean held-out loss over positions {late_range[0]}-{late_range[1] - 1} minus mean over positions "
            f"{early_range[0]}-{early_range[1] - 1} (position i predicts token i+1)")


def induction_result(model: Any, random_tokens: torch.Tensor, period: int, stats: HeldoutPatternStats,
                     position_losses: torch.Tensor) -> dict:
    result = random_token_scores(model, random_tokens, period)
    result["in_context_copying"] = stats.matrix("copying")
    result["in_context_copying_positions"] = int(stats.layers[0].get("copy_positions", 0))
    result["in_context_copying_loss"] = dict(stats.copy_loss)
    result["random_period"] = int(period)
    result["n_random"] = int(random_tokens.shape[0])
    flat = [(v, l, h) for l, row in enumerate(result["induction"]) for h, v in enumerate(row)]
    best = max(flat)
    result["best_induction"] = {"score": best[0], "layer": best[1], "head": best[2]}
    result["icl_score"] = icl_score(position_losses)
    return result
