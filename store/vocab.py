"""A run's vocabulary on disk: vocab.json written atomically, and the tokenizer of a run folder
(its compact vocabulary, or full GPT-2 when it has none). The tokenizer itself is model.tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

from model.tokenizer import CompactVocab, Tokenizer
from model.tokenizer import load_tokenizer as tokenizer_of
from store.runio import write_json_atomic
from store.runlayout import vocab_json


def save_vocab(vocab: CompactVocab, path: str | os.PathLike) -> None:
    """vocab.json (or any path) written atomically."""
    write_json_atomic(path, vocab.to_json())


def load_tokenizer(vocab: CompactVocab | str | os.PathLike | None = None) -> Tokenizer:
    """The GPT-2 tokenizer; with `vocab` (a CompactVocab, a vocab.json, or a run folder holding
    one) mapped into that compact vocabulary. A run folder without vocab.json uses full GPT-2."""
    if vocab is not None and not isinstance(vocab, CompactVocab) and Path(vocab).is_dir():
        path = vocab_json(Path(vocab))
        return tokenizer_of(path if path.exists() else None)
    return tokenizer_of(vocab)
