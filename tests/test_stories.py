"""The built-in stories corpus: determinism, variety, canaries planted exactly as recorded, and a
held-out split that shares nothing with training."""
import hashlib
import re
from collections import Counter

import pytest

from store.vocab import load_tokenizer
from train.story_plots import PLOTS
from train.stories import (CANARY_PREFIX_TOKENS, DEFAULT_COPIES, build_stories, generate_stories,
                           make_canaries)


@pytest.fixture(scope="module")
def corpus():
    return build_stories(seed=7, train_chars=600_000, val_chars=60_000)


def digest(docs):
    return hashlib.sha256("\x00".join(docs).encode()).hexdigest()


def test_same_seed_is_byte_identical(corpus):
    again = build_stories(seed=7, train_chars=600_000, val_chars=60_000)
    assert digest(again.train) == digest(corpus.train)
    assert digest(again.val) == digest(corpus.val)
    assert again.canaries == corpus.canaries


def test_other_seed_gives_other_stories():
    a, b = generate_stories(1, "train", 20_000), generate_stories(2, "train", 20_000)
    assert not set(a) & set(b)


def test_canary_copies_exactly_as_recorded(corpus):
    counts = Counter(corpus.train)
    assert sorted({c["copies"] for c in corpus.canaries}) == list(DEFAULT_COPIES)
    assert len(corpus.canaries) == 4 * len(DEFAULT_COPIES)
    for c in corpus.canaries:
        assert counts[c["text"]] == c["copies"], c["id"]
        # nor hidden inside another document
        assert sum(d.count(c["text"]) for d in corpus.train) == c["copies"]
    n_canary_docs = sum(c["copies"] for c in corpus.canaries)
    assert len(corpus.train) == len(generate_stories(7, "train", 600_000)) + n_canary_docs


def test_held_out_shares_no_story_or_canary_with_training(corpus):
    train = set(corpus.train)
    assert len(corpus.val) > 10
    assert not train & set(corpus.val)
    joined_val = "\n".join(corpus.val)
    for c in corpus.canaries:
        assert c["text"] not in joined_val
        assert not set(c["alternatives"]) & train


def test_canaries_have_the_shape_probes_need(corpus):
    tok = load_tokenizer()
    prefixes = set()
    for c in corpus.canaries:
        ids = tok.encode(c["text"])
        assert 64 <= len(ids) <= 128
        assert c["prefix_tokens"] == CANARY_PREFIX_TOKENS == 32
        prefix = ids[:32]
        prefixes.add(tuple(prefix))
        assert len(c["alternatives"]) >= 63 and len(set(c["alternatives"])) == len(c["alternatives"])
        for alt in c["alternatives"][:8]:
            alt_ids = tok.encode(alt)
            assert alt_ids[:32] == prefix and len(alt_ids) == len(ids)
            assert alt_ids[32:64] != ids[32:64]
    assert len(prefixes) == len(corpus.canaries)  # every canary is recognisable by its prefix


def test_canaries_are_deterministic_and_configurable():
    a = make_canaries(3, copies=(1, 5), per_count=2, n_alternatives=63)
    assert a == make_canaries(3, copies=(1, 5), per_count=2, n_alternatives=63)
    assert [c["copies"] for c in a] == [1, 1, 5, 5]


def test_vocabulary_and_variety(corpus):
    text = "\n".join(corpus.train)
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert len(words) >= 1000
    canary_texts = {c["text"] for c in corpus.canaries}
    stories = [s for s in corpus.train if s not in canary_texts][:2000]
    assert sum('"' in s for s in stories) / len(stories) > 0.8  # dialogue
    assert sum("moral" in s.lower() for s in stories) > 100  # morals
    # names recur inside a story: the first name mentioned appears again
    recurring = 0
    for s in stories:
        names = re.findall(r"named ([A-Z][a-z]+)|^There once was an? \w+ called ([A-Z][a-z]+)|^([A-Z][a-z]+) was", s)
        name = next((n for group in names for n in group if n), None)
        recurring += name is not None and s.count(name) >= 2
    assert recurring / len(stories) > 0.9
    assert len(PLOTS) >= 15


def test_every_plot_is_used(corpus):
    openers = {"lost": "lost the", "share": "forgot my lunch", "fear": "was scared of", "quarrel": "It is my turn",
               "trip": "went on a trip", "animal": "I will help you", "build": "wanted to build",
               "gift": "birthday", "rain": "had to stay inside", "memory": "memory game", "packing": "packed",
               "password": "The password is", "song": "made up a song", "wave": "wave to each other",
               "truth": "telling the truth", "skill": "wanted to learn to", "garden": "seed in the",
               "count": "counted:", "echo": "echo game", "parrot": "never forgets a word"}
    text = "\n".join(corpus.train)
    for name, marker in openers.items():
        assert text.count(marker) > 20, name
