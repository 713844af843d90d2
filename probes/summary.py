"""Across checkpoints: every scalar of the result files as a series over steps, every [L][H]
matrix as a series too, and the step at which each phenomenon emerges, with the rule and its
thresholds written into summary.json itself so a reader never has to guess how it was found.
"""
from __future__ import annotations

import os
from typing import Any

from model.runio import write_json_atomic
from model.runlayout import summary_path

from .results import read_results
from .emergence import first_at_or_above, largest_sustained_rise, sustained_crossing, sustained_fall, sustained_rise
from .trajectory import (TRAJECTORY_RULE, induction_circuit, is_number, loss_trajectory,
                         oriented, principal_trajectory, value_at)  # re-exported: summary's public names

SUMMARY_VERSION = 1

THRESHOLDS = {
    "repetition_seq_rep_4": 0.3,     # greedy seq-rep-4 at or above this = repetitive generations
    "learning_started_loss_drop": 0.1,  # learning has begun once held-out loss is 10% below step 0's
    "persist": 2,                    # ... for this many consecutive checkpoints
    "canary_extracted_fraction": 0.5,  # a canary group counts as extracted at or above this
    "induction_min_rise": 0.1,       # a phase change needs the best induction score's level to rise this much
    "concentration_min_rise": 0.1,   # head-importance concentration needs the Gini level to rise this much
    "rise_sustain_share": 0.75,      # ... and this share of the later checkpoints to keep half the rise
    "rise_noise_z": 6,               # ... and the rise to be this many noise levels (scaled to the split)
    "abrupt_max_intervals": 2,       # abrupt = the climb takes at most this many checkpoint intervals ...
    "abrupt_max_share": 0.25,        # ... or at most this share of the training steps up to its end
    "transition_band": 0.2,          # the climb runs from within this share of the rise of one level to the other
    "head_importance_min": 0.02,     # heads "matter" once the top head's zero-ablation loss increase is this (nats)
}

RULES = {
    "repetition": (
        "Metric repetition.greedy.seq_rep_4 (mean over the fixed prompts). Emergence step = the first "
        "checkpoint, among those where learning has begun (held-out loss at least "
        "{learning_started_loss_drop:.0%} below the first checkpoint's), at which it is >= "
        "{repetition_seq_rep_4} and stays >= {repetition_seq_rep_4} for {persist} consecutive checkpoints "
        "(or until the last one). A random init echoes its last token, which is repetition too but not "
        "learned: present_at_init says whether the first checkpoint already repeats. rise_step is the "
        "first such crossing from below over all checkpoints; resolved_step the first checkpoint after "
        "the emergence step where it stays below the threshold for {persist} checkpoints."),
    "induction": (
        "Metric induction.induction.max (best head's diagonal induction score on repeated random "
        "tokens, each head's score the mean over the repeat periods induction.random_periods, taken "
        "outside the periods training planted repeats at; induction.induction_control beside it is the "
        "same attention on fresh tokens, high for a head that attends by position alone). Phase change = a rise of level, found as follows. Each split between two "
        "consecutive checkpoints (by index, so uneven spacing favours none) describes the series by "
        "two levels: the median of the values up to the split (before) and after it (after); rise = "
        "after - before. A split qualifies when rise >= {induction_min_rise}, the rise is sustained "
        "(at least {rise_sustain_share:.0%} of the checkpoints after the split are >= before + rise/2) "
        "and it is clear of noise (rise >= {rise_noise_z} x noise x sqrt(1/n_before + 1/n_after), "
        "noise = the mean absolute deviation of the successive differences from their median, the "
        "largest left out, x sqrt(pi)/2). detected when one qualifies; the qualifying split whose two "
        "levels fit the values best (least total absolute deviation; ties: the larger rise, then the "
        "larger change across the pair, then the earlier) is reported; otherwise the best-fitting "
        "rising split, with the reason it fails. from_step and step are the two checkpoints "
        "bracketing the change; before and after are the two levels; jump is the change across the "
        "pair and rate that per unit of log(1 + step), for reference only. kind is abrupt when the "
        "climb, from the last checkpoint within {transition_band:.0%} of the rise of the before level "
        "to the first within "
        "{transition_band:.0%} of the after level, takes at most {abrupt_max_intervals} checkpoint "
        "intervals or at most {abrupt_max_share:.0%} of the training steps up to its end (so "
        "checkpoints made dense around a change do not make it gradual) (transition_from_step, "
        "transition_to_step, transition_steps), gradual otherwise; a slow ramp whose "
        "levels differ by at least the minimum is detected and called gradual. note says when a "
        "level rests on one checkpoint (a jump at the last pair). The ICL score "
        "(induction.icl_score.value: mean held-out loss over late positions minus over early ones; "
        "each result names them in early_positions and late_positions, [start, end)) is given beside "
        "it as medians over the same checkpoints before and after, and so is the repeated-text gap "
        "(induction.repeated_text_loss.gap: held-out loss on a span's repeat minus on its first "
        "occurrence, the same tokens). The same rule is applied "
        "separately to the in-distribution copying score (induction.in_context_copying.max); the two "
        "are never merged."),
    "memorization": (
        "Metric memorization.canaries.copies_N.extracted_fraction (fraction of the canaries with N "
        "copies whose 32 greedy tokens after their prefix all match). Onset = the first checkpoint "
        "at which any group's fraction is >= {canary_extracted_fraction}; by_copies gives that "
        "first step per group."),
    "head_concentration": (
        "Metric head_ablation.gini.zero (Gini coefficient of the zero-ablation loss increases, "
        "negatives clipped to 0), over the checkpoints where heads matter at all (the top head's "
        "loss increase head_ablation.zero.max >= {head_importance_min} nats; below that the Gini of "
        "near-zero numbers is noise); heads_matter_step is the first of them. Among them, the rise "
        "of level found by the induction rule (two medians per split, sustained, clear of noise, "
        "best fit, abrupt or gradual), with a minimum rise of {concentration_min_rise}."),
}

SKIP_KEYS = {"continuations", "seconds", "items", "seen_examples", "sampling", "note", "version", "step",
             "tokens", "best_induction", "token_losses", "position_loss", "random_periods", "unseen_periods",
             "training_repeat_periods"}


def is_matrix(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(isinstance(r, list) and r for r in v)
            and all(is_number(x) for r in v for x in r))


def flatten(obj: Any, path: str, scalars: dict[str, float | None], heads: dict[str, list]) -> None:
    """Scalars of a result (dotted paths), [L][H] matrices (with their max and mean as scalars),
    and canary groups under memorization.canaries.copies_N."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key not in SKIP_KEYS:
                flatten(value, f"{path}.{key}" if path else key, scalars, heads)
    elif obj is None:
        scalars[path] = None
    elif is_number(obj):
        scalars[path] = float(obj)
    elif is_matrix(obj):
        heads[path] = obj
        flat = [float(x) for r in obj for x in r]
        scalars[f"{path}.max"] = max(flat)
        scalars[f"{path}.mean"] = sum(flat) / len(flat)
    elif path.endswith("canaries") and isinstance(obj, list):
        for group in obj:
            if isinstance(group, dict) and "copies" in group:
                rest = {k: v for k, v in group.items() if k != "copies"}
                flatten(rest, f"{path}.copies_{int(group['copies'])}", scalars, heads)


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


def level(steps: list[int], values: list | None, lo: int | None, hi: int | None) -> float | None:
    """Median of the known values at steps in [lo, hi] (None bounds: open), or None."""
    known = sorted(v for s, v in zip(steps, values or []) if v is not None
                   and (lo is None or s >= lo) and (hi is None or s <= hi))
    if not known:
        return None
    mid = len(known) // 2
    return known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2


def induction_emergence(steps: list[int], series: dict[str, list], heads: dict[str, list]) -> dict:
    out = rise_emergence(steps, series, "induction.induction.max", THRESHOLDS["induction_min_rise"])
    icl = series.get("induction.icl_score.value")
    out["icl_metric"] = "induction.icl_score.value"
    found = out["step"] is not None
    out["icl_before"] = level(steps, icl, None, out["from_step"]) if found else None
    out["icl_after"] = level(steps, icl, out["step"], None) if found else None
    out["icl_change"] = (None if out["icl_before"] is None or out["icl_after"] is None
                         else out["icl_after"] - out["icl_before"])
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


def concentration_emergence(steps: list[int], series: dict[str, list]) -> dict:
    key = "head_ablation.gini.zero"
    top = series.get("head_ablation.zero.max") or [None] * len(steps)
    gini = series.get(key) or [None] * len(steps)
    kept = [(s, g) for s, g, t in zip(steps, gini, top)
            if g is not None and t is not None and t >= THRESHOLDS["head_importance_min"]]
    out = rise_emergence([s for s, _ in kept], {key: [g for _, g in kept]}, key, THRESHOLDS["concentration_min_rise"])
    out["heads_matter_step"] = kept[0][0] if kept else None
    out["first"] = kept[0][1] if kept else None
    out["last"] = kept[-1][1] if kept else None
    out["max_step"], out["max"] = max(kept, key=lambda p: p[1]) if kept else (None, None)
    return out


def rules() -> dict[str, str]:
    return {k: v.format(**THRESHOLDS) for k, v in RULES.items()}


def emergence(steps: list[int], series: dict[str, list], heads: dict[str, list]) -> dict:
    """Each phenomenon's detection, with its rule in words beside it (the app shows it)."""
    found = {
        "repetition": repetition_emergence(steps, series),
        "induction": induction_emergence(steps, series, heads),
        "memorization": memorization_emergence(steps, series),
        "head_concentration": concentration_emergence(steps, series),
    }
    text = rules()
    for name, entry in found.items():
        entry["rule"] = text[name]
    return found


def summarize(results: dict[int, dict]) -> dict:
    """summary.json content from {step: result} (see RULES for the emergence detection)."""
    steps = sorted(int(s) for s in results)
    per_step = []
    for s in steps:
        scalars: dict[str, float | None] = {}
        heads: dict[str, list] = {}
        flatten(results[s], "", scalars, heads)
        per_step.append((scalars, heads))
    scalar_keys = sorted({k for sc, _ in per_step for k in sc})
    head_keys = sorted({k for _, hd in per_step for k in hd})
    series = {k: [sc.get(k) for sc, _ in per_step] for k in scalar_keys}
    heads = {k: [hd.get(k) for _, hd in per_step] for k in head_keys}
    found = emergence(steps, series, heads)
    return {
        "version": SUMMARY_VERSION,
        "steps": steps,
        "tokens": [results[s].get("tokens") for s in steps],
        "series": series,
        "heads": heads,
        "emergence": found,
        "induction_circuit": induction_circuit(steps, heads, found["induction"]),
        "trajectory": loss_trajectory(results),
        "thresholds": dict(THRESHOLDS),
        "rules": rules(),
    }


def write_summary(run_dir: str | os.PathLike) -> dict:
    """Summarize every result file of a run into probes/summary.json (atomically) and return it."""
    summary = summarize(read_results(run_dir))
    write_json_atomic(summary_path(run_dir), summary)
    return summary
