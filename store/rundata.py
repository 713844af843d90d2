"""What a run's data files mean: token arrays, fixed-length chunks, and which chunks training had
seen by a given step. Shared by train/ (which draws batches with it) and probes/ (which measures
memorization on exactly the sequences seen), so the two can never disagree.

Layout (see store.checkpoint for the rest of a run):
    runs/<name>/data.json            manifest: source, dtype, token counts, chunk_len, seed,
                                     global batch size, canaries
    runs/<name>/data/train.bin       uint16/uint32 tokens (model ids) of the training split
    runs/<name>/data/val.bin         the held-out split

A run imported from elsewhere (`python -m train.importer`) has data.json "training_data":
"unknown": its data/ holds only held-out probe text (an empty training split), its global batch
is null, and which sequences its training saw cannot be known, so nothing may be computed from
`seen_chunk_ids` for it (see `training_data_known`).

Training sample g (0-based, counted over the whole run in global-batch order) is chunk
`epoch_order(seed, n_chunks, g // n_chunks)[g % n_chunks]`; chunk c is tokens
[c*chunk_len, (c+1)*chunk_len + 1) (inputs plus the shifted targets). Optimizer step s (1-based)
consumes samples [(s-1)*B, s*B) with B = data.json["corpus_rows_per_step"] (corpus_rows_per_step).
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from store.runio import RunFileError, read_json
from store.runlayout import data_json, split_file

def read_data_meta(run_dir: str | os.PathLike) -> dict:
    meta = read_json(data_json(run_dir))
    if not isinstance(meta, dict):
        raise RunFileError(data_json(run_dir), "is not a JSON object")
    return meta


class RunData(NamedTuple):
    """What training reads at its start: data.json, the two splits' tokens, how many sequences of
    n_ctx + 1 tokens each split holds, and how many corpus sequences a step consumes."""
    meta: dict
    train: np.ndarray
    val: np.ndarray
    n_chunks: dict[str, int]
    corpus_rows_per_step: int | None


def load_run_data(run_dir: str | os.PathLike, n_ctx: int) -> RunData:
    meta = read_data_meta(run_dir)
    train, val = load_tokens(run_dir, "train", meta), load_tokens(run_dir, "val", meta)
    return RunData(meta, train, val, {"train": n_chunks(len(train), n_ctx), "val": n_chunks(len(val), n_ctx)},
                   corpus_rows_per_step(meta))


def training_data_known(meta: dict) -> bool:
    """False for an imported run, whose training data (and so every "seen" sequence and canary)
    is unknown: data.json says "training_data": "unknown"."""
    return meta.get("training_data") != "unknown"


def load_tokens(run_dir: str | os.PathLike, split: str, meta: dict | None = None) -> np.ndarray:
    """Memory-mapped tokens of one split (read-only). An empty split (an imported run has no
    training tokens) is an empty array: numpy cannot map an empty file."""
    meta = meta or read_data_meta(run_dir)
    path = split_file(run_dir, split)
    dtype = np.dtype(meta.get("dtype", "uint16"))
    if not path.exists():
        raise RunFileError(path, "token file is missing")
    if path.stat().st_size == 0:
        arr = np.zeros(0, dtype=dtype)
    else:
        arr = np.memmap(path, dtype=dtype, mode="r")
    expected = meta.get(f"n_{split}_tokens")
    if expected is not None and len(arr) != int(expected):
        raise RunFileError(path, f"holds {len(arr)} tokens, data.json says {expected}")
    return arr


def n_chunks(n_tokens: int, chunk_len: int) -> int:
    """How many (chunk_len + 1)-token windows with stride chunk_len fit in n_tokens."""
    return max(0, (int(n_tokens) - 1) // int(chunk_len))


@lru_cache(maxsize=64)
def epoch_order(seed: int, n: int, epoch: int) -> np.ndarray:
    """The seeded permutation of chunk ids used in one pass over the training chunks."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


def sample_chunk_ids(seed: int, n: int, start: int, stop: int) -> np.ndarray:
    """Chunk ids of global training samples start..stop-1."""
    if n <= 0:
        raise ValueError("there are no training chunks: the training split is shorter than one chunk.")
    g = np.arange(int(start), int(stop), dtype=np.int64)
    out = np.empty(len(g), dtype=np.int64)
    for epoch in np.unique(g // n):
        sel = (g // n) == epoch
        out[sel] = epoch_order(seed, n, int(epoch))[g[sel] % n]
    return out


def get_chunks(tokens: np.ndarray, ids: np.ndarray, chunk_len: int) -> np.ndarray:
    """[len(ids), chunk_len + 1] int64 windows."""
    idx = np.asarray(ids, dtype=np.int64)[:, None] * chunk_len + np.arange(chunk_len + 1)[None, :]
    return np.asarray(tokens[idx], dtype=np.int64)


def corpus_rows_per_step(meta: dict) -> int | None:
    """Corpus sequences one optimizer step consumes (planted repeats come on top), from data.json:
    "corpus_rows_per_step", or "global_batch" in runs written before it had that name (None for an
    imported run, whose training is unknown)."""
    rows = meta.get("corpus_rows_per_step", meta.get("global_batch"))
    return None if rows is None else int(rows)


def seen_chunk_ids(meta: dict, step: int) -> np.ndarray:
    """Sorted unique training chunk ids seen by optimizer step `step` (none at step 0). ValueError
    for an imported run, whose training data is unknown: no answer would be true."""
    if not training_data_known(meta):
        raise ValueError("the run was imported: which training sequences it saw is unknown.")
    n = n_chunks(meta["n_train_tokens"], meta["chunk_len"])
    stop = min(int(step) * corpus_rows_per_step(meta), n * 1_000_000)
    if stop <= 0:
        return np.zeros(0, dtype=np.int64)
    if stop >= n:
        return np.arange(n, dtype=np.int64)
    return np.unique(sample_chunk_ids(meta["seed"], n, 0, stop))


FREQUENT_COUNT_TOKENS = 5_000_000  # training tokens counted to find the frequent ones


def frequent_tokens(train: np.ndarray, vocab_size: int, exclude: set[int], n: int, count_tokens: int) -> np.ndarray:
    """The `n` most frequent token ids of (the start of) the training split, most frequent first, ties
    by id. The pool both training's planted repeats (train.planting) and the induction probe's random
    tokens are drawn from, so the probe speaks the vocabulary training used."""
    counts = np.bincount(np.asarray(train[:count_tokens], dtype=np.int64), minlength=vocab_size)
    for t in exclude:
        if 0 <= t < len(counts):
            counts[t] = 0
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[counts[order] > 0][:n]
