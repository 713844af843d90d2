"""Side-by-side runs (the attention-variants study): each run's attention kind, and the per-run
series and summary row the "Compare runs" page plots (loss spikes counted by the probes' rule,
probes/analyse/loss_spikes.py). Pure functions, no Streamlit.

`results` is {step: probe result} as in app/plot_data.py; `metrics` is app.runfolder.metrics_series
output ({"train", "val", "grad_norm"} -> (steps, values)).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from probes.analyse.loss_spikes import SPIKE_RATIO, loss_spikes
from probes.analyse.run_pairs import pair_verdict

from . import plot_data as R

Series = tuple[list[int], list[float]]

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


EMERGENCE = ("repetition", "induction", "memorization", "head_concentration", "loss_generation_mismatch",
             "overfitting")


def peak_lr(info: Mapping[str, Any]) -> float | None:
    """run.json["train"]["lr"]: the peak learning rate (None for an imported run)."""
    train = info.get("train") if isinstance(info, Mapping) else None
    lr = train.get("lr") if isinstance(train, Mapping) else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def summary_row(name: str, kind: str, status: str, metrics: Mapping[str, Series],
                summary: Mapping[str, Any] | None, n_probed: int, spike_ratio: float = SPIKE_RATIO,
                lr: float | None = None) -> dict[str, Any]:
    """One run's line in the comparison table. Emergence steps come from probes/summary.json;
    None where the run has no summary or the phenomenon was not detected."""
    train, val, grad = metrics.get("train", ([], [])), metrics.get("val", ([], [])), metrics.get("grad_norm", ([], []))
    row: dict[str, Any] = {
        "run": name, "attention": kind, "peak lr": lr, "status": status,
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


def pair_rows(runs: Sequence[tuple[str, R.Results]]) -> list[dict[str, Any]]:
    """One row per pair of runs (in the order given): the first shared checkpoint where their
    generations differ beyond noise and the first where their held-out losses do, and which came
    first (probes/analyse/run_pairs.py holds the rule)."""
    rows = []
    for i, (name_a, res_a) in enumerate(runs):
        for name_b, res_b in runs[i + 1:]:
            v = pair_verdict(res_a, res_b)
            gen, loss = v["generation"], v["loss"]
            rows.append({
                "pair": f"{name_a} vs {name_b}",
                "generations differ at": gen["step"], "generations: from": gen["from_step"],
                "tone difference (bits)": None if gen["difference"] is None else round(gen["difference"], 4),
                "held-out losses differ at": loss["step"], "losses: from": loss["from_step"],
                "loss difference (nats)": None if loss["difference"] is None else round(loss["difference"], 4),
                "first": v["first"] or "neither",
                "why none": "; ".join(f"{k}: {p['reason']}" for k, p in (("generations", gen), ("losses", loss))
                                      if p["reason"]) or None,
            })
    return rows
