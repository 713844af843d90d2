"""Repetition probe: continuations of fixed prompts, greedy and sampled (nucleus, fixed seed),
scored for repeated n-grams, diversity, loops and predictive entropy; plus the teacher-forced
rep/wrep of Welleck et al. (2019) on held-out text, which measures the same tendency without
letting the model feed on its own output.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .forward import generate, model_device, shape_of, token_stats
from .inputs import SAMPLING_STREAM, ProbeInputs, sub_seed
from .metrics import distinct_n, find_loop, rep_wrep, seq_rep_n

REP_WINDOW = 128


def sampling_seed(seed: int) -> int:
    return int(sub_seed(seed, SAMPLING_STREAM).integers(2**31 - 1))


@torch.no_grad()
def continuation_stats(model: Any, full: torch.Tensor, prompt_len: int) -> tuple[dict, list[dict]]:
    """Metrics of the continuations full[:, prompt_len:], and per-row details."""
    cont = full[:, prompt_len:]
    # The distribution each continuation token was drawn from (before any top-p truncation), its
    # entropy read out a chunk of positions at a time (no [B, P, V] logits).
    ent = token_stats(model, full[:, :-1], full[:, 1:], entropy=True).entropy[:, prompt_len - 1:].double()
    rows = []
    for i, row in enumerate(cont.tolist()):
        loop = find_loop(row)
        rows.append({"tokens": row, "seq_rep_4": seq_rep_n(row, 4), "distinct_1": distinct_n(row, 1),
                     "distinct_2": distinct_n(row, 2), "loop_start": None if loop is None else loop[0],
                     "loop_period": None if loop is None else loop[1],
                     "predictive_entropy": float(ent[i].mean())})
    stats = {key: float(np.mean([r[key] for r in rows]))
             for key in ("seq_rep_4", "distinct_1", "distinct_2", "predictive_entropy")}
    stats["loop_fraction"] = float(np.mean([r["loop_start"] is not None for r in rows]))
    stats["new_tokens"] = int(cont.shape[1])
    return stats, rows


def repetition_result(model: Any, tokenizer: Any, inputs: ProbeInputs, heldout_predictions: torch.Tensor,
                      heldout_tokens: torch.Tensor) -> dict:
    """The `repetition` entry of a result file. `heldout_predictions` [N, P] are the argmax
    next tokens on `heldout_tokens` [N, P+1] (shared with other probes)."""
    prompts = inputs.prompt_tokens.to(model_device(model))
    prompt_len = prompts.shape[1]
    n_ctx = shape_of(model)[2]
    n_new = max(1, min(inputs.sizes.max_new_tokens, n_ctx - prompt_len))
    decodings = {
        "greedy": generate(model, prompts, n_new, temperature=0.0),
        "sampled": generate(model, prompts, n_new, temperature=inputs.sizes.temperature,
                            top_p=inputs.sizes.top_p, seed=sampling_seed(inputs.seed)),
    }
    result: dict[str, Any] = {"continuations": []}
    for name, full in decodings.items():
        stats, rows = continuation_stats(model, full, prompt_len)
        result[name] = stats
        for text, row in zip(inputs.prompt_texts, rows):
            result["continuations"].append({"prompt": text, "decoding": name,
                                            "text": tokenizer.decode(row["tokens"]), **row})
    rep, wrep = rep_wrep(heldout_predictions.cpu(), heldout_tokens.cpu(), REP_WINDOW)
    result[f"rep_{REP_WINDOW}"] = rep
    result[f"wrep_{REP_WINDOW}"] = wrep
    result["sampling"] = {"temperature": inputs.sizes.temperature, "top_p": inputs.sizes.top_p,
                          "seed": sampling_seed(inputs.seed)}
    return result
