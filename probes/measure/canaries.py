"""A planted canary and the randomness space its secret is drawn from, as data.json records them:
the space R itself, uniform draws from it in token space, and the tokenized `Canary` with the
candidates its exposure is measured against (probes/measure/memorization.py scores them). Pure data and
draws; tokenizing a run's canaries with its tokenizer and seeds is probes.measure.inputs.tokenize_canaries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RandomnessSpace:
    """Where a canary's random part comes from, as data.json records it (train.stories writes it):
    the text is `prefix` + " " + `n_words` words joined by spaces + ".", each word drawn uniformly
    and independently from `alphabet`, so |R| = len(alphabet) ** n_words."""

    prefix: str
    alphabet: tuple[str, ...]
    n_words: int

    def words_of(self, text: str) -> list[str] | None:
        """The drawn words of `text`, or None when the text does not have this form."""
        if not (text.startswith(self.prefix + " ") and text.endswith(".")):
            return None
        words = text[len(self.prefix) + 1:-1].split(" ")
        allowed = set(self.alphabet)
        return words if len(words) == self.n_words and all(w in allowed for w in words) else None

    def describe(self, n_words: int | None = None) -> str:
        k = self.n_words if n_words is None else n_words
        return (f"{k} words drawn uniformly from a list of {len(self.alphabet)}: |R| = {len(self.alphabet)}^{k}"
                f" = 2^{k * math.log2(len(self.alphabet)):.1f}")


def canary_space(canary: dict) -> RandomnessSpace | None:
    """The randomness space a data.json canary records ("prefix", "secret_alphabet", "secret_words"),
    or None when it records none (runs made before it was recorded) or its text does not follow it."""
    prefix, alphabet, n_words = canary.get("prefix"), canary.get("secret_alphabet"), canary.get("secret_words")
    if not isinstance(prefix, str) or not isinstance(alphabet, list) or len(alphabet) < 2:
        return None
    if isinstance(n_words, bool) or not isinstance(n_words, int) or n_words < 1:
        return None
    if not all(isinstance(w, str) and w and " " not in w for w in alphabet):
        return None
    space = RandomnessSpace(prefix, tuple(dict.fromkeys(alphabet)), n_words)
    return space if space.words_of(str(canary.get("text", ""))) is not None else None


def draw_candidates(head: list[int], word_tokens: list[list[int]], tail: list[int], n_words: int, n: int,
                    rng: np.random.Generator) -> list[list[int]]:
    """`n` samples of a canary's randomness space in token space: the shared opening `head`, then
    `n_words` words drawn uniformly with replacement (word i is the tokens `word_tokens[i]`), then
    `tail`. Uniform draws make the candidates' log-perplexities a sample of the distribution over
    all of R, which is what both exposures estimate."""
    picks = rng.integers(len(word_tokens), size=(n, n_words))
    return [head + [t for i in row for t in word_tokens[i]] + tail for row in picks.tolist()]


@dataclass
class Canary:
    """A planted sequence tokenized with the run tokenizer, split for extraction, with the
    candidates its exposure is measured against (itself first, all truncated to n_ctx + 1 tokens).

    `source` says where the other candidates come from: "sampled" (drawn at probe time from the
    randomness space R, whose size over the scored tokens is 2^space_log2), "listed" (the
    alternatives data.json lists, for runs that do not record R; |R| unknown) or "none"."""

    id: str
    copies: int
    text: str
    prefix: list[int]
    suffix: list[int]
    candidates: list[list[int]]
    source: str = "listed"
    space_log2: float | None = None
    space: str | None = None
