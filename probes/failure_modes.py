"""The failure modes summary.json reports, each found across checkpoints by a rule that pure noise
does not pass: the loss-generation mismatch (the held-out loss falls while the generations get worse),
the overfitting onset (the held-out loss stops following the training loss and seen text gets
memorized) and head inequality (the Gini of head importance against what equal heads measured with
the same errors would show). The rules in words are RULES in probes/emergence_rules.py.
"""
from __future__ import annotations

from typing import Any

from .emergence import excess_stretches, level
from .emergence_rules import THRESHOLDS
from .head_inequality import head_inequality
from .phenomena import rise_emergence
from .result_series import is_matrix
from .trajectory import is_number

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
