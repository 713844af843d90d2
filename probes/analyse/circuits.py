"""summary.json["circuits"]: across a run's checkpoints, when each head role first appears and in
which head, when a role moves from one head to another (a handover), and when each composition
edge between two heads rises above its chance baseline (docs/circuits.md). Pure functions of the
results' series; the rules and their numbers are RULES["circuits"] and THRESHOLDS in
probes/analyse/emergence_rules.py. Heads are named "L{layer}H{head}".
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from probes.measure.composition import KINDS, head_name
from probes.analyse.emergence import difference_noise, largest_sustained_rise, level, sustained_rise
from probes.analyse.emergence_rules import THRESHOLDS, rules
from probes.measure.head_roles import ROLES
from probes.analyse.phenomena import best_head, rise_emergence
from probes.analyse.trajectory import value_at

Head = tuple[int, int]


def _name(head: Head) -> str:
    return head_name(*head)


def _parse(name: str) -> Head:
    layer, head = name[1:].split("H")
    return int(layer), int(head)


def role_appearances(steps: list[int], series: dict[str, list], heads: dict[str, list]
                     ) -> tuple[list[dict], dict[str, dict]]:
    """([{role, head, step, from_step, score}] for each role that appears, {role: its rise}): the
    induction rule (probes.analyse.phenomena.rise_emergence, minimum rise induction_min_rise) on the role's
    best head's score, head_roles.ROLE.max; the head is the best one at the checkpoint after the
    change, as the induction entry's best_head."""
    found, rises = [], {}
    for role in ROLES:
        rise = rise_emergence(steps, series, f"head_roles.{role}.max", THRESHOLDS["induction_min_rise"])
        rises[role] = {k: rise[k] for k in ("metric", "detected", "step", "from_step", "before", "after", "kind",
                                            "reason")}
        best = best_head(heads, f"head_roles.{role}", steps, rise["step"]) if rise["detected"] else None
        if best is not None:
            found.append({"role": role, "head": _name((best["layer"], best["head"])), "step": rise["step"],
                          "from_step": rise["from_step"], "score": best["score"]})
    return found, rises


def handovers(role: str, steps: Sequence[int], matrices: Sequence[list | None], start: int,
              holder: Head) -> list[dict]:
    """Every handover of `role` after it appears at step `start` held by `holder`: at checkpoint j
    another head's score exceeds the holder's by more than its margin at j and at the next
    persist - 1 checkpoints (a lead cut short by the last checkpoint does not count yet). The
    margin of a pair = max(handover_min_lead, handover_noise_z x noise x (1 + handover_small_sample
    / m^2)), noise = probes.analyse.emergence.difference_noise of the difference of their two series from
    `start` on, m = the successive differences it rests on (few of them give too small a noise
    too often: the widening keeps near-equal heads from trading the role); fewer than
    handover_min_points checkpoints from `start` on give none. Among heads that qualify at the same
    checkpoint, the one with the largest smallest lead takes over."""
    pairs = [(int(s), m) for s, m in zip(steps, matrices) if m and int(s) >= start]
    persist = THRESHOLDS["persist"]
    if len(pairs) < max(1 + persist, THRESHOLDS["handover_min_points"]):
        return []
    widen = 1 + THRESHOLDS["handover_small_sample"] / (len(pairs) - 1) ** 2
    every = [(l, h) for l, row in enumerate(pairs[0][1]) for h in range(len(row))]
    values = {c: [m[c[0]][c[1]] for _, m in pairs] for c in every}
    differences: dict[tuple[Head, Head], tuple[list[float], float]] = {}  # (challenger, holder) -> (series, margin)

    def difference(c: Head, held: Head) -> tuple[list[float], float]:
        if (c, held) not in differences:
            diffs = [a - b for a, b in zip(values[c], values[held])]
            margin = max(THRESHOLDS["handover_min_lead"],
                         THRESHOLDS["handover_noise_z"] * difference_noise(diffs) * widen)
            differences[(c, held)] = diffs, margin
        return differences[(c, held)]

    out = []
    for j in range(1, len(pairs) - persist + 1):
        leads = {}
        for c in every:
            if c == holder:
                continue
            diffs, margin = difference(c, holder)
            window = diffs[j:j + persist]
            if all(d > margin for d in window):
                leads[c] = (min(window), margin)
        if leads:
            new = max(leads, key=lambda c: (leads[c][0], -c[0], -c[1]))
            out.append({"role": role, "from_head": _name(holder), "to_head": _name(new), "step": pairs[j][0],
                        "from_step": pairs[j - 1][0], "lead": leads[new][0], "margin": leads[new][1]})
            holder = new
    return out


def _compositions(steps: list[int], results: dict[int, dict]) -> tuple[list[int], list[dict]]:
    """The checkpoints with a composition result of the last one's shape, and those results."""
    have = [(s, results[s].get("composition")) for s in steps]
    have = [(s, c) for s, c in have if isinstance(c, dict) and all(k in c for k in KINDS)]
    if not have:
        return [], []
    shape = np.shape(have[-1][1]["k"])
    have = [(s, c) for s, c in have if np.shape(c["k"]) == shape]
    return [s for s, _ in have], [c for _, c in have]


def edge_rises(steps: list[int], results: dict[int, dict]) -> list[dict]:
    """[{kind, from_head, to_head, step, from_step, score, threshold}] for every composition edge
    (kind q, k or v; from an earlier head to a later one) whose score rises above the pair's
    baseline threshold in its result and stays there (probes.analyse.emergence.sustained_rise on score
    minus threshold: a crossing from below that holds for persist checkpoints). Sorted by step,
    kind, heads."""
    have, comps = _compositions(steps, results)
    if len(have) < 2:
        return []
    out = []
    for kind in KINDS:
        scores = np.array([c[kind] for c in comps], dtype=float)  # [n, L, H, L, H]
        threshold = np.array([c["baseline"]["threshold"][kind] for c in comps], dtype=float)
        _, L, H, _, _ = scores.shape
        for l1 in range(L - 1):
            for h1 in range(H):
                for l2 in range(l1 + 1, L):
                    for h2 in range(H):
                        pair = (slice(None), l1, h1, l2, h2)
                        step = sustained_rise(have, list(scores[pair] - threshold[pair]), 0.0, THRESHOLDS["persist"])
                        if step is None:
                            continue
                        i = have.index(step)
                        out.append({"kind": kind, "from_head": _name((l1, h1)), "to_head": _name((l2, h2)),
                                    "step": step, "from_step": have[i - 1], "score": float(scores[pair][i]),
                                    "threshold": float(threshold[pair][i])})
    return sorted(out, key=lambda e: (e["step"], KINDS.index(e["kind"]), e["from_head"], e["to_head"]))


def _near(step: int | None, target: int, share: float) -> bool | None:
    return None if step is None else abs(step - target) <= share * target


def induction_k_edge(steps: list[int], results: dict[int, dict], heads: dict[str, list], induction: dict,
                     edges: list[dict]) -> dict:
    """The K-composition edge from the best previous-token head (of an earlier layer, at the
    induction change) to the induction probe's best head there, set beside the induction change:
    when it crosses its baseline (its entry of `edges`) and the largest sustained rise of its score
    (the induction rule, minimum rise edge_min_rise), each with lines_up: within edge_within_share
    of the change's step. Every key is present; reason says why an answer is missing."""
    share = THRESHOLDS["edge_within_share"]
    out: dict[str, Any] = {"from_head": None, "to_head": None, "induction_step": induction.get("step"),
                           "induction_from_step": induction.get("from_step"), "within_share": share,
                           "crossing_step": None, "crossing_from_step": None, "crossing_lines_up": None,
                           "rise": None, "rise_lines_up": None, "score_before": None, "score_after": None,
                           "reason": None}
    best = induction.get("best_head")
    if not induction.get("detected") or not best:
        out["reason"] = "no induction change was detected"
        return out
    S, layer = int(induction["step"]), best["layer"]
    prev = value_at(steps, heads.get("head_roles.previous_token") or heads.get("induction.previous_token"), S)
    if layer == 0 or not prev:
        out["reason"] = ("the induction head is in layer 0: no earlier head can feed its key" if layer == 0
                         else "no previous-token scores at the induction change")
        return out
    _, pl, ph = max((v, l, h) for l, row in enumerate(prev[:layer]) for h, v in enumerate(row))
    out["from_head"], out["to_head"] = _name((pl, ph)), _name((layer, best["head"]))
    crossing = next((e for e in edges if e["kind"] == "k" and e["from_head"] == out["from_head"]
                     and e["to_head"] == out["to_head"]), None)
    if crossing:
        out.update(crossing_step=crossing["step"], crossing_from_step=crossing["from_step"],
                   crossing_lines_up=_near(crossing["step"], S, share))
    have, comps = _compositions(steps, results)
    values = [c["k"][pl][ph][layer][best["head"]] for c in comps]
    out["score_before"] = level(have, values, None, induction.get("from_step"))
    out["score_after"] = level(have, values, S, None)
    rise = largest_sustained_rise(
        have, values, THRESHOLDS["edge_min_rise"], sustain_share=THRESHOLDS["rise_sustain_share"],
        noise_z=THRESHOLDS["rise_noise_z"], abrupt_max_intervals=THRESHOLDS["abrupt_max_intervals"],
        band=THRESHOLDS["transition_band"], abrupt_max_share=THRESHOLDS["abrupt_max_share"]) if values else None
    keys = ("step", "from_step", "detected", "before", "after", "rise", "reason")
    out["rise"] = ({k: rise[k] for k in keys} if rise else
                   {**dict.fromkeys(keys), "detected": False, "reason": "the level never rises"})
    out["rise_lines_up"] = _near(rise["step"], S, share) if rise and rise["detected"] else False
    if not crossing and not out["rise"]["detected"]:
        out["reason"] = "the edge's score neither crosses its baseline nor rises clear of noise"
    return out


def circuits(steps: list[int], results: dict[int, dict], series: dict[str, list], heads: dict[str, list],
             induction: dict) -> dict:
    """summary["circuits"]: `roles`, `handovers` and `edges` (see the functions above), each role's
    rise with the reason when it does not appear, the induction K-edge beside the induction change
    (`induction`: the summary's emergence["induction"]), the last checkpoint's composition baseline,
    and the rule in words."""
    found, rises = role_appearances(steps, series, heads)
    moved = []
    for entry in found:
        moved += handovers(entry["role"], steps, heads[f"head_roles.{entry['role']}"], entry["step"],
                           _parse(entry["head"]))
    edges = edge_rises(steps, results)
    _, comps = _compositions(steps, results)
    base = comps[-1]["baseline"] if comps else None
    return {"roles": found, "handovers": sorted(moved, key=lambda e: (e["step"], e["role"])), "edges": edges,
            "role_rises": rises, "induction_k_edge": induction_k_edge(steps, results, heads, induction, edges),
            "baseline": None if base is None else {k: base[k] for k in ("chance_rms", "quantile", "draws",
                                                                         "definition")},
            "rule": rules()["circuits"]}
