"""When each phenomenon of the seed emerges across checkpoints: repetitive generations, greedy loops
(entropy collapse: when they begin and end), the induction phase change (with in-context copying, the
ICL score and the repeated-text gap beside it) and canary memorization, each from the series
summary.json lines up, by the rules of RULES in probes/analyse/emergence_rules.py. `rise_emergence` is the
phase-change rule on one series, which the head-concentration entry (probes/analyse/failure_modes.py) applies
to the Gini of head importance.
"""
from __future__ import annotations

from typing import Any

from probes.analyse.emergence import (first_at_or_above, largest_sustained_rise, level, sustained_crossing, sustained_fall,
                        sustained_rise)
from probes.analyse.emergence_rules import THRESHOLDS
from probes.measure.induction import ICL_MIN_LATE
from probes.analyse.trajectory import value_at

def canary_copies(series: dict[str, list]) -> list[int]:
    out = set()
    for key in series:
        if key.startswith("memorization.canaries.copies_") and key.endswith(".extracted_fraction"):
            out.add(int(key.split("copies_")[1].split(".")[0]))
    return sorted(out)


def learning_started(steps: list[int], series: dict[str, list]) -> int | None:
    """First step whose held-out loss is `learning_started_loss_drop` below the first checkpoint's
    (None without a loss series, in which case every checkpoint counts)."""
    for key in ("head_ablation.clean_loss", "memorization.held_out.loss"):
        known = [(s, v) for s, v in zip(steps, series.get(key) or []) if v is not None]
        if known:
            limit = known[0][1] * (1 - THRESHOLDS["learning_started_loss_drop"])
            return next((s for s, v in known if v <= limit), None)
    return None


def repetition_emergence(steps: list[int], series: dict[str, list]) -> dict:
    key = "repetition.greedy.seq_rep_4"
    th, persist = THRESHOLDS["repetition_seq_rep_4"], THRESHOLDS["persist"]
    values = series.get(key)
    out: dict[str, Any] = {"metric": key, "threshold": th, "persist": persist, "step": None,
                           "learning_started_step": None, "present_at_init": False, "rise_step": None,
                           "resolved_step": None, "peak_step": None, "peak_value": None}
    known = [(s, v) for s, v in zip(steps, values or []) if v is not None]
    if not known:
        return out
    has_loss = any(v is not None for k in ("head_ablation.clean_loss", "memorization.held_out.loss")
                   for v in series.get(k) or [])
    begun = learning_started(steps, series)
    out["learning_started_step"] = begun
    if has_loss and begun is None:
        candidates = []  # the model never got past its initial loss: nothing learned yet
    else:
        candidates = [(s, v) for s, v in known if begun is None or s >= begun]
    step = sustained_crossing([s for s, _ in candidates], [v for _, v in candidates], th, persist)
    out["step"] = step
    out["present_at_init"] = known[0][1] >= th
    out["rise_step"] = sustained_rise(steps, values, th, persist)
    out["resolved_step"] = None if step is None else sustained_fall(steps, values, th, step, persist)
    out["peak_step"], out["peak_value"] = max(known, key=lambda p: p[1])
    return out


def best_head(heads: dict[str, list], key: str, steps: list[int], step: int | None) -> dict | None:
    matrices = heads.get(key)
    m = value_at(steps, matrices, step)
    if not m:
        return None
    score, layer, head = max((v, l, h) for l, row in enumerate(m) for h, v in enumerate(row))
    return {"layer": layer, "head": head, "score": score}


RISE_KEYS = ("step", "from_step", "rise", "rate", "detected", "before", "after", "jump", "reason", "sustained",
             "kept_share", "noise", "n_before", "n_after", "kind", "abrupt", "transition_from_step", "transition_steps",
             "transition_to_step", "transition_intervals", "note")


def rise_emergence(steps: list[int], series: dict[str, list], key: str, min_rise: float) -> dict:
    """The rule of RULES["induction"] on one series; every key is present (None when the series
    is missing or never rises), so readers need not guess which ones exist."""
    values = series.get(key)
    out: dict[str, Any] = {"metric": key, "min_rise": min_rise, **{k: None for k in RISE_KEYS}}
    out["detected"] = False
    found = largest_sustained_rise(
        steps, values, min_rise, sustain_share=THRESHOLDS["rise_sustain_share"], noise_z=THRESHOLDS["rise_noise_z"],
        abrupt_max_intervals=THRESHOLDS["abrupt_max_intervals"], band=THRESHOLDS["transition_band"],
        abrupt_max_share=THRESHOLDS["abrupt_max_share"]) if values else None
    if found:
        out.update(found)
    else:
        out["reason"] = "fewer than two values" if len([v for v in values or [] if v is not None]) < 2 \
            else "the level never rises"
    return out



def induction_emergence(steps: list[int], series: dict[str, list], heads: dict[str, list]) -> dict:
    out = rise_emergence(steps, series, "induction.induction.max", THRESHOLDS["induction_min_rise"])
    icl = series.get("induction.icl_score.value")
    out["icl_metric"] = "induction.icl_score.value"
    found = out["step"] is not None
    out["icl_before"] = level(steps, icl, None, out["from_step"]) if found else None
    out["icl_after"] = level(steps, icl, out["step"], None) if found else None
    out["icl_change"] = (None if out["icl_before"] is None or out["icl_after"] is None
                         else out["icl_after"] - out["icl_before"])
    late = [v for v in series.get("induction.icl_score.late_position") or [] if v is not None]
    out["icl_late_position"] = int(late[-1]) if late else None
    out["icl_meaningful"] = bool(late) and late[-1] >= ICL_MIN_LATE
    out["icl_note"] = (None if out["icl_meaningful"] or not late else
                       f"the ICL score's late window ends at position {int(late[-1])}, before {ICL_MIN_LATE}: the context "
                       "or the documents are too short for it to mean much (Olsson et al. compare token 500 with 50)")
    gap = series.get("induction.repeated_text_loss.gap")
    out["repeated_text_metric"] = "induction.repeated_text_loss.gap"
    out["repeated_text_gap_before"] = level(steps, gap, None, out["from_step"]) if found else None
    out["repeated_text_gap_after"] = level(steps, gap, out["step"], None) if found else None
    out["repeated_text_gap_change"] = (None if out["repeated_text_gap_before"] is None
                                       or out["repeated_text_gap_after"] is None
                                       else out["repeated_text_gap_after"] - out["repeated_text_gap_before"])
    out["best_head"] = best_head(heads, "induction.induction", steps, out["step"])
    values = series.get("induction.induction.max") or []
    known = [v for v in values if v is not None]
    out["best_score_reached"] = max(known) if known else None
    out["in_context_copying"] = rise_emergence(steps, series, "induction.in_context_copying.max",
                                               THRESHOLDS["induction_min_rise"])
    return out


def memorization_emergence(steps: list[int], series: dict[str, list]) -> dict:
    th = THRESHOLDS["canary_extracted_fraction"]
    by_copies = {}
    for copies in canary_copies(series):
        by_copies[str(copies)] = first_at_or_above(
            steps, series[f"memorization.canaries.copies_{copies}.extracted_fraction"], th)
    firsts = [s for s in by_copies.values() if s is not None]
    onset = min(firsts) if firsts else None
    return {"metric": "memorization.canaries.copies_N.extracted_fraction", "threshold": th, "step": onset,
            "copies": sorted(int(c) for c, s in by_copies.items() if s == onset) if onset is not None else [],
            "by_copies": by_copies}


COLLAPSE_KEYS = ("metric", "entropy_metric", "threshold", "persist", "detected", "step", "from_step", "resolved_step",
                 "learning_started_step", "present_at_init", "episodes", "loop_length_at_step", "entropy_before",
                 "entropy_during", "entropy_after", "reason")


def entropy_collapse_emergence(steps: list[int], series: dict[str, list]) -> dict:
    """When greedy continuations fall into loops and when they leave them (RULES["entropy_collapse"]),
    with the entropy along the greedy path before, during and after; every key always present."""
    key, ent_key = "repetition.greedy.loop_share", "repetition.greedy.predictive_entropy"
    th, persist = THRESHOLDS["collapse_loop_share"], THRESHOLDS["persist"]
    out: dict[str, Any] = {k: None for k in COLLAPSE_KEYS}
    out.update(metric=key, entropy_metric=ent_key, threshold=th, persist=persist, detected=False,
               present_at_init=False, episodes=[])
    known = [(s, v) for s, v in zip(steps, series.get(key) or []) if v is not None]
    if not known:
        out["reason"] = ("not measured (results computed before the loop length: rerun the probes with --only "
                         "repetition --force)")
        return out
    begun = learning_started(steps, series)
    has_loss = any(v is not None for k in ("head_ablation.clean_loss", "memorization.held_out.loss")
                   for v in series.get(k) or [])
    out["learning_started_step"], out["present_at_init"] = begun, known[0][1] >= th
    learned = [] if has_loss and begun is None else [(s, v) for s, v in known if begun is None or s >= begun]
    after = None
    while True:
        rest = [(s, v) for s, v in learned if after is None or s > after]
        start = sustained_crossing([s for s, _ in rest], [v for _, v in rest], th, persist)
        if start is None:
            break
        end = sustained_fall([s for s, _ in rest], [v for _, v in rest], th, start, persist)
        out["episodes"].append({"step": start, "from_step": max((s for s, _ in known if s < start), default=None),
                                "resolved_step": end})
        if end is None:
            break
        after = end
    if not out["episodes"]:
        out["reason"] = (f"the greedy loops never take {th:.0%} of the continuations for {persist} checkpoints "
                         "where learning has begun" if learned else "learning has not begun")
        return out
    first = out["episodes"][0]
    out.update(detected=True, step=first["step"], from_step=first["from_step"], resolved_step=first["resolved_step"])
    ent, lo = series.get(ent_key), begun if begun is not None else steps[0]
    prev = max((s for s in steps if s < first["step"]), default=None)
    out["entropy_before"] = level(steps, ent, lo, prev) if prev is not None and prev >= lo else None
    last = None if first["resolved_step"] is None else max(s for s in steps if s < first["resolved_step"])
    out["entropy_during"] = level(steps, ent, first["step"], last)
    out["entropy_after"] = level(steps, ent, first["resolved_step"], None) if first["resolved_step"] else None
    out["loop_length_at_step"] = value_at(steps, series.get("repetition.greedy.loop_length"), first["step"])
    return out
