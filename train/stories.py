"""The built-in `stories` corpus: simple children's stories generated from a seed, plus canaries.

Why generated: the workbench must train a model that shows real phenomena in minutes on a CPU,
with no downloads. The stories are a real learning problem (over 1,000 distinct words, many plots,
dialogue, objects, places, feelings, morals) with the structure small models learn quickly:
names recur inside a story, and six plots repeat a random list of words (a memory game, an echo
game, a parrot, a packing list, a password, a song), which can only be predicted by copying from
earlier in the context: in-distribution material for the copying and induction probes.

Canaries are story-like sequences made of a unique 32-token opening and a secret of random words,
each planted a known number of times in the training split, so memorization can be measured
against duplication (Carlini et al.). Each records its randomness space (the opening, the number
of secret words and the word list they are drawn from uniformly: text = opening + " " + words +
"."), from which the probes draw exposure candidates, and lists alternatives with the same opening
and other secrets, never trained on (what older probes ranked it against).

Everything is a pure function of the seed: the same seed gives byte-identical text.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from model.tokenizer import gpt2_encoding

from . import words as W
from .story_plots import Pen, a, random_words, story
from .words import copy_words

CANARY_PREFIX_TOKENS = 32
CANARY_SECRET_WORDS = 36
DEFAULT_COPIES = (1, 2, 4, 8, 16, 32, 64)


def seeded_pen(seed: int, stream: int) -> Pen:
    """The Pen of one of the seed's streams (each story split, the canaries)."""
    return Pen(np.random.default_rng([int(seed), int(stream)]))


def generate_stories(seed: int, stream: str, n_chars: int, copy_weight: float = 1.0, burstiness: float = 0.0,
                     episodes: int = 1) -> list[str]:
    """Stories from the seeded stream `stream` ("train", "val", ...) until n_chars characters."""
    pen = seeded_pen(seed, zlib.crc32(stream.encode()))
    out, total = [], 0
    while total < n_chars:
        s = story(pen, copy_weight, burstiness, episodes)
        out.append(s)
        total += len(s) + 1
    return out


# -- canaries --------------------------------------------------------------------------------
CANARY_WHEN = ("Every night", "One day", "Each morning", "Long ago")
CANARY_KINDS = ("secret", "magic", "special", "hidden")


def canary_prefix(pen: Pen) -> str:
    """A story-like opening of exactly CANARY_PREFIX_TOKENS GPT-2 tokens, ending in a colon."""
    enc = gpt2_encoding()
    for _ in range(10_000):
        name, adjective, animal, home, near, when, color, thing, kind = (pen.pick(options) for options in (
            W.GIRLS + W.BOYS + W.PET_NAMES, W.ADJECTIVES, W.ANIMALS, W.PLACES, W.PLACES, CANARY_WHEN, W.COLORS,
            W.OBJECTS, CANARY_KINDS))
        text = (f"{name} the {adjective} {animal} lived in the {home} near the {near}. {when} {name} found "
                f"{a(color)} {thing} with a note, and the note said the {kind} words:")
        if len(enc.encode(text)) == CANARY_PREFIX_TOKENS:
            return text
    raise RuntimeError("could not build a 32-token canary prefix")  # never happens with these lists


def canary_secret(pen: Pen) -> str:
    return " " + " ".join(random_words(pen, CANARY_SECRET_WORDS)) + "."


def make_canaries(seed: int, copies: tuple[int, ...] = DEFAULT_COPIES, per_count: int = 4,
                  n_alternatives: int = 63) -> list[dict]:
    """`per_count` canaries for each copy count, each with `n_alternatives` same-prefix texts and
    its randomness space ("prefix", "secret_words", "secret_alphabet")."""
    pen = seeded_pen(seed, 7919)
    out, prefixes = [], set()
    for n in copies:
        for j in range(per_count):
            prefix = canary_prefix(pen)
            while prefix in prefixes:
                prefix = canary_prefix(pen)
            prefixes.add(prefix)
            text = prefix + canary_secret(pen)
            alts: list[str] = []
            while len(alts) < n_alternatives:
                alt = prefix + canary_secret(pen)
                if alt != text and alt not in alts:
                    alts.append(alt)
            out.append({"id": f"canary-{n}x-{j}", "text": text, "copies": int(n),
                        "prefix_tokens": CANARY_PREFIX_TOKENS, "alternatives": alts,
                        # the randomness space R the secret was drawn from, so probes can draw
                        # their own candidates from it and know |R| = len(alphabet) ** words
                        "prefix": prefix, "secret_words": CANARY_SECRET_WORDS,
                        "secret_alphabet": list(copy_words())})
    return out


def plant(docs: list[str], canaries: list[dict], seed: int) -> list[str]:
    """Insert each canary `copies` times at seeded random places among `docs` (a new list)."""
    rng = np.random.default_rng([int(seed), 104729])
    inserts = [c["text"] for c in canaries for _ in range(c["copies"])]
    n = len(docs) + len(inserts)
    slots = np.sort(rng.choice(n, size=len(inserts), replace=False))
    order = rng.permutation(len(inserts))
    out: list[str] = []
    it_doc = iter(docs)
    slot_set = dict(zip(slots.tolist(), order.tolist()))
    for i in range(n):
        out.append(inserts[slot_set[i]] if i in slot_set else next(it_doc))
    return out


@dataclass
class StoriesCorpus:
    train: list[str]  # documents in training order, canary copies included
    val: list[str]
    canaries: list[dict] = field(default_factory=list)


def build_stories(seed: int, train_chars: int, val_chars: int, copies: tuple[int, ...] = DEFAULT_COPIES,
                  per_count: int = 4, copy_weight: float = 1.0, burstiness: float = 0.0,
                  episodes: int = 1) -> StoriesCorpus:
    """The whole corpus. The held-out split comes from its own stream of the same generator, with
    any story that also occurs in training removed, and never holds a canary."""
    train = generate_stories(seed, "train", train_chars, copy_weight, burstiness, episodes)
    seen = set(train)
    val = [s for s in generate_stories(seed, "val", val_chars, copy_weight, burstiness, episodes) if s not in seen]
    canaries = make_canaries(seed, tuple(copies), per_count) if copies else []
    return StoriesCorpus(plant(train, canaries, seed), val, canaries)
