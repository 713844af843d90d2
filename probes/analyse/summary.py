"""summary.json: across checkpoints, every scalar of the result files as a series over steps, every
[L][H] matrix as a series too, and the step at which each phenomenon emerges, with the rule and its
thresholds written into summary.json itself so a reader never has to guess how it was found.

This module assembles and writes it; the result files are read as series by probes/analyse/result_series.py,
the phenomena found by probes/analyse/phenomena.py, the failure modes by probes/analyse/failure_modes.py and
probes/analyse/overfitting.py, the heads' roles and connections by probes/analyse/circuits.py, with the thresholds and
rules of probes/analyse/emergence_rules.py.
"""
from __future__ import annotations

import os

from store.checkpoint import run_integrity
from store.runio import read_jsonl, write_json_atomic
from store.runlayout import metrics_jsonl, summary_path

from probes.analyse.circuits import circuits
from probes.analyse.emergence_rules import THRESHOLDS, rules
from probes.analyse.failure_modes import concentration_emergence, mismatch_emergence
from probes.analyse.overfitting import overfitting_emergence
from probes.analyse.phenomena import entropy_collapse_emergence, induction_emergence, memorization_emergence, repetition_emergence
from probes.analyse.result_series import flatten
from probes.measure.results import read_results
from probes.analyse.stages import stages
from probes.analyse.trajectory import induction_circuit, loss_trajectory

SUMMARY_VERSION = 1


def emergence(steps: list[int], series: dict[str, list], heads: dict[str, list],
              metrics: list[dict] | None = None, row_losses: list | None = None) -> dict:
    """Each phenomenon's detection, with its rule in words beside it (the app shows it). `metrics` are
    the rows of metrics.jsonl (for the loss-based rules where the probes measured no loss); `row_losses`
    each step's memorization.held_out.row_losses (the overfitting rule's paired noise)."""
    found = {
        "repetition": repetition_emergence(steps, series),
        "induction": induction_emergence(steps, series, heads),
        "memorization": memorization_emergence(steps, series),
        "head_concentration": concentration_emergence(steps, series, heads),
        "loss_generation_mismatch": mismatch_emergence(steps, series, metrics),
        "overfitting": overfitting_emergence(steps, series, metrics, row_losses),
        "entropy_collapse": entropy_collapse_emergence(steps, series),
    }
    text = rules()
    for name, entry in found.items():
        entry["rule"] = text[name]
    return found


def summarize(results: dict[int, dict], metrics: list[dict] | None = None) -> dict:
    """summary.json content from {step: result} and optionally the rows of the run's metrics.jsonl
    (see RULES in probes/analyse/emergence_rules.py for the emergence detection)."""
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
    rows = [((results[s].get("memorization") or {}).get("held_out") or {}).get("row_losses") for s in steps]
    found = emergence(steps, series, heads, metrics, rows)
    return {
        "version": SUMMARY_VERSION,
        "steps": steps,
        "tokens": [results[s].get("tokens") for s in steps],
        "series": series,
        "heads": heads,
        "emergence": found,
        "induction_circuit": induction_circuit(steps, heads, found["induction"]),
        "circuits": circuits(steps, results, series, heads, found["induction"]),  # roles, handovers, edges
        "trajectory": loss_trajectory(results),
        "stages": stages(steps, results),  # the LLC series and its stage boundaries (probes/analyse/stages.py)
        "thresholds": dict(THRESHOLDS),
        "rules": rules(),
    }


def write_summary(run_dir: str | os.PathLike) -> dict:
    """Summarize every result file of a run into probes/summary.json (atomically) and return it."""
    summary = summarize(read_results(run_dir), read_jsonl(metrics_jsonl(run_dir)))
    summary["integrity"] = run_integrity(run_dir)  # checkpoints that share weights (store/integrity.py)
    write_json_atomic(summary_path(run_dir), summary)
    return summary
