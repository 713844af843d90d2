"""Timing helpers for the benchmarks: medians of several runs after warm-up, ratios in one process."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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
class Report:
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, goal: Goal) -> None:
        self.goals.append(goal)
        print(goal.row(), flush=True)
