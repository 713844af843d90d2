"""The probes runner: compute every probe for every checkpoint of a run that has no results yet,
in this process or in worker processes, once or following a run in training (`watch`). Its command
line is probes/run/cli.py; its result files, probes/measure/results.py.

Incremental (a checkpoint whose result file already holds the requested probes is skipped),
atomic (results are written with store.runio.write_json_atomic, so a killed runner leaves
either no file or a whole one), and safe beside a training run (`list_checkpoints` lists only
complete checkpoints; `--watch` keeps going until run.json says complete or failed). A corrupt
checkpoint is reported on stderr and skipped; the others are still computed.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Protocol

from store.checkpoint import list_checkpoints, load_checkpoint, read_checkpoint_meta
from store.runio import RunFileError
from model.config import GPTConfig
from model.device import MAX_THREADS, pick_device, set_torch_threads, torch_threads
from model.memory import FORWARD_LOGIT_COPIES, MARGIN, check_fits, device_available_bytes, forward_bytes, model_bytes
from store.runlayout import result_path, step_of, summary_path
from store.runrecord import read_run, run_status
from store.vocab import load_tokenizer

from probes.measure.compute import check_only, compute_probes
from probes.measure.forward import LOSS_CHUNK_BYTES, forward_rows, logit_rows
from probes.measure.inputs import ProbeSizes, probe_inputs
from probes.measure.results import is_done, read_result, read_results, remove_stale_temp_files, write_result
from probes.analyse.summary import write_summary

class Cluster(Protocol):
    """Where run_probes sends checkpoints instead of this machine's processes: what it asks of
    probes.run.ray_runner.RayCluster (defined here, so the runner does not import the Ray module)."""

    def device_kind(self, spec: str) -> str: ...

    def probe(self, run_dir: Path, todo: list[Path], want: tuple[str, ...], device: str,
              sizes: ProbeSizes | None, report: Callable[[int, str | None], None], threads: int,
              start: Callable[[], Any] = ...) -> None: ...

MAX_JOBS = 256      # one process each: a typo must not start thousands
MAX_WORKERS = 2     # checkpoints are independent, and two one-thread workers use a 2-core CPU fully


def workers_for(free: int) -> int:
    """One one-thread worker process per idle core, up to MAX_WORKERS: two busy threads per process
    thrash a small machine, and one-thread results are the same bits whichever process computed
    them. On 2 cores two one-thread workers probe the demo's checkpoints faster than one process on
    two threads (the figures: docs/performance.md)."""
    return max(1, min(MAX_WORKERS, free))

Progress = Callable[[int, int, "int | None"], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_steps(run_dir: Path, steps: Iterable[int] | None) -> list[Path]:
    """The run's complete checkpoints of `steps` (all of them when None); ValueError (one sentence)
    naming a step the run has no complete checkpoint at."""
    ckpts = list_checkpoints(run_dir)
    if steps is None:
        return ckpts
    steps = sorted({int(s) for s in steps})
    have = {step_of(p) for p in ckpts}
    missing = [s for s in steps if s not in have]
    if missing:
        raise ValueError(f"{run_dir} has no complete checkpoint at step {missing[0]}; it has steps "
                         f"{', '.join(str(s) for s in sorted(have)) or 'none'}.")
    return [p for p in ckpts if step_of(p) in steps]


def check_counts(threads: int | None, jobs: int | None) -> None:
    """ValueError (one sentence) unless `threads` and `jobs` (None: not given) are positive
    integers within MAX_THREADS (torch crashes, a segfault, on absurd thread counts) and MAX_JOBS
    (one process each: a typo must not start thousands)."""
    for name, value, most in (("threads", threads, MAX_THREADS), ("jobs", jobs, MAX_JOBS)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most):
            raise ValueError(f"{name} must be a positive integer, at most {most}, got {value!r}.")


def pending_checkpoints(run_dir: Path, want: tuple[str, ...], steps: Iterable[int] | None,
                        force: bool) -> list[Path]:
    """Complete checkpoints (of `steps`, when given) whose results lack a requested probe."""
    return [p for p in check_steps(run_dir, steps)
            if force or not is_done(read_result(result_path(run_dir, step_of(p))), want)]


def checkpoint_result(path: Path, tokenizer, inputs, want: tuple[str, ...], device: str) -> tuple[int, dict]:
    """(step, result) of one checkpoint's probes, written nowhere: the Ray runner's tasks return
    it to the driver, which writes it. Raises CheckpointError for a bad checkpoint."""
    step = step_of(path)
    model, meta = load_checkpoint(path, device=device)
    result = compute_probes(model, tokenizer, inputs, step, want)
    if isinstance(meta.get("tokens"), int):
        result["tokens"] = meta["tokens"]
    return step, result


def probe_checkpoint(run_dir: Path, path: Path, tokenizer, inputs, want: tuple[str, ...], device: str) -> int:
    """Compute one checkpoint's probes and write its result file atomically (merged into an
    existing result when only some probes were asked for). Raises CheckpointError for a bad
    checkpoint. Returns the step."""
    step, result = checkpoint_result(path, tokenizer, inputs, want, device)
    write_result(run_dir, step, result)
    return step


# -- worker processes (jobs > 1) ---------------------------------------------------------------
_WORKER: dict = {}


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """Stop this worker as soon as the runner that started it is gone. A runner killed with SIGKILL
    cannot shut its pool down, and an idle worker would otherwise wait on the task queue forever
    (it holds the queue's other end itself), keeping the runner's stdout and stderr open."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(run_dir: str, sizes: ProbeSizes | None, device: str, parent: int | None = None) -> None:
    """Each worker runs one torch thread (small models gain nothing from more, and two busy
    threads per process thrash a small machine) and loads the run's inputs once."""
    if parent is not None:
        _exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    set_torch_threads(1)
    tokenizer = load_tokenizer(run_dir)
    _WORKER.update(run_dir=Path(run_dir), tokenizer=tokenizer, inputs=probe_inputs(run_dir, sizes, tokenizer),
                   device=device)


def _init_forked_worker(run_dir: Path, tokenizer, inputs, device: str, parent: int) -> None:
    """A worker forked from a runner that has run on one torch thread all along (a watcher's
    guest): the probes, torch, the GPT-2 BPE and the run's inputs are already loaded, so it starts
    at once instead of spending ~6 s importing and loading as a spawned one does."""
    _exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_torch_threads(1)
    _WORKER.update(run_dir=run_dir, tokenizer=tokenizer, inputs=inputs, device=device)


def _probe_one(run_dir: Path, path: Path, tokenizer, inputs, want: tuple[str, ...], device: str,
               ) -> tuple[int, str | None]:
    """(step, None) when done, (step, message) for a bad checkpoint."""
    try:
        return probe_checkpoint(run_dir, path, tokenizer, inputs, want, device), None
    except RunFileError as e:
        return step_of(path), f"{e.path}: {e.problem}"


def _probe_in_worker(path: str, want: tuple[str, ...]) -> tuple[int, str | None]:
    w = _WORKER
    return _probe_one(w["run_dir"], Path(path), w["tokenizer"], w["inputs"], want, w["device"])


def _probe_serially(run_dir: Path, todo: list[Path], want, device, sizes, report) -> None:
    tokenizer = load_tokenizer(run_dir)
    inputs = probe_inputs(run_dir, sizes, tokenizer)
    for path in todo:
        report(*_probe_one(run_dir, path, tokenizer, inputs, want, device))


def _probe_in_pool(run_dir: Path, todo: list[Path], want, device, sizes, report, jobs: int,
                   fork: bool = False) -> None:
    """`jobs` one-thread worker processes, spawned, or with `fork` forked from this process with
    its tokenizer and the run's inputs (only for a process that has never run more than one torch
    thread: an OpenMP pool does not survive a fork). (This process taking checkpoints too while
    one worker fewer starts was tried, and was slower: docs/performance.md.)"""
    if fork:
        tokenizer = load_tokenizer(run_dir)
        inputs = probe_inputs(run_dir, sizes, tokenizer)  # bad run data fails here, not in a worker
        ctx = multiprocessing.get_context("fork")
        init, initargs = _init_forked_worker, (run_dir, tokenizer, inputs, device, os.getpid())
    else:
        probe_inputs(run_dir, sizes)  # bad run data fails here, with its message, not inside a worker
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has started torch threads
        init, initargs = _init_worker, (str(run_dir), sizes, device, os.getpid())
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=init, initargs=initargs) as pool:
        # latest first: a trained model's head ablation needs more sequences for its standard-error
        # target, so the later checkpoints take longest and the short early ones fill the end
        # (longest-first scheduling: 47.0 s against 48.2 for the demo's 13 after training on 2 workers,
        # scheduled on their measured times)
        futures = [pool.submit(_probe_in_worker, str(p), want) for p in sorted(todo, key=step_of, reverse=True)]
        try:
            for fut in as_completed(futures):
                report(*fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def run_probes(run_dir: str | os.PathLike, only: Iterable[str] | str | None = None,
               steps: Iterable[int] | None = None, force: bool = False, progress: Progress | None = None,
               *, device: str = "cpu", sizes: ProbeSizes | None = None, log: Callable[[str], None] = stderr_log,
               skip: set[int] | None = None, threads: int | None = None, jobs: int = 1,
               cluster: Cluster | None = None, most: int | None = None, fork: bool = False) -> list[int]:
    """Compute the requested probes for every checkpoint that lacks them; return the steps done
    (sorted).

    `progress(done, total, step)` is called with done=0 (step None) before the first checkpoint
    and after each one. A corrupt checkpoint is reported through `log` and skipped (its step is
    added to `skip`, when given, so a watcher does not retry it). summary.json is rewritten
    whenever something was computed (or is missing). `threads` sets torch's CPU threads for the
    duration (one thread is much faster than two beside a training run on a 2-core machine);
    `jobs` > 1 spreads checkpoints over that many worker processes of one thread each. `cluster`
    (a connected probes.run.ray_runner.RayCluster) sends them to Ray instead, as tasks of `threads`
    (default 1) CPUs and torch threads each. `most` takes only the oldest that many checkpoints
    still to do (a watcher's pass beside training). `fork` starts the workers by forking this
    process (Linux only; for a process that has run on one torch thread all along: a watcher's
    guest, whose workers then skip the ~6 s of imports and loading a spawned worker needs)."""
    check_counts(threads, jobs)
    with torch_threads(threads):
        return _run_probes(Path(run_dir), only, steps, force, progress, device, sizes, log, skip, jobs,
                           cluster, threads or 1, most, fork and sys.platform.startswith("linux"))


def probe_bytes(cfg: GPTConfig, sizes: ProbeSizes | None) -> int:
    """Estimated memory of one process probing a checkpoint of `cfg`: the weights, the widest
    forward's activations with explicit attention patterns (the attention and induction probes
    hook them), and the largest logits any probe holds at once.

    No probe holds [B, P, V] logits for a whole batch: teacher-forced losses are read out a chunk
    of positions at a time (probes.measure.forward.LOSS_CHUNK_BYTES), the widened head-ablation sweep and
    the memorization forwards are split into `forward_rows` rows, and only greedy generation and
    canary exposure hold whole logits, within the logit budget of
    probes.measure.forward.logit_rows (a prompt's forward). The sweep also keeps every layer's input."""
    s = sizes or ProbeSizes()
    fake = SimpleNamespace(cfg=cfg)  # forward_rows and logit_rows read only model.cfg
    P = cfg.n_ctx
    chunked = max(s.n_memorization, s.n_ablation * cfg.n_head)
    rows = max(s.n_ablation, s.n_attention, s.n_random, min(chunked, forward_rows(fake, P)))
    with_logits = forward_bytes(cfg, rows, P, explicit_attention=True)
    activations = with_logits - 4 * rows * P * FORWARD_LOGIT_COPIES * cfg.vocab_size
    logits = FORWARD_LOGIT_COPIES * max(LOSS_CHUNK_BYTES, 4 * logit_rows(fake, P) * P * cfg.vocab_size)
    cached = 2 * 4 * cfg.n_layer * s.n_ablation * P * cfg.n_embd  # the clean pass's input and z of every layer
    return model_bytes(cfg) + activations + logits + cached


def first_config(todo: list[Path]) -> tuple[Path, GPTConfig] | None:
    """The first readable checkpoint's sealed meta.json config, before any checkpoint is loaded
    (None when none is readable: a checkpoint whose meta.json cannot be read is left to the
    loader, which names the problem)."""
    for path in todo:
        try:
            return path, GPTConfig.from_dict(read_checkpoint_meta(path)["config"])
        except (RunFileError, ValueError, TypeError):
            continue
    return None


def jobs_that_fit(todo: list[Path], sizes: ProbeSizes | None, device: str, jobs: int) -> int:
    """How many worker processes fit in memory (at most `jobs`), from the first readable
    checkpoint's config. Raises TooLarge (a ValueError: one sentence, exit 2) when not even one
    does."""
    found = first_config(todo)
    if found is None:
        return jobs
    path, cfg = found
    need, have = probe_bytes(cfg, sizes), device_available_bytes(device)
    check_fits(f"probing {path} (n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_ctx {cfg.n_ctx}, vocab "
               f"{cfg.vocab_size})", need, have, where="this GPU" if device == "cuda" else "this machine",
               advice="free some memory or probe on a larger machine")
    return max(1, min(jobs, int(MARGIN * have) // need))


def _run_probes(run_dir: Path, only, steps, force, progress, device, sizes, log, skip, jobs, cluster,
                threads, most, fork) -> list[int]:
    read_run(run_dir)
    want = check_only(only)
    if cluster is None:
        device = pick_device(device).type
    else:  # the cluster's GPUs count, not this machine's
        device = cluster.device_kind(device)
    remove_stale_temp_files(run_dir)
    todo = [p for p in pending_checkpoints(run_dir, want, steps, force) if not skip or step_of(p) not in skip]
    todo = todo[:most] if most is not None else todo
    done: list[int] = []
    finished = 0

    def report(step: int, problem: str | None) -> None:
        nonlocal finished
        finished += 1
        if problem is None:
            done.append(step)
        else:
            log(f"probes: skipping the checkpoint at step {step}: {problem}.")
            if skip is not None:
                skip.add(step)
        if progress:
            progress(finished, len(todo), step)

    if todo and cluster is not None:  # the bar starts once the cluster has said it can run the tasks
        cluster.probe(run_dir, todo, want, device, sizes, report, threads,
                      start=lambda: progress and progress(0, len(todo), None))
    elif todo:
        jobs = jobs_that_fit(todo, sizes, device, min(jobs, len(todo)))
        if progress:
            progress(0, len(todo), None)
        if jobs > 1 and device == "cpu":
            _probe_in_pool(run_dir, todo, want, device, sizes, report, jobs, fork)
        else:
            _probe_serially(run_dir, todo, want, device, sizes, report)
    if done or (read_results(run_dir) and not summary_path(run_dir).exists()):
        write_summary(run_dir)
    return sorted(done)


def watch(run_dir: str | os.PathLike, poll: float = 5.0, widen: Callable[[], int] | None = None,
          settle: Callable[[], None] | None = None, **kwargs) -> list[int]:
    """run_probes repeatedly until run.json says complete, failed or stopped, then one last pass.

    With `widen` the watcher follows as a guest: while the run trains, a pass takes only the oldest
    checkpoint still to do, so the end of training is noticed within one checkpoint, and the pass
    after it runs on one-thread workers, one per core `widen()` finds free (the cores training had;
    `workers_for`). On 2 cores the demo's follower at one thread beside training's two cost
    training ~90 s, more than the probes' own work; a guest at the lowest priority (the CLI's
    --watch) uses the gaps training leaves, then the whole machine. `settle` is called once, after
    the first pass that probed something: the CLI's guest lowers its priority there, so the first
    result lands while training starts (~5 s of training's time) and the rest use idle cores."""
    # a guest runs on one torch thread all along, so its catch-up workers can fork from it
    with torch_threads(1 if widen is not None else None):
        return _watch(Path(run_dir), poll, widen, settle, kwargs)


def _watch(run_dir: Path, poll: float, widen: Callable[[], int] | None, settle: Callable[[], None] | None,
           kwargs: dict) -> list[int]:
    done: list[int] = []
    settled: set[int] = set()  # steps done or found corrupt: never taken again (with --force, once each)
    while True:
        status = run_status(run_dir)  # read before the pass: checkpoints made before it are all listed
        ended = status in ("complete", "failed", "stopped")
        if ended and widen is not None:  # the cores training had, split as `python -m probes` splits them;
            # the guest has run on one thread all along, so its workers are forked from it, loaded
            kwargs = {**kwargs, "jobs": workers_for(widen()), "threads": 1, "fork": True}
            kwargs.get("log", stderr_log)(f"probes: the run is {status}; the rest on up to {kwargs['jobs']} "
                                          "one-thread worker(s)")
        new = run_probes(run_dir, skip=settled, most=1 if widen is not None and not ended else None, **kwargs)
        if new and settle is not None:
            settle()
            settle = None
        settled.update(new)
        done += new
        if ended:
            return done
        if not new or widen is None:
            time.sleep(poll)


