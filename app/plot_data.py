"""Probe results reshaped for plotting: series over steps, [layer][head] matrices per step,
emergence steps, and repeated n-grams made visible. Pure functions, no Streamlit.

`results` is always {step: the content of probes/step_NNNNNN.json}, and
paths into it are dotted, e.g. "repetition.greedy.seq_rep_4".
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from probes.analyse.result_series import get, is_matrix  # noqa: F401 (the one reader by path; pages use R.is_matrix)
from probes.measure.results import ablation_key

Results = Mapping[int, Mapping[str, Any]]


def scalar(results: Results, path: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar, skipping checkpoints whose result lacks it (a probe run with
    --only, or an older file) instead of failing."""
    steps, values = [], []
    for step in sorted(results):
        v = get(results[step], path)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            steps.append(int(step))
            values.append(float(v))
    return steps, values


def matrices(results: Results, path: str) -> tuple[list[int], list[list[list[float]]]]:
    """(steps, [layer][head] matrix per step) of one per-head result."""
    steps, mats = [], []
    for step in sorted(results):
        v = get(results[step], path)
        if is_matrix(v):
            steps.append(int(step))
            mats.append([[float(x) for x in row] for row in v])
    return steps, mats


ABLATION_PER_KIND = ("delta_se", "gini", "top_share", "attribution", "attribution_agreement")


def ablation_path(result: Any, kind: str, part: str | None = None) -> str:
    """The dotted path of the exact `kind` head-ablation sweep in one result, wherever the probes
    stored it (`probes.measure.results.ablation_key`: `head_ablation`, or `head_ablation_<kind>` computed on
    demand): the [L][H] matrix without `part`; PART.KIND for a per-kind part (ABLATION_PER_KIND);
    PART for the sweep's own (clean_loss, n_sequences, precision, attribution_sequences)."""
    key = ablation_key(result, kind) or "head_ablation"
    if part is None:
        return f"{key}.{kind}"
    return f"{key}.{part}.{kind}" if part in ABLATION_PER_KIND else f"{key}.{part}"


def ablation_matrices(results: Results, kind: str, part: str | None = None) -> tuple[list[int], list]:
    """(steps, matrix per step) of the exact `kind` sweep (or its per-kind `part`, e.g. delta_se),
    over the checkpoints that have it."""
    steps, mats = [], []
    for step in sorted(results):
        v = get(results[step], ablation_path(results[step], kind, part))
        if is_matrix(v):
            steps.append(int(step))
            mats.append([[float(x) for x in row] for row in v])
    return steps, mats


def ablation_scalar(results: Results, kind: str, part: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar of the exact `kind` sweep (e.g. gini), where it exists."""
    return scalar({s: {"v": get(r, ablation_path(r, kind, part))} for s, r in results.items()}, "v")


def best_head(results: Results, path: str) -> tuple[list[int], list[float]]:
    """The largest per-head value at each step (e.g. the best induction score)."""
    steps, mats = matrices(results, path)
    return steps, [max(max(row) for row in m) for m in mats]


def head_mean(results: Results, path: str) -> tuple[list[int], list[float]]:
    """The mean over every layer and head at each step (e.g. a model's mean attention entropy)."""
    steps, mats = matrices(results, path)
    return steps, [sum(sum(row) for row in m) / sum(len(row) for row in m) for m in mats]


def icl_value(v: Any) -> float | None:
    """The ICL score's value, as the induction probe writes it: {"value": ..., positions ...}."""
    value = v.get("value") if isinstance(v, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def icl_series(results: Results) -> tuple[list[int], list[float]]:
    """(steps, ICL score) over the checkpoints whose result has one."""
    steps, values = [], []
    for s in sorted(results):
        v = icl_value(get(results[s], "induction.icl_score"))
        if v is not None:
            steps.append(int(s))
            values.append(v)
    return steps, values


def steps_having(results: Results, path: str) -> list[int]:
    return [int(s) for s in sorted(results) if get(results[s], path) is not None]


def emergence_step(summary: Mapping[str, Any] | None, name: str) -> int | None:
    """The step at which phenomenon `name` emerges according to probes/summary.json, or None.

    Looked up under summary["emergence"][name], where the value is a step or an object with a
    "step" field; a summary that says nothing (phenomenon never emerged, older file) gives None,
    and so does a candidate step the summary itself marks as not detected (below threshold)."""
    if not isinstance(summary, Mapping):
        return None
    v = get(summary, f"emergence.{name}")
    if isinstance(v, Mapping):
        if v.get("detected") is False:
            return None
        v = v.get("step")
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def emergence_rule(summary: Mapping[str, Any] | None, name: str) -> str | None:
    """The detection rule summary.json states for a phenomenon, to print under the chart."""
    v = get(summary, f"emergence.{name}") if isinstance(summary, Mapping) else None
    if isinstance(v, Mapping):
        rule = v.get("rule")
        return str(rule) if rule else None
    return None


def emergence_entry(summary: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    """summary["emergence"][name] when it is an object (a rise found by the summary's rule)."""
    v = get(summary, f"emergence.{name}") if isinstance(summary, Mapping) else None
    return v if isinstance(v, Mapping) else None


def as_number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def change_caption(entry: Mapping[str, Any] | None) -> str | None:
    """What else moved at the induction phase change: the ICL score and the repeated held-out text
    gap (repeat minus first copy), each as the summary's medians before and after the change.
    None when no change was found or neither was measured; a value that got worse says so."""
    if not isinstance(entry, Mapping) or entry.get("step") is None:
        return None
    parts = []
    for label, key, better in (("ICL score", "icl", "lower"), ("repeated held-out text, repeat minus first copy",
                                                              "repeated_text_gap", "lower")):
        before, after = as_number(entry.get(f"{key}_before")), as_number(entry.get(f"{key}_after"))
        if before is None or after is None:
            continue
        verdict = "improved" if after < before else "did not improve"
        parts.append(f"{label} {before:+.3f} → {after:+.3f} nats ({verdict}; {better} is better)")
    if not parts:
        return None
    return "Across the change (medians before → after): " + "; ".join(parts) + "."


def rise_caption(entry: Mapping[str, Any] | None, what: str) -> str | None:
    """One or two sentences on a rise the summary found (induction phase change, copying, head
    concentration): where (the two checkpoints bracketing it), how large (level before -> after),
    abrupt or gradual, and when it was not detected, why. None when the entry holds nothing.

    Only says "no ... detected" when the summary itself says detected is False, so the page can
    never deny a change the rule found."""
    if not isinstance(entry, Mapping) or entry.get("step") is None:
        reason = entry.get("reason") if isinstance(entry, Mapping) else None
        return f"No {what} detected: {reason}." if reason else None
    before, after, rise = as_number(entry.get("before")), as_number(entry.get("after")), as_number(entry.get("rise"))
    facts = []
    if entry.get("from_step") is not None:
        facts.append(f"between checkpoints {entry['from_step']} and {entry['step']}")
    if before is not None and after is not None and rise is not None:
        facts.append(f"level {before:.3f} → {after:.3f} ({rise:+.3f})")
    elif rise is not None:
        facts.append(f"rise {rise:+.3f}")
    text = ": ".join(facts)
    if entry.get("kind") in ("abrupt", "gradual"):
        n = entry.get("transition_intervals")
        span = (f", climbing from step {entry.get('transition_from_step')} to {entry.get('transition_to_step')} "
                f"({n} checkpoint interval{'s' if n != 1 else ''})") if n is not None else ""
        text += f"; {entry['kind']}{span}"
    note = f" Note: {entry['note']}." if entry.get("note") else ""
    if entry.get("detected") is False:
        reason = entry.get("reason") or f"below the {entry.get('min_rise')} minimum"
        return f"No {what} detected: {reason}. The best candidate: step {entry['step']}, {text}.{note}"
    return f"{what[0].upper()}{what[1:]} at step {entry['step']}" + (f", {text}" if text else "") + f".{note}"


def emergence_mark(summary: Mapping[str, Any] | None, name: str, label: str) -> dict[str, int | None]:
    """{label: step} for a chart's dashed line, the label saying what the line marks: a rise that
    began after `from_step` and whether it was abrupt ("phase change (abrupt, from step 100)")."""
    step = emergence_step(summary, name)
    entry = emergence_entry(summary, name)
    if step is not None and entry is not None and entry.get("from_step") is not None:
        kind = f"{entry['kind']}, " if entry.get("kind") in ("abrupt", "gradual") else ""
        label = f"{label} ({kind}from step {entry['from_step']})"
    return {label: step}


def icl_definition(icl: Any) -> str | None:
    """What an ICL score result measured, in words: its own `definition`, else one built from the
    position windows it names ([start, end)), else from its single positions (older files)."""
    if not isinstance(icl, Mapping):
        return None
    if isinstance(icl.get("definition"), str) and icl["definition"]:
        return icl["definition"]
    early, late = icl.get("early_positions"), icl.get("late_positions")
    if all(isinstance(r, (list, tuple)) and len(r) == 2 for r in (early, late)):
        return (f"mean held-out loss over positions {late[0]}-{int(late[1]) - 1} minus mean over positions "
                f"{early[0]}-{int(early[1]) - 1}")
    if icl.get("early_position") is not None and icl.get("late_position") is not None:
        return f"held-out loss near position {icl['late_position']} minus near position {icl['early_position']}"
    return None


def icl_label(icl: Any) -> str:
    """Short legend name for the ICL curve naming the averaged positions, e.g.
    "ICL score (loss at 118–127 − 45–54)"."""
    early = icl.get("early_positions") if isinstance(icl, Mapping) else None
    late = icl.get("late_positions") if isinstance(icl, Mapping) else None
    if all(isinstance(r, (list, tuple)) and len(r) == 2 for r in (early, late)):
        return f"ICL score (loss at {late[0]}–{int(late[1]) - 1} − {early[0]}–{int(early[1]) - 1})"
    return "ICL score (loss late − early)"


def highlight_html(pieces: Sequence[str], mask: Sequence[bool], colour: str = "#ffd166") -> str:
    """Token strings joined into HTML with the masked ones on a coloured background; every piece
    is escaped, so model output can never inject markup."""
    out, open_span = [], False
    for piece, on in zip(pieces, mask):
        if on and not open_span:
            out.append(f'<mark style="background:{colour};padding:0">')
            open_span = True
        elif not on and open_span:
            out.append("</mark>")
            open_span = False
        out.append(html.escape(piece).replace("\n", "<br>"))
    if open_span:
        out.append("</mark>")
    return "".join(out)


def position_losses(results: Results) -> tuple[list[int], list[list[float]]]:
    """(steps, mean held-out loss per token position) over the checkpoints whose induction result
    has one (induction.position_loss)."""
    steps, curves = [], []
    for s in sorted(results):
        v = get(results[s], "induction.position_loss")
        if isinstance(v, Sequence) and v and all(as_number(x) is not None for x in v):
            steps.append(int(s))
            curves.append([float(x) for x in v])
    return steps, curves


def trajectory(summary: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """summary["trajectory"] when it holds a path of at least two checkpoints, else None."""
    t = get(summary, "trajectory") if isinstance(summary, Mapping) else None
    if not isinstance(t, Mapping):
        return None
    steps, pc1, pc2 = t.get("steps") or [], t.get("pc1") or [], t.get("pc2") or []
    return t if len(steps) >= 2 and len(pc1) == len(steps) == len(pc2) else None


def circuit_caption(circuit: Any) -> str | None:
    """The induction circuit summary.json names, in words: which head copies, which head in an
    earlier layer feeds it the previous token, and when the phase change happened."""
    if not isinstance(circuit, Mapping) or not circuit.get("induction_head"):
        return None
    l, h = circuit["induction_head"]
    score, control = as_number(circuit.get("induction_score")), as_number(circuit.get("control"))
    text = f"Induction head: L{l}H{h}"
    if score is not None:
        text += f" (score {score:.3f}" + (f", control on fresh tokens {control:.3f}" if control is not None else "") + ")"
    prev = circuit.get("previous_token_head")
    if prev:
        p = as_number(circuit.get("previous_token_score"))
        text += f"; previous-token head in an earlier layer: L{prev[0]}H{prev[1]}" + (f" (score {p:.3f})" if p is not None else "")
    else:
        text += "; no earlier layer holds a previous-token head for it" if l == 0 else ""
    at = circuit.get("at_step")
    text += f", at step {at}" if at is not None else ""
    step = circuit.get("step")
    text += f". Phase change at step {step}." if step is not None else ". No induction phase change detected."
    return text


def prediction_mark(run_info: Mapping[str, Any] | None) -> dict[str, int | None]:
    """{label: step} for the formation point run.json predicts (train.plan), drawn beside the
    observed phase change; empty for runs made before the prediction was recorded."""
    p = run_info.get("induction_prediction") if isinstance(run_info, Mapping) else None
    step = p.get("formation_step") if isinstance(p, Mapping) else None
    return {"predicted formation (Aoyama et al.)": int(step)} if isinstance(step, (int, float)) else {}


def prediction_caption(run_info: Mapping[str, Any] | None, summary: Mapping[str, Any] | None) -> str | None:
    """Predicted beside observed, in one sentence: the law's step and tokens, the corpus's bigram
    repetition, and where the summary saw the phase change (or that it did not)."""
    p = run_info.get("induction_prediction") if isinstance(run_info, Mapping) else None
    if not isinstance(p, Mapping) or not isinstance(p.get("formation_step"), (int, float)):
        return None
    text = (f"Predicted formation: step {int(p['formation_step']):,} ({as_number(p.get('formation_tokens')) or 0:.3g} tokens "
            f"at {p.get('global_batch')} × {p.get('context')} tokens per step; {p.get('formula')}).")
    rep = p.get("bigram_repetition")
    if isinstance(rep, Mapping) and as_number(rep.get("frequency")) is not None:
        text += f" Bigram repetition in training contexts: frequency {rep['frequency']:.3f}, reliability {rep['reliability']:.3f}."
    entry = emergence_entry(summary, "induction")
    if entry and entry.get("detected") and entry.get("step") is not None:
        ratio = entry["step"] / p["formation_step"]
        text += f" Observed: step {entry['step']:,} ({ratio:.2f} × the prediction)."
    elif entry is not None:
        text += " Observed: no phase change detected yet."
    return text
