"""Which torch device a command runs on: the one place that turns a --device value into a device
that exists here, or one sentence saying why not (train, probes and generate all ask it)."""
from __future__ import annotations

import os

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


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """CPU cores not busy when a command starts: the cores minus the 1-minute load average
    (rounded), at least 1. A torch process given more threads than there are free cores makes its
    OpenMP threads spin against the other work, and a step gets several times slower, where on an
    idle machine every core helps (the nano demo trains 1.7x faster on two threads than on one)."""
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: trust the core count
            load = 0.0
    return max(1, min(cores, cores - int(round(load))))
