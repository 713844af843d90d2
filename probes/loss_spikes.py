"""Loss spikes in a training log: a metric of the run, not of one checkpoint.

The app's "Compare runs" page counts and marks them; the rule and its calibration live here so
that it is stated once.
"""
from __future__ import annotations

import statistics
from typing import Sequence

# Calibrated on the nano preset trained on stories with each attention kind (same data order): the
# hardest batches sit up to 76% above the median of the 20 losses before them, at the same steps in
# every run and with no jump in grad norm — the data, not the optimizer. A spike is therefore a
# loss more than double the recent median (the page lets one lower the line to look at those too).
SPIKE_RATIO = 1.0
SPIKE_WINDOW = 20


def spike_rule(ratio: float = SPIKE_RATIO, window: int = SPIKE_WINDOW) -> str:
    """The spike definition in words, as the page states it."""
    return (f"A loss spike is a logged train loss more than {ratio:.0%} above (over {1 + ratio:g}x) the median "
            f"of the {window} "
            f"logged train losses before it (rows with fewer than {window} before them are not judged); "
            "consecutive rows above that line count as one spike, placed at its first row.")


SPIKE_RULE = spike_rule()


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
