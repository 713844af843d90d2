"""What each head does at one checkpoint: a score per head for each role, all [L][H], so that a
role map can follow every head through training (docs/circuits.md).

Roles: previous_token, duplicate_token and induction attention; sink (attention to the first
token); local attention; copying (from the weights). One owner per score: the first three are the
induction probe's (probes.measure.metrics definitions on repeated random tokens, each the mean over
several repeat periods, beside its positional control, probes/measure/induction.py) and are taken from
its result when it runs in the same checkpoint, so no random-token forward runs twice; sink is
probes.measure.metrics.sink_mass; copying is probes.measure.composition.copying_scores. New here is local
attention, measured with sink and a previous-token control in one forward over fresh random tokens
that never repeat within a row: no earlier token matches, so no content can draw a head's
attention, and what is left is position and the first token. Chance levels (what a head attending
uniformly over its causal prefix scores on the same rows) are stated beside the scores.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from probes.measure.composition import copying_scores, folded_weights, nested
from probes.measure.forward import final_residual, pattern_name, shape_of, split_tokens
from probes.measure.induction import multi_period_scores
from probes.measure.metrics import duplicate_token_score, induction_score, previous_token_score, sink_mass

ROLES = ("previous_token", "duplicate_token", "induction", "sink", "local", "copying")
LOCAL_WINDOW = 4  # local attention: the query and the keys up to 3 back, the previous token left out

DEFINITIONS = {
    "previous_token": "induction.previous_token: mean attention from each query q to q - 1 on repeated random "
                      "tokens, mean over the repeat periods",
    "duplicate_token": "induction.duplicate_token: mean attention from each query of the second copy to its "
                       "token's earlier occurrence (q - period), mean over the repeat periods",
    "induction": "induction.induction: mean attention from each query of the second copy to the token after its "
                 "earlier occurrence (q - period + 1), mean over the repeat periods (the diagonal score; "
                 "TransformerLens' head_detector 'mul' score is it x (period - 1) / (2 x period))",
    "sink": "mean attention from each query q >= 1 to position 0 (the <|endoftext|> the row starts with), on fresh "
            "random tokens that never repeat (probes.measure.metrics.sink_mass)",
    "local": f"mean attention from each query q >= {LOCAL_WINDOW} on the keys q - {LOCAL_WINDOW - 1} .. q other than "
             "q - 1 (the query itself and the tokens 2 and 3 back; the previous token is its own role), on the same "
             "fresh random tokens",
    "copying": "sum of the real parts of the eigenvalues of the head's full OV circuit W_E W_V W_O W_U over the sum "
               "of their magnitudes (Elhage et al. 2021), LayerNorm folded: 1 = pure copying, -1 = suppression, "
               "about 0 for a random head; from the weights",
}
CONTROLS = {
    "previous_token": "mean attention from q to q - 1 on the fresh random tokens: a previous-token head keeps it, "
                      "a head that followed a content match does not",
    "induction": "induction.induction_control: the induction attention on fresh tokens that never repeat (a head "
                 "attending to q - period + 1 by position alone scores as high there)",
}


def local_score(pattern: torch.Tensor, window: int = LOCAL_WINDOW) -> torch.Tensor:
    """Per head, mean over queries q >= window of the attention on keys q - window + 1 .. q other
    than q - 1: [H]. pattern [..., H, Q, K] (rows summing to 1 over the causal prefix). 1 for a
    head that attends only to itself and the few tokens before the previous one; 0 for a pure
    previous-token or sink head. Queries before `window` are left out, so position 0 is never
    in the window."""
    heads, P = pattern.shape[-3], pattern.shape[-2]
    if P <= window:
        raise ValueError(f"local attention needs more than {window} positions, got {P}.")
    q = torch.arange(window, P, device=pattern.device)
    total = sum(pattern[..., q, q - back] for back in range(window) if back != 1)
    return total.double().reshape(-1, heads, len(q)).mean(dim=(0, 2))


def uniform_pattern(positions: int) -> torch.Tensor:
    """[1, 1, P, P] causal attention spread evenly: row q puts 1 / (q + 1) on each key <= q."""
    rows = torch.tril(torch.ones(positions, positions, dtype=torch.float64))
    return (rows / rows.sum(-1, keepdim=True))[None, None]


def positional_rows(random_sets: Sequence[Any], n_ctx: int) -> torch.LongTensor:
    """[n, 1 + 2T]: the first token and the 2T fresh tokens of the longest period's control rows
    that fit the context, in reverse order. The same fresh tokens (none repeats within a row) in
    an arrangement no other probe runs, so this forward is not a second run of the induction
    probe's control pass."""
    usable = [s for s in random_sets if 2 * s.period <= n_ctx]
    if not usable:
        raise ValueError(f"no repeat period fits the model's context of {n_ctx} positions.")
    control = max(usable, key=lambda s: s.period).control
    return torch.cat([control[:, :1], control[:, 1:].flip(1)], dim=1)


@torch.no_grad()
def positional_scores(model: Any, rows: torch.Tensor) -> dict[str, list[list[float]]]:
    """sink, local and previous_token [L][H] from one forward over `rows` (inputs rows[:, :-1]),
    hooks on every layer's pattern; the forward stops after the last block (no readout)."""
    n_layers = shape_of(model)[0]
    found: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]

    def hook_for(layer: int):
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            found[layer]["sink"] = sink_mass(pattern)
            found[layer]["local"] = local_score(pattern)
            found[layer]["previous_token"] = previous_token_score(pattern, start=1)
        return hook

    inputs, _ = split_tokens(model, rows)
    final_residual(model, inputs, [(pattern_name(l), hook_for(l)) for l in range(n_layers)])
    return {key: [[float(v) for v in found[l][key]] for l in range(n_layers)]
            for key in ("sink", "local", "previous_token")}


def chance_levels(positions: int, periods: Sequence[int]) -> dict[str, float]:
    """Each role's score for a head attending uniformly over its causal prefix, on the rows the
    score is measured on: the fresh rows of `positions` inputs, and the repeated rows of each
    period (2 x period inputs; the mean over the periods, as the scores). Copying: 0, a random OV
    circuit's expected score."""
    fresh = uniform_pattern(positions)
    per_period = [(uniform_pattern(2 * t), t) for t in periods]

    def mean(fn) -> float:
        return sum(float(fn(u, t)[0]) for u, t in per_period) / len(per_period)

    return {"previous_token": mean(lambda u, t: previous_token_score(u, start=1)),
            "duplicate_token": mean(lambda u, t: duplicate_token_score(u, t, start=1)),
            "induction": mean(lambda u, t: induction_score(u, t, start=1)),
            "sink": float(sink_mass(fresh)[0]), "local": float(local_score(fresh)[0]), "copying": 0.0,
            "previous_token_control": float(previous_token_score(fresh, start=1)[0])}


@torch.no_grad()
def head_roles_result(model: Any, random_sets: Sequence[Any], training_periods: tuple[int, int] | None = None,
                      induction: dict | None = None) -> dict:
    """The `head_roles` entry of a result: each role's [L][H] scores (ROLES), their controls, chance
    levels and definitions. `induction`: the induction probe's result of the same checkpoint, whose
    random-token scores are used as they are; without it they are computed here by the same code."""
    n_ctx = shape_of(model)[2]
    if induction is None:
        induction = multi_period_scores(model, random_sets, n_ctx, training_periods)
    rows = positional_rows(random_sets, n_ctx)
    positional = positional_scores(model, rows)
    out: dict[str, Any] = {role: induction[role] for role in ("previous_token", "duplicate_token", "induction")}
    out.update(sink=positional["sink"], local=positional["local"],
               copying=nested(copying_scores(folded_weights(model))))
    out["controls"] = {"previous_token": positional["previous_token"], "induction": induction["induction_control"]}
    out["chance"] = chance_levels(rows.shape[1] - 1, induction["random_periods"])
    out.update(roles=list(ROLES), random_periods=list(induction["random_periods"]),
               positional_rows=int(rows.shape[0]), positional_positions=int(rows.shape[1] - 1),
               definitions=dict(DEFINITIONS), control_definitions=dict(CONTROLS))
    return out
