"""All probes of one checkpoint: `compute_probes(model, tokenizer, inputs, step)` -> the content
of probes/step_NNNNNN.json.

Passes are shared between probes: one pass with pattern hooks over held-out text gives the
attention statistics of both the attention_entropy and the induction probe (in-context copying);
one plain pass over the held-out memorization set gives per-position losses (loss gap, ICL
score, the per-token losses of the loss trajectory) and argmax predictions (rep/wrep). The
other held-out token sets are prefixes of the same rows, so the pattern pass and the head
ablation sweep's clean passes take their losses from that one pass and read nothing out. The head
roles take the induction probe's random-token scores from its result, so those passes run once.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import torch

from probes.measure.ablation import DEFAULT_KINDS, head_ablation_probe
from probes.measure.attention import HeldoutPatternStats, attention_entropy_result
from probes.measure.composition import composition_result
from probes.measure.head_replacement import KINDS
from probes.measure.forward import final_residual, forward_rows, model_device, shape_of, split_tokens, token_stats
from probes.measure.head_roles import head_roles_result
from probes.measure.induction import document_window_losses, induction_result
from probes.measure.llc import llc_result
from probes.measure.inputs import ProbeInputs
from probes.measure.memorization import memorization_result
from probes.measure.repetition import repetition_result

PROBES = ("head_ablation", "attention_entropy", "memorization", "repetition", "induction", "head_roles",
          "composition")
# Computed only when asked for by name (--only llc): the LLC (probes/measure/llc.py) samples SGLD chains,
# 45 s of CPU per nano checkpoint measured alone (bench/RESULTS.md), more than all the default probes together.
# The exact mean and resample head-ablation sweeps, each as long as the default zero sweep (on `tiny`
# about 9 training steps each, bench/RESULTS.md), are computed on demand too: from the Heads page,
# or with --only head_ablation_mean,head_ablation_resample. Their entries have the shape of
# `head_ablation`, holding one kind (probes.measure.results.ablation_entry finds a kind wherever it is).
ON_DEMAND_KINDS = {f"head_ablation_{k}": k for k in KINDS if k not in DEFAULT_KINDS}
OPTIONAL_PROBES = (*ON_DEMAND_KINDS, "llc")
# Bumped whenever a result's meaning or keys change, so an older result is recomputed:
# 2: exposure against the canary's randomness space; 3: induction over several periods with its
# positional control, per-token losses; 4: head-ablation standard errors and precision, the
# attribution estimate, the repeated held-out text loss; 5: several samples a prompt with the seq-rep-4
# standard errors, the longest greedy loop; 6: head roles and composition in the default set (head_roles
# takes the induction probe's random-token scores from its result, so it comes after it).
RESULT_VERSION = 6


def check_only(only: Iterable[str] | str | None) -> tuple[str, ...]:
    """The probes to compute, in canonical order; ValueError naming an unknown one. None gives the
    default set, PROBES; an optional probe (OPTIONAL_PROBES) is computed only when named."""
    if only is None:
        return PROBES
    names = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s and s.strip()]
    known = PROBES + OPTIONAL_PROBES
    unknown = [n for n in names if n not in known]
    listing = f"the probes are {', '.join(PROBES)}, and {', '.join(OPTIONAL_PROBES)} when named"
    if unknown:
        raise ValueError(f"unknown probe {unknown[0]!r}; {listing}.")
    if not names:
        raise ValueError(f"no probe named; {listing}.")
    return tuple(p for p in known if p in names)


class HeldoutSet:
    """Per-position losses and argmax predictions on the held-out memorization set, computed once
    on first use. `shared`: whether other probes may take their losses from it (`losses_of`),
    true when a probe that needs the set anyway is computed, so that sharing never adds work."""

    def __init__(self, model: Any, tokens: torch.Tensor, shared: bool = True):
        self.model, self.tokens, self.shared = model, tokens, shared
        self._losses: torch.Tensor | None = None
        self._preds: torch.Tensor | None = None

    def _compute(self) -> None:
        rows = self.tokens.to(model_device(self.model))
        step = forward_rows(self.model, rows.shape[1])  # no [B, P, V] logits: the readout is chunked
        parts = [token_stats(self.model, rows[i:i + step, :-1], rows[i:i + step, 1:], argmax=True)
                 for i in range(0, len(rows), step)]
        self._losses = torch.cat([p.losses for p in parts])
        self._preds = torch.cat([p.argmax for p in parts])

    def losses_of(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The per-token losses of `rows` when they are this set's first rows (the probes' token
        sets are all prefixes of the same held-out rows), else None."""
        n = len(rows)
        prefix = self.shared and n <= len(self.tokens) and rows.shape[1] == self.tokens.shape[1]
        return self.losses[:n] if prefix and torch.equal(rows, self.tokens[:n]) else None

    @property
    def losses(self) -> torch.Tensor:
        if self._losses is None:
            self._compute()
        return self._losses

    @property
    def predictions(self) -> torch.Tensor:
        if self._preds is None:
            self._compute()
        return self._preds


def fit_context(tokens: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """Rows cut to at most n_ctx inputs + 1 target (a model may have a shorter context than the run)."""
    return tokens[:, : n_ctx + 1]


@torch.no_grad()
def compute_probes(model: Any, tokenizer: Any, inputs: ProbeInputs, step: int,
                   only: Iterable[str] | str | None = None) -> dict:
    """Every requested probe of one checkpoint as a JSON-able dict (docs/probes.md lists the keys).

    `model` is a `model.GPT` or a TransformerLens model with the same hook names; only
    `model(tokens)`, `run_with_hooks` and `model.cfg` are used."""
    want = check_only(only)
    if hasattr(model, "eval"):
        model.eval()
    n_layers, _, n_ctx = shape_of(model)
    result: dict[str, Any] = {"step": int(step), "tokens": inputs.tokens_seen(step), "version": RESULT_VERSION,
                              "seconds": {}}
    attention_tokens = fit_context(inputs.attention_tokens, n_ctx)
    heldout = HeldoutSet(model, fit_context(inputs.memorization_heldout, n_ctx),
                         shared=bool({"memorization", "repetition", "induction"} & set(want)))

    t = time.perf_counter()
    stats = HeldoutPatternStats(n_layers, attention_tokens, entropy="attention_entropy" in want,
                                copying="induction" in want)
    if stats.hooks():
        x, y = split_tokens(model, attention_tokens)
        known = heldout.losses_of(attention_tokens) if stats.copying else None
        if stats.copying and known is None:
            stats.record_losses(token_stats(model, x, y, stats.hooks()).losses)
        else:  # the patterns alone; the losses, when needed, are the held-out set's
            final_residual(model, x, stats.hooks())
            if known is not None:
                stats.record_losses(known)
    result["seconds"]["pattern_pass"] = time.perf_counter() - t

    for name in want:
        t = time.perf_counter()
        if name == "head_ablation" or name in ON_DEMAND_KINDS:
            s, pool = inputs.sizes, fit_context(inputs.ablation_pool, n_ctx)
            kinds = {"kinds": (ON_DEMAND_KINDS[name],), "estimates": (ON_DEMAND_KINDS[name],)} \
                if name in ON_DEMAND_KINDS else {}
            result[name] = head_ablation_probe(model, pool, block=s.n_ablation, target_se=s.ablation_target_se,
                                               max_sequences=s.n_ablation_max,
                                               known_losses=heldout.losses_of(pool[:len(heldout.tokens)]), **kinds)
        elif name == "attention_entropy":
            result[name] = attention_entropy_result(stats, attention_tokens.shape[0])
        elif name == "memorization":
            result[name] = memorization_result(model, tokenizer, inputs, step, heldout.losses)
        elif name == "repetition":
            result[name] = repetition_result(model, tokenizer, inputs, heldout.predictions, heldout.tokens)
        elif name == "induction":
            documents = None
            if inputs.documents is not None:
                rows = fit_context(inputs.documents[0], n_ctx)
                valid = inputs.documents[1].clamp(max=rows.shape[1] - 1)
                documents = (document_window_losses(model, rows, valid), valid)
            result[name] = induction_result(model, inputs.random_sets, stats, heldout.losses, inputs.training_periods,
                                            heldout=attention_tokens, documents=documents)
        elif name == "head_roles":
            result[name] = head_roles_result(model, inputs.random_sets, inputs.training_periods,
                                             induction=result.get("induction"))
        elif name == "composition":
            result[name] = composition_result(model)
        elif name == "llc":
            with torch.enable_grad():  # SGLD steps on the loss's gradient
                result[name] = llc_result(model, tokenizer, inputs)
        result["seconds"][name] = time.perf_counter() - t
        for part, seconds in (result[name].pop("seconds", None) or {}).items():  # e.g. the attribution estimate
            result["seconds"][f"{name}.{part}"] = seconds
    return result
