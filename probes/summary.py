"""Across checkpoints: every scalar of the result files as a series over steps, every [L][H]
matrix as a series too, and the step at which each phenomenon emerges, with the rule and its
thresholds written into summary.json itself so a reader never has to guess how it was found.
"""
from __future__ import annotations

import os
from typing import Any

from model.runio import read_jsonl, write_json_atomic
from model.runlayout import metrics_jsonl, summary_path

from .induction import ICL_MIN_LATE
from .results import read_results
from .emergence import (SMALL_SAMPLE, excess_stretches, first_at_or_above, largest_sustained_rise, sustained_crossing,
                        sustained_fall, sustained_rise)
from .stages import stages
from .head_inequality import EQUAL_HEADS_DRAWS, EQUAL_HEADS_QUANTILE, EQUAL_HEADS_SEED, head_inequality
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
    # the excess rule (probes.emergence.excess_stretches) of the loss-generation mismatch and overfitting:
    "excess_window": 3,              # the reference: the lowest median of this many consecutive earlier checkpoints
    "excess_noise_z": 6,             # a checkpoint stands out when this many noise levels (x the widening) above it
    "excess_small_sample": SMALL_SAMPLE,  # ... widened by (1 + this / m^2), m = differences the noise rests on
    "excess_min_points": 8,          # fewer checkpoints give no answer
    "mismatch_min_tone": 0.02,       # the smallest worsening of tone that counts (bits of Jensen-Shannon divergence)
    "mismatch_min_seq_rep": 0.1,     # the smallest worsening of seq-rep-4 (above the held-out text's) that counts
    "overfit_min_gap": 0.02,         # the smallest growth of the held-out minus training loss gap that counts (nats)
    "overfit_min_memorized": 0.05,   # the smallest rise of the memorized share of seen text that counts
    "overfit_train_fit": 20,         # metrics.jsonl fallback: training loss = a line through this many logged steps
    "equal_heads_quantile": EQUAL_HEADS_QUANTILE,  # the equal-heads bound on the Gini: this quantile ...
    "equal_heads_draws": EQUAL_HEADS_DRAWS,        # ... of this many simulated measurements (also the SE draws)
    "equal_heads_seed": EQUAL_HEADS_SEED,
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
        "best fit, abrupt or gradual), with a minimum rise of {concentration_min_rise}. The level itself, at every "
        "checkpoint with ablation results (level_steps): gini and top_share of head_ablation.zero with standard "
        "errors gini_se and top_share_se (parametric bootstrap over the measurement errors: {equal_heads_draws} "
        "draws each adding to every head's delta a Gaussian error of its own standard error "
        "head_ablation.delta_se.zero; the heads are fixed, their measured effects are not). The equal-heads bound "
        "equal_heads_gini: the {equal_heads_quantile:.1%} quantile of the Gini when every head has the same true "
        "effect (the mean of the measured deltas) and each is measured with its own standard error "
        "({equal_heads_draws} simulated measurements, seed {equal_heads_seed}); noise alone makes equal heads look "
        "unequal, the more so the smaller the effects are against their errors. exceeds (per checkpoint) says "
        "the Gini lies above its bound. exceeds_equal_heads_step = the first checkpoint where heads matter "
        "(as above) whose Gini is above its bound and stays above it at the next checkpoint ({persist} in a row; "
        "a crossing at the last checkpoint is not counted yet); exceeds_from_step is the checkpoint before it; "
        "unequal says whether there is one, exceeds_reason why not. last_* give the level at the last "
        "checkpoint."),
    "loss_generation_mismatch": (
        "Generation quality, measured apart from the loss on every checkpoint's own continuations of the fixed "
        "prompts, each measure oriented so that higher is worse (measure): tone, |repetition.tone.jsd_unigram - "
        "repetition.tone.floor_unigram| (the Jensen-Shannon divergence in bits between the unigram distribution "
        "of the sampled continuations, top-p 0.9 at temperature 1, and that of held-out text, taken as its "
        "distance from the floor, what held-out text of the same size scores: a model that over-uses the "
        "commonest words scores below the floor, so the JSD alone is not worse when higher); and the sampled "
        "and greedy seq-rep-4 above the held-out text's own at the same length (max(0, "
        "repetition.*.seq_rep_4 - repetition.heldout_seq_rep_4)); results without these references give the "
        "raw values. Held-out loss "
        "(loss_metric): memorization.held_out.loss, else head_ablation.clean_loss, else metrics.jsonl val_loss "
        "at the checkpoint. Only checkpoints where learning has begun count (held-out loss at least "
        "{learning_started_loss_drop:.0%} below the first checkpoint's; learning_started_step): a random init's "
        "text is not a quality to fall from. For each measure and checkpoint j, the reference is the lowest "
        "median of {excess_window} consecutive checkpoints before j (the best quality so far; ties: the latest). "
        "j is worse beyond noise when its value is at least reference + threshold, threshold = max(the measure's "
        "minimum, {mismatch_min_tone} bits for tone and {mismatch_min_seq_rep} for seq-rep-4; {excess_noise_z} x "
        "noise x sqrt(1/{excess_window} + 1) x widening), and its held-out loss is below the median held-out "
        "loss of the reference window. The tone's noise is its own sampling noise, measured on held-out text "
        "(the median of repetition.tone.floor_unigram_sd: the spread of the tone of held-out samples of the same "
        "size), with no widening; for the other measures noise = the mean absolute deviation of the second "
        "differences (x[i+1] - 2 x[i] + x[i-1]) from their median, the largest left out, x sqrt(pi/12) (so "
        "neither a trend nor a change of slope reads as noise), widened by (1 + {excess_small_sample:g}/m^2), m = "
        "the number of second differences, because with few checkpoints that estimate is itself uncertain "
        "(on pure Gaussian noise this gives false detections in about 2 of 10^5 series of 8 checkpoints, 1.3 of "
        "10 and fewer with more; fewer than {excess_min_points} checkpoints give no answer). A mismatch stretch "
        "is a run of at least {persist} consecutive such checkpoints (one cut short by the last checkpoint is not counted yet). detected when "
        "any measure has one; the earliest is reported (ties: in the order above): from_step and step bracket "
        "its start, to_step is its last checkpoint, reference_step the last checkpoint of the reference window, "
        "before the reference level and after the median over the stretch (rise = after - before), loss_before "
        "and loss_after the held-out loss there. stretches lists every stretch of every measure; by_metric "
        "gives each measure's noise, threshold and reason."),
    "overfitting": (
        "The generalization gap (metric): memorization.loss_gap (held-out minus seen loss, the memorization "
        "probe's two sets of the same size, scored alike) where measured, else from metrics.jsonl: val_loss "
        "minus the training loss at the same step (a least-squares line through the last {overfit_train_fit} "
        "logged training losses, read at that step). Onset = the first stretch of the excess rule of "
        "loss_generation_mismatch applied to the gap over all its checkpoints (at least {persist} consecutive "
        "checkpoints whose gap exceeds the lowest earlier median of {excess_window} consecutive checkpoints by "
        "max({overfit_min_gap} nats, {excess_noise_z} x noise x sqrt(1/{excess_window} + 1) x (1 + "
        "{excess_small_sample:g}/m^2)), noise from the gap's second differences): the held-out loss has "
        "stopped following the training loss. from_step and "
        "step bracket it, before and after are the gap's levels (reference and stretch), heldout_loss_* and "
        "train_loss_* the two losses there. The memorized share of seen text (memorization.seen.memorized_fraction "
        "minus the held-out control memorization.held_out.memorized_fraction) must rise by the same rule, "
        "minimum {overfit_min_memorized}, at some checkpoint (memorized_step). detected when both hold; when "
        "memorization was not measured, the gap alone, and note says so."),
}

SKIP_KEYS = {"continuations", "seconds", "items", "seen_examples", "sampling", "note", "version", "step",
             "tokens", "best_induction", "token_losses", "position_loss", "random_periods", "unseen_periods",
             "training_repeat_periods", "trace"}


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


def _flat(m: Any) -> list[float] | None:
    return [float(x) for r in m for x in r] if is_matrix(m) else None


def _sustained_true(steps: list[int], flags: list[bool | None], persist: int) -> tuple[int | None, int | None]:
    """(first step whose flag is True and stays True for `persist` consecutive entries, the step before
    it); a run cut short by the end does not count."""
    for i in range(len(flags) - persist + 1):
        if all(flags[i:i + persist]):
            return steps[i], steps[i - 1] if i > 0 else None
    return None, None


CONCENTRATION_LEVEL_KEYS = ("level_steps", "gini", "gini_se", "top_share", "top_share_se", "equal_heads_gini",
                            "equal_heads_top_share", "exceeds", "exceeds_equal_heads_step", "exceeds_from_step",
                            "unequal", "exceeds_reason", "last_step", "last_gini", "last_gini_se", "last_top_share",
                            "last_top_share_se", "last_equal_heads_gini", "se_method", "baseline")


def concentration_emergence(steps: list[int], series: dict[str, list], heads: dict[str, list] | None = None) -> dict:
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
    out.update(concentration_levels(steps, series, heads or {}))
    return out


def concentration_levels(steps: list[int], series: dict[str, list], heads: dict[str, list]) -> dict:
    """The head-inequality level per checkpoint with standard errors, and the first checkpoint whose
    Gini exceeds what equal heads would show (see RULES["head_concentration"])."""
    out: dict[str, Any] = {k: None for k in CONCENTRATION_LEVEL_KEYS}
    out["se_method"] = ("parametric bootstrap over the per-head measurement errors (head_ablation.delta_se.zero), "
                        f"{THRESHOLDS['equal_heads_draws']} draws")
    out["baseline"] = (f"the {THRESHOLDS['equal_heads_quantile']:.1%} quantile of the Gini of equal heads (each the "
                       "mean measured delta) measured with their own standard errors")
    fractions = [v for v in series.get("head_ablation.top_fraction") or [] if v is not None]
    fraction = fractions[-1] if fractions else 0.1
    zero = heads.get("head_ablation.zero") or [None] * len(steps)
    errors = heads.get("head_ablation.delta_se.zero") or [None] * len(steps)
    rows = []
    for s, m, e in zip(steps, zero, errors):
        deltas = _flat(m)
        if deltas is None:
            continue
        ses = _flat(e)
        rows.append((s, head_inequality(deltas, ses if ses and len(ses) == len(deltas) else None, fraction=fraction,
                                        draws=THRESHOLDS["equal_heads_draws"], seed=THRESHOLDS["equal_heads_seed"],
                                        quantile=THRESHOLDS["equal_heads_quantile"])))
    out["level_steps"] = [s for s, _ in rows]
    for k in ("gini", "gini_se", "top_share", "top_share_se", "equal_heads_gini", "equal_heads_top_share", "exceeds"):
        out[k] = [r[k] for _, r in rows]
    out["unequal"] = False
    if not rows:
        out["exceeds_reason"] = "no checkpoint has head-ablation results"
        return out
    last_step, last = rows[-1]
    out.update({"last_step": last_step, "last_gini": last["gini"], "last_gini_se": last["gini_se"],
                "last_top_share": last["top_share"], "last_top_share_se": last["top_share_se"],
                "last_equal_heads_gini": last["equal_heads_gini"]})
    persist = THRESHOLDS["persist"]
    top = dict(zip(steps, series.get("head_ablation.zero.max") or [None] * len(steps)))
    matter = [top.get(s) is not None and top[s] >= THRESHOLDS["head_importance_min"] for s in out["level_steps"]]
    flags = [bool(x) and m for x, m in zip(out["exceeds"], matter)]
    step, before = _sustained_true(out["level_steps"], flags, persist)
    out["exceeds_equal_heads_step"], out["exceeds_from_step"] = step, before
    out["unequal"] = step is not None
    if step is None:
        n = sum(flags)
        if all(x is None for x in out["exceeds"]):
            out["exceeds_reason"] = "no standard errors (results computed before head_ablation.delta_se)"
        elif not any(matter):
            out["exceeds_reason"] = (f"heads do not matter yet at any checkpoint (top head below "
                                     f"{THRESHOLDS['head_importance_min']} nats)")
        elif n == 0:
            out["exceeds_reason"] = "the Gini never exceeds the equal-heads bound where heads matter"
        elif flags[-1] and n == 1:
            out["exceeds_reason"] = (f"the Gini exceeds the equal-heads bound at the last checkpoint only (step "
                                     f"{out['level_steps'][-1]}): not yet sustained for {persist}")
        else:
            out["exceeds_reason"] = (f"the Gini exceeds the equal-heads bound at {n} checkpoint(s) where heads "
                                     f"matter, never {persist} in a row")
    return out


def heldout_loss(steps: list[int], series: dict[str, list], metrics: list[dict] | None) -> tuple[str | None, list]:
    """(name, values at `steps`) of the held-out loss: the memorization probe's, else the clean loss of
    head ablation, else metrics.jsonl's val_loss logged at the checkpoint's step."""
    for key in ("memorization.held_out.loss", "head_ablation.clean_loss"):
        values = series.get(key)
        if values and any(v is not None for v in values):
            return key, list(values)
    val = {int(r["step"]): float(r["val_loss"]) for r in metrics or []
           if isinstance(r, dict) and is_number(r.get("step")) and is_number(r.get("val_loss"))}
    values = [val.get(s) for s in steps]
    return ("metrics.val_loss", values) if any(v is not None for v in values) else (None, [None] * len(steps))


def _excess(steps: list[int], values: list | None, min_excess: float, below: list | None = None,
            known_noise: float | None = None) -> dict:
    return excess_stretches(steps, values or [], min_excess, THRESHOLDS["excess_noise_z"],
                            persist=THRESHOLDS["persist"], window=THRESHOLDS["excess_window"], below=below,
                            min_points=THRESHOLDS["excess_min_points"], known_noise=known_noise,
                            below_label="the held-out loss")


def loss_learning_started(steps: list[int], loss: list) -> int | None:
    """First step whose loss is `learning_started_loss_drop` below the first known one's."""
    known = [(s, v) for s, v in zip(steps, loss) if v is not None]
    if not known:
        return None
    limit = known[0][1] * (1 - THRESHOLDS["learning_started_loss_drop"])
    return next((s for s, v in known if v <= limit), None)


MISMATCH_METRICS = (("repetition.tone.jsd_unigram", "mismatch_min_tone", "tone"),
                    ("repetition.sampled.seq_rep_4", "mismatch_min_seq_rep", "sampled seq-rep-4"),
                    ("repetition.greedy.seq_rep_4", "mismatch_min_seq_rep", "greedy seq-rep-4"))
TONE_FLOOR, TEXT_SEQ_REP = "repetition.tone.floor_unigram", "repetition.heldout_seq_rep_4"


def quality_measure(key: str, series: dict[str, list]) -> tuple[list, str]:
    """(values, what they are) of a generation-quality measure as the mismatch rule reads it, higher =
    worse. Tone: the distance of the JSD from its floor (held-out text of the same size), both ways: a
    small sample of real text scores the floor, and a model that over-uses the commonest words scores
    below it, so a JSD climbing towards the floor is text getting more like real text, not worse.
    Seq-rep-4: the excess over the held-out text's own seq-rep-4 at the same length, 0 at or below it
    (stories repeat phrases; learning to repeat as much as they do is not a fault). Without the
    reference (older results) the raw value."""
    values = list(series.get(key) or [])
    ref_key = TONE_FLOOR if "tone" in key else TEXT_SEQ_REP
    refs = series.get(ref_key) or []
    if not values or not any(r is not None for r in refs):
        return values, key
    out = []
    for v, r in zip(values, refs):
        if v is None or r is None:
            out.append(None)
        else:
            out.append(abs(v - r) if "tone" in key else max(0.0, v - r))
    return out, (f"|{key} - {ref_key}|" if "tone" in key else f"max(0, {key} - {ref_key})")
STRETCH_KEYS = ("step", "from_step", "to_step", "reference_step", "before", "after", "rise")
MISMATCH_KEYS = ("metric", "measure", "metrics", "loss_metric", "learning_started_step", "detected", *STRETCH_KEYS,
                 "noise", "noise_source", "threshold", "loss_before", "loss_after", "loss_change", "stretches", "by_metric",
                 "reason", "note")
TONE_NOISE = "repetition.tone.floor_unigram_sd"


def mismatch_emergence(steps: list[int], series: dict[str, list], metrics: list[dict] | None = None) -> dict:
    """Stretches of checkpoints where the held-out loss falls while a generation-quality measure gets
    worse beyond noise (RULES["loss_generation_mismatch"]); every key always present."""
    out: dict[str, Any] = {k: None for k in MISMATCH_KEYS}
    out.update(metrics=[m for m, _, _ in MISMATCH_METRICS], detected=False, stretches=[], by_metric={})
    loss_key, loss = heldout_loss(steps, series, metrics)
    begun = loss_learning_started(steps, loss)
    out["loss_metric"], out["learning_started_step"] = loss_key, begun
    keep = [i for i, s in enumerate(steps) if begun is not None and s >= begun]
    reasons = []
    for key, min_key, label in MISMATCH_METRICS:
        values, measure = quality_measure(key, series)
        entry: dict[str, Any] = {"label": label, "measure": measure, "min_excess": THRESHOLDS[min_key],
                                 "detected": False, "noise": None, "noise_source": None, "threshold": None, "n": 0,
                                 "stretches": [], "reason": None}
        floor = [v for v in series.get(TONE_NOISE) or [] if v is not None] if "tone" in key else []
        known = level(list(range(len(floor))), floor, None, None) if floor else None
        if not values or all(v is None for v in values):
            entry["reason"] = "not measured" + (" (results computed before the tone measure: rerun the probes with "
                                                "--only repetition --force)" if "tone" in key else "")
        elif loss_key is None:
            entry["reason"] = "no held-out loss to compare with"
        elif begun is None:
            entry["reason"] = "learning has not begun (the held-out loss never falls 10% below the first checkpoint's)"
        else:
            found = _excess([steps[i] for i in keep], [values[i] for i in keep], THRESHOLDS[min_key],
                            below=[loss[i] for i in keep], known_noise=known)
            entry.update(noise=found["noise"], threshold=found["threshold"], n=found["n"], reason=found["reason"],
                         noise_source=(f"{TONE_NOISE} (median): the tone's sampling noise, measured on held-out text"
                                       if known is not None else "the successive differences of the series"))
            entry["stretches"] = [{"metric": key, "measure": measure, **{k: st[k] for k in STRETCH_KEYS}, "n": st["n"],
                                   "loss_before": st["below_before"], "loss_after": st["below_after"]}
                                  for st in found["stretches"]]
            entry["detected"] = bool(entry["stretches"])
        out["by_metric"][key] = entry
        out["stretches"] += entry["stretches"]
        if entry["reason"]:
            reasons.append(f"{label}: {entry['reason']}")
    order = {m: i for i, (m, _, _) in enumerate(MISMATCH_METRICS)}
    out["stretches"].sort(key=lambda st: (st["step"], order[st["metric"]]))
    if out["stretches"]:
        first = out["stretches"][0]
        out.update({k: first[k] for k in STRETCH_KEYS}, metric=first["metric"], measure=first["measure"], detected=True,
                   loss_before=first["loss_before"], loss_after=first["loss_after"],
                   loss_change=first["loss_after"] - first["loss_before"],
                   noise=out["by_metric"][first["metric"]]["noise"],
                   noise_source=out["by_metric"][first["metric"]]["noise_source"],
                   threshold=out["by_metric"][first["metric"]]["threshold"])
    else:
        out["reason"] = "; ".join(reasons) or "no stretch found"
    if not out["by_metric"][MISMATCH_METRICS[0][0]]["n"] and loss_key is not None:
        out["note"] = "tone not measured: only the repetition measures were compared"
    return out


def train_loss_at(train: list[tuple[int, float]], step: int, n: int) -> float | None:
    """The training loss at `step` from the logged per-step losses: a least-squares line through the
    last `n` logged steps at or before it, read at `step` (a mean would lag behind a falling loss)."""
    pts = [p for p in train if p[0] <= step][-n:]
    if len(pts) < 3:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my + slope * (step - mx)


def metrics_gap(metrics: list[dict] | None, n: int) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, val_loss - training loss, val_loss, training loss) at every logged evaluation of
    metrics.jsonl that has enough training losses before it."""
    rows = [r for r in metrics or [] if isinstance(r, dict) and is_number(r.get("step"))]
    train = sorted((int(r["step"]), float(r["loss"])) for r in rows if is_number(r.get("loss")))
    out: tuple[list, list, list, list] = ([], [], [], [])
    for r in sorted(rows, key=lambda r: r["step"]):
        if not is_number(r.get("val_loss")):
            continue
        t = train_loss_at(train, int(r["step"]), n)
        if t is not None:
            for lst, v in zip(out, (int(r["step"]), float(r["val_loss"]) - t, float(r["val_loss"]), t)):
                lst.append(v)
    return out


OVERFIT_KEYS = ("metric", "gap_source", "detected", *STRETCH_KEYS, "noise", "threshold", "n", "heldout_loss_before",
                "heldout_loss_after", "train_loss_before", "train_loss_after", "gap_detected", "reason", "note",
                "memorized_metric", "memorized_detected", "memorized_step", "memorized_from_step", "memorized_before",
                "memorized_after", "memorized_rise", "memorized_noise", "memorized_threshold", "memorized_reason",
                "seen_memorized_last", "held_out_memorized_last")


def overfitting_emergence(steps: list[int], series: dict[str, list], metrics: list[dict] | None = None) -> dict:
    """The overfitting onset (RULES["overfitting"]): where the held-out minus training loss gap grows
    beyond noise and the memorized share of seen text rises; every key always present."""
    out: dict[str, Any] = {k: None for k in OVERFIT_KEYS}
    out.update(detected=False, gap_detected=False, memorized_detected=False,
               memorized_metric="memorization.seen.memorized_fraction - memorization.held_out.memorized_fraction")
    gap = series.get("memorization.loss_gap")
    if gap and any(v is not None for v in gap):
        gap_steps, held, train = steps, series.get("memorization.held_out.loss"), series.get("memorization.seen.loss")
        out["metric"] = "memorization.loss_gap"
        out["gap_source"] = "memorization probe: held-out minus seen loss on sets of the same size"
    else:
        gap_steps, gap, held, train = metrics_gap(metrics, THRESHOLDS["overfit_train_fit"])
        out["metric"] = "metrics.val_loss - train loss"
        out["gap_source"] = (f"metrics.jsonl: val_loss minus a line through the last {THRESHOLDS['overfit_train_fit']} "
                             "logged training losses")
    found = _excess(gap_steps, gap, THRESHOLDS["overfit_min_gap"])
    out.update(noise=found["noise"], threshold=found["threshold"], n=found["n"])
    if found["stretches"]:
        first = found["stretches"][0]
        out.update({k: first[k] for k in STRETCH_KEYS}, gap_detected=True)
        ref_lo = gap_steps[max(0, gap_steps.index(first["reference_step"]) - THRESHOLDS["excess_window"] + 1)]
        out["heldout_loss_before"] = level(gap_steps, held, ref_lo, first["reference_step"])
        out["heldout_loss_after"] = level(gap_steps, held, first["step"], first["to_step"])
        out["train_loss_before"] = level(gap_steps, train, ref_lo, first["reference_step"])
        out["train_loss_after"] = level(gap_steps, train, first["step"], first["to_step"])
    seen = series.get("memorization.seen.memorized_fraction")
    ctrl = series.get("memorization.held_out.memorized_fraction")
    excess = [None if a is None or b is None else a - b for a, b in zip(seen or [], ctrl or [])]
    measured = any(v is not None for v in excess)
    if measured:
        mem = _excess(steps, excess, THRESHOLDS["overfit_min_memorized"])
        out.update(memorized_noise=mem["noise"], memorized_threshold=mem["threshold"], memorized_reason=mem["reason"])
        if mem["stretches"]:
            m = mem["stretches"][0]
            out.update(memorized_detected=True, memorized_step=m["step"], memorized_from_step=m["from_step"],
                       memorized_before=m["before"], memorized_after=m["after"], memorized_rise=m["rise"])
        known = [(a, b) for a, b in zip(seen, ctrl) if a is not None and b is not None]
        out["seen_memorized_last"], out["held_out_memorized_last"] = known[-1]
    else:
        out["memorized_reason"] = "memorization not measured"
        out["note"] = "the memorized share of seen text was not measured: the gap alone decides"
    out["detected"] = out["gap_detected"] and (out["memorized_detected"] or not measured)
    if not out["detected"]:
        if not out["gap_detected"]:
            out["reason"] = f"the gap does not grow beyond noise: {found['reason']}" if found["reason"] else \
                "no gap series (neither the memorization probe nor metrics.jsonl has one)"
        else:
            out["reason"] = (f"the gap grows from step {out['step']}, but the memorized share of seen text does not "
                             f"rise: {out['memorized_reason']}")
    return out


def rules() -> dict[str, str]:
    return {k: v.format(**THRESHOLDS) for k, v in RULES.items()}


def emergence(steps: list[int], series: dict[str, list], heads: dict[str, list],
              metrics: list[dict] | None = None) -> dict:
    """Each phenomenon's detection, with its rule in words beside it (the app shows it). `metrics` are
    the rows of metrics.jsonl (for the loss-based rules where the probes measured no loss)."""
    found = {
        "repetition": repetition_emergence(steps, series),
        "induction": induction_emergence(steps, series, heads),
        "memorization": memorization_emergence(steps, series),
        "head_concentration": concentration_emergence(steps, series, heads),
        "loss_generation_mismatch": mismatch_emergence(steps, series, metrics),
        "overfitting": overfitting_emergence(steps, series, metrics),
    }
    text = rules()
    for name, entry in found.items():
        entry["rule"] = text[name]
    return found


def summarize(results: dict[int, dict], metrics: list[dict] | None = None) -> dict:
    """summary.json content from {step: result} and optionally the rows of the run's metrics.jsonl
    (see RULES for the emergence detection)."""
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
    found = emergence(steps, series, heads, metrics)
    return {
        "version": SUMMARY_VERSION,
        "steps": steps,
        "tokens": [results[s].get("tokens") for s in steps],
        "series": series,
        "heads": heads,
        "emergence": found,
        "induction_circuit": induction_circuit(steps, heads, found["induction"]),
        "trajectory": loss_trajectory(results),
        "stages": stages(steps, results),  # the LLC series and its stage boundaries (probes/stages.py)
        "thresholds": dict(THRESHOLDS),
        "rules": rules(),
    }


def write_summary(run_dir: str | os.PathLike) -> dict:
    """Summarize every result file of a run into probes/summary.json (atomically) and return it."""
    summary = summarize(read_results(run_dir), read_jsonl(metrics_jsonl(run_dir)))
    write_json_atomic(summary_path(run_dir), summary)
    return summary
