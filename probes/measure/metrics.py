"""Pure metric functions: numbers in, numbers out, no model and no files.

Everything a probe reports is computed here from plain tensors or token lists, so each definition
can be checked against a hand-computed answer (tests/test_metrics.py) and reused by the app
(e.g. `repeated_ngram_mask` to highlight loops in a generation).

Attention patterns are [..., H, Q, K] with rows that sum to 1 over the causal prefix, as
TransformerLens' `hook_pattern`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

# -- attention --------------------------------------------------------------------------------


def attention_entropy_rows(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ_k A[q,k] log A[q,k] of every query row: [..., Q] (0·log 0 = 0)."""
    p = pattern.double()
    return -torch.special.xlogy(p, p).sum(-1)


def attention_entropy(pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head mean row entropy, raw and normalised by log(i+1), over every leading axis and
    every query row but row 0 (which can only look at itself, so its entropy is always 0).

    Row i of a causal pattern spreads over i+1 keys, so log(i+1) is its largest possible
    entropy and `normalized` is 1 for uniform attention and 0 for one-hot attention at every row.
    pattern [..., H, Q, Q] -> (raw [H], normalized [H]).
    """
    if pattern.shape[-1] < 2:
        raise ValueError("attention entropy needs at least 2 positions.")
    ent = attention_entropy_rows(pattern)[..., 1:]  # [..., H, Q-1]
    max_ent = torch.log(torch.arange(2, pattern.shape[-1] + 1, dtype=torch.float64, device=ent.device))
    heads = ent.shape[-2]
    raw = ent.reshape(-1, heads, ent.shape[-1]).mean(dim=(0, 2))
    norm = (ent / max_ent).reshape(-1, heads, ent.shape[-1]).mean(dim=(0, 2))
    return raw, norm


def sink_mass(pattern: torch.Tensor) -> torch.Tensor:
    """Per-head mean attention on position 0 (the attention sink), rows 1.. only: [H]."""
    heads = pattern.shape[-3]
    return pattern[..., 1:, 0].double().reshape(-1, heads, pattern.shape[-2] - 1).mean(dim=(0, 2))


def _mean_at(pattern: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per-head mean of pattern[..., h, q, k] over the (q, k) pairs and every leading axis: [H]."""
    vals = pattern[..., queries, keys].double()  # [..., H, n]
    return vals.reshape(-1, pattern.shape[-3], len(queries)).mean(dim=(0, 2))


def previous_token_score(pattern: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Mean attention from each query q >= start to q-1: [H]. 1.0 for a pure previous-token head."""
    q = torch.arange(max(start, 1), pattern.shape[-2], device=pattern.device)
    return _mean_at(pattern, q, q - 1)


def _second_copy(pattern: torch.Tensor, period: int, start: int) -> torch.Tensor:
    q = torch.arange(start + period, min(start + 2 * period, pattern.shape[-2]), device=pattern.device)
    if len(q) == 0:
        raise ValueError(f"the pattern has {pattern.shape[-2]} positions, too few for a repeat of "
                         f"period {period} starting at {start}.")
    return q


def induction_score(pattern: torch.Tensor, period: int, start: int = 1) -> torch.Tensor:
    """Diagonal induction score on a sequence whose tokens [start, start+period) repeat right
    after: mean attention from each query q of the second copy to q-period+1, the token that
    followed the query token's earlier occurrence. 1.0 for a perfect induction head: [H].

    This is the "diagonal" score, not TransformerLens' "mul" head-detector score (whose maximum
    on real patterns is about 0.5), so 1.0 means what it says."""
    q = _second_copy(pattern, period, start)
    return _mean_at(pattern, q, q - period + 1)


def duplicate_token_score(pattern: torch.Tensor, period: int, start: int = 1) -> torch.Tensor:
    """Mean attention from each query of the second copy to its token's earlier occurrence: [H]."""
    q = _second_copy(pattern, period, start)
    return _mean_at(pattern, q, q - period)


def copy_targets(tokens: Sequence[int], n: int = 2) -> list[tuple[int, int]]:
    """(query, target) pairs where copying from earlier in the same text predicts the next token.

    `tokens` are a sequence's inputs followed by its last target. Query q qualifies when the
    n-gram ending at q occurred before, ending at j (the latest such j), and the token after it
    matches too: tokens[j+1] == tokens[q+1]. Attending from q to j+1 is then exactly what an
    induction head does on a span repeated inside natural text. Overlapping repeats (j+1 >= q)
    are skipped, since there the "target" would be the query itself."""
    toks = [int(t) for t in tokens]
    last_end: dict[tuple[int, ...], int] = {}
    pairs = []
    for q in range(n - 1, len(toks) - 1):
        gram = tuple(toks[q - n + 1:q + 1])
        j = last_end.get(gram)
        if j is not None and j + 1 < q and toks[j + 1] == toks[q + 1]:
            pairs.append((q, j + 1))
        last_end[gram] = q
    return pairs


def copying_score(pattern: torch.Tensor, pairs_per_row: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, int]:
    """Mean attention from each copy query to its target over a batch: ([H], number of pairs).

    pattern [B, H, Q, Q]; pairs_per_row[b] from `copy_targets` on row b. With no pairs at all
    the score is 0 (and the count says so)."""
    heads = pattern.shape[1]
    total = torch.zeros(heads, dtype=torch.float64, device=pattern.device)
    count = 0
    for b, pairs in enumerate(pairs_per_row):
        pairs = [(q, k) for q, k in pairs if q < pattern.shape[-2]]
        if not pairs:
            continue
        q = torch.tensor([p[0] for p in pairs], device=pattern.device)
        k = torch.tensor([p[1] for p in pairs], device=pattern.device)
        total += pattern[b][:, q, k].double().sum(-1)
        count += len(pairs)
    return (total / count if count else total), count


# -- inequality of head importance ------------------------------------------------------------


def gini(values: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative importances (negatives are clipped to 0: a head whose
    removal helps holds no importance). 0 when all are equal (or all 0), (n-1)/n when one head
    holds everything."""
    x = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, None)
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    x = np.sort(x)
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * x).sum()) / (n * x.sum()) - (n + 1.0) / n)


def top_share(values: Sequence[float] | np.ndarray, fraction: float = 0.1) -> float:
    """Share of the total (clipped) importance held by the top `fraction` of heads (at least one
    head). With no importance at all every head holds an equal share, so this is k/n."""
    x = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, None)
    n = len(x)
    if n == 0:
        return 0.0
    k = max(1, math.ceil(fraction * n - 1e-9))
    if x.sum() == 0:
        return k / n
    return float(np.sort(x)[::-1][:k].sum() / x.sum())


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    if n < 1:
        raise ValueError(f"n-gram size must be at least 1, got {n}.")
    toks = [int(t) for t in tokens]
    return [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]


def seq_rep_n(tokens: Sequence[int], n: int = 4) -> float:
    """Welleck et al. (2019) seq-rep-n: 1 − |unique n-grams| / |n-grams| of one continuation.
    0 for text with no repeated n-gram, → 1 for a loop. 0 when there is no n-gram at all."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """Li et al. (2016) distinct-n of one continuation: |unique n-grams| / |n-grams| (0 if none)."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_mask(tokens: Sequence[int], n: int = 4) -> list[bool]:
    """True at every token that belongs to an occurrence of an n-gram seen earlier in the same
    sequence (first occurrences stay False), so a viewer can highlight where a loop repeats."""
    toks = list(tokens)
    mask = [False] * len(toks)
    seen: set[tuple[int, ...]] = set()
    for i, gram in enumerate(ngrams(toks, n)):
        if gram in seen:
            for j in range(i, i + n):
                mask[j] = True
        else:
            seen.add(gram)
    return mask


def periodic_tail(tokens: Sequence[int], period: int) -> int:
    """Length of the longest tail of `tokens` that is periodic with `period`: its last token and every
    one before it back to the tail's start equal the token `period` places earlier, plus the `period`
    tokens of the first copy (so a tail of span s holds s / period copies of one pattern, the last
    perhaps cut short). At most len(tokens); `period` when nothing repeats."""
    toks = [int(t) for t in tokens]
    n, k = len(toks), 0
    while k < n - period and toks[n - 1 - k] == toks[n - 1 - k - period]:
        k += 1
    return min(n, k + period)


def longest_loop(tokens: Sequence[int], min_repeats: int = 2) -> tuple[int, int]:
    """(period, length) of the longest repeated loop a continuation ends in; (0, 0) when there is none.

    A loop of period p is a tail periodic with p (`periodic_tail`) that holds the pattern at least
    `min_repeats` times: length >= min_repeats x p. The longest such tail over every period is
    reported (ties: the smallest period), so [1, 2, 3, 1, 2, 3, 1, 2, 3] is a loop of period 3 and
    length 9, a constant run of 10 tokens one of period 1 and length 10, and text whose end repeats
    nothing has length 0. Greedy decoding that falls into a loop stays in it (Holtzman et al. 2020),
    so the length says how much of the continuation the loop has taken."""
    best = (0, 0)
    for p in range(1, len(tokens) // max(min_repeats, 1) + 1):
        span = periodic_tail(tokens, p)
        if span >= min_repeats * p and span > best[1]:
            best = (p, span)
    return best


def find_loop(tokens: Sequence[int], min_repeats: int = 2, min_span: int = 16) -> tuple[int, int] | None:
    """(start, period) of the periodic tail a continuation ends in, or None.

    Holtzman et al. (2020) call such tails repetition loops: once greedy decoding repeats a
    phrase it keeps repeating it. A tail counts as a loop when it is periodic with some period p
    (`periodic_tail`), covers at least `min_repeats` periods and at least `min_span` tokens. The
    smallest such period is reported (`longest_loop` gives the longest loop instead)."""
    n = len(tokens)
    for p in range(1, n // max(min_repeats, 1) + 1):
        span = periodic_tail(tokens, p)
        if span >= min_repeats * p and span >= min_span:
            return n - span, p
    return None


def ends_in_loop(tokens: Sequence[int], min_repeats: int = 2, min_span: int = 16) -> bool:
    return find_loop(tokens, min_repeats, min_span) is not None


def rep_wrep(predictions: torch.Tensor, tokens: torch.Tensor, window: int = 128) -> tuple[float, float]:
    """Welleck et al. (2019) teacher-forced rep/ℓ and wrep/ℓ.

    predictions [B, P]: the argmax next token at each input position; tokens [B, P+1]: inputs and
    the shifted targets. rep = fraction of positions whose prediction occurs among the previous ℓ
    context tokens (the ℓ inputs ending at that position); wrep = fraction whose prediction
    does so *and* is wrong (differs from the true next token)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    P = inputs.shape[1]
    if predictions.shape != inputs.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} must match the inputs {tuple(inputs.shape)}.")
    t = torch.arange(P, device=inputs.device)
    in_window = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)  # [query, key]
    hit = (predictions[:, :, None] == inputs[:, None, :]) & in_window[None]
    rep = hit.any(-1)
    wrep = rep & (predictions != targets)
    return float(rep.double().mean()), float(wrep.double().mean())


def ngram_counts(rows: Sequence[Sequence[int]], n: int = 1) -> dict[tuple[int, ...], int]:
    """How often each n-gram occurs over several token sequences (n-grams never span two rows)."""
    counts: dict[tuple[int, ...], int] = {}
    for row in rows:
        for gram in ngrams(row, n):
            counts[gram] = counts.get(gram, 0) + 1
    return counts


def jensen_shannon(p: Mapping[object, float], q: Mapping[object, float]) -> float:
    """Jensen-Shannon divergence in bits between two distributions given as counts (or weights)
    over any keys: H(M) - (H(P) + H(Q)) / 2 with M = (P + Q) / 2. 0 for the same distribution, 1
    for disjoint supports; symmetric and finite where Kullback-Leibler is not. ValueError when
    either side is empty."""
    tp, tq = float(sum(p.values())), float(sum(q.values()))
    if tp <= 0 or tq <= 0:
        raise ValueError("the Jensen-Shannon divergence needs two non-empty distributions.")
    total = 0.0
    for key in set(p) | set(q):
        a, b = p.get(key, 0.0) / tp, q.get(key, 0.0) / tq
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return max(0.0, min(1.0, total))


def tone_distance(samples: Sequence[Sequence[int]], reference: Sequence[Sequence[int]], n: int = 1) -> float:
    """The "tone" of generated text: the Jensen-Shannon divergence (bits) between the n-gram
    distribution of `samples` (a model's own sampled continuations) and of `reference` (held-out
    text). It sees what the loss does not: a model can lower its held-out loss while what it writes
    drifts to over-used words or phrases. A distribution distance between model text and human
    text, of the family of MAUVE (Pillutla et al. 2021), which compares them in an embedding space;
    here plain token n-grams, so it needs no second model. It depends on the sample size (a finite
    sample of the reference's own distribution scores above 0), so compare it across checkpoints
    of one probe setting, or against the floor of held-out text of the same size."""
    return jensen_shannon(ngram_counts(samples, n), ngram_counts(reference, n))


# -- memorization -----------------------------------------------------------------------------


def memorization_score(generated: Sequence[int], target: Sequence[int]) -> float:
    """Pythia (Biderman et al. 2023) memorization score: the fraction of the true continuation's
    tokens that greedy decoding reproduced at the same positions. 1.0 = memorized."""
    target = [int(t) for t in target]
    if not target:
        raise ValueError("the true continuation is empty.")
    gen = [int(t) for t in generated][:len(target)]
    return sum(a == b for a, b in zip(gen, target)) / len(target)


def exposure(candidate_losses: Sequence[float], index: int = 0) -> float:
    """Carlini et al. (2019) exposure of candidate `index` among R candidates ranked by loss:
    log2|R| − log2 rank, rank 1 = lowest loss (ties count in the canary's favour). A canary
    ranked first has exposure log2|R|; one ranked last has 0. Over a sample of n candidates
    drawn from a larger space this is capped at log2 n: say so wherever it is shown."""
    losses = np.asarray(candidate_losses, dtype=np.float64)
    if len(losses) < 1 or not 0 <= index < len(losses):
        raise ValueError("exposure needs the canary's loss among at least one candidate.")
    rank = 1 + int((losses < losses[index]).sum())
    return float(math.log2(len(losses)) - math.log2(rank))


# A skew-normal's skewness lies within +-0.9953 (shape -> +-inf); sample skewness is clipped inside it.
SKEW_CLIP = 0.99


def skewnorm_moments_fit(samples: Sequence[float]) -> tuple[float, float, float] | None:
    """(location xi, scale omega, shape alpha) of the skew-normal whose mean, variance (ddof=1) and
    skewness equal the samples' (method of moments, closed form: no optimizer, so the same samples
    always give the same fit). Sample skewness beyond what a skew-normal can have is clipped to
    +-0.99. With zero skewness this is the normal fit N(mean, sd). None for fewer than 2 samples or
    no spread."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 2 or not np.isfinite(x).all() or x.std(ddof=1) == 0:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    dev = x - mean
    skew = float((dev ** 3).mean() / (dev ** 2).mean() ** 1.5)  # g1, the plain moment ratio
    g = min(abs(skew), SKEW_CLIP) ** (2 / 3)
    delta = math.copysign(math.sqrt(math.pi / 2 * g / (g + ((4 - math.pi) / 2) ** (2 / 3))), skew)
    omega = sd / math.sqrt(1 - 2 * delta ** 2 / math.pi)
    return mean - omega * delta * math.sqrt(2 / math.pi), omega, delta / math.sqrt(1 - delta ** 2)


def skewnorm_logcdf(x: float, xi: float, omega: float, alpha: float) -> float:
    """log P(X <= x) for X ~ skew-normal(xi, omega, alpha), to about 1e-7 relative even far into
    the left tail, where the closed form Phi(z) - 2 T(z, alpha) cancels to 0.

    F(z) = int_0^inf f(z - v) dv with f(t) = 2 phi(t) Phi(alpha t), integrated by the trapezoid rule
    in log space on a grid that is dense near v = 0 (where a far-tail integrand has all its mass)
    and reaches 40 standard units below the bulk, past which f is below e^-800."""
    z = (float(x) - xi) / omega
    n = 20_001
    v = (max(40.0, z + 40.0)) * torch.linspace(0, 1, n, dtype=torch.float64) ** 2
    t = z - v
    log_f = math.log(2) - 0.5 * t ** 2 - 0.5 * math.log(2 * math.pi) + torch.special.log_ndtr(alpha * t)
    dv = v[1:] - v[:-1]
    log_w = torch.log(torch.cat([dv[:1], dv[1:] + dv[:-1], dv[-1:]]) / 2)
    return float(torch.logsumexp(log_f + log_w, 0).clamp(max=0.0))


# Alternatives needed before the skew-normal is fitted rather than the normal. The sample skewness
# of n draws has a standard error of about sqrt(6/n) (0.44 at 31 draws), and the far tail the
# exposure reads hangs on it: on the nano demo, 31 draws gave skew-normal exposures whose 10-90%
# range was 2-3x the normal fit's, while 1023 draws put the true |skewness| below 0.25.
SKEWNORM_MIN_ALTERNATIVES = 256


def extrapolation_fit(n_alternatives: int) -> str:
    """The distribution `extrapolated_exposure` fits by default to this many alternatives."""
    return "skew-normal" if n_alternatives >= SKEWNORM_MIN_ALTERNATIVES else "normal"


def extrapolated_exposure(canary_loss: float, alternative_losses: Sequence[float],
                          max_bits: float | None = None, fit: str = "auto") -> float | None:
    """Exposure extrapolated from a fitted loss distribution (Carlini et al. 2019, sec. 4.2):
    −log2 P(a random candidate's loss <= the canary's), with P from the distribution fitted to the
    alternatives' losses: "normal" (mean, sd with ddof=1), "skew-normal" (by moments, see
    `skewnorm_moments_fit`; Carlini et al. fit a skew-normal) or "auto" (`extrapolation_fit`: the
    skew-normal from SKEWNORM_MIN_ALTERNATIVES alternatives on, the normal below, where the
    skewness is mostly sampling noise). Unlike the rank form it does not saturate at log2 of the
    number of candidates once the canary beats them all, so it keeps ordering canaries by
    duplication. `max_bits` (log2|R| when the randomness space is known) caps it: no canary can
    rank above first in R. None with fewer than two alternatives, no spread among them or a
    non-finite loss."""
    alt = np.asarray(alternative_losses, dtype=np.float64)
    kind = extrapolation_fit(len(alt)) if fit == "auto" else fit
    if kind not in ("normal", "skew-normal"):
        raise ValueError(f"fit must be auto, normal or skew-normal, got {fit!r}.")
    if len(alt) < 2 or not np.isfinite(alt).all() or alt.std(ddof=1) == 0:
        return None
    if kind == "normal":
        z = (float(canary_loss) - alt.mean()) / alt.std(ddof=1)
        log_p = float(torch.special.log_ndtr(torch.tensor(z, dtype=torch.float64)))
    else:
        log_p = skewnorm_logcdf(canary_loss, *skewnorm_moments_fit(alt))
    bits = max(0.0, -log_p / math.log(2))
    return bits if max_bits is None else min(bits, float(max_bits))
