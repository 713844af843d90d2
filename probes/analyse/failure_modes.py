"""The failure modes summary.json reports, each found across checkpoints by a rule that pure noise
does not pass: the loss-generation mismatch (the held-out loss falls while the generations get worse
beyond their measured noise) and head inequality (the Gini of head importance against what equal heads
measured with the same errors would show). Overfitting (the gap, the early-stopping point, verbatim
memorization) is probes/analyse/overfitting.py, on the shared helpers here. The rules in words are RULES in
probes/analyse/emergence_rules.py.
"""
from __future__ import annotations

import math
from typing import Any

from probes.analyse.emergence import excess_stretches, level
from probes.analyse.emergence_rules import THRESHOLDS
from probes.analyse.head_inequality import head_inequality
from probes.analyse.phenomena import rise_emergence
from probes.analyse.result_series import is_matrix
from probes.analyse.trajectory import is_number


def heldout_loss(steps: list[int], series: dict[str, list], metrics: list[dict] | None) -> tuple[str | None, list]:
    """(name, values at `steps`) of the held-out loss: the memorization probe's, else the clean loss of
    head ablation, else metrics.jsonl's val_loss logged at the checkpoint's step."""
    for key in ("memorization.held_out.loss", "head_ablation.clean_loss"):
        values = series.get(key)
        if values and any(v is not None for v in values):
            return key, list(values)
    return val_loss_at(steps, metrics)


def val_loss_at(steps: list[int], metrics: list[dict] | None) -> tuple[str | None, list]:
    """("metrics.val_loss", metrics.jsonl's val_loss at each of `steps`), or (None, Nones) without one."""
    val = {int(r["step"]): float(r["val_loss"]) for r in metrics or []
           if isinstance(r, dict) and is_number(r.get("step")) and is_number(r.get("val_loss"))}
    values = [val.get(s) for s in steps]
    return ("metrics.val_loss", values) if any(v is not None for v in values) else (None, [None] * len(steps))


def excess(steps: list[int], values: list | None, min_excess: float, below: list | None = None,
           known_noise: float | None = None) -> dict:
    """`excess_stretches` with the thresholds of RULES (noise from the series itself unless known)."""
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
MEASURE_RANGE = (0.0, 1.0)  # every measure: a distance between JSDs in bits, or a seq-rep-4 excess
# Each measure's own noise, measured at every checkpoint apart from the series (probes/measure/repetition.py).
NOISE = {
    "repetition.tone.jsd_unigram": ("repetition.tone.floor_unigram_sd", "the spread of the tone of held-out samples "
                                    "of the same size (repetition.tone.floor_unigram_sd): the tone's sampling noise"),
    "repetition.sampled.seq_rep_4": ("repetition.sampled.seq_rep_4_se", "the standard error of the sampled seq-rep-4 "
                                     "from the several samples of each prompt (repetition.sampled.seq_rep_4_se): its "
                                     "sampling noise at the fixed prompts"),
    "repetition.greedy.seq_rep_4": ("repetition.greedy.seq_rep_4_se", "the standard error of the greedy seq-rep-4 "
                                    "across the prompts (repetition.greedy.seq_rep_4_se)"),
}


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


def measured_threshold(noise: float, min_excess: float) -> tuple[float, bool]:
    """(threshold, capped): max(min_excess, z x noise x sqrt(1/window + 1)) for a measure whose noise
    was measured (RULES["loss_generation_mismatch"]), capped at the width of the measure's range."""
    raw = max(min_excess, THRESHOLDS["measured_noise_z"] * noise * math.sqrt(1 / THRESHOLDS["excess_window"] + 1))
    width = MEASURE_RANGE[1] - MEASURE_RANGE[0]
    return min(raw, width), raw > width


STRETCH_KEYS = ("step", "from_step", "to_step", "reference_step", "before", "after", "rise")
MISMATCH_KEYS = ("metric", "measure", "metrics", "loss_metric", "learning_started_step", "detected", *STRETCH_KEYS,
                 "noise", "noise_source", "threshold", "loss_before", "loss_after", "loss_change", "stretches", "by_metric",
                 "reason", "note")


def mismatch_measure(key: str, min_key: str, label: str, steps: list[int], series: dict[str, list],
                     loss: list, keep: list[int]) -> dict:
    """One measure's entry of by_metric: its noise (the median of its measured noise over the checkpoints
    `keep`), threshold and stretches, or the reason there are none."""
    values, measure = quality_measure(key, series)
    noise_key, source = NOISE[key]
    entry: dict[str, Any] = {"label": label, "measure": measure, "range": list(MEASURE_RANGE),
                             "min_excess": THRESHOLDS[min_key], "z": THRESHOLDS["measured_noise_z"],
                             "detected": False, "noise": None, "noise_metric": noise_key, "noise_source": None,
                             "noise_checkpoints": 0, "threshold": None, "capped": False, "n": 0, "stretches": [],
                             "reason": None}
    noise_values = series.get(noise_key) or [None] * len(steps)
    measured = [noise_values[i] for i in keep if noise_values[i] is not None]
    if not values or all(v is None for v in values):
        entry["reason"] = "not measured" + (" (results computed before the tone measure: rerun the probes with "
                                            "--only repetition --force)" if "tone" in key else "")
        return entry
    if not measured:
        entry["reason"] = (f"its noise ({noise_key}) was not measured: rerun the probes with --only repetition "
                           "--force")
        return entry
    noise = level(list(range(len(measured))), measured, None, None)
    threshold, capped = measured_threshold(noise, THRESHOLDS[min_key])
    found = excess_stretches([steps[i] for i in keep], [values[i] for i in keep], threshold, 0.0,
                             persist=THRESHOLDS["persist"], window=THRESHOLDS["excess_window"],
                             below=[loss[i] for i in keep], known_noise=0.0, below_label="the held-out loss")
    entry.update(noise=noise, noise_source=source, noise_checkpoints=len(measured), threshold=threshold,
                 capped=capped, n=found["n"], reason=found["reason"])
    if capped:
        entry["reason"] = (f"its noise ({noise:.3g}) puts the threshold beyond the measure's range [0, 1]: no "
                           "change can be told from noise (more prompts or samples would narrow it)")
    entry["stretches"] = [{"metric": key, "measure": measure, **{k: st[k] for k in STRETCH_KEYS}, "n": st["n"],
                           "loss_before": st["below_before"], "loss_after": st["below_after"]}
                          for st in found["stretches"]] if not capped else []
    entry["detected"] = bool(entry["stretches"])
    return entry


def mismatch_emergence(steps: list[int], series: dict[str, list], metrics: list[dict] | None = None) -> dict:
    """Stretches of checkpoints where the held-out loss falls while a generation-quality measure gets
    worse beyond its measured noise (RULES["loss_generation_mismatch"]); every key always present."""
    out: dict[str, Any] = {k: None for k in MISMATCH_KEYS}
    out.update(metrics=[m for m, _, _ in MISMATCH_METRICS], detected=False, stretches=[], by_metric={})
    loss_key, loss = heldout_loss(steps, series, metrics)
    begun = loss_learning_started(steps, loss)
    out["loss_metric"], out["learning_started_step"] = loss_key, begun
    keep = [i for i, s in enumerate(steps) if begun is not None and s >= begun]
    reasons = []
    for key, min_key, label in MISMATCH_METRICS:
        if loss_key is None or begun is None:
            values, measure = quality_measure(key, series)
            entry = {"label": label, "measure": measure, "range": list(MEASURE_RANGE), "detected": False,
                     "noise": None, "noise_source": None, "threshold": None, "n": 0, "stretches": [],
                     "reason": "no held-out loss to compare with" if loss_key is None else
                     "learning has not begun (the held-out loss never falls 10% below the first checkpoint's)"}
        else:
            entry = mismatch_measure(key, min_key, label, steps, series, loss, keep)
        out["by_metric"][key] = entry
        out["stretches"] += entry["stretches"]
        if entry["reason"]:
            reasons.append(f"{label}: {entry['reason']}")
    order = {m: i for i, (m, _, _) in enumerate(MISMATCH_METRICS)}
    out["stretches"].sort(key=lambda st: (st["step"], order[st["metric"]]))
    if out["stretches"]:
        first = out["stretches"][0]
        chosen = out["by_metric"][first["metric"]]
        out.update({k: first[k] for k in STRETCH_KEYS}, metric=first["metric"], measure=first["measure"], detected=True,
                   loss_before=first["loss_before"], loss_after=first["loss_after"],
                   loss_change=first["loss_after"] - first["loss_before"], noise=chosen["noise"],
                   noise_source=chosen["noise_source"], threshold=chosen["threshold"])
    else:
        out["reason"] = "; ".join(reasons) or "no stretch found"
    if not out["by_metric"][MISMATCH_METRICS[0][0]]["n"] and loss_key is not None and begun is not None:
        out["note"] = "tone not measured: only the repetition measures were compared"
    return out


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
