"""Two across-checkpoint views of the induction probe that summary.json carries beside the
emergence steps: the checkpoints' path through per-token-loss space (`loss_trajectory`, Olsson et
al. 2022) and the heads of the induction circuit (`induction_circuit`), which probes.analyse.summary
assembles into summary.json. The two small series helpers (`is_number`, `value_at`) live here, below
every summary module that uses them, so that none of those imports another just for them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


from probes.analyse.emergence_rules import TRAJECTORY_RULE, TURN_MIN_SHARE, TURN_WINDOW  # noqa: F401 (the rule, stated there)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def value_at(steps: list[int], values: list | None, step: int | None) -> float | None:
    if values is None or step is None or step not in steps:
        return None
    return values[steps.index(step)]


def oriented(component: np.ndarray) -> np.ndarray:
    """A principal component's coordinates with the sign of TRAJECTORY_RULE: the last coordinate
    >= the first; on a tie (within 1e-9 of the largest coordinate, so rounding cannot decide), the
    first non-zero coordinate positive. SVD's own sign is arbitrary."""
    tol = 1e-9 * float(np.abs(component).max(initial=0.0))
    change = float(component[-1] - component[0])
    if abs(change) > tol:
        return -component if change < 0 else component
    nonzero = np.flatnonzero(np.abs(component) > tol)
    return -component if len(nonzero) and component[nonzero[0]] < 0 else component


def principal_trajectory(matrix: Any) -> dict:
    """First two principal components of [checkpoints, tokens]: {"pc1", "pc2", "explained"}.
    Columns are centred (each token's mean loss over checkpoints removed), so the components
    describe how the loss vector moves, not its level. Rows beyond the rank give 0."""
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"the trajectory needs a [checkpoints, tokens] matrix, got shape {x.shape}.")
    centred = x - x.mean(axis=0, keepdims=True)
    u, sv, _ = np.linalg.svd(centred, full_matrices=False)
    total = float((sv ** 2).sum())
    pcs, explained = [], []
    for i in range(2):
        if i < len(sv) and sv[i] > 1e-12 * max(1.0, float(sv[0])):
            pcs.append(oriented(u[:, i] * sv[i]))
            explained.append(float(sv[i] ** 2 / total))
        else:
            pcs.append(np.zeros(x.shape[0]))
            explained.append(0.0)
    return {"pc1": [float(v) for v in pcs[0]], "pc2": [float(v) for v in pcs[1]], "explained": explained}


def trajectory_turn(steps: list[int], pc1: list[float], pc2: list[float], window: int = TURN_WINDOW,
                    min_share: float = TURN_MIN_SHARE) -> dict:
    """Where the checkpoints' path in the (pc1, pc2) plane turns most (TRAJECTORY_RULE): Olsson et
    al. see the per-token-loss path turn at the induction phase change. Every key is present;
    turn_step is None (with a reason) when no checkpoint qualifies."""
    out: dict[str, Any] = {"turn_step": None, "angle_deg": None, "window": window, "min_share": min_share,
                           "angles": {}, "reason": None}
    p = np.column_stack([np.asarray(pc1, dtype=float), np.asarray(pc2, dtype=float)]) if len(pc1) else np.zeros((0, 2))
    if len(p) < 2 * window + 1:
        out["reason"] = f"{len(p)} checkpoints; a turn needs {2 * window + 1}"
        return out
    extent = float(np.max(np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)))
    for k in range(window, len(p) - window):
        a, b = p[k] - p[k - window], p[k + window] - p[k]
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if extent > 0 and na >= min_share * extent and nb >= min_share * extent:
            cos = float(np.clip(a @ b / (na * nb), -1.0, 1.0))
            out["angles"][str(steps[k])] = math.degrees(math.acos(cos))
    if not out["angles"]:
        out["reason"] = "no checkpoint moves enough on both sides"
        return out
    step, angle = max(out["angles"].items(), key=lambda kv: (kv[1], -int(kv[0])))
    out["turn_step"], out["angle_deg"] = int(step), angle
    return out


def loss_trajectory(results: dict[int, dict]) -> dict:
    """summary["trajectory"]: the checkpoints' path through per-token-loss space (TRAJECTORY_RULE).
    Every key is present; pc1 and pc2 are empty with a reason when fewer than two checkpoints have
    the token losses."""
    rows = []
    for step in sorted(results):
        entry = (results[step].get("induction") or {}).get("token_losses")
        values = entry.get("values") if isinstance(entry, dict) else None
        if isinstance(values, list) and values and all(is_number(v) for v in values):
            rows.append((int(step), values))
    n = len(rows[-1][1]) if rows else 0
    rows = [(s, v) for s, v in rows if len(v) == n]
    out: dict[str, Any] = {"steps": [s for s, _ in rows], "pc1": [], "pc2": [], "explained": [],
                           "n_tokens": n, "reason": None, "rule": TRAJECTORY_RULE, "turn": None}
    if len(rows) < 2:
        out["reason"] = f"{len(rows)} checkpoint(s) with per-token losses; the trajectory needs two"
        return out
    out.update(principal_trajectory([v for _, v in rows]))
    out["turn"] = trajectory_turn(out["steps"], out["pc1"], out["pc2"])
    return out


def induction_circuit(steps: list[int], heads: dict[str, list], found: dict) -> dict:
    """The heads of the induction circuit at the last checkpoint with induction scores: the best
    induction head and the best previous-token head in an earlier layer (None when the induction
    head is in layer 0), with the induction phase change's step (None when none was detected)."""
    out: dict[str, Any] = {"induction_head": None, "previous_token_head": None,
                           "step": found.get("step") if found.get("detected") else None, "at_step": None,
                           "induction_score": None, "control": None, "previous_token_score": None}
    have = [s for s, m in zip(steps, heads.get("induction.induction") or []) if m]
    if not have:
        return out
    at = have[-1]
    ind = value_at(steps, heads["induction.induction"], at)
    score, layer, head = max((v, l, h) for l, row in enumerate(ind) for h, v in enumerate(row))
    out.update({"induction_head": [layer, head], "at_step": at, "induction_score": score})
    control = value_at(steps, heads.get("induction.induction_control"), at)
    if control:
        out["control"] = control[layer][head]
    prev = value_at(steps, heads.get("induction.previous_token"), at)
    if prev and layer > 0:
        p, pl, ph = max((v, l, h) for l, row in enumerate(prev[:layer]) for h, v in enumerate(row))
        out["previous_token_head"], out["previous_token_score"] = [pl, ph], p
    return out
