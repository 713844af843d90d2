"""`python -m train`: argument checks, run-folder setup, DDP bring-up, then the loop.

Bad input of any kind exits with status 2 and one sentence on stderr, before anything in --out is
touched. Under torchrun every rank validates the arguments itself; rank 0 alone prepares the data
and writes, and tells the others whether setup worked so that none of them waits forever.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from store.checkpoint import kept_state_steps
from store.runio import RunFileError, read_jsonl
from model.config import GPTConfig
from model.cliargs import run_command
from model.device import pick_device, settle_threads, torch_threads
from model.memory import GPT2_VOCAB, TooLarge, check_training_fits
from model.tokenizer import in_model_ids
from store.runlayout import RUN_JSON, metrics_jsonl
from store.runrecord import read_record, set_status

from .args import MIN_VOCAB_COVERAGE, BadInput, TrainArgs, resolve
from .options import requested
from .corpora import check_source, load_corpus
from .disk import check_disk
from .fillin import check_fill_in, run_fill_in, tidy_after_a_kill
from .loop import Dist, Trainer
from .plan import bigram_repetition, describe, measure_speed, prediction
from .tokens import encode_docs
from .rundir import check_out_dir, check_world, setup_run


def dist_from_env() -> Dist:
    return Dist(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def device_for(kind: str, d: Dist) -> torch.device:
    """model.device.pick_device for this process (its local rank's GPU under DDP)."""
    try:
        return pick_device(kind, d.local_rank)
    except ValueError as e:
        raise BadInput(str(e)) from None


def set_threads(args: TrainArgs, d: Dist, device: torch.device, stored: int | None) -> int:
    """torch's CPU threads for the rest of main() (which restores the caller's count), and the count
    to record in run.json: model.device.settle_threads, the local DDP ranks sharing the cores."""
    return settle_threads(args.threads, stored, device, int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))


def check_memory(args: TrainArgs, d: Dist, device: torch.device) -> None:
    """Refuse (BadInput, exit 2) a run whose training step would not fit in the device's memory,
    before the corpus is tokenized or a model is built (model.memory.check_training_fits). The
    vocabulary is not known before tokenizing, so its upper bound stands in (args.largest_model).
    On a CPU the local DDP ranks share the machine's memory; a generated stories corpus is held
    in memory by rank 0 while it is tokenized, so its size is checked too."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world)) if device.type == "cpu" else 1
    stories = args.data == "stories" and d.main
    try:
        check_training_fits(args.largest_model, args.batch_size, device, local,
                            corpus_mb=args.corpus_mb if stories else None, val_fraction=args.val_fraction)
    except TooLarge as e:
        raise BadInput(str(e)) from None


def start_distributed(d: Dist, device: torch.device) -> None:
    if d.world <= 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


# How long a rank that failed waits at the closing barrier for the others before it gives up and
# tears down anyway (a rank that failed alone may leave the others inside a collective).
FAILED_BARRIER_TIMEOUT = timedelta(seconds=30)


def stop_distributed(device: torch.device, ok: bool) -> None:
    """Leave the process group together, then destroy it, on every rank and every path.

    A rank that destroys its group and exits while another still works (rank 0 writes the last
    checkpoint and run.json after the final step) tears down gloo under a live peer; with the DDP
    Reducer still alive (it sits in a reference cycle, so it outlives the Trainer until some
    garbage collection, often at interpreter shutdown) gloo's threads are then destroyed during
    finalization and the process dies with "terminate called without an active exception"
    (SIGABRT). So: the caller has already released DDP (release_ddp); every rank meets at a
    barrier; then each destroys the group while the interpreter is fully alive. After a failure
    the barrier is gloo's monitored_barrier with a timeout, so a rank that failed alone does not
    wait forever for ranks stuck in a collective (torchrun stops those once this one exits)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if ok and device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        elif ok:
            dist.barrier()
        elif dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=FAILED_BARRIER_TIMEOUT)
    except Exception as e:  # a peer that is gone or stuck: still tear down our side
        if ok:
            print(f"warning: ranks did not meet at the end of training ({type(e).__name__}: {e}).",
                  file=sys.stderr)
    finally:
        dist.destroy_process_group()


def release_ddp(trainer: Trainer | None) -> None:
    """Free the DistributedDataParallel wrapper (and its Reducer, which holds the process group and
    the last step's communication work) now, before the group is destroyed, not whenever the
    garbage collector next runs: DDP sits in a reference cycle, so dropping the last reference
    does not free it by itself."""
    if trainer is not None and trainer.model is not trainer.raw:
        trainer.model = trainer.raw
        gc.collect()


def share_outcome(d: Dist, error: str | None) -> None:
    """Rank 0 tells every rank whether setup failed, so they stop together with the same message."""
    if d.world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise BadInput(error)


def prepare(explicit: dict, resume: bool, d: Dist) -> tuple[Path, dict | None, TrainArgs, torch.device]:
    """Every check made before anything is written (folder, values, device, memory, disk, data source):
    (out, the stored run.json["train"] when resuming, args, device)."""
    if not explicit.get("out"):
        raise BadInput("--out is required (the run folder, e.g. runs/demo).")
    out = Path(explicit["out"])
    stored = check_out_dir(out, resume)
    if stored is not None:
        check_world(out, d.world)
    args = resolve(explicit, stored, str(out))
    device = device_for(args.device, d)
    check_memory(args, d, device)
    check_disk(out, args)
    check_source(args)
    return out, stored, args, device


def refusal(argv: list[str]) -> str | None:
    """The sentence `python -m train ARGV` would refuse to start with (exit 2), or None when it
    would start: the same checks, made here without writing anything (the app's New-run form asks
    this before it launches a run)."""
    try:
        explicit, resume, windows = requested(list(argv))
        if windows is not None:
            return "the app starts training runs only; fill in checkpoints with python -m train --fill-in."
        prepare(explicit, resume, dist_from_env())
    except BadInput as e:
        return str(e)
    return None


def train(explicit: dict, resume: bool, d: Dist) -> int:
    out, stored, args, device = prepare(explicit, resume, d)
    recorded = read_record(out).get("cpu_threads") if stored is not None else None
    threads = set_threads(args, d, device, recorded if isinstance(recorded, int) else None)
    start_distributed(d, device)
    ok = False
    try:
        status = train_started(out, args, stored, d, device, threads)
        ok = True
        return status
    finally:
        stop_distributed(device, ok)


class Stopped(Exception):
    """Training stopped by the user (Ctrl-C): main() says where it stopped and how to continue."""

    def __init__(self, out: Path, step: int | None):
        super().__init__(f"{out}: stopped by the user" + (f" at step {step} (the last saved state)" if step is not None
                                                          else " before its first saved state")
                         + f"; the same command with --resume continues it: python -m train --out {out} --resume.")


def last_saved_step(out: Path) -> int | None:
    """The step of the newest training state (what --resume continues from), None when there is none."""
    try:
        steps = kept_state_steps(out)
    except (OSError, ValueError):
        return None
    return max(steps) if steps else None


def train_started(out: Path, args: TrainArgs, stored: dict | None, d: Dist, device: torch.device,
                  threads: int) -> int:
    """Everything after the process group is up: setup on rank 0 (recording the CPU thread count
    in run.json, for a bit-exact resume), then the loop on every rank."""
    error, cfg = None, None
    if d.main:
        try:
            cfg = setup_run(out, args, stored, d.world, threads if device.type == "cpu" else None)
        except BadInput as e:
            error = str(e)
    share_outcome(d, error)
    if cfg is None:
        cfg = GPTConfig.from_dict(read_record(out)["model"])
    t0 = time.time()
    trainer = None
    try:
        trainer = Trainer(out, args, cfg, device, d)
        trainer.start()
    except KeyboardInterrupt:  # the user's stop, not a failure: the run is stopped at its last state
        step = last_saved_step(out)
        if d.main:
            try:
                set_status(out, "stopped", stopped_at_step=step)
            except OSError:
                pass
        raise Stopped(out, step) from None
    except BaseException as e:
        if d.main:
            try:
                set_status(out, "failed", error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            except OSError:
                pass  # the full disk that stopped the run refuses this write too; run.json stays whole
        raise
    finally:
        release_ddp(trainer)
    if d.main:
        set_status(out, "complete")
        report(out, time.time() - t0)
    return 0


def fill_in(explicit: dict, windows: str, d: Dist) -> int:
    """--fill-in: every check first (nothing written on bad input), then the retraining on the
    run's device with its recorded CPU thread count, so the added checkpoints are the ones the run
    would have saved."""
    out, args, run, plan = check_fill_in(explicit, windows, d)
    device = device_for(args.device, d)
    check_memory(args, d, device)
    tidy_after_a_kill(out)
    if plan is None:
        print(f"{out}: every checkpoint of --fill-in {windows} exists already; nothing to do.", file=sys.stderr)
        return 0
    recorded = run.get("cpu_threads")
    set_threads(args, d, device, recorded if isinstance(recorded, int) else None)
    t0 = time.time()
    steps = run_fill_in(out, args, plan, device)
    print(f"{out}: added {len(steps)} checkpoint(s), steps {steps[0]}..{steps[-1]}, retrained from the state of "
          f"step {plan.start} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


def report(out: Path, seconds: float) -> None:
    vals = [r for r in read_jsonl(metrics_jsonl(out)) if "val_loss" in r]
    if vals:
        print(f"{out}: step {vals[-1]['step']}, held-out loss {vals[0]['val_loss']:.3f} at step 0 -> "
              f"{vals[-1]['val_loss']:.3f}, {seconds:.0f} s", file=sys.stderr)


def write_failure(argv: list[str], e: OSError) -> str:
    """One sentence for an OSError that stopped training, saying what survives and what to do."""
    filling = None
    try:
        explicit, _, filling = requested(argv)
        out = Path(explicit.get("out") or ".")
    except BadInput:
        out = Path(".")
    what = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
    then = ("continue with --resume" if (out / RUN_JSON).exists() and not filling else "run the same command again")
    return (f"training in {out} stopped: {what}; everything written before is intact; "
            f"fix that (e.g. free disk space), then {then}.")


PLAN_CORPUS_MB = 2.0  # text enough for the bigram statistics: --plan answers in seconds whatever --corpus-mb
PLAN_CONTEXTS = 300   # ... counted over this many training contexts


def plan(explicit: dict, d: Dist) -> int:
    """--plan: the corpus's bigram repetition, the predicted formation point and its duration at
    this machine's measured speed (train.plan); nothing is written."""
    args = resolve({"out": "runs/plan", **explicit}, None, explicit.get("out") or "runs/plan")
    device = device_for(args.device, d)
    check_memory(args, d, device)
    check_source(args)
    set_threads(args, d, device, None)
    sample = resolve({**explicit, "out": args.out, "corpus_mb": min(args.corpus_mb, PLAN_CORPUS_MB)}, None, args.out)
    ids = encode_docs(load_corpus(sample).train, "plan")  # as the token pipeline lays the documents out
    vocab, (model_ids,) = in_model_ids([ids], args.vocab_limit)
    cfg = args.model_config(vocab.size if vocab else GPT2_VOCAB)
    repetition = bigram_repetition(ids[: PLAN_CONTEXTS * cfg.n_ctx + 1], cfg.n_ctx)
    speed = measure_speed(cfg, args.batch_size) if device.type == "cpu" else None
    batch = args.batch_size * args.grad_accum * d.world
    print(describe(prediction(batch, cfg.n_ctx, args.steps, repetition, speed)))
    coverage = float(np.mean(model_ids != vocab.unk_id)) if vocab else 1.0
    print(f"vocabulary: {cfg.vocab_size} ids ({'compact' if vocab else 'GPT-2 BPE'}), covering {coverage:.3%} of the "
          "training tokens" + ("" if coverage >= MIN_VOCAB_COVERAGE else
                                f"; below {MIN_VOCAB_COVERAGE:.1%}, the rest read as <|unk|> (leave --vocab-size unset)"))
    return 0


def stop_on_signals() -> None:
    """SIGINT and SIGTERM (Ctrl-C, `kill`, a process manager's or a parent's stop) end training
    cleanly: stopped, not failed. SIGINT is set too because a process started from a background
    job (`nohup ... &`) inherits SIGINT ignored, and `kill -INT` would then do nothing. Only the
    main thread may set handlers; main() run from another thread keeps Python's."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def command(argv: list[str], d: Dist) -> int:
    """What `python -m train ARGV` does: --plan, --fill-in or training."""
    explicit, resume, windows = requested(argv)
    if "--plan" in argv:
        return plan(explicit, d)
    if windows is not None:
        return fill_in(explicit, windows, d)
    return train(explicit, resume, d)


def user_error(e: Exception) -> str:
    """The sentence for bad input, or for a run file (e.g. --resume of a run whose state or
    run.json was damaged or edited) that the run cannot go on from."""
    if isinstance(e, RunFileError):
        return f"{e.path}: {e.problem}; the run cannot be resumed or filled in from it."
    return str(e)


def stop_message(e: BaseException) -> str:
    """Where a Ctrl-C stopped: in training (Stopped says where and how to continue), or before
    it began (setup, tokenizing), when nothing of the run is half-written."""
    return str(e) if isinstance(e, Stopped) else "stopped by the user before training began."


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process; returns the exit status (2 with one sentence on stderr for bad input,
    1 for an OSError such as a full disk, 130 when the user stopped it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    d = dist_from_env()
    with torch_threads(None):  # main() may run in-process: leave the caller's thread count as it was
        try:
            return run_command(lambda: command(argv, d), (BadInput, RunFileError), describe=user_error,
                               os_error=lambda e: write_failure(argv, e), stops=(Stopped, KeyboardInterrupt),
                               stopped=stop_message)
        finally:
            if dist.is_available() and dist.is_initialized():  # train() stops it; this is a safety net
                dist.destroy_process_group()
