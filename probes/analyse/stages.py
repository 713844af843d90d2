"""Developmental stages: where the local learning coefficient's trend changes over training
(Hoogland et al. 2024 read stage boundaries off the LLC curve). summary.json["stages"] holds the
LLC series of the llc probe (probes/measure/llc.py) and the boundaries this module finds, with the rule in
words beside them, as summary.json's emergence rules are. Pure functions of numbers; no model and
no files.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from probes.analyse.emergence import SMALL_SAMPLE, _median, curvature_noise

from probes.analyse.emergence_rules import MIN_POINTS, MIN_SHARE, NOISE_Z, STAGE_RULE  # noqa: F401 (the rule, stated there)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def median3(values: Sequence[float]) -> list[float]:
    """Each value replaced by the median of itself and its two neighbours; the ends kept."""
    v = [float(x) for x in values]
    return v[:1] + [_median(v[i - 1:i + 2]) for i in range(1, len(v) - 1)] + (v[-1:] if len(v) > 1 else [])


def turning_points(values: Sequence[float], h: float) -> list[tuple[int, str]]:
    """(index, "peak" | "trough") of the zigzag turning points of `values` at threshold h > 0: the
    running extreme of the current trend, once the series has moved back from it by h or more."""
    if not h > 0:
        raise ValueError(f"the zigzag threshold must be a positive number, got {h!r}.")
    out: list[tuple[int, str]] = []
    trend, ext = 0, 0  # trend: +1 rising, -1 falling, 0 not yet known; ext: index of the running extreme
    lo = hi = 0
    for i, v in enumerate(values):
        if trend == 0:
            lo = i if v < values[lo] else lo
            hi = i if v > values[hi] else hi
            if v - values[lo] >= h:
                trend, ext = 1, i
            elif values[hi] - v >= h:
                trend, ext = -1, i
        elif trend > 0:
            if v >= values[ext]:
                ext = i
            elif values[ext] - v >= h:
                out.append((ext, "peak"))
                trend, ext = -1, i
        else:
            if v <= values[ext]:
                ext = i
            elif v - values[ext] >= h:
                out.append((ext, "trough"))
                trend, ext = 1, i
    return out


def _refine(raw: list[float], smooth: list[float], k: int, kind: str) -> int:
    """The checkpoint of a turning point: the median of three flattens a sharp extreme into two
    equal smoothed values, so among the run of equal smoothed values around k, the one whose own
    value is the extreme."""
    lo = hi = k
    while lo > 0 and smooth[lo - 1] == smooth[k]:
        lo -= 1
    while hi + 1 < len(smooth) and smooth[hi + 1] == smooth[k]:
        hi += 1
    pick = max if kind == "peak" else min
    return pick(range(lo, hi + 1), key=lambda j: (raw[j], -j) if kind == "peak" else (raw[j], j))


def stage_boundaries(steps: Sequence[int], values: Sequence[float | None], spread: Sequence[float | None] | None = None,
                     trusted: Sequence[bool | None] | None = None) -> dict:
    """The boundaries of STAGE_RULE over one LLC series (None where a checkpoint has no estimate).

    Returns {boundaries: [{step, from_step, to_step, kind, value, change_before, change_after,
    trusted}], stages: [{from_step, to_step, change, trend}], noise, threshold, n, reason (None when the
    rule could be applied)}."""
    if len(steps) != len(values) or (spread is not None and len(spread) != len(steps)) \
            or (trusted is not None and len(trusted) != len(steps)):
        raise ValueError(f"steps, values, spread and trusted must have the same length, got {len(steps)} steps "
                         f"and {len(values)} values.")
    keep = sorted((int(s), i) for i, (s, v) in enumerate(zip(steps, values)) if _finite(v))
    out: dict[str, Any] = {"boundaries": [], "stages": [], "noise": None, "threshold": None, "n": len(keep),
                           "reason": None}
    if len(keep) < MIN_POINTS:
        out["reason"] = f"{len(keep)} checkpoints with an LLC estimate, fewer than the {MIN_POINTS} the rule needs"
        return out
    xs = [s for s, _ in keep]
    raw = [float(values[i]) for _, i in keep]
    smooth = median3(raw)
    spreads = [float(spread[i]) for _, i in keep if spread is not None and _finite(spread[i])]
    noise = max(curvature_noise(raw), _median(spreads) if spreads else 0.0)
    widen = 1 + SMALL_SAMPLE / (len(raw) - 2) ** 2
    h = max(MIN_SHARE * _median([abs(v) for v in raw]), NOISE_Z * noise * math.sqrt(2) * widen)
    out["noise"], out["threshold"] = noise, h
    if not h > 0:
        out["reason"] = "the series is constant"
        return out
    turns = [(_refine(raw, smooth, k, kind), kind) for k, kind in turning_points(smooth, h)]
    ok = [trusted[i] if trusted is not None else None for _, i in keep]
    edges = [0] + [k for k, _ in turns] + [len(xs) - 1]
    for j, (k, kind) in enumerate(turns):
        near = ok[max(0, k - 1):k + 2]
        out["boundaries"].append({
            "step": xs[k], "from_step": xs[k - 1] if k > 0 else xs[k], "to_step": xs[k + 1] if k + 1 < len(xs) else xs[k],
            "kind": kind, "value": raw[k], "change_before": raw[k] - raw[edges[j]],
            "change_after": raw[edges[j + 2]] - raw[k],
            "trusted": None if any(t is None for t in near) else all(near)})
    for a, b in zip(edges, edges[1:]):
        if b > a:
            change = raw[b] - raw[a]
            out["stages"].append({"from_step": xs[a], "to_step": xs[b], "change": change,
                                  "trend": "rising" if change > 0 else "falling" if change < 0 else "flat"})
    if not turns:
        out["reason"] = f"the smoothed LLC never turns back by the threshold {h:.3g}"
    return out


def llc_series(steps: Sequence[int], results: Mapping[int, Mapping[str, Any]]) -> tuple[list, list, list]:
    """(mean, std, trusted) of the llc probe at each step, None where it was not computed."""
    means, stds, oks = [], [], []
    for s in steps:
        entry = (results.get(s) or {}).get("llc")
        entry = entry if isinstance(entry, Mapping) else {}
        diag = entry.get("diagnostics") if isinstance(entry.get("diagnostics"), Mapping) else {}
        means.append(float(entry["mean"]) if _finite(entry.get("mean")) else None)
        stds.append(float(entry["std"]) if _finite(entry.get("std")) else None)
        oks.append(bool(diag["trusted"]) if isinstance(diag.get("trusted"), bool) else None)
    return means, stds, oks


def stages(steps: Sequence[int], results: Mapping[int, Mapping[str, Any]]) -> dict:
    """summary.json["stages"]: the LLC series (one value per summary step, None where not
    computed), its spread and trust flags, the boundaries and stages of STAGE_RULE, and the rule."""
    means, stds, oks = llc_series(steps, results)
    found = stage_boundaries(steps, means, stds, oks)
    return {"metric": "llc.mean", "llc": means, "llc_std": stds, "trusted": oks, **found, "rule": STAGE_RULE}


def nearest_boundary(found: Mapping[str, Any] | None, step: int | None, share: float = 0.15) -> dict | None:
    """The stage boundary of `found` (summary.json["stages"]) nearest to `step` (e.g. the induction
    change), with its distance as a share of `step` and whether that is within `share`; None
    without a step or a boundary."""
    bounds = [b for b in (found or {}).get("boundaries") or [] if isinstance(b, Mapping) and _finite(b.get("step"))]
    if step is None or not bounds:
        return None
    b = min(bounds, key=lambda b: (abs(int(b["step"]) - int(step)), int(b["step"])))
    off = (int(b["step"]) - int(step)) / int(step) if step else None
    return {"boundary": dict(b), "step": int(step), "offset": off, "within": off is not None and abs(off) <= share,
            "share": share}
