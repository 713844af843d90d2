"""The captions and marks of the failure-mode detectors (probes.failure_modes) for the Runs, Heads
and Memorization pages: the loss–generation mismatch, the overfitting onset and head inequality,
each said in one sentence from its summary.json entry. Pure functions, no Streamlit."""
from __future__ import annotations

from typing import Any, Mapping

from .plot_data import as_number, emergence_entry, rise_caption


def _fmt(v: Any, spec: str = ".3f") -> str:
    n = as_number(v)
    return "?" if n is None else format(n, spec)


MISMATCH_LABELS = {"repetition.tone.jsd_unigram": "tone (distance of the sampled text's unigram JSD from what "
                                                   "held-out text of the same size scores, bits)",
                   "repetition.sampled.seq_rep_4": "sampled seq-rep-4 above the held-out text's",
                   "repetition.greedy.seq_rep_4": "greedy seq-rep-4 above the held-out text's"}


def mismatch_caption(entry: Mapping[str, Any] | None) -> str | None:
    """The loss-generation mismatch the summary found, in words: where each stretch runs, what got
    worse by how much against its noise threshold, and what the held-out loss did meanwhile; or why
    none was found. None when the summary has no such entry (an older summary)."""
    if not isinstance(entry, Mapping):
        return None
    if not entry.get("detected"):
        reason = entry.get("reason") or "no stretch found"
        return f"No loss–generation mismatch detected: {reason}."
    parts = []
    for st in entry.get("stretches") or []:
        if not isinstance(st, Mapping):
            continue
        label = MISMATCH_LABELS.get(str(st.get("metric")), str(st.get("metric")))
        parts.append(f"steps {st.get('step')}–{st.get('to_step')} (after {st.get('from_step')}): {label} "
                     f"{_fmt(st.get('before'))} → {_fmt(st.get('after'))} (best level at step "
                     f"{st.get('reference_step')}) while held-out loss {_fmt(st.get('loss_before'))} → "
                     f"{_fmt(st.get('loss_after'))} nats")
    threshold = as_number(entry.get("threshold"))
    noise = f" (threshold {threshold:.3g}, {entry.get('noise_source') or 'noise'})" if threshold is not None else ""
    return ("Loss–generation mismatch: the held-out loss fell while generations got worse beyond noise" + noise + ": "
            + "; ".join(parts) + ".")


def mismatch_stretch_at(summary: Mapping[str, Any] | None, step: int) -> Mapping[str, Any] | None:
    """The first mismatch stretch of the summary that contains checkpoint `step`, else None."""
    entry = emergence_entry(summary, "loss_generation_mismatch")
    for st in (entry or {}).get("stretches") or []:
        if isinstance(st, Mapping) and as_number(st.get("step")) is not None and as_number(st.get("to_step")) is not None \
                and st["step"] <= step <= st["to_step"]:
            return st
    return None


def overfitting_caption(entry: Mapping[str, Any] | None) -> str | None:
    """The overfitting onset the summary found (or why none): the gap's growth and the two losses
    across it, and the rise of the memorized share of seen text."""
    if not isinstance(entry, Mapping):
        return None
    mem = ""
    if entry.get("memorized_detected"):
        mem = (f" The memorized share of seen text (above the held-out control) rose from "
               f"{_fmt(entry.get('memorized_before'))} to {_fmt(entry.get('memorized_after'))} from step "
               f"{entry.get('memorized_step')}.")
    if entry.get("detected"):
        losses = ""
        if as_number(entry.get("heldout_loss_after")) is not None and as_number(entry.get("train_loss_after")) is not None:
            losses = (f"; held-out loss {_fmt(entry.get('heldout_loss_before'))} → "
                      f"{_fmt(entry.get('heldout_loss_after'))}, training loss {_fmt(entry.get('train_loss_before'))} "
                      f"→ {_fmt(entry.get('train_loss_after'))}")
        note = f" Note: {entry['note']}." if entry.get("note") else ""
        return (f"Overfitting onset at step {entry.get('step')} (after {entry.get('from_step')}): the held-out minus "
                f"training loss gap grew from {_fmt(entry.get('before'))} to {_fmt(entry.get('after'))} nats "
                f"(threshold {_fmt(entry.get('threshold'), '.3g')}){losses}.{mem}{note}")
    reason = entry.get("reason") or "the gap does not grow beyond noise"
    return f"No overfitting onset detected: {reason}.{mem}"


def inequality_mark(summary: Mapping[str, Any] | None) -> dict[str, int | None]:
    """{label: step} for the first checkpoint whose head-importance Gini exceeds the equal-heads bound
    (summary["emergence"]["head_concentration"]["exceeds_equal_heads_step"]), None when there is none."""
    entry = emergence_entry(summary, "head_concentration") or {}
    step = entry.get("exceeds_equal_heads_step")
    step = int(step) if as_number(step) is not None else None
    label = "heads unequal" + (f" (from step {entry['exceeds_from_step']})"
                               if step is not None and entry.get("exceeds_from_step") is not None else "")
    return {label: step}


def concentration_caption(entry: Mapping[str, Any] | None) -> str | None:
    """The head-importance inequality in words: its level at the last checkpoint with standard errors
    beside what equal heads would show, and when it first exceeded that bound (or why not). Falls back
    to the rise rule's caption for summaries written before the level was recorded."""
    if not isinstance(entry, Mapping):
        return None
    if entry.get("last_gini") is None:
        return rise_caption(entry, "head-importance concentration rise")
    se = f" ± {_fmt(entry.get('last_gini_se'))}" if as_number(entry.get("last_gini_se")) is not None else ""
    tse = f" ± {_fmt(entry.get('last_top_share_se'))}" if as_number(entry.get("last_top_share_se")) is not None else ""
    text = (f"At step {entry.get('last_step')} the zero-ablation Gini is {_fmt(entry.get('last_gini'))}{se} and the "
            f"top-10% share {_fmt(entry.get('last_top_share'))}{tse} (± one standard error, "
            f"{entry.get('se_method') or 'bootstrap'})")
    bound = as_number(entry.get("last_equal_heads_gini"))
    if bound is not None:
        text += f"; equal heads would show at most {bound:.3f} ({entry.get('baseline') or 'the equal-heads bound'})"
    step = entry.get("exceeds_equal_heads_step")
    if step is not None:
        text += f". The Gini first exceeds that bound to stay at step {step} (after {entry.get('exceeds_from_step')})."
    else:
        text += f". Heads not shown to be unequal: {entry.get('exceeds_reason') or 'the Gini stays within the bound'}."
    rise = rise_caption(entry, "rise of the concentration level")
    return text + (f" {rise}" if rise else "")
