"""Which torch device a command runs on: the one place that turns a --device value into a device
that exists here, or one sentence saying why not (train, probes and generate all ask it); and how
many CPU threads torch uses: the rule (free_cores) and the one way to set the count for a block
of work and restore it after (torch_threads)."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import torch

DEVICE_KINDS = ("auto", "cpu", "cuda")
MAX_THREADS = 1024  # torch crashes (segfault) on absurd thread counts; every --threads is checked against it


def pick_device(spec: str, local_rank: int | None = None) -> torch.device:
    """`auto` (CUDA when there is one), `cpu`, `cuda` or `cuda:N`. Under DDP `local_rank` picks
    this process's GPU for `auto`/`cuda`. ValueError with one sentence for anything else."""
    text = str(spec).strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be auto, cpu or cuda (or cuda:N), got {spec!r}.") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ValueError(f"device must be auto, cpu or cuda (or cuda:N), got {spec!r}.")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec} was requested, but no CUDA GPU is available here; use --device cpu.")
    index = device.index if device.index is not None else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    return torch.device("cuda", index)


BUSY_SAMPLE_S = 0.5  # how long free_cores watches the machine


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(cores: int, seconds: float = BUSY_SAMPLE_S) -> float:
    """How many cores other work keeps busy right now: the machine's CPU use over `seconds`
    (/proc/stat), or the 1-minute load average where that cannot be read. Not the load average
    first: it decays over minutes, so right after `make test` it still reads about 1 on an idle
    2-core machine, and a demo started then trained on one thread, 1.7x slower than it could."""
    before = _cpu_times()
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            return cores * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return os.getloadavg()[0]
    except OSError:  # no load average on this platform: trust the core count
        return 0.0


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_BUSY_AT_START: dict[int, float] = {}


def busy_at_start(cores: int) -> float:
    """busy_cores, sampled once per process: every later question gets the same answer (two
    samples moments apart could give a command one worker with two threads where it meant one
    each, and results that round differently), and only the first costs the half second."""
    if cores not in _BUSY_AT_START:
        _BUSY_AT_START[cores] = busy_cores(cores)
    return _BUSY_AT_START[cores]


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """CPU threads a command should use: the cores minus those other work keeps busy when it starts
    (`load`, else busy_at_start), rounded, at least 1. The one rule train, probes and the app's jobs
    share. A torch process given more threads than there are free cores makes its OpenMP threads
    spin against the other work, and a step gets several times slower, where on an idle machine
    every core helps (the nano demo trains 1.7x faster on two threads than on one)."""
    cores = cores if cores is not None else cpu_cores()
    if load is None:
        load = busy_at_start(cores)
    return max(1, min(cores, cores - int(round(load))))


def free_cores_now() -> int:
    """free_cores measured now rather than at the process's start: for a process that outlives
    its neighbours (the probes following a run get the cores training had once it ends)."""
    cores = cpu_cores()
    return free_cores(cores, busy_cores(cores))


def idle_class() -> bool:
    """Whether this process runs under the SCHED_IDLE policy (probes.run.cli.yield_cpu's guest)."""
    try:
        return os.sched_getscheduler(0) == os.SCHED_IDLE
    except (AttributeError, OSError):  # not Linux
        return False


def guest_cores() -> int:
    """The cores one-thread workers of this process may take now (the probes' catch-up once the run
    they follow has ended). Under SCHED_IDLE, every core: the scheduler runs such a process only on
    cycles other work leaves, children inherit the policy, and one-thread processes have no OpenMP
    threads to spin against anyone, so no guess is needed. A sample is a poor guess there: taken
    the moment training ends it reads the trainer's exit as a busy core, and the demo's catch-up ran
    on one worker, taking nearly twice as long as two (docs/performance.md). Otherwise free_cores_now."""
    return cpu_cores() if idle_class() else free_cores_now()


def settle_threads(given: int, recorded: int | None, device: torch.device, sharing: int = 1) -> int:
    """Set torch's CPU threads for the rest of a training process and return the count (the run
    records it): `given` (a --threads) when positive; else `recorded` (a resumed run keeps the count
    it recorded, since the count changes float rounding and a bit-exact resume needs the same);
    else every core this process may use, shared among `sharing` processes on this machine. On
    CUDA nothing is set.

    Not free_cores: the count holds for the run's whole life, and a sample of the machine at its
    start says nothing about the hours after. A run started while other work was briefly busy took
    one thread from such a sample and kept it alone on the machine for its whole life, about 0.6 of
    the speed two threads give (the figures, and those of the other rules tried, are in
    bench/RESULTS.md, "Training's thread count"). With every core, work that shares the machine for
    a while slows the steps of that while, and the rest run at full speed."""
    if given > 0:
        threads = given
    elif recorded:
        threads = int(recorded)
    elif device.type == "cpu":
        threads = max(1, cpu_cores() // max(1, sharing))
    else:
        return torch.get_num_threads()
    set_torch_threads(threads)
    return threads


def set_torch_threads(n: int) -> None:
    """Give torch `n` CPU threads for the rest of the process (a worker process, the app): for a
    block of work that must leave the caller's count as it was, torch_threads."""
    torch.set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` torch CPU threads (None: leave the count), then restore the count the
    block started with, whatever the block set meanwhile or however it ended."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
