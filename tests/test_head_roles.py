"""Head roles: each score on hand-built attention patterns whose answer is known, equal to
TransformerLens' head detector (`detect_head`) on the bridge with the same weights and the same
token sequences, and on a model whose weights make L0H0 a previous-token head and L1H0 an
induction head (tests/_induction_circuit.py). The induction probe's random-token passes run once
per checkpoint: head_roles takes their scores from its result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from model.interop import to_transformer_lens
from model.tokenizer import gpt2_encoding
from probes.measure.head_roles import (LOCAL_WINDOW, ROLES, chance_levels, head_roles_result, local_score,
                               positional_rows, positional_scores, uniform_pattern)
from probes.measure.induction import multi_period_scores, random_token_scores
from probes.measure.metrics import sink_mass
from probes.measure.random_tokens import random_periods, random_token_sets

from _induction_circuit import BOS, N_CTX, V, circuit_model

pytestmark = pytest.mark.usefixtures("one_thread")


# -- hand-built patterns ----------------------------------------------------------------------
def hand_pattern(P: int) -> torch.Tensor:
    """[1, 4, P, P]: head 0 a sink (everything on position 0), head 1 previous-token, head 2 local
    (evenly on q, q - 2 and q - 3, where they exist), head 3 on itself only."""
    A = torch.zeros(1, 4, P, P)
    for q in range(P):
        A[0, 0, q, 0] = 1
        A[0, 1, q, max(q - 1, 0)] = 1
        keys = [k for k in (q, q - 2, q - 3) if k >= 0]
        A[0, 2, q, keys] = 1 / len(keys)
        A[0, 3, q, q] = 1
    return A


class PatternModel:
    """A stand-in through the hook interface, 1 layer, whose patterns are `hand_pattern`."""

    class cfg:
        n_layers, n_heads, n_ctx, d_vocab = 1, 4, 64, 200

    def parameters(self):
        return iter(())

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks) -> None:
        pattern = hand_pattern(tokens.shape[1]).expand(tokens.shape[0], -1, -1, -1)
        for name, hook in fwd_hooks:
            if name.endswith("hook_pattern"):
                hook(pattern, None)
            else:  # the residual hook that ends the forward
                hook(torch.zeros(tokens.shape[0], tokens.shape[1], 8), None)


def test_each_positional_score_on_hand_built_patterns():
    P = 20
    A = hand_pattern(P)
    assert local_score(A).tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])
    # queries 1 .. P-1; the previous-token head reaches position 0 from q = 1, the local one from 2 and 3
    assert sink_mass(A).tolist() == pytest.approx([1.0, 1 / (P - 1), (1 / 2 + 1 / 3) / (P - 1), 0.0])
    # a uniform head: at query q the window holds 3 of its q + 1 keys
    assert float(local_score(uniform_pattern(P))[0]) == pytest.approx(np.mean([3 / (q + 1) for q in range(4, P)]))
    with pytest.raises(ValueError, match=f"more than {LOCAL_WINDOW} positions"):
        local_score(torch.ones(1, 1, 4, 4))
    # through the hook interface, on the rows the probe builds
    frequent = np.arange(1, 200)
    sets = random_token_sets(frequent, 3, random_periods(64), BOS, seed=0)
    rows = positional_rows(sets, 64)
    longest = sets[-1]
    assert rows.shape == longest.control.shape and bool((rows[:, 0] == BOS).all())
    assert torch.equal(rows[:, 1:], longest.control[:, 1:].flip(1))  # the control's fresh tokens, reversed
    assert all(len(set(r[1:].tolist())) == rows.shape[1] - 1 for r in rows)  # nothing repeats in a row
    got = positional_scores(PatternModel(), rows)
    n = rows.shape[1] - 2  # queries 1 .. P-1 of P = 2T inputs
    assert got["sink"][0] == pytest.approx([1, 1 / n, (1 / 2 + 1 / 3) / n, 0])
    assert got["local"][0] == pytest.approx([0, 0, 1, 1])
    assert got["previous_token"][0] == pytest.approx([1 / n, 1, 0, 0])  # the sink's q = 1 is a previous token


def test_chance_levels_are_the_scores_of_uniform_attention():
    chance = chance_levels(40, [5, 9])
    assert chance["sink"] == pytest.approx(np.mean([1 / (q + 1) for q in range(1, 40)]))
    assert chance["previous_token_control"] == pytest.approx(chance["sink"])
    # induction on a period-T row of 2T inputs: queries T+1 .. 2T-1, each 1 / (q + 1)
    want = np.mean([np.mean([1 / (q + 1) for q in range(t + 1, 2 * t)]) for t in (5, 9)])
    assert chance["induction"] == pytest.approx(want) and chance["duplicate_token"] == pytest.approx(want)
    assert chance["copying"] == 0.0


# -- TransformerLens' head detector ------------------------------------------------------------
def single_token_words(n: int, seed: int) -> list[int]:
    """`n` GPT-2 tokens that are each a space and a lowercase word, so that their text encodes back
    to exactly these tokens."""
    enc = gpt2_encoding()
    words = [i for i in range(1000, 4000) if enc.decode([i])[:1] == " " and enc.decode([i])[1:].isalpha()
             and enc.decode([i])[1:].islower()]
    return [int(t) for t in np.random.default_rng(seed).choice(words, size=n, replace=False)]


class Tokenized:
    """The bridge with the GPT-2 tokenizer, for `detect_head`: to_tokens puts <|endoftext|> first."""

    def __init__(self, bridge):
        self.bridge, self.cfg = bridge, bridge.cfg

    def to_tokens(self, text: str) -> torch.Tensor:
        return torch.tensor([[50256] + gpt2_encoding().encode(text)])

    def run_with_cache(self, tokens, **kwargs):
        return self.bridge.run_with_cache(tokens, **kwargs)


def test_scores_equal_transformer_lens_head_detector_on_the_bridge():
    """detect_head's "mul" score is the attention on the detection pattern over all P query rows;
    ours is the mean over the queries the score defines. So theirs = ours x (our queries) / P, for
    every head, on the bridge with our weights and the same tokens."""
    from transformer_lens.head_detector import detect_head

    seed, T = 3, 20
    print("seed", seed)
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=50257)).eval()
    with torch.no_grad():  # sharper, more varied attention than at init
        for block in gpt.blocks:
            block.attn.c_attn.weight.mul_(20)
    tl = Tokenized(to_transformer_lens(gpt))
    words = single_token_words(T, seed)
    text = gpt2_encoding().decode(words + words[:T - 1])
    row = tl.to_tokens(text)[0]
    assert row.tolist() == [50256] + words + words[:T - 1]
    P = len(row)  # 2T inputs: <|endoftext|>, r_1 .. r_T, r_1 .. r_(T-1)
    ours = random_token_scores(gpt, torch.cat([row, row[1:2]])[None], T)  # one more token: the last target
    positional = positional_scores(gpt, torch.cat([row, row[1:2]])[None])
    sink = torch.zeros(P, P)
    sink[1:, 0] = 1
    local = torch.zeros(P, P)
    for q in range(LOCAL_WINDOW, P):
        local[q, [q, q - 2, q - 3]] = 1
    for name, mine, share in (("previous_token_head", ours["previous_token"], (P - 1) / P),
                              ("duplicate_token_head", ours["duplicate_token"], (T - 1) / P),
                              ("induction_head", ours["induction"], (T - 1) / P),
                              (sink, positional["sink"], (P - 1) / P),
                              (local, positional["local"], (P - LOCAL_WINDOW) / P)):
        theirs = detect_head(tl, text, name)
        assert torch.allclose(theirs.double(), torch.tensor(mine, dtype=torch.float64) * share, atol=1e-5), name
    assert max(max(r) for r in ours["induction"]) > 0.02  # not all zeros: the comparison means something


# -- a model whose weights hold the induction circuit --------------------------------------------
def test_hand_built_previous_token_and_induction_heads(monkeypatch):
    model = circuit_model()
    sets = random_token_sets(np.arange(1, V), 8, random_periods(N_CTX), BOS, seed=0)
    out = head_roles_result(model, sets)
    print({role: np.round(out[role], 3).tolist() for role in ROLES})
    assert out["roles"] == list(ROLES) and all(np.shape(out[r]) == (2, 2) for r in ROLES)
    best = {role: max(((l, h) for l in range(2) for h in range(2)), key=lambda lh: out[role][lh[0]][lh[1]])
            for role in ROLES}
    assert best["previous_token"] == (0, 0) and out["previous_token"][0][0] > 0.99
    assert best["induction"] == (1, 0) and out["induction"][1][0] > 0.99
    assert best["copying"] == (1, 0) and out["copying"][1][0] > 0.9  # its OV circuit maps a token to itself
    assert out["copying"][0][0] < 0.1  # L0H0 moves the token into a subspace the unembedding does not read
    # the previous-token head is positional: it keeps its attention on fresh tokens ...
    assert out["controls"]["previous_token"][0][0] > 0.99
    # ... the induction head follows content: on fresh tokens it is near chance
    assert out["controls"]["induction"][1][0] < 2 * out["chance"]["induction"]
    # the random heads sit near chance for every attention role
    for role in ("previous_token", "induction", "sink", "local"):
        for l, h in ((0, 1), (1, 1)):
            assert abs(out[role][l][h] - out["chance"][role]) < 0.05, (role, l, h)
    # with the induction probe's result of the same checkpoint, its scores are used as they are: no
    # random-token forward runs twice
    shared = multi_period_scores(model, sets, N_CTX)
    monkeypatch.setattr("probes.measure.head_roles.multi_period_scores", lambda *a, **k: pytest.fail("ran twice"))
    again = head_roles_result(model, sets, induction=shared)
    assert all(again[r] == out[r] for r in ROLES)


def test_compute_probes_runs_each_random_token_set_once(fake_run, monkeypatch):
    """With induction and head_roles in the default set, the random-token passes run once each (as
    with the induction probe alone); head_roles alone runs them itself, with the same numbers."""
    import probes.measure.induction as induction
    from store.checkpoint import list_checkpoints, load_checkpoint
    from store.vocab import load_tokenizer
    from probes.measure.compute import compute_probes
    from probes.measure.inputs import ProbeSizes, probe_inputs

    run = fake_run()
    inputs = probe_inputs(run, ProbeSizes(n_random=2, n_ablation=2, n_ablation_max=2, n_attention=2, n_memorization=4))
    model, _ = load_checkpoint(list_checkpoints(run)[-1])
    passes: list[int] = []
    real = induction._scores_and_losses
    monkeypatch.setattr(induction, "_scores_and_losses", lambda *a: passes.append(1) or real(*a))
    both = compute_probes(model, load_tokenizer(run), inputs, 4, only=["induction", "head_roles"])
    assert len(passes) == 2 * len(inputs.random_sets)  # repeated and control rows of each period, once
    alone = compute_probes(model, load_tokenizer(run), inputs, 4, only=["head_roles"])
    assert len(passes) == 4 * len(inputs.random_sets)
    for key in ("previous_token", "duplicate_token", "induction", "sink", "local", "copying", "controls"):
        assert alone["head_roles"][key] == both["head_roles"][key] and key in both["head_roles"]
    assert both["head_roles"]["induction"] == both["induction"]["induction"]
