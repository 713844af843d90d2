"""When to checkpoint and what the learning rate is at each step.

Checkpoints are log-spaced through warm-up (Pythia style: 0, 1, 2, 4, ...) because that is where
the model changes fastest, then evenly spaced, plus the final step, so probes can place every
phenomenon on a time axis with resolution where it is needed. Windows (`--ckpt-window
START:END:EVERY`) add dense checkpoints where a change is known to happen; `--fill-in` uses the
same notation to add them to a finished run.
"""
from __future__ import annotations

import math

Window = tuple[int, int, int]  # (start, end, every): steps start, start+every, ... <= end


def parse_windows(text: str) -> list[Window]:
    """"300:600:10,900:1000:20" -> [(300, 600, 10), (900, 1000, 20)]; "" -> []. Raises ValueError
    with a sentence naming the bad part (the caller adds which option it came from)."""
    out: list[Window] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            start, end, every = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"{part!r} is not START:END:EVERY (three integers)") from None
        if every <= 0:
            raise ValueError(f"{part!r} has EVERY {every}; it must be positive")
        if start < 0 or start >= end:
            raise ValueError(f"{part!r} needs 0 <= START < END")
        out.append((start, end, every))
    if str(text).strip() and not out:
        raise ValueError(f"{text!r} is not START:END:EVERY (three integers)")
    return out


def window_steps(windows: list[Window]) -> list[int]:
    """Every step the windows name, sorted, without duplicates."""
    out: set[int] = set()
    for start, end, every in windows:
        out.update(range(start, end + 1, every))
    return sorted(out)


def window_count(windows: list[Window]) -> int:
    """How many steps the windows name, counted without listing them (a typo like 0:10**12:1 must
    be refused before anything allocates a list that long)."""
    return sum((end - start) // every + 1 for start, end, every in windows)


def checkpoint_steps(steps: int, warmup: int, ckpt_every: int, windows: list[Window] = ()) -> list[int]:
    """Step 0, the powers of two up to the end of warm-up, every multiple of `ckpt_every` from the
    end of warm-up on, the steps of the windows, and the final step; all within [0, steps], sorted,
    without duplicates.

    checkpoint_steps(1000, 100, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 250, 500, 750, 1000]
    """
    if steps < 0 or warmup < 0 or ckpt_every <= 0:
        raise ValueError("checkpoint_steps needs steps >= 0, warmup >= 0 and ckpt_every > 0.")
    out = {0, steps}
    out.update(s for s in window_steps(list(windows)) if s <= steps)
    p = 1
    while p <= min(warmup, steps):
        out.add(p)
        p *= 2
    first = max(1, math.ceil(warmup / ckpt_every)) * ckpt_every
    out.update(range(first, steps + 1, ckpt_every))
    return sorted(out)


def learning_rate(step: int, lr: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
    """LR used by optimizer step `step` (1-based): linear warm-up to `lr` over `warmup` steps, then
    cosine decay to `min_ratio * lr` at the last step."""
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (steps - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
