"""The captions and marks of the failure-mode detectors (probes.analyse.failure_modes, probes.analyse.overfitting,
probes.analyse.phenomena's greedy loops) for the Runs, Heads, Memorization and Repetition pages: the
loss–generation mismatch, overfitting (onset, early-stopping point, memorization), head inequality and
the entropy collapse, each said from its summary.json entry. Pure functions, no Streamlit."""
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
    """Overfitting as the summary found it, in words: the onset (where the held-out minus training loss
    gap starts to grow beyond noise, or why none), the early-stopping point and whether the held-out
    loss rose after it, and verbatim memorization as a finding of its own."""
    if not isinstance(entry, Mapping):
        return None
    if entry.get("detected"):
        losses = ""
        if as_number(entry.get("heldout_loss_after")) is not None and as_number(entry.get("train_loss_after")) is not None:
            losses = (f"; from the reference checkpoints (to step {entry.get('reference_step')}) to the stretch, "
                      f"held-out loss {_fmt(entry.get('heldout_loss_before'))} → "
                      f"{_fmt(entry.get('heldout_loss_after'))}, training loss {_fmt(entry.get('train_loss_before'))} "
                      f"→ {_fmt(entry.get('train_loss_after'))}")
        text = (f"Overfitting onset at step {entry.get('step')} (after {entry.get('from_step')}): the held-out minus "
                f"training loss gap grew from {_fmt(entry.get('before'))} to {_fmt(entry.get('after'))} nats "
                f"(threshold {_fmt(entry.get('threshold'), '.3g')}, from the gap's own scatter){losses}.")
    else:
        text = f"No overfitting onset detected: {entry.get('reason') or 'the gap does not grow beyond noise'}."
    stop = early_stop_sentence(entry)
    mem = memorization_sentence(entry)
    note = f" Note: {entry['note']}." if entry.get("note") and entry.get("detected") else ""
    return " ".join(x for x in (text, stop, mem) if x) + note


def early_stop_sentence(entry: Mapping[str, Any]) -> str | None:
    """The early-stopping point (the checkpoint of the lowest held-out loss) and whether the held-out
    loss rose beyond its noise after it; None when the summary has none (an older summary)."""
    step = entry.get("early_stop_step")
    if as_number(step) is None:
        return None
    text = f"Early-stopping point: step {step} (lowest held-out loss, {_fmt(entry.get('early_stop_loss'))} nats)"
    rise = entry.get("heldout_rise")
    if not isinstance(rise, Mapping):
        return text + "."
    if rise.get("detected"):
        return (text + f"; after it the held-out loss rose beyond noise from step {rise.get('step')} (after "
                f"{rise.get('from_step')}), by {_fmt(rise.get('rise'))} nats at step {rise.get('to_step')} "
                f"(threshold {_fmt(rise.get('threshold'), '.3g')}).")
    return text + f"; no rise of the held-out loss beyond noise after it: {rise.get('reason') or 'none found'}."


def memorization_sentence(entry: Mapping[str, Any]) -> str | None:
    """Verbatim memorization beside overfitting: the memorized share of seen text (above the held-out
    control) and the canaries' first extraction, reported apart from the onset."""
    mem = entry.get("memorization")
    mem = mem if isinstance(mem, Mapping) else {
        "detected": entry.get("memorized_detected"), "before": entry.get("memorized_before"),
        "after": entry.get("memorized_after"), "step": entry.get("memorized_step"),
        "seen_last": entry.get("seen_memorized_last"), "held_out_last": entry.get("held_out_memorized_last")}
    canary = f" Canaries first extracted at step {mem['canary_step']}." if mem.get("canary_step") is not None else ""
    if mem.get("detected"):
        return (f"Verbatim memorization (a finding of its own): the memorized share of seen text (above the held-out "
                f"control) rose from {_fmt(mem.get('before'))} to {_fmt(mem.get('after'))} from step "
                f"{mem.get('step')}.{canary}")
    if as_number(mem.get("seen_last")) is not None:
        return (f"Verbatim memorization (a finding of its own) does not rise beyond noise: "
                f"{_fmt(mem.get('seen_last'))} of seen text memorized at the last checkpoint against "
                f"{_fmt(mem.get('held_out_last'))} of held-out text.{canary}")
    return canary.strip() or None


def early_stop_mark(summary: Mapping[str, Any] | None) -> dict[str, int | None]:
    """{label: step} for the early-stopping point on the loss chart: the checkpoint of the lowest held-out
    loss, marked only once the held-out loss has risen beyond noise after it (before that it is merely
    the latest best checkpoint)."""
    entry = emergence_entry(summary, "overfitting") or {}
    rise = entry.get("heldout_rise")
    step = entry.get("early_stop_step") if isinstance(rise, Mapping) and rise.get("detected") else None
    return {"early-stopping point (held-out minimum)": int(step) if as_number(step) is not None else None}


def collapse_caption(entry: Mapping[str, Any] | None) -> str | None:
    """When the greedy continuations fall into loops and leave them (the entropy-collapse entry), with
    the entropy along the greedy path before and during; None for an older summary."""
    if not isinstance(entry, Mapping):
        return None
    if not entry.get("detected"):
        return f"No greedy loops found: {entry.get('reason') or 'none'}."
    end = (f"they end at step {entry['resolved_step']}" if entry.get("resolved_step") is not None
           else "they have not ended by the last checkpoint")
    more = len(entry.get("episodes") or []) - 1
    again = f" Loops come back {more} more time(s): " + ", ".join(
        f"steps {e.get('step')}–{e.get('resolved_step') if e.get('resolved_step') is not None else '…'}"
        for e in (entry.get("episodes") or [])[1:] if isinstance(e, Mapping)) + "." if more > 0 else ""
    return (f"Greedy loops begin at step {entry.get('step')} (after {entry.get('from_step')}; mean longest loop "
            f"{_fmt(entry.get('loop_length_at_step'), '.0f')} tokens) and {end}. Entropy along the greedy path: "
            f"{_fmt(entry.get('entropy_before'))} nats before, {_fmt(entry.get('entropy_during'))} during, "
            f"{_fmt(entry.get('entropy_after'))} after.{again}")


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
