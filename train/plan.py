"""`python -m train --plan`: when will an induction head form on this corpus, with these settings,
and how long will that take here? Trains nothing.

Two ingredients, both after Aoyama, Wilcox & Schneider (arXiv 2511.16893):
- The formation point in training tokens, N = T * sqrt(B * C) with T = 10**5.7, B the global batch
  in sequences and C the context in tokens. It does not depend on model size. The unit is tokens:
  the authors' code counts tokens as context * batch * steps, so in optimizer steps the point is
  N / (B * C) = T / sqrt(B * C): a larger batch or context forms the head after fewer steps but more
  tokens.
- Whether heads form at all depends on how often and how reliably bigrams repeat inside a context.
  Following the authors' generator (its `p_aba` and `p_b_given_aba`), counted here inside each
  training context window of C tokens: a position i is an "[A][B] ... [A]" event when its token
  occurred earlier in the window (with a successor inside it); **frequency** is the share of
  positions (that have a next token) which are such events, and **reliability** is the share of
  events whose next token equals the successor of one of the earlier occurrences, i.e. the share
  where copying [B] would be right.

The speed is this machine's: a few optimizer steps of the run's model on random tokens, timed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.config import GPTConfig
from model.gpt import GPT

FORMATION_T = 10 ** 5.7  # Aoyama et al.: N_pt = T * sqrt(B * C) training tokens
FORMULA = "N = 10^5.7 * sqrt(B * C) training tokens (Aoyama, Wilcox & Schneider, arXiv 2511.16893)"
PLAN_WINDOWS = 2000  # context windows sampled to count bigram repetition


def formation_tokens(batch: int, context: int) -> float:
    """Training tokens by which an induction head is predicted to form (Aoyama et al.)."""
    return FORMATION_T * math.sqrt(int(batch) * int(context))


def formation_step(batch: int, context: int) -> int:
    """The same point in optimizer steps of `batch` sequences of `context` tokens."""
    return int(math.ceil(formation_tokens(batch, context) / (int(batch) * int(context))))


def window_repetition(window: np.ndarray) -> tuple[int, int, int]:
    """(positions with a next token, [A][B]...[A] events, events whose next token is a B seen after
    an earlier A) in one context window."""
    successors: dict[int, set[int]] = {}
    positions = events = reliable = 0
    w = [int(t) for t in window]
    for i in range(len(w) - 1):
        positions += 1
        seen = successors.get(w[i])
        if seen:
            events += 1
            reliable += w[i + 1] in seen
        successors.setdefault(w[i], set()).add(w[i + 1])
    return positions, events, reliable


@dataclass
class Repetition:
    frequency: float
    reliability: float
    n_windows: int
    context: int

    def to_dict(self) -> dict:
        return {"frequency": self.frequency, "reliability": self.reliability, "n_windows": self.n_windows,
                "context": self.context,
                "definition": "per context window: frequency = share of positions whose token occurred earlier "
                              "in the window ([A][B] ... [A]); reliability = share of those whose next token "
                              "is a successor of an earlier occurrence (copying [B] is right)"}


def bigram_repetition(tokens: np.ndarray, context: int, n_windows: int = PLAN_WINDOWS, seed: int = 0) -> Repetition:
    """Bigram repetition frequency and reliability over up to `n_windows` seeded context windows of
    `context` tokens of the training split, laid out as training reads them (stride `context`)."""
    n = max(0, (len(tokens) - 1) // context)
    if n == 0:
        raise ValueError(f"the training split ({len(tokens)} tokens) is shorter than one context of {context}.")
    ids = np.random.default_rng([int(seed), 2511]).permutation(n)[:n_windows]
    positions = events = reliable = 0
    for i in np.sort(ids):
        p, e, r = window_repetition(np.asarray(tokens[i * context:(i + 1) * context]))
        positions, events, reliable = positions + p, events + e, reliable + r
    # a context of one token has no bigram in it (--n-ctx 1): nothing repeats
    return Repetition(events / positions if positions else 0.0, reliable / events if events else 0.0, len(ids), context)


def measure_speed(cfg: GPTConfig, batch: int, steps: int = 4, warmup: int = 2) -> float:
    """Training tokens per second of this model on this machine's CPU threads: AdamW steps on
    random tokens (the speed does not depend on the text)."""
    torch.manual_seed(0)
    model = GPT(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.n_ctx + 1))
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch * cfg.n_ctx / (time.perf_counter() - t0)


def prediction(batch: int, context: int, steps: int, repetition: Repetition | None = None,
               tokens_per_s: float | None = None) -> dict:
    """What run.json["induction_prediction"] records and --plan prints."""
    tokens = formation_tokens(batch, context)
    step = formation_step(batch, context)
    out = {"formula": FORMULA, "global_batch": int(batch), "context": int(context),
           "formation_tokens": tokens, "formation_step": step, "planned_steps": int(steps),
           "reaches_formation": step <= steps,
           "bigram_repetition": repetition.to_dict() if repetition else None,
           "tokens_per_s": tokens_per_s,
           "seconds_to_formation": tokens / tokens_per_s if tokens_per_s else None,
           "seconds_planned": steps * batch * context / tokens_per_s if tokens_per_s else None}
    return out


def run_prediction(train_file: Path, dtype: np.dtype, batch: int, context: int, steps: int) -> dict:
    """The prediction run.json records for a run: its global batch (all rows, planted repeats
    included) and context, with the bigram repetition of its training split's token file, so the
    app can show predicted beside observed."""
    train = np.memmap(train_file, dtype=dtype, mode="r")
    repetition = bigram_repetition(train, context) if len(train) > context else None
    return prediction(batch, context, steps, repetition)


def describe(p: dict) -> str:
    """The plan in a few lines a user reads."""
    lines = [f"predicted induction-head formation: {p['formation_tokens']:.3g} training tokens = step "
             f"{p['formation_step']:,} at {p['global_batch']} sequences x {p['context']} tokens per step",
             f"  ({p['formula']})"]
    r = p.get("bigram_repetition")
    if r:
        lines.append(f"bigram repetition in {r['n_windows']} training contexts of {r['context']} tokens: frequency "
                     f"{r['frequency']:.3f}, reliability {r['reliability']:.3f}")
    if p.get("tokens_per_s"):
        lines.append(f"speed here: {p['tokens_per_s']:,.0f} tokens/s -> formation after about "
                     f"{p['seconds_to_formation'] / 60:.1f} min; the {p['planned_steps']:,} planned steps take about "
                     f"{p['seconds_planned'] / 60:.1f} min")
    if not p["reaches_formation"]:
        lines.append(f"note: --steps {p['planned_steps']:,} ends before the predicted step {p['formation_step']:,}.")
    return "\n".join(lines)
