"""`python -m probes RUN [--watch] [--only PROBE,...] [--steps S,...] [--force] [--jobs N]
[--ray ADDRESS [--ship]]`: the command line of the runner (probes/run/runner.py; with --ray,
probes/run/ray_runner.py), with a progress bar."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from store.runio import RunFileError
from model.cliargs import ArgumentParser, run_command
from model.device import free_cores, guest_cores, pick_device
from store.runlayout import probes_dir
from store.runrecord import read_run

from probes.measure.compute import OPTIONAL_PROBES, PROBES as PROBE_NAMES, check_only
from probes.run.ray_runner import RayCluster, check_device
from probes.run.runner import Progress, check_counts, check_steps, run_probes, watch, workers_for


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes comma-separated step numbers, got {text!r}") from None
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"--steps takes comma-separated non-negative step numbers, got {text!r}")
    return steps


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m probes", description="Compute probes for every checkpoint of a run.")
    p.add_argument("run", help="run folder, e.g. runs/demo")
    p.add_argument("--watch", action="store_true", help="keep going while training writes checkpoints")
    p.add_argument("--only", help=f"comma-separated probes ({','.join(PROBE_NAMES + OPTIONAL_PROBES)}; "
                                  f"{','.join(OPTIONAL_PROBES)} only when named)")
    p.add_argument("--steps", type=parse_steps, help="comma-separated checkpoint steps")
    p.add_argument("--force", action="store_true", help="recompute results that exist")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks with --watch")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 per worker process or --ray task; with --watch on CPU, 1 at "
                        "lower priority while the run trains, then the cores not busy once it has ended; in one "
                        "process, the cores not busy now, measured over half a second)")
    p.add_argument("--jobs", type=int, help="worker processes (default: one per core not busy now, up to 2, on CPU; "
                                            "1 with --watch or on CUDA); "
                                            "with --ray local, the private instance's task slots")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="compute as Ray tasks: local (a private instance on this machine), auto (the cluster "
                        "`ray start` set up) or ray://HOST:PORT. Each task uses --threads CPUs and torch threads "
                        "(default 1), and results equal the local runner's at the same thread count "
                        "(e.g. --jobs 2 --threads 1), not across thread counts")
    p.add_argument("--ship", action="store_true",
                   help="with --ray: send the run's data and each checkpoint through Ray's object store, for "
                        "nodes that do not share the run's filesystem")
    return p


# The priority of a --watch follower on CPU: a training step waits for its slowest thread, so a
# probe thread taking a core from it costs training more than the probe gains.
WATCH_NICE = 19


def yield_cpu(nice: int) -> None:
    """Make this process a guest of the CPU: nice `nice` and the SCHED_IDLE policy (it runs when a
    core would otherwise idle: while training samples on one thread, evaluates, writes a
    checkpoint). Linux with autogroup scheduling shares the CPU between sessions first, whatever
    their nice values, and the app's supervisor starts each child in a session of its own: there a
    follower at nice 10 still took a whole core from training. So a process that leads its session
    lowers the session's group too (/proc/self/autogroup; a command typed in a shell does not lead
    its session, and the shell's group is left alone). SCHED_IDLE on top of that leaves training
    faster still than nice 10 with the group lowered (the figures: docs/performance.md)."""
    os.nice(nice)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed here: the nice value is what there is
        pass
    if os.getsid(0) != os.getpid():
        return
    for _ in range(5):
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
            return
        except BlockingIOError:  # the kernel takes one such write per 100 ms from anyone unprivileged
            time.sleep(0.11)
        except OSError:  # no autogroup here (or not allowed): the process's own nice is what there is
            return


def default_jobs(watching: bool, device: str) -> int:
    """The free cores' worker processes (runner.workers_for); beside a training run (--watch) one,
    leaving training its cores; on CUDA one process keeps the GPU busy."""
    if watching or device != "cpu":
        return 1
    return workers_for(free_cores())


def default_threads(jobs: int, watching: bool) -> int:
    """One thread per worker process; a single process on an idle machine gets the free cores."""
    return 1 if jobs > 1 or watching else free_cores()


def tqdm_progress() -> tuple[Progress, Callable[[], None]]:
    state: dict = {}

    def progress(done: int, total: int, step: int | None) -> None:
        bar = state.get("bar")
        if bar is None or bar.total != total or done == 0:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, unit="ckpt", desc="probes", dynamic_ncols=True)
        bar.n = done
        if step is not None:
            bar.set_postfix_str(f"step {step}")
        bar.refresh()

    def close() -> None:
        if state.get("bar") is not None:
            state["bar"].close()

    return progress, close


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument, before anything is printed, written or started (a refusal after a watcher's
    first words, a worker pool or a Ray instance would be half a command): the run, the probe
    names, the steps (complete checkpoints of the run), --poll, --threads and --jobs, and --device,
    --ray and --ship as the chosen runner reads them. ValueError or RunFileError, one sentence."""
    read_run(args.run)
    check_only(args.only)
    check_steps(Path(args.run), args.steps)
    if not 0 < args.poll <= 86400:  # NaN, inf or 1e300 would crash time.sleep after a whole pass
        raise ValueError(f"--poll must be a positive number of seconds, at most 86400, got {args.poll}.")
    check_counts(args.threads, args.jobs)
    if args.ray is None:
        if args.ship:
            raise ValueError("--ship sends checkpoints through Ray's object store; it needs --ray ADDRESS.")
        pick_device(args.device)
    else:
        RayCluster(args.ray, jobs=args.jobs, ship=args.ship)  # the address and --jobs; joins nothing yet
        check_device(args.device)


def run_on_ray(args: argparse.Namespace, progress: Progress) -> list[int]:
    """The run through probes.run.ray_runner: tasks of --threads CPUs (default 1); with --ray local a
    private instance of --jobs (default as the local runner's) such tasks, shut down on exit."""
    threads = args.threads if args.threads is not None else 1
    jobs = args.jobs
    if jobs is None and args.ray.strip() == "local":
        jobs = default_jobs(args.watch, "cpu")
    with RayCluster(args.ray, jobs=jobs, threads=threads, ship=args.ship) as cluster:
        kwargs = dict(only=args.only, steps=args.steps, force=args.force, progress=progress, device=args.device,
                      threads=threads, cluster=cluster)
        return watch(args.run, poll=args.poll, **kwargs) if args.watch else run_probes(args.run, **kwargs)


def compute(args: argparse.Namespace, progress: Progress, own_process: bool = False) -> list[int]:
    """The steps computed: on Ray with --ray, else here (in this process or worker processes).
    Every argument is checked first (check_arguments)."""
    check_arguments(args)
    if args.ray is not None:
        return run_on_ray(args, progress)
    device = pick_device(args.device)
    jobs = args.jobs if args.jobs is not None else default_jobs(args.watch, device.type)
    threads = args.threads if args.threads is not None else default_threads(jobs, args.watch)
    kwargs = dict(only=args.only, steps=args.steps, force=args.force, progress=progress, device=device,
                  threads=threads, jobs=jobs)
    if not args.watch:
        return run_probes(args.run, **kwargs)
    guest = device.type == "cpu" and args.threads is None and jobs == 1
    # beside training: one first result at once, then its leftovers, then the cores it had (runner.watch)
    settle = (lambda: yield_cpu(WATCH_NICE)) if guest and own_process else None
    return watch(args.run, poll=args.poll, widen=guest_cores if guest else None, settle=settle, **kwargs)


def user_error(e: Exception) -> str:
    return str(e) if isinstance(e, ValueError) else f"{e.path}: {e.problem}."


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (2 with one sentence on stderr for bad input, 130 when
    the user stopped it). Run as the program (`python -m probes`, argv None) a --watch follower
    lowers its own priority; called in-process with an argv it leaves the caller's alone."""
    finished: list[str] = []

    def body() -> int:
        args = build_parser().parse_args(argv)
        progress, close = tqdm_progress()
        try:
            done = compute(args, progress, own_process=argv is None)
        finally:
            close()  # before any message
        finished.append(f"probes: computed {len(done)} checkpoint(s); results in {probes_dir(args.run)}.")
        return 0

    status = run_command(body, (ValueError, RunFileError), prefix="probes: ", describe=user_error,
                         stops=(KeyboardInterrupt,),
                         stopped=lambda e: "probes: interrupted; results written so far are complete.")
    for line in finished:
        print(line)
    return status
