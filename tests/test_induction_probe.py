"""The induction probe cannot be passed by a positional shortcut: scores over several repeat
periods with a control on fresh tokens, checked on hand-built attention patterns whose answer is
known, and on a 2-layer model trained here on repeats at ONE fixed offset (which learns "attend to
q - offset + 1" by position). Also the periods themselves, the planted-repeat range they avoid,
and the per-token losses the loss trajectory is built from."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import GPTConfig
from model.gpt import GPT
from probes.measure.induction import (TRAJECTORY_TOKENS, control_scores, multi_period_scores, random_token_scores,
                              trajectory_losses)
from probes.measure.inputs import (ProbeSizes, fresh_random_tokens, probe_inputs, random_periods, random_token_sets,
                           repeated_random_tokens, training_repeat_periods)

from _runs import write_run

BOS = 0


# -- periods and inputs -----------------------------------------------------------------------
def test_periods_spread_over_an_eighth_to_half_the_context():
    assert random_periods(128) == [17, 26, 41, 63]
    assert random_periods(64) == [9, 14, 21, 31]
    for n_ctx in (5, 8, 16, 33, 64, 100, 128, 1024):
        periods = random_periods(n_ctx)
        assert periods == sorted(set(periods)) and all(2 <= t and 1 + 2 * t <= n_ctx + 1 for t in periods), n_ctx
        if n_ctx >= 64:
            assert len(periods) == 4 and periods[0] > n_ctx / 8 and periods[-1] == (n_ctx - 1) // 2


@pytest.mark.parametrize("avoid", [(20, 20), (10, 40), (17, 63), (30, 35), (2, 62)])
def test_periods_avoid_the_range_training_planted(avoid):
    periods = random_periods(128, 4, avoid)
    assert periods and all(not avoid[0] <= t <= avoid[1] for t in periods), periods
    assert all(2 <= t <= 63 for t in periods)
    if avoid[1] - avoid[0] < 30:
        assert len(periods) == 4


def test_periods_when_training_covered_every_period_are_the_default_ones():
    assert random_periods(128, 4, (1, 500)) == random_periods(128)


def test_bad_contexts_and_counts_are_refused_with_one_sentence():
    with pytest.raises(ValueError, match="at least 5 positions, got n_ctx=4"):
        random_periods(4)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        random_periods(128, 0)


def test_training_repeat_periods_read_from_run_json():
    assert training_repeat_periods({}) is None
    assert training_repeat_periods({"repeat_fraction": 0, "repeat_period": "8:32"}) is None
    assert training_repeat_periods({"repeat_fraction": 0.25, "repeat_period": "8:32"}) == (8, 32)
    assert training_repeat_periods({"repeat_fraction": 0.25, "repeat_period": "20"}) == (20, 20)
    for bad in ("32:8", "a:b", None, "1:2:3"):
        with pytest.raises(ValueError, match="repeat_period must be 'MIN:MAX'"):
            training_repeat_periods({"repeat_fraction": 0.25, "repeat_period": bad})


def test_repeated_rows_repeat_and_control_rows_never_do():
    frequent = np.arange(1, 200)
    rep = repeated_random_tokens(frequent, 4, 17, BOS, seed=3)
    ctl = fresh_random_tokens(frequent, 4, 17, BOS, seed=3)
    assert rep.shape == ctl.shape == (4, 35)
    assert bool((rep[:, 0] == BOS).all()) and bool((ctl[:, 0] == BOS).all())
    assert torch.equal(rep[:, 1:18], rep[:, 18:])
    assert all(len(set(row[1:].tolist())) == 34 for row in ctl)  # 2T distinct tokens: nothing to copy
    # one period's tokens do not depend on which other periods are probed
    a = random_token_sets(frequent, 4, [9, 17], BOS, seed=3)
    b = random_token_sets(frequent, 4, [17], BOS, seed=3)
    assert torch.equal(a[1].repeated, b[0].repeated) and torch.equal(a[1].control, b[0].control)


def test_probe_inputs_take_periods_outside_the_planted_range(tmp_path):
    run = write_run(tmp_path, n_ctx=64)
    info = json.loads((run / "run.json").read_text())
    info["train"].update({"repeat_fraction": 0.25, "repeat_period": "12:24"})
    (run / "run.json").write_text(json.dumps(info))
    inputs = probe_inputs(run, ProbeSizes(n_random=2, n_frequent=200))
    assert inputs.training_periods == (12, 24)
    assert inputs.random_periods and all(not 12 <= t <= 24 for t in inputs.random_periods)
    assert [s.repeated.shape[1] for s in inputs.random_sets] == [1 + 2 * t for t in inputs.random_periods]


# -- hand-built attention patterns ------------------------------------------------------------
class PatternModel:
    """A stand-in model through the hook interface with hand-built attention patterns, 1 layer:
    head 0 a genuine induction head (from q to the token after the latest earlier occurrence of
    q's token, else to BOS), head 1 a positional head (to q - OFFSET + 1 whatever the tokens),
    head 2 a previous-token head."""

    OFFSET = 20

    class cfg:
        n_layers, n_heads, n_ctx, d_vocab = 1, 3, 64, 200

    def parameters(self):
        return iter(())

    def pattern(self, tokens: torch.Tensor) -> torch.Tensor:
        B, P = tokens.shape
        pattern = torch.zeros(B, 3, P, P)
        for b in range(B):
            row = tokens[b].tolist()
            for q in range(P):
                earlier = [j for j in range(q) if row[j] == row[q]]
                pattern[b, 0, q, earlier[-1] + 1 if earlier else 0] = 1
                pattern[b, 1, q, q - self.OFFSET + 1 if q - self.OFFSET + 1 >= 0 else 0] = 1
                pattern[b, 2, q, max(q - 1, 0)] = 1
        return pattern

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks) -> torch.Tensor:
        for _, hook in fwd_hooks:
            hook(self.pattern(tokens), None)
        return torch.zeros(tokens.shape[0], tokens.shape[1], self.cfg.d_vocab)


def test_a_positional_head_fails_the_probe_and_the_control_exposes_it():
    model, offset = PatternModel(), PatternModel.OFFSET
    frequent = np.arange(1, 200)
    # at its own offset, the positional head looks exactly like the induction head ...
    (at_offset,) = random_token_sets(frequent, 3, [offset], BOS, seed=0)
    scores = random_token_scores(model, at_offset.repeated, offset)
    assert scores["induction"][0] == pytest.approx([1.0, 1.0, 0.0])
    # ... but its control on fresh tokens is as high, the induction head's is 0
    assert control_scores(model, at_offset.control, offset)[0] == pytest.approx([0.0, 1.0, 0.0])
    # over periods training did not use, only the genuine head scores
    periods = random_periods(64, 4, (offset, offset))
    out = multi_period_scores(model, random_token_sets(frequent, 3, periods, BOS, seed=0), 64, (offset, offset))
    assert out["random_periods"] == out["unseen_periods"] == periods and out["training_repeat_periods"] == [20, 20]
    assert out["induction"][0] == pytest.approx([1.0, 0.0, 0.0])
    assert out["induction_control"][0] == pytest.approx([0.0, 0.0, 0.0])
    assert out["previous_token"][0] == pytest.approx([0.0, 0.0, 1.0], abs=0.1)
    assert set(out["induction_by_period"]) == {str(t) for t in periods}
    # the headline is the mean over periods: with the offset among them, 1/n for the positional head
    mixed = multi_period_scores(model, random_token_sets(frequent, 3, [9, 14, offset, 31], BOS, seed=0), 64)
    assert mixed["induction"][0][1] == pytest.approx(0.25)
    assert mixed["induction_control"][0][1] == pytest.approx(0.25)
    assert mixed["unseen_periods"] == [9, 14, 20, 31] and mixed["training_repeat_periods"] is None


def test_periods_that_do_not_fit_the_context_are_left_out_or_refused():
    model, frequent = PatternModel(), np.arange(1, 200)
    sets = random_token_sets(frequent, 2, [9, 40], BOS, seed=0)
    assert multi_period_scores(model, sets, 64)["random_periods"] == [9]
    with pytest.raises(ValueError, match="no repeat period fits the model's context of 16 positions"):
        multi_period_scores(model, sets, 16)


# -- a model trained on ONE offset ------------------------------------------------------------
def train_on_one_offset(seed: int, offset: int, n_ctx: int = 64, vocab: int = 128, max_steps: int = 400):
    """A 2-layer model trained with plain AdamW on rows [BOS, r_1..r_T, r_1..r_T, r_1..] (T = offset,
    fresh random tokens each row) until its best induction score at that offset is >= 0.5."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, n_ctx=n_ctx, vocab_size=vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    frequent = np.arange(1, vocab)
    (check,) = random_token_sets(frequent, 8, [offset], BOS, seed=seed + 1000)
    best = 0.0
    for step in range(1, max_steps + 1):
        model.train()
        rows = [np.concatenate([[BOS], np.resize(rng.choice(frequent, size=offset, replace=False), n_ctx)])
                for _ in range(32)]
        x = torch.tensor(np.stack(rows))
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            model.eval()
            best = max(max(r) for r in random_token_scores(model, check.repeated, offset)["induction"])
            if best >= 0.5:
                return model.eval(), best, step
    raise AssertionError(f"seed {seed}: the induction score at offset {offset} reached only {best:.3f} "
                         f"after {max_steps} steps")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_model_trained_on_one_offset_does_not_pass_the_probe(seed, keep_torch_threads):
    torch.set_num_threads(1)
    offset, n_ctx, frequent = 20, 64, np.arange(1, 128)
    t = time.perf_counter()
    model, at_offset, steps = train_on_one_offset(seed, offset, n_ctx)
    periods = random_periods(n_ctx, 4, (offset, offset))
    out = multi_period_scores(model, random_token_sets(frequent, 8, periods, BOS, seed=seed), n_ctx, (offset, offset))
    headline = max(max(r) for r in out["induction"])
    (own,) = random_token_sets(frequent, 8, [offset], BOS, seed=seed)
    scores = random_token_scores(model, own.repeated, offset)["induction"]
    control = control_scores(model, own.control, offset)
    l, h = max(((l, h) for l in range(2) for h in range(2)), key=lambda lh: scores[lh[0]][lh[1]])
    print(f"seed {seed}: score {at_offset:.3f} at offset {offset} after {steps} steps; headline over "
          f"unseen periods {periods}: {headline:.3f}; control of L{l}H{h} at the offset "
          f"{control[l][h]:.3f} vs {scores[l][h]:.3f}; {time.perf_counter() - t:.1f} s")
    assert out["unseen_periods"] == periods and offset not in periods
    assert headline < 0.1, f"seed {seed}: the shortcut passes the probe with {headline:.3f}"
    # and at the offset itself the control shows the attention is positional
    assert control[l][h] >= 0.8 * scores[l][h], f"seed {seed}"


# -- per-token losses -------------------------------------------------------------------------
def test_trajectory_losses_are_the_first_tokens_row_by_row_and_the_position_means():
    gen = torch.Generator().manual_seed(5)
    losses = torch.rand(40, 128, generator=gen) * 8
    out = trajectory_losses(losses)
    assert out["token_losses"]["n_tokens"] == TRAJECTORY_TOKENS == 4096
    values = out["token_losses"]["values"]
    assert values[:128] == [round(float(v), 4) for v in losses[0]]
    assert values[128 * 31:] == [round(float(v), 4) for v in losses[31]]
    assert out["position_loss"] == pytest.approx(losses.double().mean(0).tolist(), abs=5e-5)
    small = trajectory_losses(losses[:3])  # fewer held-out tokens than 4096: all of them
    assert small["token_losses"]["n_tokens"] == 3 * 128


# -- repeated held-out text ------------------------------------------------------------------
def test_repeated_text_loss_compares_the_same_tokens_first_and_repeated():
    """Against a naive computation from whole logits: the first copy's and the repeat's losses
    are over the same target tokens, and a span longer than half the context is cut to fit."""
    from probes.measure.induction import repeated_text_loss
    seed = 7
    print("seed", seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=32, vocab_size=50)).eval()
    heldout = torch.randint(0, 50, (5, 33))
    got = repeated_text_loss(model, heldout)
    span = 16  # (32 + 1) // 2: 2 * 16 - 1 = 31 inputs fit the context of 32
    rows = torch.cat([heldout[:, :span], heldout[:, :span]], 1)
    with torch.no_grad():
        losses = F.cross_entropy(model(rows[:, :-1]).transpose(1, 2), rows[:, 1:], reduction="none").double()
    assert torch.equal(rows[:, 1:span], rows[:, span + 1:2 * span])  # same targets
    assert got["span"] == span and got["n_sequences"] == 5
    assert got["first_copy"] == pytest.approx(float(losses[:, :span - 1].mean()), abs=1e-5)
    assert got["second_copy"] == pytest.approx(float(losses[:, span:].mean()), abs=1e-5)
    assert got["gap"] == pytest.approx(got["second_copy"] - got["first_copy"], abs=1e-12)
