"""Probes on Ray against the local runner, on the demo's checkpoints (issue #22):

- `python -m probes RUN --ray local --jobs 2` (a private Ray instance of 2 one-CPU task slots)
  against `python -m probes RUN --jobs 2` (2 one-thread worker processes), whole commands timed,
  process and Ray start-up included; goal <= 1.2x;
- the start-up cost alone: the same two commands on a run with nothing left to compute;
- `--ship` (the run's data and each checkpoint through Ray's object store) against the shared
  filesystem, both through the same local instance size.

Each command runs on a fresh copy of runs/demo (checkpoints and data, no results), one thread per
task everywhere, so all four compute the same numbers. Needs runs/demo (`make demo`) and Ray
(`pip install -e '.[ray]'`); either missing gives a row that says so. Run alone with
`python -m bench --only ray_probes`; `make bench` runs it with the rest.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from store.checkpoint import list_checkpoints, verify_checkpoint
from store.runlayout import META, RUN_FILES, RUN_JSON, WEIGHTS, checkpoints_dir, data_dir, run_json, step_of
from .common import Goal, NotMeasured, Report, timed_calls

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runs" / "demo"
RAY_GOAL = 1.2
SHIP_GOAL = 1.1
LOCAL = ["--jobs", "2", "--threads", "1"]
RAY = ["--ray", "local", "--jobs", "2", "--threads", "1"]
NAME = "probes of the demo's checkpoints, `--ray local` (2 task slots) vs local `--jobs 2`, start-up included"


def copy_run(src: Path, dest: Path) -> Path:
    """The files the probes read (run.json, vocab.json, data.json, data/, checkpoints/), no results
    and no training state."""
    dest.mkdir(parents=True)
    for name in (RUN_JSON, *RUN_FILES):
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)
    for folder in (data_dir, checkpoints_dir):
        shutil.copytree(folder(src), folder(dest), ignore=shutil.ignore_patterns(".*"))
    return dest


def timed(argv: list[str]) -> float:
    """Wall time of `python -m probes ARGV` (a fresh process, as a user runs it)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "probes", *argv], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _read_shared(path: str) -> int:
    """(A Ray task) what every task does with its checkpoint on a shared filesystem: read and verify it."""
    return len(verify_checkpoint(path)[1])


def _read_shipped(files: dict) -> int:
    """(A Ray task) what a --ship task does instead: take the bytes from the object store, write them
    into its private folder, then read and verify them there."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / files["name"]
        folder.mkdir()
        for name in (META, WEIGHTS):
            (folder / name).write_bytes(files[name])
        return len(verify_checkpoint(folder)[1])


def transfer_seconds(demo: Path, steps: list[int] | None) -> tuple[float, float, int]:
    """Median seconds per checkpoint to get it into a task, from the shared filesystem and through
    the object store (the driver's read and verification, ray.put, the task's copy), measured in one
    private instance of one task slot with its worker already started; and the checkpoints timed."""
    import ray

    paths = list_checkpoints(demo)
    if steps:
        paths = [p for p in paths if step_of(p) in steps]
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        shared, shipped = ray.remote(_read_shared), ray.remote(_read_shipped)
        ray.get(shared.remote(str(paths[0])))  # the worker starts once, outside the timing

        def ship(path: Path) -> int:
            _, weights = verify_checkpoint(path)
            files = {"name": path.name, META: (path / META).read_bytes(), WEIGHTS: weights}
            return ray.get(shipped.remote(ray.put(files)))

        n = len(paths)
        t_shared = statistics.median(timed_calls(lambda: [ray.get(shared.remote(str(p))) for p in paths], 3)) / n
        t_ship = statistics.median(timed_calls(lambda: [ship(p) for p in paths], 3)) / n
    finally:
        ray.shutdown()
    return t_shared, t_ship, len(paths)


def run(report: Report, demo: Path = DEMO, steps: list[int] | None = None) -> None:
    """The three rows; `steps` limits them to some checkpoints (a quick check that the row works)."""
    if not run_json(demo).exists():
        report.add(NotMeasured(NAME, f"≤ {RAY_GOAL:g}x", f"not measured: {demo} does not exist (make demo)"))
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # private instances on 127.0.0.1 (--ray local's)
    try:
        import ray  # noqa: F401
    except ImportError:
        report.add(NotMeasured(NAME, f"≤ {RAY_GOAL:g}x",
                               "not measured: Ray is not installed (pip install -e '.[ray]')"))
        return
    only = ["--steps", ",".join(str(s) for s in steps)] if steps else []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {kind: copy_run(demo, Path(tmp) / kind) for kind in ("local", "ray", "ship")}
        n = len(steps) if steps else len(list_checkpoints(demo))
        t_local = timed([str(runs["local"]), *LOCAL, *only])
        t_ray = timed([str(runs["ray"]), *RAY, *only])
        t_ship = timed([str(runs["ship"]), *RAY, "--ship", *only])
        idle_local = timed([str(runs["local"]), *LOCAL, *only])  # nothing left to compute: start-up alone
        idle_ray = timed([str(runs["ray"]), *RAY, *only])
        ckpts = list_checkpoints(demo)
        size = sum(p.stat().st_size for c in ckpts for p in c.iterdir()) / len(ckpts)
    move_shared, move_ship, n_moved = transfer_seconds(demo, steps)
    report.add(Goal(NAME, t_ray / t_local, RAY_GOAL, higher_is_better=False,
                    detail=f"Ray {t_ray:.1f} s, local {t_local:.1f} s over {n} checkpoints (1 thread per task)"))
    report.add(Goal("start-up of `--ray local` (private instance up and down), nothing to compute",
                    idle_ray - idle_local, 10.0, unit=" s", higher_is_better=False,
                    detail=f"`--ray local` {idle_ray:.1f} s vs local {idle_local:.1f} s with every result present"))
    report.add(Goal("`--ray local --ship` (checkpoints through the object store) vs the shared filesystem",
                    t_ship / t_ray, SHIP_GOAL, higher_is_better=False,
                    detail=f"ship {t_ship:.1f} s vs shared {t_ray:.1f} s, {size / 2 ** 20:.1f} MiB per checkpoint "
                           f"plus the run's data once; getting one checkpoint into a task: "
                           f"{1000 * move_ship:.0f} ms through the object store vs {1000 * move_shared:.0f} ms "
                           f"from the filesystem (mean over {n_moved} checkpoints, median of 3 rounds)"))
