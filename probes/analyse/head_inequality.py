"""Head inequality of one checkpoint's ablation effects: Gini and top share with standard errors
(parametric bootstrap over each head's measurement error) and the equal-heads bound the summary
compares them with (probes.analyse.failure_modes, RULES["head_concentration"] in probes.analyse.emergence_rules).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from probes.measure.metrics import gini, top_share

EQUAL_HEADS_QUANTILE = 0.999  # the equal-heads bound: this quantile of the Gini under equal heads
EQUAL_HEADS_DRAWS = 10000     # simulated measurements for the bound and the standard errors
EQUAL_HEADS_SEED = 0


def _gini_rows(x: np.ndarray) -> np.ndarray:
    """`gini` of every row of [D, n] at once."""
    x = np.sort(np.clip(x, 0.0, None), axis=1)
    n = x.shape[1]
    total = x.sum(1)
    ranks = np.arange(1, n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = 2.0 * (x * ranks).sum(1) / (n * total) - (n + 1.0) / n
    return np.where(total > 0, g, 0.0)


def _top_share_rows(x: np.ndarray, fraction: float) -> np.ndarray:
    """`top_share` of every row of [D, n] at once."""
    x = np.clip(x, 0.0, None)
    n = x.shape[1]
    k = max(1, math.ceil(fraction * n - 1e-9))
    total = x.sum(1)
    top = -np.sort(-x, axis=1)[:, :k].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top / total, k / n)


def head_inequality(deltas: Sequence[float] | np.ndarray, ses: Sequence[float] | np.ndarray | None,
                    fraction: float = 0.1, draws: int = EQUAL_HEADS_DRAWS, seed: int = EQUAL_HEADS_SEED,
                    quantile: float = EQUAL_HEADS_QUANTILE) -> dict:
    """How unequal the heads' ablation effects are, how precisely that is known, and what equal heads
    would show, from every head's measured loss increase and its standard error.

    gini and top_share: `gini` and `top_share` of the measured deltas (negatives clipped to 0).
    gini_se and top_share_se: parametric bootstrap over the measurement errors: `draws` times, every
    head's delta plus a Gaussian error of its own standard error, the two recomputed; the standard
    deviation over the draws (the heads are the model's, fixed; what is uncertain is each one's
    measured effect).
    equal_heads_gini (and equal_heads_top_share): the `quantile` of the same under the hypothesis
    that every head has the same true effect, the mean of the measured deltas, each measured with its
    own standard error: simulated `draws` times with a fixed seed. Noise alone makes equal heads look
    unequal, by more the smaller the effects are against their errors; `exceeds` says the measured
    Gini lies above this bound. Without standard errors, only the two levels are given (None
    elsewhere)."""
    x = np.asarray(deltas, dtype=np.float64).ravel()
    out = {"gini": gini(x), "top_share": top_share(x, fraction), "gini_se": None, "top_share_se": None,
           "equal_heads_gini": None, "equal_heads_top_share": None, "exceeds": None, "n_heads": int(len(x))}
    if ses is None or len(x) == 0:
        return out
    se = np.asarray(ses, dtype=np.float64).ravel()
    if se.shape != x.shape or not np.all(np.isfinite(se)) or not np.all(np.isfinite(x)):
        return out
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((draws, len(x))) * se
    measured = x + noise
    out["gini_se"] = float(np.std(_gini_rows(measured), ddof=1))
    out["top_share_se"] = float(np.std(_top_share_rows(measured, fraction), ddof=1))
    equal = x.mean() + noise
    out["equal_heads_gini"] = float(np.quantile(_gini_rows(equal), quantile))
    out["equal_heads_top_share"] = float(np.quantile(_top_share_rows(equal, fraction), quantile))
    out["exceeds"] = bool(out["gini"] > out["equal_heads_gini"])
    return out


# -- repetition -------------------------------------------------------------------------------
