"""Composition scores and the copying score from the weights: against a direct computation (full
[d_model, d_model] matrices, LayerNorm folded by an explicit centring projection), against
TransformerLens' own (`all_composition_scores` over `FactoredMatrix`, FactoredMatrix eigenvalues)
on a processed bridge with the same weights, on the hand-built induction circuit, and the chance
baseline (random relative orientation of the two heads) against an independent simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from model.interop import to_hf, to_transformer_lens
from probes.measure.composition import (KINDS, composition_result, composition_scores, copying_scores, folded_weights,
                                null_thresholds)

from _induction_circuit import V, circuit_model

pytestmark = pytest.mark.usefixtures("one_thread")
L, H, M = 3, 4, 32
D = M // H


@pytest.fixture(scope="module")
def gpt() -> GPT:
    """A 3-layer model with LayerNorm gains, biases and weights all moved from their init, so a
    fold that dropped or misplaced one would show."""
    torch.manual_seed(11)
    model = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=M, n_ctx=16, vocab_size=60)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def processed(gpt):
    """A TransformerBridge on the same weights with TransformerLens' weight processing (fold_ln,
    center_writing_weights, center_unembed, fold_value_biases)."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    hf = to_hf(gpt)
    bridge = build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=hf.config, model_name="gpt2-workbench")
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge.eval()


def naive_head_matrices(gpt: GPT) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """({(l, h): (OV, QK)} full [M, M] matrices, W_E, W_U) folded by hand: the reading weights are
    C diag(ln1) W, the writing ones W C, with C = I - 11^T / M the projection that removes the mean."""
    C = torch.eye(M, dtype=torch.float64) - 1.0 / M
    out = {}
    for l, block in enumerate(gpt.blocks):
        W = block.attn.c_attn.weight.detach().double()
        gain = torch.diag(block.ln1.weight.detach().double())
        Wo = block.attn.c_proj.weight.detach().double()  # [out, in]
        for h in range(H):
            q, k, v = (C @ gain @ W[i * M + h * D:i * M + (h + 1) * D].T for i in range(3))  # [M, D]
            o = Wo[:, h * D:(h + 1) * D].T @ C  # [D, M]
            out[(l, h)] = (v @ o, q @ k.T)
    E = gpt.wte.weight.detach().double() @ C
    U = C @ torch.diag(gpt.ln_final.weight.detach().double()) @ gpt.wte.weight.detach().double().T
    return out, E, U - U.mean(1, keepdim=True)


def test_scores_equal_a_direct_computation(gpt):
    got = composition_scores(folded_weights(gpt))
    heads, _, _ = naive_head_matrices(gpt)
    frob = torch.linalg.matrix_norm
    for (l1, h1), (ov1, _) in heads.items():
        for (l2, h2), (ov2, qk2) in heads.items():
            want = {"q": ov1 @ qk2, "k": ov1 @ qk2.T, "v": ov1 @ ov2}
            for kind in KINDS:
                right = ov2 if kind == "v" else qk2
                score = float(frob(want[kind]) / (frob(ov1) * frob(right))) if l2 > l1 else 0.0
                assert float(got[kind][l1, h1, l2, h2]) == pytest.approx(score, abs=1e-12), (kind, l1, h1, l2, h2)
    assert float(got["k"].max()) > 0.2


def test_scores_equal_transformer_lens_on_the_same_weights(gpt, processed):
    ours = composition_scores(folded_weights(gpt))
    for kind in KINDS:
        theirs = processed.all_composition_scores(kind.upper()).scores.double()
        assert torch.allclose(ours[kind], theirs, atol=1e-6), kind
    # the same from the bridges: processed (folding twice changes nothing) and unprocessed
    for model in (processed, to_transformer_lens(gpt)):
        again = composition_scores(folded_weights(model))
        assert all(torch.allclose(again[k], ours[k], atol=1e-6) for k in KINDS)


def test_copying_equals_the_eigenvalues_of_factored_matrices(gpt, processed):
    """TransformerLens' FactoredMatrix of the full OV circuit W_E W_V W_O W_U: its eigenvalues'
    real parts over their magnitudes, per head; and the hand-folded [V, V] circuit's own."""
    from transformer_lens import FactoredMatrix

    ours = copying_scores(folded_weights(gpt))
    heads, E, U = naive_head_matrices(gpt)
    for l in range(L):
        for h in range(H):
            with torch.no_grad():
                ov = FactoredMatrix(processed.W_E @ processed.W_V[l, h], processed.W_O[l, h] @ processed.W_U)
                lam = ov.eigenvalues
            assert float(ours[l, h]) == pytest.approx(float(lam.real.sum() / lam.abs().sum()), abs=1e-5)
            full = torch.linalg.eigvals(E @ heads[(l, h)][0] @ U)  # [V, V]: zero beyond rank D
            assert float(ours[l, h]) == pytest.approx(float(full.real.sum() / full.abs().sum()), abs=1e-6)
    assert float(ours.abs().max()) > 0.1


def test_the_hand_built_induction_head_k_composes_with_the_previous_token_head():
    """L1H0's key reads the V-dimensional subspace L0H0 writes, each token's direction once: a match
    of rank V, which scores 1/sqrt(V) (a rank-1 match would score 1). Its query and value read the
    token subspace, which L0H0 does not write; the random heads sit below the baseline."""
    result = composition_result(circuit_model())
    k, q, v = (np.asarray(result[kind]) for kind in ("k", "q", "v"))
    threshold = {kind: np.asarray(result["baseline"]["threshold"][kind]) for kind in KINDS}
    print("K", k[0, :, 1, :].round(4).tolist(), "thresholds", threshold["k"][0, :, 1, :].round(4).tolist())
    assert k[0, 0, 1, 0] == pytest.approx(1 / math.sqrt(V), abs=0.005) and k[0, 0, 1, 0] > threshold["k"][0, 0, 1, 0]
    assert q[0, 0, 1, 0] < threshold["q"][0, 0, 1, 0] and v[0, 0, 1, 0] < threshold["v"][0, 0, 1, 0]
    assert result["above"] == {"q": 0, "k": 1, "v": 0}
    assert result["heads"] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert np.all(k[1] == 0) and np.all(k[:, :, 0] == 0)  # no head reads a head of its own or a later layer


def test_the_baseline_is_the_score_under_random_relative_orientation(gpt):
    """Against an independent simulation with full matrices: the pair's own OV and QK matrices,
    the reader's turned by a Haar-random rotation of the centred d_model - 1 dimensional space
    (QR of a Gaussian matrix, signs fixed), the score computed directly. Its mean square is
    1 / (d_model - 1) whatever the heads."""
    seed, n = 5, 3000
    print("seed", seed)
    w = folded_weights(gpt)
    thresholds = null_thresholds(w)
    heads, _, _ = naive_head_matrices(gpt)
    basis = torch.linalg.qr(torch.eye(M, dtype=torch.float64) - 1.0 / M)[0][:, :M - 1]  # orthogonal to 1
    gen = torch.Generator().manual_seed(seed)
    frob = torch.linalg.matrix_norm
    for (l1, h1), (l2, h2), kind in (((0, 1), (2, 3), "k"), ((1, 0), (2, 2), "v")):
        A = heads[(l1, h1)][0]
        B = heads[(l2, h2)][0] if kind == "v" else heads[(l2, h2)][1].T
        Q, R = torch.linalg.qr(torch.randn(n, M - 1, M - 1, generator=gen, dtype=torch.float64))
        Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]  # Haar
        rot = basis @ Q @ basis.T
        scores = (frob(A @ rot @ B) / (frob(A) * frob(B))).numpy()
        assert float(np.mean(scores ** 2)) == pytest.approx(1 / (M - 1), rel=0.05)
        want = float(np.quantile(scores, 0.999))
        print(kind, (l1, h1), (l2, h2), "threshold", float(thresholds[kind][l1, h1, l2, h2]), "simulated", want)
        assert float(thresholds[kind][l1, h1, l2, h2]) == pytest.approx(want, rel=0.1)
    assert torch.equal(thresholds["q"], thresholds["k"])  # a matrix and its transpose: the same singular values
    assert all(torch.equal(null_thresholds(w)[k], thresholds[k]) for k in KINDS)  # seeded: the same every call
    assert float(thresholds["k"][2].abs().max()) == 0.0  # no later layer to read layer 2


def test_composition_result_holds_scores_per_kind_and_its_baseline(gpt):
    result = composition_result(gpt)
    assert set(KINDS) <= set(result) and np.shape(result["q"]) == (L, H, L, H)
    assert result["baseline"]["chance_rms"] == pytest.approx((M - 1) ** -0.5)
    for kind in KINDS:
        threshold = np.asarray(result["baseline"]["threshold"][kind])
        assert np.shape(threshold) == (L, H, L, H)
        assert result["above"][kind] == int((np.asarray(result[kind]) > threshold).sum())
    assert result["note"] is None
    gated = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, n_ctx=8, vocab_size=20, attention="gated"))
    assert "gate" in composition_result(gated)["note"]
