"""Documents -> token memmaps, tokenized once and cached by content hash.

The cache (runs/.cache/tokens/<hash>/, or $WORKBENCH_CACHE/tokens/<hash>/; see
store.runlayout.token_cache_root) holds the final model-id
arrays (and the compact vocab), so a second run on the same corpus only hashes the text and
hard-links the files into its own data/ folder. Each document is tokenized on its own and followed
by <|endoftext|>, so a planted canary has the same tokens in the stream as when encoded alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from store.runio import temp_folder, write_json_atomic
from store.runlayout import VOCAB_JSON, token_cache_root
from model.tokenizer import EOT, GPT2_EOT_ID, GPT2_VOCAB_SIZE, CompactVocab, gpt2_encoding, in_model_ids

from .corpora import Corpus

PIPELINE_VERSION = 1
BATCH_DOCS = 2000


@dataclass
class Tokenized:
    dir: Path  # the cache folder holding train.bin, val.bin, info.json (and vocab.json)
    info: dict
    cache_hit: bool

    @property
    def vocab(self) -> CompactVocab | None:
        p = self.dir / VOCAB_JSON
        return CompactVocab.load(p) if p.exists() else None


def content_key(corpus: Corpus, vocab_size: int | None) -> str:
    """sha256 of everything the token files depend on: text, split, vocab choice, pipeline version."""
    h = hashlib.sha256(f"v{PIPELINE_VERSION}|vocab={vocab_size}|".encode())
    for name, docs in (("train", corpus.train), ("val", corpus.val)):
        h.update(f"|{name}:{len(docs)}|".encode())
        for d in docs:
            h.update(d.encode())
            h.update(b"\x00")
    return h.hexdigest()[:32]


def encode_docs(docs: list[str], desc: str) -> np.ndarray:
    """GPT-2 ids of the documents, each followed by <|endoftext|>, batched with a progress bar."""
    enc = gpt2_encoding()
    parts: list[np.ndarray] = []
    eot = np.array([GPT2_EOT_ID], dtype=np.int64)
    bar = tqdm(total=len(docs), desc=f"tokenizing {desc}", unit="doc", leave=False, disable=len(docs) < 5000)
    for i in range(0, len(docs), BATCH_DOCS):
        batch = docs[i:i + BATCH_DOCS]
        for ids in enc.encode_batch(batch, allowed_special={EOT}, num_threads=2):
            parts.append(np.asarray(ids, dtype=np.int64))
            parts.append(eot)
        bar.update(len(batch))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def tokenize(corpus: Corpus, vocab_size: int | None, runs_root: Path,
             check: Callable[[dict], None] | None = None) -> Tokenized:
    """Token files for `corpus`, from the cache when it already holds them. `check(info)` (the
    counts info.json holds) may refuse the corpus (e.g. too few tokens for one sequence): it runs
    before anything is written, so a refused corpus leaves no cache entry behind."""
    key = content_key(corpus, vocab_size)
    final = token_cache_root(runs_root) / key
    if cache_valid(final):
        info = json.loads((final / "info.json").read_text())
        if check is not None:
            check(info)
        return Tokenized(final, info, True)
    tokens = encode_corpus(corpus, vocab_size, key)
    if check is not None:
        check(tokens.info)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        info = write_token_files(tmp, tokens)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same corpus first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not cache_valid(final):
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Tokenized(final, info, False)


@dataclass
class Encoded:
    """A corpus tokenized in memory: the model ids of each split, the compact vocabulary (None for
    GPT-2's) and the info.json its cache entry will hold."""
    train: np.ndarray
    val: np.ndarray
    vocab: CompactVocab | None
    info: dict


def encode_corpus(corpus: Corpus, vocab_size: int | None, key: str) -> Encoded:
    """`corpus` tokenized in memory (nothing is written: tokenize checks it first)."""
    train = encode_docs(corpus.train, "train")
    val = encode_docs(corpus.val, "held-out")
    vocab, (train_ids, val_ids) = in_model_ids([train, val], vocab_size)
    n_vocab, unk = (vocab.size, vocab.unk_id) if vocab else (GPT2_VOCAB_SIZE, -1)
    dtype = np.uint16 if n_vocab <= 65536 else np.uint32
    info = {
        "key": key, "dtype": np.dtype(dtype).name, "vocab_size": n_vocab,
        "tokenizer": {"kind": "compact" if vocab else "gpt2", "vocab_size": n_vocab},
        "n_train_tokens": int(len(train_ids)), "n_val_tokens": int(len(val_ids)),
        "n_train_docs": len(corpus.train), "n_val_docs": len(corpus.val),
        "distinct_gpt2_tokens": int(np.count_nonzero(np.bincount(train, minlength=GPT2_VOCAB_SIZE))),
        "unk_fraction_train": float(np.mean(train_ids == unk)) if len(train_ids) else 0.0,
        "unk_fraction_val": float(np.mean(val_ids == unk)) if len(val_ids) else 0.0,
        "train_chars": sum(len(d) for d in corpus.train), "val_chars": sum(len(d) for d in corpus.val),
    }
    return Encoded(train_ids, val_ids, vocab, info)


def write_token_files(folder: Path, tokens: Encoded) -> dict:
    """The cache entry's files in `folder` (fsynced; tokenize renames the folder into place)."""
    dtype = np.dtype(tokens.info["dtype"])
    for name, arr in (("train", tokens.train), ("val", tokens.val)):
        with open(folder / f"{name}.bin", "wb") as f:
            arr.astype(dtype).tofile(f)
            f.flush()
            os.fsync(f.fileno())
    if tokens.vocab is not None:
        write_json_atomic(folder / VOCAB_JSON, tokens.vocab.to_json())
    write_json_atomic(folder / "info.json", tokens.info)
    return tokens.info


def cache_valid(folder: Path) -> bool:
    """A cache entry is usable when its info.json exists and the files have the sizes it states."""
    try:
        info = json.loads((folder / "info.json").read_text())
        size = np.dtype(info["dtype"]).itemsize
        return ((folder / "train.bin").stat().st_size == info["n_train_tokens"] * size
                and (folder / "val.bin").stat().st_size == info["n_val_tokens"] * size)
    except (OSError, ValueError, KeyError, TypeError):
        return False
