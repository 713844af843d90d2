"""The memorization probe: the Pythia score on a memorized sequence, continuation log-likelihoods
with the opening run once, canaries' candidates drawn from their randomness space and their
exposure, and the copy loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import probes
from model.config import GPTConfig
from model.gpt import GPT
from store.rundata import read_data_meta
from store.vocab import load_tokenizer
from probes.measure.canaries import Canary, canary_space, draw_candidates
from probes.measure.inputs import ProbeSizes, tokenize_canaries
from probes.measure.memorization import canary_results, continuation_nll, greedy_scores

from _runs import write_run

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("probes"), steps=(0, 3), canary_copies=(1, 8))


# -- memorization -----------------------------------------------------------------------------
def memorizer(sequence: torch.Tensor, steps: int = 150) -> GPT:
    """A tiny GPT trained on one sequence until it can recite it."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=97))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(steps):
        _, loss = m(sequence[None, :-1], targets=sequence[None, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_memorized_sequence_scores_one_and_random_init_scores_near_zero():
    gen = torch.Generator().manual_seed(3)
    seq = torch.randint(0, 95, (64,), generator=gen)
    other = torch.randint(0, 95, (64,), generator=gen)
    trained = memorizer(seq)
    scores, _ = greedy_scores(trained, torch.stack([seq, other]), 32, 32)
    assert scores[0] == 1.0
    assert scores[1] < 0.2
    torch.manual_seed(1)
    random_init = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=97)).eval()
    assert greedy_scores(random_init, seq[None], 32, 32)[0][0] <= 0.1

    class Tok:  # decode only, for the texts kept beside the numbers
        def decode(self, ids):
            return " ".join(str(i) for i in ids)
    alternatives = [torch.cat([seq[:32], torch.randint(0, 95, (32,), generator=gen)]).tolist() for _ in range(7)]
    canary = Canary(id="c", copies=8, text="", prefix=seq[:32].tolist(), suffix=seq[32:].tolist(),
                    candidates=[seq.tolist()] + alternatives)
    (group,) = canary_results(trained, Tok(), [canary])
    assert group["extracted_fraction"] == 1.0 and group["copies"] == 8
    assert group["exposure_rank"] == pytest.approx(math.log2(8))  # ranked first among 8 candidates
    assert group["exposure_rank_cap"] == pytest.approx(3.0)
    assert group["exposure"] == group["exposure_extrapolated"] > 3.0  # the headline goes past the cap
    (group,) = canary_results(random_init, Tok(), [canary])
    assert group["extracted_fraction"] == 0.0 and group["mean_score"] <= 0.1


class NotOurGPT(torch.nn.Module):
    """A hooked-model stand-in that is not `model.GPT` (as the TransformerLens bridge is not), so
    continuation_nll takes its full-recomputation path."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt, self.cfg = gpt, gpt.cfg

    def forward(self, tokens):
        return self.gpt(tokens)


@pytest.mark.parametrize("attention", ["standard", "gated", "linear"])
def test_continuation_nll_with_the_opening_run_once_equals_full_sequences(attention):
    """The cached opening must give the same secret log-perplexity as scoring head + tail in full
    (the naive reference: the whole sequence's summed loss minus the head's, one at a time)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=40, vocab_size=97, attention=attention)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(5)
    head = torch.randint(0, 97, (12,), generator=gen).tolist()
    tails = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (1, 5, 28, 28, 17)]
    def nll(seq: list[int]) -> float:  # summed over every token after the first, one sequence at a time
        seq = torch.tensor(seq)
        return torch.nn.functional.cross_entropy(m(seq[None, :-1])[0], seq[1:], reduction="sum").item()
    naive = [nll(head + t) - nll(head) for t in tails]
    assert continuation_nll(m, head, tails) == pytest.approx(naive, abs=1e-4)
    assert continuation_nll(NotOurGPT(m), head, tails) == pytest.approx(naive, abs=1e-4)
    with pytest.MonkeyPatch.context() as mp:  # chunks of 2 rows, each with its own copy of the cache
        mp.setattr(probes.measure.memorization, "logit_rows", lambda model, positions: 2)
        assert continuation_nll(m, head, tails) == pytest.approx(naive, abs=1e-4)
    assert len({round(v, 3) for v in naive}) == len(naive)  # the tails differ, so the check means something


WORDS = ["park", "forest", "beach", "garden", "farm", "ball", "sad", "boat", "hat", "cake", "book", "happy"]
OPENING = "Once upon a time, Tom and Mia went to the park. The secret words were:"


def spaced_canaries(copies: tuple[int, ...], per_count: int, n_words: int, seed: int) -> list[dict]:
    """Canaries in train.stories' format (opening, n_words one-token words drawn from WORDS, ".")
    with their randomness space recorded, per_count per copy count."""
    rng = np.random.default_rng(seed)
    out = []
    for c in copies:
        for j in range(per_count):
            words = [WORDS[i] for i in rng.integers(len(WORDS), size=n_words)]
            out.append({"id": f"c{c}-{j}", "copies": c, "prefix_tokens": 8,
                        "text": OPENING + " " + " ".join(words) + ".", "alternatives": [],
                        "prefix": OPENING, "secret_words": n_words, "secret_alphabet": WORDS})
    return out


def test_every_canary_gets_candidates_drawn_from_its_randomness_space(run):
    tok = load_tokenizer(run)
    meta = dict(read_data_meta(run), canaries=spaced_canaries((1, 8), 3, 6, seed=0))
    sizes = ProbeSizes(exposure_candidates=16)
    canaries = tokenize_canaries(meta, tok, sizes, n_ctx=64, seed=7)
    assert [c.source for c in canaries] == ["sampled"] * 6
    head = tok.encode(OPENING)
    word_tokens = {tuple(tok.encode(" " + w)) for w in WORDS}
    for c in canaries:
        assert len(c.candidates) == 16 and c.candidates[0] == tok.encode(c.text)
        assert c.space_log2 == pytest.approx(6 * math.log2(len(WORDS)))
        assert "|R| = 12^6" in c.space
        for cand in c.candidates:  # the opening, 6 words of the list, the full stop
            assert cand[:len(head)] == head and cand[-1:] == tok.encode(".")
            assert all((t,) in word_tokens for t in cand[len(head):-1]) and len(cand) == len(head) + 7
        assert len({tuple(x) for x in c.candidates[1:]}) > 10  # drawn, not copied
    again = tokenize_canaries(meta, tok, sizes, n_ctx=64, seed=7)
    assert [c.candidates for c in again] == [c.candidates for c in canaries]  # fixed by the run seed
    other = tokenize_canaries(meta, tok, sizes, n_ctx=64, seed=8)
    assert other[0].candidates[1:] != canaries[0].candidates[1:]
    # a model's context that cuts the secret: only the words it sees count in |R|
    cut = tokenize_canaries(meta, tok, sizes, n_ctx=len(head) + 2, seed=7)[0]
    assert cut.space_log2 == pytest.approx(3 * math.log2(len(WORDS)))  # 3 words in the n_ctx + 1 tokens
    assert all(len(x) == len(head) + 3 for x in cut.candidates)


def test_canaries_without_a_recorded_space_fall_back_to_their_listed_alternatives(run):
    tok = load_tokenizer(run)
    legacy = read_data_meta(run)  # the fixture's data.json lists alternatives and records no space
    (c, *_) = tokenize_canaries(legacy, tok, ProbeSizes(), n_ctx=64)
    assert c.source == "listed" and c.space_log2 is None
    assert len(c.candidates) == 1 + len(legacy["canaries"][0]["alternatives"])
    # a recorded space the text does not follow is not trusted either
    bad = spaced_canaries((1,), 1, 6, seed=0)[0]
    assert canary_space(bad) is not None
    assert canary_space({**bad, "text": bad["text"].replace(".", " and more.")}) is None
    assert canary_space({**bad, "secret_words": 5}) is None
    assert canary_space({**bad, "secret_alphabet": WORDS[:3]}) is None


def test_every_canary_of_a_group_has_an_exposure_with_its_method(run):
    tok = load_tokenizer(run)
    meta = dict(read_data_meta(run), canaries=spaced_canaries((1, 8), 3, 6, seed=0))
    canaries = tokenize_canaries(meta, tok, ProbeSizes(exposure_candidates=16), n_ctx=32, seed=7)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=32, vocab_size=tok.vocab_size)).eval()
    groups = canary_results(model, tok, canaries)
    assert [g["copies"] for g in groups] == [1, 8] and all(g["n"] == 3 for g in groups)
    for g in groups:
        assert all(it["exposure"] is not None and it["exposure_rank"] is not None for it in g["items"])
        assert g["exposure"] == pytest.approx(np.mean([it["exposure"] for it in g["items"]]))
        assert g["n_candidates"] == 16 and g["exposure_rank_cap"] == pytest.approx(4.0)
        assert g["randomness_space_log2"] == pytest.approx(6 * math.log2(12))
        assert "12^6" in g["randomness_space"]
        method = g["exposure_method"]
        assert "extrapolated" in method and "log2|R| = 21.5" in method and "15 candidates drawn" in method
        assert "capped at log2 16 = 4.0 bits" in method


def test_the_stories_canaries_record_the_space_the_probes_draw_from():
    from train.stories import make_canaries
    from train.words import copy_words
    canaries = make_canaries(3, copies=(1, 4), per_count=2, n_alternatives=3)
    for c in canaries:
        space = canary_space(c)
        assert space is not None and space.alphabet == copy_words() and space.n_words == 36
        assert space.prefix == c["text"][:len(space.prefix)]
        for alt in c["alternatives"]:  # the listed alternatives are draws from the same space
            assert space.words_of(alt) is not None and alt.startswith(space.prefix)


def test_a_memorized_canary_has_an_exposure_far_beyond_the_rank_cap():
    """A canary of 24 tokens drawn from 40 (|R| = 40^24 = 2^127.7) after a 32-token opening: once
    a model recites it, the rank exposure saturates at log2 64 = 6 while the extrapolated one
    keeps going; on a random-init model both are small."""
    gen = torch.Generator().manual_seed(11)
    head = torch.randint(0, 95, (32,), generator=gen).tolist()
    alphabet = [[t] for t in range(40, 80)]
    rng = np.random.default_rng(4)
    secret = draw_candidates(head, alphabet, [], 24, 1, rng)[0]
    candidates = [secret] + draw_candidates(head, alphabet, [], 24, 63, rng)
    canary = Canary(id="c", copies=64, text="", prefix=head, suffix=secret[32:], candidates=candidates,
                    source="sampled", space_log2=24 * math.log2(40), space="24 tokens drawn from 40")

    class Tok:
        def decode(self, ids):
            return " ".join(str(i) for i in ids)
    trained = memorizer(torch.tensor(secret))
    (group,) = canary_results(trained, Tok(), [canary])
    (item,) = group["items"]
    assert item["extracted"] and item["exposure_rank"] == pytest.approx(6.0)  # at its cap
    assert item["exposure"] > 30.0, item  # far beyond log2 64, and below log2|R|
    assert item["exposure"] <= 24 * math.log2(40)
    torch.manual_seed(1)
    random_init = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=97)).eval()
    (group,) = canary_results(random_init, Tok(), [canary])
    assert group["exposure"] < 6.0 and group["items"][0]["exposure_rank"] < 6.0


def test_copy_loss_separates_copy_positions_from_the_rest():
    from probes.measure.attention import HeldoutPatternStats
    tokens = torch.tensor([[9, 1, 2, 3, 7, 1, 2, 3, 8]])  # one copy query: position 6 (see test_metrics)
    stats = HeldoutPatternStats(1, tokens, entropy=False, copying=True)
    losses = torch.arange(8, dtype=torch.float32)[None]
    stats.record_losses(losses)
    assert stats.copy_loss == {"copy_positions": 6.0, "other_positions": pytest.approx((28 - 6) / 7)}
