"""Timing helpers for the benchmarks: medians of several runs after warm-up, ratios in one process."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def timed_calls(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Wall times of `repeats` back-to-back calls of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return times


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds after `warmup` untimed calls."""
    return statistics.median(timed_calls(fn, repeats, warmup))


def interleaved_medians(fns: list[Callable[[], object]], repeats: int = 7, warmup: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Median wall time of each fn in seconds, the fns timed in turn (a, b, a, b, ...) so that a
    drift of the machine (another process, a clock change) falls on all of them alike rather than
    on whichever ran second. `warmup` untimed rounds come first."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t = clock()
            fn()
            out.append(clock() - t)
    return [statistics.median(t) for t in times]


@dataclass
class Goal:
    """One benchmark figure: a measured ratio (or value) against its goal."""

    name: str
    value: float
    goal: float
    unit: str = "x"
    higher_is_better: bool = True
    detail: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def row(self) -> str:
        cmp = "≥" if self.higher_is_better else "≤"
        status = "met" if self.met else "NOT met"
        return f"| {self.name} | {self.value:.3g}{self.unit} | {cmp} {self.goal:g}{self.unit} | {status} | {self.detail} |"


@dataclass
class NotMeasured:
    """A figure that could not be measured here, with the reason: a row that says so instead of
    a made-up number (e.g. the code it times does not exist yet)."""

    name: str
    goal: str
    reason: str

    @property
    def met(self) -> bool:
        return False

    def row(self) -> str:
        return f"| {self.name} | — | {self.goal} | not measured | {self.reason} |"


@dataclass
class Report:
    goals: list[Goal | NotMeasured] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, goal: Goal | NotMeasured) -> None:
        self.goals.append(goal)
        print(goal.row(), flush=True)
