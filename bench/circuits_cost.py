"""What the circuit probes add to a checkpoint: `head_roles` + `composition` (probes/measure/head_roles.py,
probes/measure/composition.py) on one nano checkpoint at one thread, as the probes runner's workers
compute them, against their goal of 2 s, with the whole default set beside them.

Run alone with `python -m bench --only circuits`; `make bench` runs it with the rest.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from model.device import torch_threads
from probes.measure.results import read_result
from probes.run.runner import run_probes
from store.runlayout import result_path
from .common import Goal, Report
from .llc import short_nano_run

SECONDS_GOAL = 2.0  # head_roles + composition, per nano checkpoint, one core


def run(report: Report, repeats: int = 3) -> None:
    """The default probes of a 20-step nano checkpoint, `repeats` times in this process (the first
    pays for drawing the composition null once); the row is the median of the later repeats."""
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        run_dir = short_nano_run(Path(tmp))
        rows = []
        for _ in range(repeats):
            run_probes(run_dir, steps=[20], force=True, threads=1, jobs=1, log=lambda _: None)
            rows.append(read_result(result_path(run_dir, 20))["seconds"])
    later = sorted(rows[1:] or rows, key=lambda s: s["head_roles"] + s["composition"])
    mid = later[len(later) // 2]
    circuits = mid["head_roles"] + mid["composition"]
    total = sum(v for k, v in mid.items() if "." not in k)
    report.add(Goal("head roles + composition, one nano checkpoint (2 layers, one thread)", circuits, SECONDS_GOAL,
                    unit=" s", higher_is_better=False,
                    detail=f"head_roles {mid['head_roles']:.3f} s, composition {mid['composition']:.3f} s (first "
                           f"repeat, drawing the null: {rows[0]['head_roles'] + rows[0]['composition']:.3f} s); the "
                           f"whole default set {total:.2f} s"))
