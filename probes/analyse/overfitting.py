"""Overfitting as practitioners mean it, found across checkpoints by RULES["overfitting"] in
probes/analyse/emergence_rules.py: the onset, where the held-out loss stops following the training loss (the
gap held-out minus training grows beyond the gap's own scatter); the early-stopping point, the
checkpoint of the held-out minimum, and whether the held-out loss rises beyond its measured noise after
it; and verbatim memorization (seen text recited more often than held-out text, canaries) as a finding
of its own. Memorization is never a condition of the others: a model can fit its training text ever
better than new text without reciting any of it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from probes.analyse.emergence import SMALL_SAMPLE, curvature_noise, level
from probes.analyse.emergence_rules import THRESHOLDS
from probes.analyse.failure_modes import STRETCH_KEYS, excess, val_loss_at
from probes.analyse.phenomena import memorization_emergence
from probes.analyse.trajectory import is_number

PAIRED_SOURCE = ("the paired standard error of the rise: the standard deviation (ddof 1) over the held-out rows of "
                 "each row's loss at the checkpoint minus at the minimum, / sqrt(rows) "
                 "(memorization.held_out.row_losses: the same rows at every checkpoint)")
SCATTER_SOURCE = ("the held-out loss's residual scatter: curvature_noise (second differences) of the series over the "
                  "checkpoints from half the minimum's step on, x sqrt(2) for a difference of two checkpoints, widened "
                  "by (1 + {small:g}/m^2) for the m second differences it rests on")
GAP_SOURCE = ("the gap's residual scatter: curvature_noise of the gap series (its second differences), widened by "
              "(1 + {small:g}/m^2) for the m second differences it rests on")


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


def paired_se(before: list | None, after: list | None) -> float | None:
    """Standard error of the mean of after - before over rows scored at two checkpoints (the same rows,
    so their own difficulty cancels), or None without two rows on both."""
    if not isinstance(before, list) or not isinstance(after, list) or len(before) != len(after) or len(before) < 2:
        return None
    d = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    return float(d.std(ddof=1) / math.sqrt(len(d)))


HELDOUT_RISE_KEYS = ("detected", "step", "from_step", "to_step", "rise", "last_step", "last_rise", "loss_at_minimum",
                     "loss_after", "noise", "noise_source", "threshold", "z", "min_rise", "reason")


def heldout_rise(steps: list[int], values: list, rows: list | None = None) -> dict:
    """Whether the held-out loss has risen beyond noise after its minimum (RULES["overfitting"]): the
    last checkpoint lies above the minimum by its threshold (a rise that came back is none), and step is
    the first of the checkpoints up to the last that all do. Noise is the paired standard error of each
    rise where every checkpoint has its held-out rows, else the series' residual scatter near the
    minimum; every key always present."""
    out: dict[str, Any] = {k: None for k in HELDOUT_RISE_KEYS}
    out.update(detected=False, min_rise=THRESHOLDS["overfit_min_rise"])
    known = [(i, s, float(v)) for i, (s, v) in enumerate(zip(steps, values)) if v is not None]
    if not known:
        out["reason"] = "no held-out loss"
        return out
    i_min, s_min, v_min = min(known, key=lambda t: (t[2], t[1]))
    later = [t for t in known if t[1] > s_min]
    out["loss_at_minimum"] = v_min
    if not later:
        out["reason"] = f"the held-out loss is lowest at the last checkpoint (step {s_min}): it has not risen"
        return out
    rows = rows or [None] * len(steps)
    paired = [paired_se(rows[i_min], rows[i]) for i, _, _ in later]
    if all(p is not None for p in paired):
        z, noises, widen, source = THRESHOLDS["measured_noise_z"], paired, 1.0, PAIRED_SOURCE
    else:
        near = [v for _, s, v in known if s >= s_min / 2]
        near = near if len(near) >= 5 else [v for _, _, v in known]
        if len(near) < 5:
            out["reason"] = (f"{len(near)} checkpoints with a held-out loss, fewer than the 5 its scatter needs "
                             "(and no held-out rows for a paired standard error)")
            return out
        z, widen = THRESHOLDS["excess_noise_z"], 1 + SMALL_SAMPLE / (len(near) - 2) ** 2
        noises, source = [curvature_noise(near) * math.sqrt(2)] * len(later), SCATTER_SOURCE.format(small=SMALL_SAMPLE)
    thresholds = [max(out["min_rise"], z * n * widen) for n in noises]
    ok = [v - v_min >= th for (_, _, v), th in zip(later, thresholds)]
    out.update(z=z, noise_source=source, last_step=later[-1][1], last_rise=later[-1][2] - v_min, noise=noises[-1],
               threshold=thresholds[-1])
    if not ok[-1]:
        n_ok = sum(ok)
        out["reason"] = (f"the held-out loss at the last checkpoint (step {later[-1][1]}) is within noise of its "
                         f"minimum (step {s_min}): {out['last_rise']:.3g} above it against a threshold of "
                         f"{thresholds[-1]:.3g}" + (f"; it rose beyond noise at {n_ok} checkpoint(s) in between and "
                                                    "came back" if n_ok else ""))
        return out
    j = len(later) - 1
    while j > 0 and ok[j - 1]:
        j -= 1
    before = [t for t in known if t[1] < later[j][1]][-1]
    out.update(detected=True, step=later[j][1], from_step=before[1], to_step=later[-1][1], rise=out["last_rise"],
               loss_after=later[-1][2])
    return out


MEMORIZATION_KEYS = ("metric", "detected", "step", "from_step", "before", "after", "rise", "noise", "noise_source",
                     "threshold", "reason", "seen_last", "held_out_last", "canary_metric", "canary_step",
                     "canary_copies")


def memorization_finding(steps: list[int], series: dict[str, list]) -> dict:
    """Verbatim memorization beside overfitting (RULES["overfitting"]): the memorized share of seen text
    above the held-out control rising by the excess rule, and the canaries' first extraction (the
    memorization entry's onset); every key always present."""
    out: dict[str, Any] = {k: None for k in MEMORIZATION_KEYS}
    out.update(detected=False,
               metric="memorization.seen.memorized_fraction - memorization.held_out.memorized_fraction")
    canaries = memorization_emergence(steps, series)
    out.update(canary_metric=canaries["metric"], canary_step=canaries["step"], canary_copies=canaries["copies"])
    seen = series.get("memorization.seen.memorized_fraction") or []
    ctrl = series.get("memorization.held_out.memorized_fraction") or []
    known = [(s, a, b) for s, a, b in zip(steps, seen, ctrl) if a is not None and b is not None]
    if not known:
        out["reason"] = "memorization not measured"
        return out
    found = excess([s for s, _, _ in known], [a - b for _, a, b in known], THRESHOLDS["overfit_min_memorized"])
    out.update(noise=found["noise"], threshold=found["threshold"], reason=found["reason"],
               noise_source=GAP_SOURCE.replace("gap", "share").format(small=SMALL_SAMPLE),
               seen_last=known[-1][1], held_out_last=known[-1][2])
    if found["stretches"]:
        m = found["stretches"][0]
        out.update(detected=True, **{k: m[k] for k in ("step", "from_step", "before", "after", "rise")})
    return out


OVERFIT_KEYS = ("metric", "gap_source", "detected", *STRETCH_KEYS, "noise", "noise_source", "threshold", "n",
                "heldout_loss_before", "heldout_loss_after", "train_loss_before", "train_loss_after", "gap_detected",
                "reason", "note", "early_stop_step", "early_stop_loss", "heldout_loss_metric", "heldout_rise",
                "memorization", "memorized_metric", "memorized_detected", "memorized_step", "memorized_from_step",
                "memorized_before", "memorized_after", "memorized_rise", "memorized_noise", "memorized_threshold",
                "memorized_reason", "seen_memorized_last", "held_out_memorized_last")


def early_stop_loss(steps: list[int], series: dict[str, list], metrics: list[dict] | None) -> tuple[str | None, list]:
    """(name, values at `steps`) of the held-out loss the early-stopping point is read from: the
    memorization probe's (its rows give the paired noise), else metrics.jsonl's val_loss at the
    checkpoints, else head ablation's clean loss."""
    values = series.get("memorization.held_out.loss")
    if values and any(v is not None for v in values):
        return "memorization.held_out.loss", list(values)
    key, values = val_loss_at(steps, metrics)
    if key is not None:
        return key, values
    values = series.get("head_ablation.clean_loss")
    if values and any(v is not None for v in values):
        return "head_ablation.clean_loss", list(values)
    return None, [None] * len(steps)


def overfitting_emergence(steps: list[int], series: dict[str, list], metrics: list[dict] | None = None,
                          row_losses: list | None = None) -> dict:
    """Overfitting (RULES["overfitting"]): the onset where the held-out minus training loss gap grows
    beyond noise, the early-stopping point and the held-out loss's rise after it, and verbatim
    memorization as a finding of its own. `row_losses` are memorization.held_out.row_losses at each of
    `steps` (None where missing). Every key always present."""
    out: dict[str, Any] = {k: None for k in OVERFIT_KEYS}
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
    found = excess(gap_steps, gap, THRESHOLDS["overfit_min_gap"])
    out.update(noise=found["noise"], threshold=found["threshold"], n=found["n"],
               noise_source=GAP_SOURCE.format(small=SMALL_SAMPLE))
    if found["stretches"]:
        first = found["stretches"][0]
        out.update({k: first[k] for k in STRETCH_KEYS}, detected=True)
        ref_lo = gap_steps[max(0, gap_steps.index(first["reference_step"]) - THRESHOLDS["excess_window"] + 1)]
        out["heldout_loss_before"] = level(gap_steps, held, ref_lo, first["reference_step"])
        out["heldout_loss_after"] = level(gap_steps, held, first["step"], first["to_step"])
        out["train_loss_before"] = level(gap_steps, train, ref_lo, first["reference_step"])
        out["train_loss_after"] = level(gap_steps, train, first["step"], first["to_step"])
    else:
        out["detected"] = False
        out["reason"] = (f"the gap does not grow beyond noise: {found['reason']}" if found["reason"] else
                         "no gap series (neither the memorization probe nor metrics.jsonl has one)")
    out["gap_detected"] = out["detected"]
    key, loss = early_stop_loss(steps, series, metrics)
    known = [(s, v) for s, v in zip(steps, loss) if v is not None]
    if known:
        out["early_stop_step"], out["early_stop_loss"] = min(known, key=lambda p: (p[1], p[0]))
    out["heldout_loss_metric"] = key
    out["heldout_rise"] = heldout_rise(steps, loss, row_losses if key == "memorization.held_out.loss" else None)
    mem = memorization_finding(steps, series)
    out["memorization"] = mem
    out.update(memorized_metric=mem["metric"], memorized_detected=mem["detected"], memorized_step=mem["step"],
               memorized_from_step=mem["from_step"], memorized_before=mem["before"], memorized_after=mem["after"],
               memorized_rise=mem["rise"], memorized_noise=mem["noise"], memorized_threshold=mem["threshold"],
               memorized_reason=mem["reason"], seen_memorized_last=mem["seen_last"],
               held_out_memorized_last=mem["held_out_last"])
    if mem["reason"] == "memorization not measured":
        out["note"] = "verbatim memorization was not measured (no memorization probe results)"
    return out
