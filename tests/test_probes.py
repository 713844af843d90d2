"""Probes on models: ablation against independent references, memorization on a model trained
here, probe inputs fixed by the run seed, and probes on the TransformerLens bridge equal to
probes on our GPT."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import probes
from model.config import GPTConfig
from model.gpt import GPT
from model.rundata import read_data_meta, seen_chunk_ids, get_chunks, load_tokens
from model.tokenizer import load_tokenizer
from probes.ablation import ablate, head_ablation_sweep
from probes.compute import compute_probes
from probes.canaries import Canary, canary_space, draw_candidates
from probes.inputs import ProbeSizes, probe_inputs, tokenize_canaries
from probes.memorization import canary_results, continuation_nll, greedy_scores

from _ablation import naive_head_ablation
from _runs import write_run

SMALL = ProbeSizes(n_ablation=4, n_attention=5, n_memorization=6, n_random=2, max_new_tokens=12, n_frequent=200)

# Every key a result file must hold, as dotted paths.
REQUIRED_KEYS = [
    "step", "tokens",
    "head_ablation.clean_loss", "head_ablation.zero", "head_ablation.kinds", "head_ablation.gini.zero",
    "head_ablation.top_share.zero", "head_ablation.delta_se.zero",
    *[f"head_ablation.attribution.{k}" for k in ("zero", "mean", "resample")],
    "head_ablation.attribution_agreement.zero",
    "head_ablation.precision.target_se", "head_ablation.precision.achieved_se",
    "head_ablation.precision.n_sequences", "head_ablation.precision.tokens",
    "attention_entropy.raw", "attention_entropy.normalized", "attention_entropy.sink_mass",
    "memorization.seen.mean_score", "memorization.seen.memorized_fraction", "memorization.seen.n",
    "memorization.held_out.mean_score", "memorization.held_out.memorized_fraction", "memorization.held_out.n",
    "memorization.canaries", "memorization.loss_gap",
    *[f"repetition.{d}.{k}" for d in ("greedy", "sampled")
      for k in ("seq_rep_4", "distinct_1", "distinct_2", "loop_fraction", "predictive_entropy")],
    "repetition.rep_128", "repetition.wrep_128", "repetition.continuations",
    "induction.induction", "induction.previous_token", "induction.duplicate_token", "induction.in_context_copying",
    "induction.icl_score.value", "induction.icl_score.early_position", "induction.icl_score.late_position",
]


def get(d: dict, path: str):
    for part in path.split("."):
        d = d[part]
    return d


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, n_ctx=24, vocab_size=97)).eval()
    with torch.no_grad():  # biases and LayerNorms away from init, so every parameter matters
        for name, p in m.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (5, 21), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("probes"), steps=(0, 3), canary_copies=(1, 8))


# -- ablation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_batched_sweep_equals_a_naive_loop_of_single_head_hooks(model, tokens, kind):
    """The naive reference (tests/_ablation.py) is one plain run_with_hooks per head, not ablate()."""
    perm = probes.ablation.resample_permutation(5, 0)
    assert sorted(perm.tolist()) == list(range(5)) and all(perm[i] != i for i in range(5))
    naive = naive_head_ablation(model, tokens, kind).mean(-1)  # every sequence has the same length
    sweep = head_ablation_sweep(model, tokens, kind)
    assert sweep.shape == (3, 4)
    assert np.abs(sweep - naive).max() <= 1e-5
    assert np.abs(naive).max() > 1e-3  # the heads matter, so the comparison means something
    single = ablate(model, tokens, [(1, 2)], kind)
    assert single["delta"] == pytest.approx(naive[1, 2], abs=1e-5)
    # a memory budget too small for all heads of a layer at once splits them into groups of 3 + 1
    # and of 1 each: the same numbers
    for rows in (3 * 5, 1):
        calls = []

        def budget(model, positions, rows=rows):
            calls.append(positions)
            return rows
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(probes.ablation, "sweep_rows", budget)
            grouped = head_ablation_sweep(model, tokens, kind)
        assert calls, "the sweep no longer asks for its memory budget"
        assert np.abs(grouped - naive).max() <= 1e-5, rows


def test_zero_ablating_every_head_of_a_layer_leaves_only_the_output_bias(model, tokens):
    layer = 1
    bias = model.blocks[layer].attn.c_proj.bias.detach()
    reference = model.run_with_hooks(tokens[:, :-1], fwd_hooks=[
        (f"blocks.{layer}.hook_attn_out", lambda out, hook: bias.expand_as(out).clone())])
    ablated = ablate(model, tokens, [(layer, h) for h in range(4)], "zero")
    assert (ablated["logits"] - reference).abs().max().item() <= 1e-5
    clean = model(tokens[:, :-1])
    assert (clean - reference).abs().max().item() > 1e-3


def test_ablate_with_no_heads_changes_nothing_and_bad_input_is_refused(model, tokens):
    out = ablate(model, tokens, [], "mean")
    assert out["delta"] == 0.0
    assert torch.equal(out["logits"], model(tokens[:, :-1]))
    assert ablate(model, tokens, [(0, 0), (2, 3)], "resample")["delta"] != 0.0
    with pytest.raises(ValueError, match="kind"):
        ablate(model, tokens, [(0, 0)], "sideways")
    with pytest.raises(ValueError, match=r"\(3, 0\)"):
        ablate(model, tokens, [(3, 0)])
    with pytest.raises(ValueError, match="at least 2 sequences"):
        ablate(model, tokens[:1], [(0, 0)], "resample")
    with pytest.raises(ValueError, match="n_ctx=24"):
        ablate(model, torch.zeros(2, 30, dtype=torch.long), [(0, 0)])


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
        mp.setattr(probes.memorization, "logit_rows", lambda model, positions: 2)
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
    from train.stories import copy_words, make_canaries
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
    from probes.attention import HeldoutPatternStats
    tokens = torch.tensor([[9, 1, 2, 3, 7, 1, 2, 3, 8]])  # one copy query: position 6 (see test_metrics)
    stats = HeldoutPatternStats(1, tokens, entropy=False, copying=True)
    losses = torch.arange(8, dtype=torch.float32)[None]
    stats.record_losses(losses)
    assert stats.copy_loss == {"copy_positions": 6.0, "other_positions": pytest.approx((28 - 6) / 7)}


# -- inputs -----------------------------------------------------------------------------------
def test_probe_inputs_are_fixed_by_the_run_seed_and_seen_sequences_were_seen(run):
    a, b = probe_inputs(run, SMALL), probe_inputs(run, SMALL)
    assert torch.equal(a.heldout, b.heldout) and torch.equal(a.random_tokens, b.random_tokens)
    assert torch.equal(probes.heldout_tokens(run, n=4), a.ablation_tokens)
    assert not torch.equal(probes.heldout_tokens(run, n=4, seed=99), a.ablation_tokens)
    meta = read_data_meta(run)
    assert len(a.seen(0)) == 0
    train = load_tokens(run, "train", meta)
    seen_rows = {tuple(r) for r in get_chunks(train, seen_chunk_ids(meta, 3), meta["chunk_len"]).tolist()}
    s1, s3 = a.seen(1), a.seen(3)
    assert len(s1) == 4 and len(s3) == 6  # 4 chunks seen by step 1, the cap of 6 by step 3
    assert all(tuple(r) in seen_rows for r in s3.tolist())
    assert {tuple(r) for r in s1.tolist()} <= seen_rows
    # random tokens: BOS, a half without repeats, then the same half again
    row = a.random_tokens[0]
    T = a.random_period
    assert row[0] == a.eot_id and torch.equal(row[1:T + 1], row[T + 1:]) and len(set(row[1:T + 1].tolist())) == T
    assert a.prompt_tokens.shape[0] == len(probes.REPETITION_PROMPTS) and bool((a.prompt_tokens[:, 0] == a.eot_id).all())


def test_compute_probes_returns_every_result_key_with_finite_values(run):
    from model.checkpoint import list_checkpoints, load_checkpoint
    inputs = probe_inputs(run, SMALL)
    model, meta = load_checkpoint(list_checkpoints(run)[-1])
    result = compute_probes(model, load_tokenizer(run), inputs, 3)
    for key in REQUIRED_KEYS:
        get(result, key)
    L, H = model.cfg.n_layer, model.cfg.n_head
    for key in ("head_ablation.zero", "head_ablation.delta_se.zero", "head_ablation.attribution.resample",
                "attention_entropy.normalized", "induction.induction"):
        m = np.asarray(get(result, key))
        assert m.shape == (L, H) and np.isfinite(m).all()
    precision = result["head_ablation"]["precision"]
    assert precision["target_se"] == SMALL.ablation_target_se
    assert precision["achieved_se"] == pytest.approx(max(np.max(v) for v in result["head_ablation"]["delta_se"].values()))
    assert precision["n_sequences"] == result["head_ablation"]["n_sequences"] >= SMALL.n_ablation
    assert precision["tokens"] == precision["n_sequences"] * result["head_ablation"]["n_positions"]
    # blocks stop once the target is met, or at the cap (or when the held-out sequences run out)
    assert precision["achieved_se"] <= SMALL.ablation_target_se or precision["n_sequences"] > SMALL.n_ablation
    assert {g["copies"] for g in result["memorization"]["canaries"]} == {1, 8}
    assert {c["decoding"] for c in result["repetition"]["continuations"]} == {"greedy", "sampled"}
    assert result["memorization"]["seen"]["n"] == 6 and result["memorization"]["held_out"]["n"] == 6
    held = result["memorization"]["held_out"]  # every held-out row's mean loss; their mean is the loss
    assert len(held["row_losses"]) == len(inputs.memorization_heldout)
    assert np.mean(held["row_losses"]) == pytest.approx(held["loss"], rel=1e-12)
    assert np.std(held["row_losses"]) > 0
    induction = result["induction"]
    assert induction["in_context_copying_positions"] > 0  # templated stories repeat spans
    assert all(math.isfinite(v) for v in induction["in_context_copying_loss"].values())
    only = compute_probes(model, load_tokenizer(run), inputs, 3, only=["memorization"])
    assert "memorization" in only and "head_ablation" not in only
    assert only["memorization"]["seen"] == result["memorization"]["seen"]


# -- TransformerLens bridge -------------------------------------------------------------------
def assert_close(a, b, path="", tol=1e-4):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            if k != "seconds":
                assert_close(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float) and not isinstance(b, bool):
        assert abs(a - b) <= tol, f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_probes_on_the_transformer_lens_bridge_equal_probes_on_gpt(run):
    from model.checkpoint import list_checkpoints, load_checkpoint
    from model.interop import to_transformer_lens
    inputs = probe_inputs(run, SMALL)
    tokenizer = load_tokenizer(run)
    gpt, _ = load_checkpoint(list_checkpoints(run)[-1])
    bridge = to_transformer_lens(gpt)
    ours = compute_probes(gpt, tokenizer, inputs, 3)
    theirs = compute_probes(bridge, tokenizer, inputs, 3)
    assert_close(ours, theirs)
    assert max(max(r) for r in ours["head_ablation"]["zero"]) > 1e-3
