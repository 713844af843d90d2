"""Side-by-side runs (the attention-variants study): loss spikes, each run's attention kind, and the
per-run series and summary row the "Compare runs" page plots. Pure functions, no Streamlit.

`results` is {step: probe result} as in app/results.py; `metrics` is app.runfolder.metrics_series
output ({"train", "val", "grad_norm"} -> (steps, values)).
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from . import results as R

Series = tuple[list[int], list[float]]

# -- loss spikes ------------------------------------------------------------------------------
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


def values_at(steps: Sequence[int], values: Sequence[float], at: Sequence[int]) -> list[float]:
    """values[step] for each step of `at` that `steps` holds (markers drawn on a curve)."""
    where = dict(zip(steps, values))
    return [float(where[s]) for s in at if s in where]


# -- runs -------------------------------------------------------------------------------------
def attention_kind(info: Mapping[str, Any]) -> str:
    """run.json["model"]["attention"]; a model config written before attention kinds existed is
    the standard softmax attention (the GPTConfig default), and a run.json without a model says
    'unknown' rather than guess."""
    model = info.get("model") if isinstance(info, Mapping) else None
    if not isinstance(model, Mapping):
        return "unknown"
    return str(model.get("attention") or "standard")


def run_label(name: str, kind: str) -> str:
    """The legend name of a run: its folder and its attention kind."""
    return f"{name} ({kind})"


PROBE_SERIES = {  # name on the page -> how to get (steps, values) from a run's probe results
    "entropy_raw": lambda res: R.head_mean(res, "attention_entropy.raw"),
    "entropy_normalized": lambda res: R.head_mean(res, "attention_entropy.normalized"),
    "sink_mass": lambda res: R.head_mean(res, "attention_entropy.sink_mass"),
    "seq_rep_4_greedy": lambda res: R.scalar(res, "repetition.greedy.seq_rep_4"),
    "seq_rep_4_sampled": lambda res: R.scalar(res, "repetition.sampled.seq_rep_4"),
    "induction_best": lambda res: R.best_head(res, "induction.induction"),
    "copying_best": lambda res: R.best_head(res, "induction.in_context_copying"),
    "icl": R.icl_series,
}


def probe_series(results: R.Results) -> dict[str, Series]:
    """Every compared probe quantity of one run as (steps, values); absent ones are empty."""
    return {name: get(results) for name, get in PROBE_SERIES.items()}


EMERGENCE = ("repetition", "induction", "memorization", "head_concentration")


def summary_row(name: str, kind: str, status: str, metrics: Mapping[str, Series],
                summary: Mapping[str, Any] | None, n_probed: int, spike_ratio: float = SPIKE_RATIO) -> dict[str, Any]:
    """One run's line in the comparison table. Emergence steps come from probes/summary.json;
    None where the run has no summary or the phenomenon was not detected."""
    train, val, grad = metrics.get("train", ([], [])), metrics.get("val", ([], [])), metrics.get("grad_norm", ([], []))
    row: dict[str, Any] = {
        "run": name, "attention": kind, "status": status,
        "last step": train[0][-1] if train[0] else None,
        "final held-out loss": round(val[1][-1], 4) if val[1] else None,
        "best held-out loss": round(min(val[1]), 4) if val[1] else None,
        "loss spikes": len(loss_spikes(*train, ratio=spike_ratio)),
        "max grad norm": round(max(grad[1]), 3) if grad[1] else None,
        "checkpoints probed": n_probed,
    }
    for phenomenon in EMERGENCE:
        row[f"{phenomenon.replace('_', ' ')} step"] = R.emergence_step(summary, phenomenon)
    return row
