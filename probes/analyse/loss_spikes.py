"""Loss spikes in a training log: a metric of the run, not of one checkpoint.

The app's "Compare runs" page counts and marks them; the rule and its calibration are stated once,
in probes/analyse/emergence_rules.py.
"""
from __future__ import annotations

import statistics
from typing import Sequence

from probes.analyse.emergence_rules import SPIKE_RATIO, SPIKE_RULE, SPIKE_WINDOW, spike_rule  # noqa: F401 (the rule, stated there)


def spike_flags(losses: Sequence[float], ratio: float = SPIKE_RATIO, window: int = SPIKE_WINDOW) -> list[bool]:
    """Whether each logged loss is above (1 + ratio) x the median of the `window` losses before it.

    The median of a trailing window, not the mean or the last value, so that one noisy batch does
    not move the reference and the falling trend of early training does not read as a spike (the
    median of earlier, higher losses is above the current loss)."""
    flags = []
    for i, loss in enumerate(losses):
        if i < window:
            flags.append(False)
            continue
        flags.append(float(loss) > (1.0 + ratio) * statistics.median(losses[i - window:i]))
    return flags


def loss_spikes(steps: Sequence[int], losses: Sequence[float], ratio: float = SPIKE_RATIO,
                window: int = SPIKE_WINDOW) -> list[int]:
    """The step at which each loss spike starts (see SPIKE_RULE): a run of consecutive flagged
    rows is one spike, so a loss that stays high for a few steps is not counted several times."""
    flags = spike_flags(losses, ratio, window)
    return [int(steps[i]) for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1])]
