"""Chunked readout and the restarting head-ablation sweep: per-token losses from the residual
stream equal those of whole logits, the sweep that restarts at the ablated layer equals one
run_with_hooks per head, its standard errors equal a hand computation over sequences, precision
sizing adds blocks as it says, and sweep_flops counts the matmuls a FLOP counter sees."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import probes.measure.ablation as ablation
import probes.measure.forward as forward
from model.config import GPTConfig
from model.gpt import GPT
from probes.measure.ablation import (clean_run, head_ablation_probe, head_ablation_sweep, sequence_deltas, standard_errors,
                             sweep_flops)
from probes.measure.forward import final_residual, readout, stats_from_residual, token_stats

from _ablation import naive_head_ablation, token_losses

SEED = 20240611
V = 211


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(SEED)
    m = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, n_ctx=24, vocab_size=V)).eval()
    with torch.no_grad():  # biases and LayerNorms away from init, so every parameter matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, V, (6, 22), generator=torch.Generator().manual_seed(SEED))


# -- chunked readout --------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 21, 22, 64, 6 * 21, 1000])
@torch.no_grad()
def test_chunked_losses_equal_whole_logits_for_any_chunk_size(model, tokens, chunk):
    """Chunks of 7 and 64 do not divide the 6 x 21 = 126 positions; 21 and 126 do; 1000 is one chunk."""
    logits = model(tokens[:, :-1])
    want_loss = F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none").view(6, 21)
    logp = torch.log_softmax(logits, -1)
    want_entropy = -(logp.exp() * logp).sum(-1)
    seen: list[int] = []
    head = readout(model)

    def counting_head(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[1])
        return head(x)

    resid = final_residual(model, tokens[:, :-1])
    assert resid.shape == (6, 21, 32)
    got = stats_from_residual(resid, tokens[:, 1:], counting_head, chunk, argmax=True, entropy=True)
    assert (got.losses - want_loss).abs().max().item() <= 1e-5, f"seed {SEED}"
    assert (got.entropy - want_entropy).abs().max().item() <= 1e-5, f"seed {SEED}"
    assert torch.equal(got.argmax, logits.argmax(-1))
    assert max(seen) == min(chunk, 126) and sum(seen) == 126  # never more than one chunk of logits at once


@pytest.mark.parametrize("rows,block", [(40, 50), (7, 211), (512, 2048)])
def test_token_stats_reads_out_block_by_block_never_whole_logits(model, tokens, monkeypatch, rows, block):
    """The forward ends at the last block, and the unembedding then runs `rows` positions by
    `block` logits at a time: every logit is computed exactly once and no [B, P, V] (nor a whole
    row of V) logits are ever made; the losses, argmax and entropy equal those of whole logits.
    Blocks of 50 do not divide V = 211; rows of 40 do not divide the 126 positions."""
    monkeypatch.setattr(forward, "READOUT_ROWS", rows)
    monkeypatch.setattr(forward, "READOUT_VOCAB_BLOCK", block)
    calls = []
    original = F.linear
    unembedding = model.wte.weight

    def spy(x, w, b=None):
        if w.untyped_storage().data_ptr() == unembedding.untyped_storage().data_ptr():
            calls.append((x.shape[:-1].numel(), w.shape[0]))
        return original(x, w, b)

    monkeypatch.setattr(forward.F, "linear", spy)
    stats = token_stats(model, tokens[:, :-1], tokens[:, 1:], argmax=True, entropy=True)
    assert calls and all(n <= rows and v <= min(block, V) for n, v in calls)
    assert sum(n * v for n, v in calls) == 6 * 21 * V  # each logit once
    logits = model(tokens[:, :-1])
    logp = torch.log_softmax(logits, -1)
    assert (stats.losses - token_losses(model, tokens)).abs().max().item() <= 1e-5, f"seed {SEED}"
    assert (stats.entropy + (logp.exp() * logp).sum(-1)).abs().max().item() <= 1e-5, f"seed {SEED}"
    assert torch.equal(stats.argmax, logits.argmax(-1))


@pytest.mark.parametrize("block", [1, 3, 4, 64])
def test_blocked_readout_keeps_the_first_maximum_across_blocks(block, monkeypatch):
    """Ties between logits in different blocks (and within one) go to the first index, as
    torch.argmax does; a bias is added; the running log-sum-exp survives logits in the hundreds."""
    monkeypatch.setattr(forward, "READOUT_VOCAB_BLOCK", block)
    gen = torch.Generator().manual_seed(SEED)
    weight, bias = torch.randn(12, 5, generator=gen), torch.randn(12, generator=gen)
    weight[9], bias[9] = weight[2], bias[2]  # logit 9 always equals logit 2
    weight[7], bias[7] = weight[6], bias[6]
    x = torch.randn(30, 5, generator=gen) * 40
    targets = torch.randint(0, 12, (30,), generator=gen)
    losses, best, entropy = forward.blocked_stats(x, targets, weight, bias, argmax=True, entropy=True)
    logits = F.linear(x, weight, bias)
    logp = torch.log_softmax(logits, -1)
    assert torch.equal(best, logits.argmax(-1)) and set(best.tolist()) & {2, 6}, f"seed {SEED}"
    assert (losses - F.cross_entropy(logits, targets, reduction="none")).abs().max().item() <= 1e-4, f"seed {SEED}"
    assert (entropy + (logp.exp() * logp).sum(-1)).abs().max().item() <= 1e-4, f"seed {SEED}"


class LogitsOnly(torch.nn.Module):
    """A model that offers only model(tokens) (no hooks, no readout): token_stats falls back to whole
    logits row by row."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt, self.cfg = gpt, gpt.cfg

    def forward(self, tokens):
        return self.gpt(tokens)


def test_token_stats_falls_back_to_logits_row_by_row(model, tokens, monkeypatch):
    monkeypatch.setattr(forward, "logit_rows", lambda model, positions: 4)  # 6 rows: parts of 4 and 2
    got = token_stats(LogitsOnly(model), tokens[:, :-1], tokens[:, 1:], argmax=True)
    assert (got.losses - token_losses(model, tokens)).abs().max().item() <= 1e-5
    assert torch.equal(got.argmax, model(tokens[:, :-1]).argmax(-1))


# -- the restarting sweep against one run_with_hooks per head (_ablation.naive_head_ablation) ------
@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_restarting_sweep_equals_one_run_per_head_per_sequence(model, tokens, kind, monkeypatch):
    naive = naive_head_ablation(model, tokens, kind)
    assert np.abs(naive.mean(-1)).max() > 1e-3, f"seed {SEED}"  # the heads matter
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    clean = clean_run(model, inputs, targets, logits=False)
    assert clean.resid_pre is not None and len(clean.resid_pre) == 3  # the GPT path restarts at the layer
    for rows in (6 * 4, 6 * 3, 6):  # all heads of a layer at once; groups of 3 + 1; one at a time
        monkeypatch.setattr(ablation, "sweep_rows", lambda model, positions, rows=rows: rows)
        got = sequence_deltas(model, inputs, targets, kind, clean=clean)
        assert np.abs(got - naive).max() <= 1e-5, (rows, f"seed {SEED}")
    # the other path (as on the TransformerLens bridge): the batch is widened at hook_resid_pre
    clean.resid_pre = None
    got = sequence_deltas(model, inputs, targets, kind, clean=clean)
    assert np.abs(got - naive).max() <= 1e-5, f"seed {SEED}"
    assert np.abs(head_ablation_sweep(model, tokens, kind) - naive.mean(-1)).max() <= 1e-5


def test_the_restart_runs_only_the_layers_from_the_ablated_one(model, tokens):
    """Blocks below the ablated layer never run during the ablations of a layer."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    clean = clean_run(model, inputs, targets, logits=False)
    runs = [0, 0, 0]
    handles = [model.blocks[l].register_forward_hook(lambda *a, l=l: runs.__setitem__(l, runs[l] + 1))
               for l in range(3)]
    try:
        ablation.ablated_token_losses(model, inputs, targets, 2, [0, 1, 2, 3], "zero", clean, None)
    finally:
        for h in handles:
            h.remove()
    assert runs == [0, 0, 1]


# -- standard errors and precision ------------------------------------------------------------
def test_standard_error_is_the_spread_over_sequences():
    x = np.array([[[0.1, 0.3, 0.2, 0.6]]])
    mean = 0.3
    sd = math.sqrt(((0.1 - mean) ** 2 + 0 + (0.2 - mean) ** 2 + (0.6 - mean) ** 2) / 3)
    assert standard_errors(x)[0, 0] == pytest.approx(sd / 2)
    assert np.isnan(standard_errors(np.ones((2, 2, 1)))).all()


def test_probe_records_se_and_precision_and_its_first_block_is_the_plain_sweep(model, tokens):
    naive = {k: naive_head_ablation(model, tokens, k) for k in ablation.KINDS}
    result = head_ablation_probe(model, tokens, kinds=ablation.KINDS)  # one block of all 6 sequences
    for kind in ablation.KINDS:
        assert np.abs(np.asarray(result[kind]) - naive[kind].mean(-1)).max() <= 1e-5
        se = naive[kind].std(-1, ddof=1) / math.sqrt(6)
        assert np.abs(np.asarray(result["delta_se"][kind]) - se).max() <= 1e-5
    p = result["precision"]
    assert p["n_sequences"] == 6 and p["tokens"] == 6 * 21 and p["target_se"] is None
    assert p["achieved_se"] == pytest.approx(max(np.max(result["delta_se"][k]) for k in ablation.KINDS))


def test_blocks_are_added_until_the_target_or_the_cap(model, tokens):
    """Blocks of 2 sequences: a target no head misses stops after the first block; an unreachable
    one uses every allowed sequence, and the deltas are the means of the blocks' own sweeps."""
    easy = head_ablation_probe(model, tokens, block=2, target_se=10.0, max_sequences=6)
    assert easy["precision"]["n_sequences"] == 2 and easy["n_sequences"] == 2
    assert np.abs(np.asarray(easy["zero"]) - head_ablation_sweep(model, tokens[:2], "zero")).max() <= 1e-5
    hard = head_ablation_probe(model, tokens, block=2, target_se=1e-12, max_sequences=5, kinds=ablation.KINDS)
    assert hard["precision"]["n_sequences"] == 4  # 2 + 2; one sequence left is too few for a block
    assert hard["precision"]["achieved_se"] > 1e-12 and hard["precision"]["target_se"] == 1e-12
    for kind in ablation.KINDS:
        blocks = [head_ablation_sweep(model, tokens[i:i + 2], kind) for i in (0, 2)]
        assert np.abs(np.asarray(hard[kind]) - (blocks[0] + blocks[1]) / 2).max() <= 1e-5
    with pytest.raises(ValueError, match="at least 2 sequences"):
        head_ablation_probe(model, tokens, block=1)


# -- FLOPs ------------------------------------------------------------------------------------
def test_sweep_flops_by_hand_and_against_a_flop_counter(model, tokens):
    cfg = GPTConfig(n_layer=2, n_head=3, n_embd=12, n_ctx=16, vocab_size=50)
    B, P, C = 2, 5, 12
    block = B * (24 * P * C * C + 2 * C * P * (P + 1))
    unembed = 2 * B * P * C * 50
    by_hand = 3 * (2 * block + unembed) + 3 * (1 * block + unembed)
    assert sweep_flops(cfg, B, P, include_clean=False) == by_hand
    assert sweep_flops(cfg, B, P) == by_hand + 2 * block + unembed
    # torch's FLOP counter sees every matmul of the real sweep except CPU attention (SDPA's CPU kernel
    # is not among the ops it counts), so it must see exactly sweep_flops less the attention terms
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        head_ablation_sweep(model, tokens, "zero")
    mc = model.cfg
    Bt, Pt = tokens.shape[0], tokens.shape[1] - 1
    attention = 2 * mc.n_embd * Bt * Pt * (Pt + 1)
    blocks_run = sum(mc.n_head * (mc.n_layer - l) for l in range(mc.n_layer)) + mc.n_layer  # ablations + clean
    assert counter.get_total_flops() == sweep_flops(mc, Bt, Pt) - blocks_run * attention


@pytest.mark.parametrize("block", [1, 5, 12, 64])
def test_blocked_loss_gradient_equals_autograd_through_whole_logits(block, monkeypatch):
    """The one-pass loss and gradient of the blocked readout (attribution's backward) equal
    cross-entropy over whole logits and its autograd gradient, in float64, for blocks that do and
    do not divide V = 12."""
    monkeypatch.setattr(forward, "READOUT_VOCAB_BLOCK", block)
    gen = torch.Generator().manual_seed(SEED)
    weight, bias = torch.randn(12, 5, generator=gen, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)
    x = (torch.randn(30, 5, generator=gen, dtype=torch.float64) * 10).requires_grad_(True)
    targets = torch.randint(0, 12, (30,), generator=gen)
    losses, grad = forward.blocked_loss_grad(x.detach(), targets, weight, bias)
    want = F.cross_entropy(F.linear(x, weight, bias), targets, reduction="none")
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert losses.dtype == torch.float64 and grad.shape == x.shape
    assert (losses - want.detach()).abs().max().item() <= 1e-12, f"seed {SEED}"
    assert (grad - want_grad).abs().max().item() <= 1e-12, f"seed {SEED}"
