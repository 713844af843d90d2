"""Held-out rows that start at a document's start, for the in-context-learning score
(probes.measure.induction.icl_score): positions count from the story's start, so the late window never
falls into the next, unrelated story.
"""
from __future__ import annotations

import numpy as np
import torch

DOCUMENT_STREAM = 6  # the rows' sub-seed, mixed with the run seed (probes.measure.inputs lists the others)


def document_rows(val: np.ndarray, eot: int, length: int, n: int, seed: int
                  ) -> tuple[torch.LongTensor, torch.LongTensor] | None:
    """Up to `n` held-out rows of `length` tokens that each begin with the <|endoftext|> opening a
    document (seeded choice among those that fit), and per row how many leading positions predict
    tokens of that document (its closing <|endoftext|> included). None when no row fits: then the
    ICL score falls back to held-out chunks. Positions in these rows count from the story start,
    which is what the in-context-learning score needs: in a chunk of a token stream, the late
    window may fall into the next, unrelated story."""
    val = np.asarray(val)
    starts = np.flatnonzero(val[: max(0, len(val) - length + 1)] == eot)
    if len(starts) == 0:
        return None
    chosen = np.sort(starts[np.random.default_rng([int(seed), DOCUMENT_STREAM]).permutation(len(starts))[:n]])
    rows = np.stack([val[s:s + length] for s in chosen]).astype(np.int64)
    ends = rows[:, 1:] == eot
    valid = np.where(ends.any(1), ends.argmax(1) + 1, length - 1)
    return torch.from_numpy(rows), torch.from_numpy(valid.astype(np.int64))
