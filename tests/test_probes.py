"""Probes on models: ablation against independent references, probe inputs fixed by the run
seed, every result key, and probes on the TransformerLens bridge equal to probes on our GPT
(memorization: tests/test_probes_memorization.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import probes
from model.config import GPTConfig
from model.gpt import GPT
from store.rundata import read_data_meta, seen_chunk_ids, get_chunks, load_tokens
from store.vocab import load_tokenizer
from probes.measure.ablation import ablate, head_ablation_sweep
from probes.measure.compute import compute_probes
from probes.measure.inputs import ProbeSizes, probe_inputs

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
    perm = probes.measure.ablation.resample_permutation(5, 0)
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
            mp.setattr(probes.measure.ablation, "sweep_rows", budget)
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
    from store.checkpoint import list_checkpoints, load_checkpoint
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
    from store.checkpoint import list_checkpoints, load_checkpoint
    from model.interop import to_transformer_lens
    inputs = probe_inputs(run, SMALL)
    tokenizer = load_tokenizer(run)
    gpt, _ = load_checkpoint(list_checkpoints(run)[-1])
    bridge = to_transformer_lens(gpt)
    ours = compute_probes(gpt, tokenizer, inputs, 3)
    theirs = compute_probes(bridge, tokenizer, inputs, 3)
    assert_close(ours, theirs)
    assert max(max(r) for r in ours["head_ablation"]["zero"]) > 1e-3


def test_shared_heldout_losses_give_the_same_results_with_less_readout(run, monkeypatch):
    """The pattern pass and the sweep's clean passes take their per-token losses from the held-out
    set's one pass (their rows are its first rows): every number equals that of separate readouts
    (to float32 rounding), and fewer positions are read out."""
    from store.checkpoint import list_checkpoints, load_checkpoint
    import probes.measure.compute as compute
    import probes.measure.forward as forward
    inputs = probe_inputs(run, SMALL)
    tokenizer = load_tokenizer(run)
    model, _ = load_checkpoint(list_checkpoints(run)[-1])
    read: list[int] = []
    blocked = forward.blocked_stats

    def counting(x, *args, **kwargs):
        read.append(len(x))
        return blocked(x, *args, **kwargs)

    monkeypatch.setattr(forward, "blocked_stats", counting)
    shared = compute_probes(model, tokenizer, inputs, 3)
    shared_read, read[:] = sum(read), []
    monkeypatch.setattr(compute.HeldoutSet, "losses_of", lambda self, rows: None)
    separate = compute_probes(model, tokenizer, inputs, 3)
    assert_close(shared, separate, tol=1e-5)
    P = inputs.heldout.shape[1] - 1
    n_clean = shared["head_ablation"]["n_sequences"]
    assert sum(read) - shared_read == (len(inputs.attention_tokens) + n_clean) * P
