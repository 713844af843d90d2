"""Attribution patching (`probes.head_attribution`): equal to a finite-difference derivative of
the loss along each head's ablation, agreeing in rank with the exact sweep on a trained model,
the same on the TransformerLens bridge, and refusing bad input in one sentence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import probes
from model.config import GPTConfig
from model.gpt import GPT
from probes.measure.ablation import head_ablation_sweep, resample_permutation
from probes.measure.attribution import agreement, head_attribution, ranks, spearman, top_overlap, z_and_grads
from probes.measure.results import ablation_key

KINDS = ("zero", "mean", "resample")
SEED = 3  # weights and tokens of the tiny models below


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(dtype: torch.dtype) -> GPT:
    """2 layers x 4 heads, 32 wide, every parameter moved away from init so each one matters."""
    torch.manual_seed(SEED)
    m = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, n_ctx=24, vocab_size=97)).to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def tiny_tokens(batch: int = 4, positions: int = 16) -> torch.Tensor:
    return torch.randint(0, 97, (batch, positions + 1), generator=torch.Generator().manual_seed(SEED))


# -- the reference: a finite difference written out here ----------------------------------------
def clean_z(model: GPT, inputs: torch.Tensor) -> list[torch.Tensor]:
    zs: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(z, hook):
            zs[layer] = z.detach().clone()
        return hook

    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{l}.attn.hook_z", keep(l)) for l in range(model.cfg.n_layer)])
    return [zs[l] for l in range(model.cfg.n_layer)]


def target_z(kind: str, zh: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The ablated value of one head's z [B,P,D], as the module docstring of probes.measure.ablation says."""
    if kind == "zero":
        return torch.zeros_like(zh)
    if kind == "mean":
        return zh.mean(dim=(0, 1), keepdim=True).expand_as(zh)
    return zh[perm]


def loss_moved(model: GPT, tokens: torch.Tensor, layer: int, head: int, kind: str, t: float) -> float:
    """Mean float64 loss with head (layer, head)'s z moved a fraction t of the way to its ablated value."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    zh = clean_z(model, inputs)[layer][:, :, head]
    goal = target_z(kind, zh, resample_permutation(inputs.shape[0], 0))

    def move(z, hook):
        z = z.clone()
        z[:, :, head] = z[:, :, head] + t * (goal - z[:, :, head])
        return z

    with torch.no_grad():
        logits = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", move)])
    return float(F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), targets.reshape(-1)))


@pytest.mark.parametrize("kind", KINDS)
def test_attribution_equals_a_finite_difference(kind):
    model, tokens, eps = tiny_model(torch.float64), tiny_tokens(), 1e-6
    got = head_attribution(model, tokens, kind)
    assert got.shape == (2, 4)
    for layer in range(2):
        for head in range(4):  # central difference: its O(eps^2) error is far below the tolerance
            fd = (loss_moved(model, tokens, layer, head, kind, eps)
                  - loss_moved(model, tokens, layer, head, kind, -eps)) / (2 * eps)
            assert abs(got[layer, head] - fd) <= 1e-5 * abs(fd) + 1e-9, \
                f"seed {SEED}, {kind} head ({layer}, {head}): attribution {got[layer, head]!r}, finite difference {fd!r}"
    assert np.abs(got).min() > 1e-5  # every head matters, so the relative check above has teeth


def test_attribution_is_first_order_so_it_nears_the_sweep_for_small_models_changes():
    """Scaling every head's output projection down makes ablation effects small, where the first
    order term dominates: the estimate then approaches the exact sweep."""
    model, tokens = tiny_model(torch.float64), tiny_tokens()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_proj.weight.mul_(0.01)
    for kind in KINDS:
        exact = head_ablation_sweep(model, tokens, kind)
        est = head_attribution(model, tokens, kind)
        err = np.abs(est - exact).max() / np.abs(exact).max()
        assert err < 0.05, f"{kind}: relative error {err:.3g} of the estimate against the exact sweep"


def test_chunked_rows_give_the_same_gradients_and_no_parameter_grads():
    model, tokens = tiny_model(torch.float64), tiny_tokens(batch=5)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    z1, g1 = z_and_grads(model, inputs, targets, rows=5)
    z2, g2 = z_and_grads(model, inputs, targets, rows=2)
    for a, b in zip(g1 + z1, g2 + z2):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    with torch.no_grad():  # the caller's no_grad must not stop the backward pass
        got = head_attribution(model, tokens, "mean")
    assert np.abs(got).max() > 0
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)  # a frozen model still has gradients with respect to z
    assert np.allclose(head_attribution(model, tokens, "mean"), got, rtol=1e-12, atol=0)


def test_on_the_transformer_lens_bridge_equals_ours():
    from model.interop import to_transformer_lens

    model, tokens = tiny_model(torch.float32), tiny_tokens()
    bridge = to_transformer_lens(model)
    for kind in KINDS:
        ours, theirs = head_attribution(model, tokens, kind), head_attribution(bridge, tokens, kind)
        assert np.abs(ours).max() > 1e-3
        assert np.abs(ours - theirs).max() <= 1e-4, f"{kind}: {ours} vs {theirs}"


# -- agreement with the exact sweep on a trained model (conftest.py's small_run) --------------
def test_agreement_with_the_exact_sweep_on_a_trained_run(small_run):
    """Honest bar: positive rank correlation. The estimate is first order and zero ablation moves
    z furthest, so it is the least reliable kind (at the last checkpoint of this run its Spearman is
    about 0.2 against about 0.7 for mean and 1.0 for resample); the average over the trained
    checkpoints is positive for every kind, and the last checkpoint for mean and resample."""
    from store.checkpoint import list_checkpoints, load_checkpoint
    from probes.measure.inputs import heldout_tokens

    tokens = heldout_tokens(small_run, n=16)
    checkpoints = [c for c in list_checkpoints(small_run) if int(c.name.split("_")[-1]) >= 10]
    assert len(checkpoints) >= 3
    rhos: dict[str, list[float]] = {k: [] for k in KINDS}
    for ck in checkpoints:
        model = load_checkpoint(ck)[0].eval()
        for kind in KINDS:
            exact = head_ablation_sweep(model, tokens, kind)
            rhos[kind].append(agreement(head_attribution(model, tokens, kind), exact)["spearman"])
    print({k: [round(r, 3) for r in v] for k, v in rhos.items()})
    for kind in KINDS:
        assert np.mean(rhos[kind]) > 0, f"{kind}: Spearman per checkpoint {rhos[kind]}"
    for kind in ("mean", "resample"):
        assert rhos[kind][-1] > 0, f"{kind}: Spearman at the last checkpoint {rhos[kind][-1]}"


# -- agreement measures against hand-computed values -----------------------------------------
def test_spearman_and_top_overlap_by_hand():
    assert list(ranks([10, 30, 20, 20])) == [1, 4, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1,2,3,4) vs (2,1,4,3): d^2 sums to 4, rho = 1 - 6*4/(4*15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    exact = np.array([[0.5, 0.1, 0.4], [0.3, 0.0, -0.2]])
    assert top_overlap(exact * 2, exact) == 1.0
    assert top_overlap([[0.5, 0.1, 0.0], [0.0, 0.9, 0.8]], exact) == pytest.approx(1 / 3)
    assert agreement(exact, exact) == {"spearman": pytest.approx(1.0), "top3_overlap": 1.0}


# -- bad input ---------------------------------------------------------------------------------
def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and message.count(". ") == 0


@pytest.mark.parametrize("tokens, kind, words", [
    (tiny_tokens(), "half", "ablation kind"),
    (tiny_tokens(batch=1), "resample", "at least 2 sequences"),
    (torch.zeros(3, 1, dtype=torch.long), "zero", "tokens must have shape"),
    (torch.zeros(2, 3, 4, dtype=torch.long), "zero", "tokens must have shape"),
    (torch.full((2, 5), 97), "zero", "token ids must lie in [0, 97)"),
    (torch.zeros(2, 30, dtype=torch.long), "zero", "n_ctx=24"),
])
def test_bad_input_is_one_clear_sentence(tokens, kind, words):
    with pytest.raises(ValueError) as err:
        head_attribution(tiny_model(torch.float32), tokens, kind)
    assert words in str(err.value) and one_sentence(str(err.value)), str(err.value)


def test_agreement_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        spearman(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same shape"):
        top_overlap(np.zeros(4), np.zeros(6))


def test_exported_from_probes():
    assert probes.head_attribution is head_attribution


# -- stored with the exact sweep in the head_ablation result ---------------------------------
def test_probe_stores_the_first_block_estimate_and_its_agreement_with_the_stored_sweep():
    """Three blocks of 4 sequences: the estimate is the one of the first block (the batch an
    unsized sweep would use), the agreement is against the exact matrices stored beside it."""
    from probes.measure.ablation import head_ablation_probe

    model, tokens = tiny_model(torch.float64), tiny_tokens(batch=12)
    res = head_ablation_probe(model, tokens, block=4, target_se=1e-12, max_sequences=12, kinds=KINDS)
    assert res["n_sequences"] == 12 and res["attribution_sequences"] == 4
    for kind in KINDS:
        est = np.array(res["attribution"][kind])
        assert np.allclose(est, head_attribution(model, tokens[:4], kind), rtol=1e-12, atol=0), kind
        assert not np.allclose(est, head_attribution(model, tokens, kind)), kind  # not all 12 sequences
        want = agreement(est, np.array(res[kind]))
        assert res["attribution_agreement"][kind] == pytest.approx(want), kind
    assert res["seconds"]["attribution"] >= 0
    assert "attribution" not in head_ablation_probe(model, tokens[:4], attribution=False)


def test_agreement_in_the_runners_result_files_equals_agreement_of_the_stored_matrices():
    """Through the real probes runner and its JSON files: what the app shows next to the
    estimate is exactly `agreement` of the two matrices the file holds."""
    from app_fixtures import probe_result

    for step in (0, 4, 16):
        result = probe_result(step)
        for kind in KINDS:
            res = result[ablation_key(result, kind)]  # zero in the default entry, the others on demand
            est, exact = np.array(res["attribution"][kind]), np.array(res[kind])
            assert est.shape == exact.shape == (2, 2)
            want = agreement(est, exact)
            got = res["attribution_agreement"][kind]
            assert set(got) == {"spearman", "top3_overlap"}
            assert got["top3_overlap"] == pytest.approx(want["top3_overlap"]), (step, kind)
            if np.isnan(want["spearman"]):
                assert got["spearman"] is None, (step, kind)
            else:
                assert got["spearman"] == pytest.approx(want["spearman"]), (step, kind)


def test_an_undefined_spearman_is_stored_as_none_for_strict_json():
    import json
    from probes.measure.attribution import attribution_result

    model, tokens = tiny_model(torch.float32), tiny_tokens()
    out = attribution_result(model, tokens, {"zero": np.ones((2, 4))})
    assert out["attribution_agreement"]["zero"]["spearman"] is None
    json.dumps(out, allow_nan=False)
