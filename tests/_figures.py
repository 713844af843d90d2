"""Shared by the figure tests (test_figures.py, test_figures_compare.py, test_figures_induction.py):
the real probes' results on a fixture run (computed once per process), and small helpers."""
from __future__ import annotations

import copy

import probes
from app_fixtures import probe_result

STEPS = [0, 1, 2, 4, 8, 16]
RESULTS = {s: probe_result(s, L=3, H=4) for s in STEPS}  # the real probes' output on a fixture run


def trace_named(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def emerging_summary() -> dict:
    """probes.summarize on the fixture's real results, edited (in the probes' own schema) so that
    learning starts at step 1, repetition emerges at step 4 and the 64-copy canary is extracted
    from step 1: the summary the app reads, with known emergence steps."""
    results = copy.deepcopy(RESULTS)
    for i, s in enumerate(STEPS):
        results[s]["head_ablation"]["clean_loss"] = 5.0 if s == 0 else 3.0
        results[s]["repetition"]["greedy"]["seq_rep_4"] = 0.9 if s >= 4 else 0.05
        for c in results[s]["memorization"]["canaries"]:
            c["extracted_fraction"] = 1.0 if (c["copies"] == 64 and s >= 1) else 0.0
        for row in results[s]["head_ablation"]["zero"]:
            row[:] = [0.0] * len(row)  # no head matters: no concentration step
    return probes.summarize(results)
