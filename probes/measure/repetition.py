"""Repetition probe: continuations of fixed prompts, greedy and sampled (nucleus, fixed seed,
SAMPLES_PER_PROMPT samples of each prompt), scored for repeated n-grams, diversity, loops (the
longest loop each continuation ends in, `probes.measure.metrics.longest_loop`) and predictive entropy (on
the greedy rows: the mean next-token entropy along the greedy path), each seq-rep-4 with its
standard error measured on the continuations themselves (`prompt_se`); plus the teacher-forced
rep/wrep of Welleck et al. (2019) on held-out text, which measures the same tendency without
letting the model feed on its own output; and the "tone" of the sampled continuations: how far
their token distribution lies from held-out text's (`tone_result`), a generation-quality measure
the training loss does not see.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from probes.measure.forward import generate, model_device, shape_of, token_stats
from probes.measure.inputs import SAMPLING_STREAM, ProbeInputs, sub_seed
from probes.measure.metrics import (distinct_n, find_loop, jensen_shannon, longest_loop, ngram_counts, rep_wrep, seq_rep_n,
                      tone_distance)

REP_WINDOW = 128
# Sampled continuations per prompt: enough to measure the sampled seq-rep-4's own sampling noise at
# these prompts (the loss-generation mismatch's threshold rests on it), few enough to keep the probe
# cheap. On a nano model, one CPU thread of a busy 2-core machine, 121 new tokens: the 16 sampled rows
# take 1.3 s against 0.45 s for one a prompt (the 4 greedy rows another 0.45 s; scoring them 0.2 s).
SAMPLES_PER_PROMPT = 4
SE_METHODS = {
    "greedy": ("the spread across the prompts: standard deviation of the prompts' values (ddof 1) / sqrt(prompts); "
               "greedy decoding draws nothing, so the prompts are its only source of variation"),
    "sampled": ("the sampling noise at these prompts: sqrt(mean over the prompts of the variance (ddof 1) of its "
                "samples / (prompts x samples per prompt)), the standard error of the mean over every sample"),
}
TONE_DEFINITION = (
    "Jensen-Shannon divergence (bits: 0 = the same distribution, 1 = disjoint) between the n-gram "
    "distribution of the checkpoint's sampled continuations (the repetition probe's own nucleus samples, "
    "not sampled again) and that of held-out text (the memorization held-out sequences); floor (and "
    "floor_*_sd) = the mean (and standard deviation) of the same for held-out sequences taken k at a time "
    "(k = the number of prompts), cut to the continuations' length and scored against the other held-out "
    "sequences: what text written exactly like the held-out text scores at this sample size. The samples are "
    "the first sampled continuation of each prompt, so k stays the number of prompts. A "
    "distribution distance between model and human text in the family of MAUVE (Pillutla et al. 2021), "
    "on plain token n-grams.")


def sampling_seed(seed: int) -> int:
    return int(sub_seed(seed, SAMPLING_STREAM).integers(2**31 - 1))


def prompt_se(values: list[float], samples: int) -> float | None:
    """Standard error of the mean of `values`, laid out prompt-major (`samples` per prompt). One sample
    a prompt (greedy): the spread across the prompts, sd / sqrt(P). Several: the sampling noise at these
    prompts, sqrt(mean within-prompt variance / (P x samples)); the prompts are fixed from checkpoint to
    checkpoint, so only the draws vary. None with too few values to tell."""
    x = np.asarray(values, dtype=np.float64).reshape(-1, samples)
    if samples == 1:
        return float(x[:, 0].std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None
    return float(np.sqrt(x.var(axis=1, ddof=1).mean() / x.size))


@torch.no_grad()
def continuation_stats(model: Any, full: torch.Tensor, prompt_len: int, samples: int = 1) -> tuple[dict, list[dict]]:
    """Metrics of the continuations full[:, prompt_len:] (prompt-major, `samples` rows a prompt), and
    per-row details. predictive_entropy is the mean entropy of the distributions the tokens were
    drawn from; on greedy rows, the entropy along the greedy path (it collapses when the model is
    sure of its own loop)."""
    cont = full[:, prompt_len:]
    # The distribution each continuation token was drawn from (before any top-p truncation), its
    # entropy read out a chunk of positions at a time (no [B, P, V] logits).
    ent = token_stats(model, full[:, :-1], full[:, 1:], entropy=True).entropy[:, prompt_len - 1:].double()
    rows = []
    for i, row in enumerate(cont.tolist()):
        loop = find_loop(row)
        period, length = longest_loop(row)
        rows.append({"tokens": row, "seq_rep_4": seq_rep_n(row, 4), "distinct_1": distinct_n(row, 1),
                     "distinct_2": distinct_n(row, 2), "loop_start": None if loop is None else loop[0],
                     "loop_period": None if loop is None else loop[1], "longest_loop_period": period,
                     "longest_loop_length": length, "predictive_entropy": float(ent[i].mean())})
    stats = {key: float(np.mean([r[key] for r in rows]))
             for key in ("seq_rep_4", "distinct_1", "distinct_2", "predictive_entropy")}
    stats["loop_fraction"] = float(np.mean([r["loop_start"] is not None for r in rows]))
    stats["loop_length"] = float(np.mean([r["longest_loop_length"] for r in rows]))
    stats["loop_length_max"] = int(max(r["longest_loop_length"] for r in rows))
    stats["loop_share"] = float(np.mean([r["longest_loop_length"] / max(1, len(r["tokens"])) for r in rows]))
    stats["seq_rep_4_rows"] = [r["seq_rep_4"] for r in rows]
    stats["seq_rep_4_se"] = prompt_se(stats["seq_rep_4_rows"], samples)
    stats["seq_rep_4_se_method"] = SE_METHODS["greedy" if samples == 1 else "sampled"]
    stats["samples_per_prompt"] = samples
    stats["new_tokens"] = int(cont.shape[1])
    return stats, rows


def _minus(a: dict, b: dict) -> dict:
    """Counts a minus counts b (b a part of a), zeros dropped."""
    out = dict(a)
    for key, v in b.items():
        out[key] -= v
        if not out[key]:
            del out[key]
    return out


def tone_result(samples: torch.Tensor, heldout_tokens: torch.Tensor) -> dict:
    """The `tone` entry: `tone_distance` of the sampled continuations [K, T] from the held-out rows
    [N, P+1], for unigrams and bigrams, beside the floor: the held-out rows taken K at a time and cut
    to T tokens, each group scored against the other held-out rows, mean and standard deviation over
    the groups (what text written exactly like the held-out text scores at this sample size, and how
    much that number varies from one sample to the next). None where there is too little text."""
    rows = [r for r in samples.tolist() if r]
    held = heldout_tokens.tolist()
    k, width = len(rows), max((len(r) for r in rows), default=0)
    groups = [list(range(i, i + k)) for i in range(0, len(held) - k + 1, k)] if k else []
    groups = groups if len(groups) >= 2 else []
    out: dict[str, Any] = {"decoding": "sampled", "sample_tokens": sum(len(r) for r in rows),
                           "reference_tokens": sum(len(r) for r in held), "floor_groups": len(groups),
                           "definition": TONE_DEFINITION}
    for n, name in ((1, "unigram"), (2, "bigram")):
        ok = bool(rows) and bool(held) and width >= n
        out[f"jsd_{name}"] = tone_distance(rows, held, n) if ok else None
        whole = ngram_counts(held, n)
        floors = [jensen_shannon(ngram_counts([held[i][:width] for i in g], n),
                                 _minus(whole, ngram_counts([held[i] for i in g], n))) for g in groups] if ok else []
        out[f"floor_{name}"] = float(np.mean(floors)) if floors else None
        out[f"floor_{name}_sd"] = float(np.std(floors, ddof=1)) if len(floors) > 1 else None
    return out


def repetition_result(model: Any, tokenizer: Any, inputs: ProbeInputs, heldout_predictions: torch.Tensor,
                      heldout_tokens: torch.Tensor) -> dict:
    """The `repetition` entry of a result file. `heldout_predictions` [N, P] are the argmax
    next tokens on `heldout_tokens` [N, P+1] (shared with other probes)."""
    prompts = inputs.prompt_tokens.to(model_device(model))
    prompt_len = prompts.shape[1]
    n_ctx = shape_of(model)[2]
    n_new = max(1, min(inputs.sizes.max_new_tokens, n_ctx - prompt_len))
    k = SAMPLES_PER_PROMPT
    decodings = {
        "greedy": (generate(model, prompts, n_new, temperature=0.0), 1),
        "sampled": (generate(model, prompts.repeat_interleave(k, dim=0), n_new, temperature=inputs.sizes.temperature,
                             top_p=inputs.sizes.top_p, seed=sampling_seed(inputs.seed)), k),
    }
    result: dict[str, Any] = {"continuations": []}
    for name, (full, samples) in decodings.items():
        stats, rows = continuation_stats(model, full, prompt_len, samples)
        result[name] = stats
        for text, row in zip(inputs.prompt_texts, rows[::samples]):  # the first sample of each prompt
            result["continuations"].append({"prompt": text, "decoding": name,
                                            "text": tokenizer.decode(row["tokens"]), **row})
    rep, wrep = rep_wrep(heldout_predictions.cpu(), heldout_tokens.cpu(), REP_WINDOW)
    result[f"rep_{REP_WINDOW}"] = rep
    result[f"wrep_{REP_WINDOW}"] = wrep
    result["tone"] = tone_result(decodings["sampled"][0][::k, prompt_len:].cpu(), heldout_tokens.cpu())
    # the level real text shows: seq-rep-4 of the held-out rows cut to the continuations' length
    result["heldout_seq_rep_4"] = float(np.mean([seq_rep_n(r[:n_new], 4) for r in heldout_tokens.tolist()])) \
        if len(heldout_tokens) else None
    result["sampling"] = {"temperature": inputs.sizes.temperature, "top_p": inputs.sizes.top_p,
                          "seed": sampling_seed(inputs.seed), "samples_per_prompt": k}
    return result
