"""When do two sibling runs part? For two runs on the same data and seed that differ in one setting
(the learning-rate study, `make lr-study`), the first checkpoint where their generations differ
beyond noise and the first where their held-out losses do, so "does a too-eager learning rate show
in the text before the loss?" gets an answer rather than a look at two curves.

Both measures are read from the probe results at the checkpoints the two runs share:
- generations: the tone (repetition.tone.jsd_unigram, the Jensen-Shannon divergence in bits between
  the unigram distribution of a checkpoint's sampled continuations and held-out text's), compared
  against its own sampling noise, repetition.tone.floor_unigram_sd (the spread of the tone of
  held-out samples of the same size);
- held-out loss: memorization.held_out.loss, with the paired standard error over the held-out rows
  both runs are scored on (memorization.held_out.row_losses), which removes the rows' own spread.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from probes.analyse.result_series import get
from probes.analyse.emergence_rules import PAIR_MIN_LOSS, PAIR_MIN_TONE, PAIR_PERSIST, PAIR_RULE as RULE, PAIR_Z  # noqa: F401


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def tone_difference(a: Mapping, b: Mapping) -> tuple[float, float] | None:
    """(|A - B| of the tone, its noise) at one checkpoint; None when either lacks the tone."""
    ta, tb = _number(get(a, "repetition.tone.jsd_unigram")), _number(get(b, "repetition.tone.jsd_unigram"))
    sa, sb = _number(get(a, "repetition.tone.floor_unigram_sd")), _number(get(b, "repetition.tone.floor_unigram_sd"))
    if None in (ta, tb, sa, sb):
        return None
    return abs(ta - tb), math.sqrt(sa * sa + sb * sb)


def loss_difference(a: Mapping, b: Mapping) -> tuple[float, float] | None:
    """(A - B of the held-out loss, its paired standard error) at one checkpoint; None when either
    lacks per-row losses or the rows are not the same number (then they are not the same rows)."""
    ra, rb = get(a, "memorization.held_out.row_losses"), get(b, "memorization.held_out.row_losses")
    if not isinstance(ra, list) or not isinstance(rb, list) or len(ra) != len(rb) or len(ra) < 2:
        return None
    d = [float(x) - float(y) for x, y in zip(ra, rb)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return mean, sd / math.sqrt(len(d))


def parting(steps: list[int], diffs: list[tuple[float, float] | None], minimum: float) -> dict[str, Any]:
    """The first step where |difference| >= max(minimum, PAIR_Z x noise) holds at PAIR_PERSIST
    consecutive steps (of those measured). Every key always present."""
    known = [(s, d) for s, d in zip(steps, diffs) if d is not None]
    out: dict[str, Any] = {"step": None, "from_step": None, "difference": None, "noise": None, "threshold": None,
                           "n": len(known), "parted": False, "reason": None}
    if not known:
        out["reason"] = "not measured at any shared checkpoint (rerun the probes with --force)"
        return out
    beyond = [abs(d) >= max(minimum, PAIR_Z * noise) for _, (d, noise) in known]
    for i in range(len(known) - PAIR_PERSIST + 1):
        if all(beyond[i:i + PAIR_PERSIST]):
            step, (d, noise) = known[i]
            out.update(step=step, from_step=known[i - 1][0] if i else None, difference=d, noise=noise,
                       threshold=max(minimum, PAIR_Z * noise), parted=True)
            return out
    out["reason"] = f"never beyond noise at {PAIR_PERSIST} consecutive shared checkpoints ({len(known)} compared)"
    return out


def pair_verdict(a: Mapping[int, Mapping], b: Mapping[int, Mapping]) -> dict[str, Any]:
    """{"generation": parting, "loss": parting, "first", "shared_steps", "rule"} for two runs'
    {step: probe result}."""
    steps = sorted(set(a) & set(b))
    gen = parting(steps, [tone_difference(a[s], b[s]) for s in steps], PAIR_MIN_TONE)
    loss = parting(steps, [loss_difference(a[s], b[s]) for s in steps], PAIR_MIN_LOSS)
    first = None
    if gen["parted"] and loss["parted"]:
        first = "same" if gen["step"] == loss["step"] else ("generation" if gen["step"] < loss["step"] else "loss")
    elif gen["parted"] or loss["parted"]:
        first = "generation" if gen["parted"] else "loss"
    return {"generation": gen, "loss": loss, "first": first, "shared_steps": len(steps), "rule": RULE}
