"""Rules over a series of checkpoints: when a value crosses a threshold and stays, the largest
sustained change of level (the phase-change rule of probes/analyse/phenomena.py), the level over a range
of steps, and stretches that stand out above an earlier level (the excess rule of
probes/analyse/failure_modes.py). Pure functions of (steps, values); no model and no files.
"""
from __future__ import annotations

import math
from typing import Sequence

def _clean_series(steps: Sequence[int], values: Sequence[float | None]) -> list[tuple[int, float]]:
    pairs = [(int(s), float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v))]
    return sorted(pairs)


def sustained_crossing(steps: Sequence[int], values: Sequence[float | None], threshold: float,
                       persist: int = 2) -> int | None:
    """First step whose value is >= threshold and stays >= threshold for `persist` consecutive
    checkpoints (fewer when the series ends first). Missing values are skipped."""
    pairs = _clean_series(steps, values)
    for i, (step, _) in enumerate(pairs):
        window = pairs[i:i + persist]
        if all(v >= threshold for _, v in window):
            return step
    return None


def sustained_rise(steps: Sequence[int], values: Sequence[float | None], threshold: float,
                   persist: int = 2) -> int | None:
    """As `sustained_crossing`, but only counting a crossing from below: the checkpoint before
    it must be under the threshold (so behaviour present from the first checkpoint is not a rise)."""
    pairs = _clean_series(steps, values)
    for i in range(1, len(pairs)):
        if pairs[i - 1][1] < threshold and all(v >= threshold for _, v in pairs[i:i + persist]):
            return pairs[i][0]
    return None


def sustained_fall(steps: Sequence[int], values: Sequence[float | None], threshold: float,
                   after: int, persist: int = 2) -> int | None:
    """First step after `after` where the value drops below threshold and stays there for
    `persist` checkpoints."""
    pairs = [p for p in _clean_series(steps, values) if p[0] > after]
    for i, (step, _) in enumerate(pairs):
        if all(v < threshold for _, v in pairs[i:i + persist]):
            return step
    return None


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def difference_noise(values: Sequence[float]) -> float:
    """Noise level (a standard deviation) of a series, from its successive differences: their mean
    absolute deviation from their median, leaving out the largest one, x sqrt(pi)/2 (for Gaussian
    noise of s.d. sigma a difference has s.d. sigma*sqrt(2), whose mean absolute value is
    2*sigma/sqrt(pi)).

    Differences cancel the levels: a steady trend only shifts their median, and a jump is one
    outlying difference, which is left out; so neither inflates the estimate while checkpoint-to-
    checkpoint noise does. A mean is used rather than a median of deviations because, over the
    8-30 checkpoints of a run, the median of deviations is too often far below the true noise
    (measured with the rule's thresholds on pure Gaussian series as noisy as the minimum rise:
    about 0.5% false detections with the median, 0.2-0.4% with the mean). 0 with fewer than
    three values."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    if len(diffs) < 2:
        return 0.0
    centre = _median(diffs)
    deviations = sorted(abs(d - centre) for d in diffs)[:-1]
    return sum(deviations) / len(deviations) * math.sqrt(math.pi) / 2


def _split_candidate(pairs: list[tuple[int, float]], k: int, noise: float) -> dict:
    """Two-level description of the series split between checkpoints k-1 and k."""
    head, tail = [v for _, v in pairs[:k]], [v for _, v in pairs[k:]]
    before, after = _median(head), _median(tail)
    rise = after - before
    kept = sum(v >= before + rise / 2 for v in tail) if rise > 0 else 0
    return {"k": k, "before": before, "after": after, "rise": rise,
            "fit": sum(abs(v - before) for v in head) + sum(abs(v - after) for v in tail),
            "kept": kept, "n_before": len(head), "n_after": len(tail),
            "noise_floor": noise * math.sqrt(1 / len(head) + 1 / len(tail))}


def _transition(pairs: list[tuple[int, float]], c: dict, band: float) -> tuple[int, int]:
    """(first, last) index of the climb around split k: from the last checkpoint at or before the
    split still within `band` x rise of the before-level, to the first checkpoint at or after it
    within `band` x rise of the after-level. Both exist: at least half of each side lies on the
    far side of its own median."""
    k, lo, hi = c["k"], c["before"] + band * c["rise"], c["after"] - band * c["rise"]
    first = next(i for i in range(k - 1, -1, -1) if pairs[i][1] <= lo)
    last = next(i for i in range(k, len(pairs)) if pairs[i][1] >= hi)
    return first, last


def largest_sustained_rise(steps: Sequence[int], values: Sequence[float | None], min_rise: float,
                           sustain_share: float = 0.75, noise_z: float = 6.0,
                           abrupt_max_intervals: int = 2, band: float = 0.2,
                           abrupt_max_share: float = 0.25) -> dict | None:
    """The rise from one level to a higher one that best describes a series over checkpoints.

    Every split between two consecutive checkpoints (by index, so uneven spacing in steps favours
    none) describes the series as two levels: the median of the values up to the split (before)
    and of those after it (after). A split qualifies when the level rises by at least `min_rise`,
    the rise is sustained (at least `sustain_share` of the checkpoints after the split keep half
    of it or more, so a transient spike fails) and it stands clear of noise (rise >= `noise_z` x
    `difference_noise` x sqrt(1/n_before + 1/n_after)). Among qualifying splits the one whose
    two levels fit the data best (least total absolute deviation; ties: larger rise, then larger
    jump across the pair, then earlier) is chosen and `detected` is True. Without one, the
    best-fitting rising split is reported with `detected` False and `reason` saying why.

    Why a fit and not the largest difference of medians: a long low plateau drags the before-
    median of every later split down, so a small wobble at the end (0.33 -> 0.40 after a plateau
    at 0.35) would beat the real jump (0.01 -> 0.35); a split there fits badly.

    Returns {step, from_step (the two checkpoints bracketing the change), before, after, rise,
    jump (value change across the pair), rate (jump per unit of log(1 + step), for reference),
    detected, reason, sustained, kept_share, noise, n_before, n_after, kind ("abrupt" when the climb
    from within `band` of the before-level to within `band` of the after-level takes at most
    `abrupt_max_intervals` checkpoint intervals, or at most `abrupt_max_share` of the training
    steps up to its end: with checkpoints made dense around a change (--ckpt-window, --fill-in) a
    count of intervals alone would call every change gradual; else "gradual"), abrupt, transition_from_step,
    transition_to_step, transition_intervals, note}, or None with fewer than two values or no
    split at which the level rises at all."""
    _check_rise_settings(min_rise, sustain_share, noise_z, abrupt_max_intervals, band)
    pairs = _clean_series(steps, values)
    if len(pairs) < 2:
        return None
    noise = difference_noise([v for _, v in pairs])
    rising = [c for c in (_split_candidate(pairs, k, noise) for k in range(1, len(pairs))) if c["rise"] > 0]
    if not rising:
        return None
    for c in rising:
        c["sustained"] = c["kept"] >= sustain_share * c["n_after"]
        c["reason"] = (None if c["rise"] >= min_rise and c["sustained"] and c["rise"] >= noise_z * c["noise_floor"]
                       else _why_not(c, min_rise, sustain_share, noise_z))
    qualified = [c for c in rising if c["reason"] is None]

    def rank(c: dict) -> tuple:
        jump = pairs[c["k"]][1] - pairs[c["k"] - 1][1]
        return (round(c["fit"], 9), -round(c["rise"], 9), -round(jump, 9), c["k"])

    best = min(qualified or rising, key=rank)
    return _describe(pairs, best, noise, abrupt_max_intervals, band, abrupt_max_share)


def _check_rise_settings(min_rise: float, sustain_share: float, noise_z: float, abrupt_max_intervals: int,
                         band: float) -> None:
    """Refuse settings under which the rule's words would be false (e.g. a "sustained" rise that
    no later checkpoint needs to keep)."""
    if not min_rise >= 0:
        raise ValueError(f"min_rise must be a number >= 0, got {min_rise!r}.")
    if not 0 < sustain_share <= 1:
        raise ValueError(f"sustain_share must be in (0, 1], got {sustain_share!r}.")
    if not noise_z >= 0:
        raise ValueError(f"noise_z must be a number >= 0, got {noise_z!r}.")
    if isinstance(abrupt_max_intervals, bool) or not isinstance(abrupt_max_intervals, int) or abrupt_max_intervals < 1:
        raise ValueError(f"abrupt_max_intervals must be a whole number >= 1, got {abrupt_max_intervals!r}.")
    if not 0 <= band < 0.5:
        raise ValueError(f"band must be in [0, 0.5), got {band!r}.")


def _why_not(c: dict, min_rise: float, sustain_share: float, noise_z: float) -> str:
    if c["rise"] < min_rise:
        return f"the level rose by {c['rise']:.3g}, below the minimum {min_rise:g}"
    if not c["sustained"]:
        return (f"not sustained: only {c['kept']} of the {c['n_after']} later checkpoints keep half the rise "
                f"(at least {sustain_share:.0%} must)")
    return (f"within noise: the rise of {c['rise']:.3g} is under {noise_z:g} x {c['noise_floor']:.3g} "
            f"(the noise level scaled by sqrt(1/{c['n_before']} + 1/{c['n_after']}) checkpoints)")


def _describe(pairs: list[tuple[int, float]], c: dict, noise: float, abrupt_max_intervals: int,
              band: float, abrupt_max_share: float) -> dict:
    k = c["k"]
    (s0, v0), (s1, v1) = pairs[k - 1], pairs[k]
    dlog = math.log1p(s1) - math.log1p(s0)
    first, last = _transition(pairs, c, band)
    climb = pairs[last][0] - pairs[first][0]
    abrupt = last - first <= abrupt_max_intervals or climb <= abrupt_max_share * pairs[last][0]
    notes = [f"the {side} level rests on one checkpoint" for side, n in (("before", c["n_before"]),
                                                                       ("after", c["n_after"])) if n == 1]
    return {"step": s1, "from_step": s0, "before": c["before"], "after": c["after"], "rise": c["rise"],
            "jump": v1 - v0, "rate": (v1 - v0) / dlog if dlog > 0 else None,
            "detected": c["reason"] is None, "reason": c["reason"], "sustained": c["sustained"],
            "kept_share": c["kept"] / c["n_after"], "noise": noise,
            "n_before": c["n_before"], "n_after": c["n_after"],
            "kind": "abrupt" if abrupt else "gradual", "abrupt": abrupt,
            "transition_from_step": pairs[first][0], "transition_to_step": pairs[last][0],
            "transition_intervals": last - first, "transition_steps": climb, "note": "; ".join(notes) or None}


def first_at_or_above(steps: Sequence[int], values: Sequence[float | None], threshold: float) -> int | None:
    for step, v in _clean_series(steps, values):
        if v >= threshold:
            return step
    return None


def level(steps: list[int], values: list | None, lo: int | None, hi: int | None) -> float | None:
    """Median of the known values at steps in [lo, hi] (None bounds: open), or None."""
    known = sorted(v for s, v in zip(steps, values or []) if v is not None
                   and (lo is None or s >= lo) and (hi is None or s <= hi))
    if not known:
        return None
    mid = len(known) // 2
    return known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2


def _window_medians(values: Sequence[float], window: int) -> list[float | None]:
    """Median of values[i - window + 1 .. i] for every i (None before a full window)."""
    return [None if i + 1 < window else _median(values[i + 1 - window:i + 1]) for i in range(len(values))]


def curvature_noise(values: Sequence[float]) -> float:
    """Noise level (a standard deviation) of a series from its second differences x[i+1] - 2 x[i] +
    x[i-1]: their mean absolute deviation from their median, the largest left out, x sqrt(pi/12) (for
    Gaussian noise of s.d. sigma a second difference has s.d. sigma*sqrt(6), whose mean absolute value
    is sigma*sqrt(12/pi)).

    Unlike `difference_noise`, a change of slope does not inflate it: a gap that is flat and then
    grows steadily has first differences of two sizes (which read as noise) but second differences
    that are all zero except at the bend (one outlier, left out). A jump gives two outliers, of which
    one is left out, so it inflates the estimate somewhat. 0 with fewer than four values."""
    d2 = [c - 2 * b + a for a, b, c in zip(values, values[1:], values[2:])]
    if len(d2) < 2:
        return 0.0
    centre = _median(d2)
    deviations = sorted(abs(d - centre) for d in d2)[:-1]
    return sum(deviations) / len(deviations) * math.sqrt(math.pi / 12)


# excess_stretches widens its noise threshold by (1 + SMALL_SAMPLE / m^2), m = n - 2 second differences.
# On pure Gaussian series the 99.999th percentile of the largest excess of 2 checkpoints in a row over
# the lowest earlier 3-checkpoint median, in units of curvature_noise x sqrt(4/3), is 25.5 at 8
# checkpoints, 16.6 at 10, 11.8 at 12, 8.1 at 16, 7.6 at 20, 6.3 at 30 and 5.6 at 50 (400,000 series
# each); 6 x (1 + 120/m^2) is 26.0, 17.3, 13.2, 9.7, 8.2, 6.9 and 6.3. Measured directly (2 million
# series each): false detections in 2.0 of 10^5 series of 8 checkpoints, 1.3 of 10, 0.5 of 12, 0.3 of
# 14 and 0.25 of 16.
SMALL_SAMPLE = 120.0


def excess_stretches(steps: Sequence[int], values: Sequence[float | None], min_excess: float, noise_z: float,
                     persist: int = 2, window: int = 3, below: Sequence[float | None] | None = None,
                     min_points: int = 8, known_noise: float | None = None,
                     below_label: str = "the second series") -> dict:
    """Stretches of checkpoints at which a series stands above its best (lowest) earlier level by more
    than noise: the rule behind the loss-generation mismatch and the overfitting onset.

    For each checkpoint j, the reference is the lowest median of `window` consecutive checkpoints all
    before j (ties: the latest), so one low outlier cannot be the reference. j qualifies when its value
    is at least the reference + threshold, threshold = max(`min_excess`, `noise_z` x noise x
    sqrt(1/window + 1) x (1 + SMALL_SAMPLE/m^2)), noise = `curvature_noise` of the whole series (neither
    a steady trend nor a change of slope inflates it) and m = n - 2 the second differences it rests
    on. With few checkpoints the noise level itself is uncertain and too often far too small (see
    SMALL_SAMPLE for the false-detection rates this gives). Fewer than `min_points`
    checkpoints give no answer. With `known_noise` (a measurement's own sampling noise, measured
    apart from the series) that is the noise, there is no widening, and only a reference window and a
    stretch are needed. With `below` (a second series over the same
    steps, e.g. the held-out loss), j qualifies only if its `below` value is also strictly under the
    median of `below` over the reference window. A stretch is a run of at least `persist` consecutive
    qualifying checkpoints (a run cut short by the last checkpoint does not count yet).

    Returns {stretches: [{from_step (the checkpoint before the stretch), step (its first), to_step (its
    last), reference_step (the last checkpoint of the reference window), before (the reference level),
    after (median over the stretch), rise (after - before), n, below_before, below_after}], noise,
    threshold, n (checkpoints used), reason (None when a stretch was found)}. Missing values are skipped
    (in both series)."""
    if persist < 1 or window < 1:
        raise ValueError(f"persist and window must be >= 1, got {persist!r} and {window!r}.")
    if not min_excess >= 0 or not noise_z >= 0:
        raise ValueError(f"min_excess and noise_z must be numbers >= 0, got {min_excess!r} and {noise_z!r}.")
    extra = dict(zip([int(s) for s in steps], below)) if below is not None else None
    pairs = [(s, v) for s, v in _clean_series(steps, values)
             if extra is None or (extra.get(s) is not None and math.isfinite(float(extra[s])))]
    out: dict = {"stretches": [], "noise": None, "threshold": None, "n": len(pairs), "reason": None}
    need = window + persist if known_noise is not None else max(min_points, window + persist)
    if len(pairs) < need:
        out["reason"] = (f"{len(pairs)} checkpoints with a value, fewer than the {need} the rule needs "
                         "(a reference window and a stretch after it"
                         + (")" if known_noise is not None else ", and enough differences for the noise level)"))
        return out
    vals = [v for _, v in pairs]
    lows = [float(extra[s]) for s, _ in pairs] if extra is not None else None
    if known_noise is not None:
        noise, widen = float(known_noise), 1.0
    else:
        noise, widen = curvature_noise(vals), 1 + SMALL_SAMPLE / (len(vals) - 2) ** 2
    threshold = max(min_excess, noise_z * noise * math.sqrt(1 / window + 1) * widen)
    out["noise"], out["threshold"] = noise, threshold
    levels = _window_medians(vals, window)
    low_levels = _window_medians(lows, window) if lows is not None else None
    refs: list[int | None] = []  # index of the last checkpoint of the reference window, per j
    best = None
    for j in range(len(pairs)):
        refs.append(best)
        if levels[j] is not None and (best is None or levels[j] <= levels[best]):
            best = j
    ok = [refs[j] is not None and vals[j] >= levels[refs[j]] + threshold
          and (lows is None or lows[j] < low_levels[refs[j]]) for j in range(len(pairs))]
    j = 0
    while j < len(pairs):
        if not ok[j]:
            j += 1
            continue
        end = j
        while end + 1 < len(pairs) and ok[end + 1]:
            end += 1
        if end - j + 1 >= persist:
            r = refs[j]
            stretch = vals[j:end + 1]
            out["stretches"].append({
                "from_step": pairs[j - 1][0], "step": pairs[j][0], "to_step": pairs[end][0],
                "reference_step": pairs[r][0], "before": levels[r], "after": _median(stretch),
                "rise": _median(stretch) - levels[r], "n": end - j + 1,
                "below_before": None if lows is None else low_levels[r],
                "below_after": None if lows is None else _median(lows[j:end + 1])})
        j = end + 1
    if not out["stretches"]:
        n_ok = sum(ok)
        out["reason"] = (f"no checkpoint stands {threshold:.3g} above the lowest earlier level"
                         + (f" while {below_label} is below its level there" if lows is not None else "")
                         if n_ok == 0 else
                         f"{n_ok} checkpoint(s) stand {threshold:.3g} above the lowest earlier level, but never "
                         f"{persist} in a row")
    return out
