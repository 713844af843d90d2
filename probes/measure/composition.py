"""How heads connect, read off the weights alone: Q-, K- and V-composition between every head and
every head of a later layer (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"), with the chance level of the score beside it, and each head's copying score from the
eigenvalues of its OV circuit. No forward pass: a checkpoint's weights are all it takes.

Conventions are TransformerLens': row vectors (x @ W), W_Q, W_K, W_V [L, H, d_model, d_head] and
W_O [L, H, d_head, d_model]; a head's OV matrix is W_V W_O and its QK matrix W_Q W_K^T. Head 1
writes W_OV^1 into the residual stream; a later head 2 reads it with its query (Q-composition,
W_OV^1 W_QK^2), its key (K-composition, W_OV^1 (W_QK^2)^T) or its value (V-composition,
W_OV^1 W_OV^2). The score is ||W_OV^1 M^2||_F / (||W_OV^1||_F ||M^2||_F): scale-free, 0 when
what head 1 writes is orthogonal to what head 2 reads.

LayerNorm is folded as TransformerLens folds it (fold_ln, center_writing_weights, center_unembed):
ln1's gain multiplies the rows of W_Q, W_K and W_V, which are then centred over d_model; W_O and
W_E are centred over d_model (LayerNorm removes the mean anyway); ln_final's gain goes into W_U,
centred over d_model and over the vocabulary. So the scores equal `all_composition_scores` of a
processed TransformerBridge with the same weights, and the same on a model whose LayerNorms were
folded already (folding twice changes nothing).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from model.gpt import GPT

KINDS = ("q", "k", "v")
BASELINE_DRAWS = 2000      # random orientations behind each pair's chance distribution of the score
BASELINE_QUANTILE = 0.999  # an edge exceeds chance above this quantile of it
BASELINE_SEED = 0


@dataclass
class HeadWeights:
    """The weights composition and copying read, folded (see the module docstring), in float64."""

    W_Q: torch.Tensor  # [L, H, M, D]
    W_K: torch.Tensor  # [L, H, M, D]
    W_V: torch.Tensor  # [L, H, M, D]
    W_O: torch.Tensor  # [L, H, D, M]
    W_E: torch.Tensor  # [V, M]
    W_U: torch.Tensor  # [M, V]


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _gpt_weights(model: GPT) -> tuple[torch.Tensor, ...]:
    """(W_Q, W_K, W_V, W_O, ln1 gains [L, M], W_E, W_U, ln_final gain) of our GPT: c_attn holds the
    q, k and v projections [3M, M] (out, in), head h in rows h*D .. h*D + D - 1 of each."""
    cfg = model.cfg
    M, H = cfg.n_embd, cfg.n_head
    D = M // H
    qkv, outs, gains = [], [], []
    for block in model.blocks:
        W = block.attn.c_attn.weight
        qkv.append(torch.stack([W[i * M:(i + 1) * M].view(H, D, M).transpose(1, 2) for i in range(3)]))
        outs.append(block.attn.c_proj.weight.t().reshape(H, D, M))
        gains.append(block.ln1.weight)
    qkv = torch.stack(qkv, 1)  # [3, L, H, M, D]
    W_U = (model.wte.weight if model.lm_head is None else model.lm_head.weight).t()
    return qkv[0], qkv[1], qkv[2], torch.stack(outs), torch.stack(gains), model.wte.weight, W_U, model.ln_final.weight


def _lens_weights(model: Any) -> tuple[torch.Tensor, ...]:
    """The same from a TransformerLens model or bridge (its stacked W_Q ... and LayerNorm `w`);
    a LayerNorm without a gain (already folded, or none) counts as gain 1."""
    M = int(model.cfg.d_model)

    def gain(ln: Any) -> torch.Tensor:
        w = getattr(ln, "w", None)
        return torch.ones(M) if w is None else w

    gains = torch.stack([gain(getattr(b, "ln1", None)) for b in model.blocks])
    return (model.W_Q, model.W_K, model.W_V, model.W_O, gains, model.W_E, model.W_U,
            gain(getattr(model, "ln_final", None)))


@torch.no_grad()
def folded_weights(model: Any) -> HeadWeights:
    """The model's head weights with LayerNorm folded and centred as TransformerLens does."""
    raw = _gpt_weights(model) if isinstance(model, GPT) else _lens_weights(model)
    W_Q, W_K, W_V, W_O, ln1, W_E, W_U, ln_final = (t.detach().to("cpu", torch.float64) for t in raw)

    def reading(w: torch.Tensor) -> torch.Tensor:  # ln1's gain into the rows, then centred over d_model
        w = w * ln1[:, None, :, None]
        return w - w.mean(-2, keepdim=True)

    W_U = W_U * ln_final[:, None]
    W_U = W_U - W_U.mean(0, keepdim=True)
    return HeadWeights(W_Q=reading(W_Q), W_K=reading(W_K), W_V=reading(W_V),
                       W_O=W_O - W_O.mean(-1, keepdim=True), W_E=W_E - W_E.mean(-1, keepdim=True),
                       W_U=W_U - W_U.mean(1, keepdim=True))


def _gram_left(P: torch.Tensor) -> torch.Tensor:
    """P^T P of left factors [..., M, D]: [..., D, D]."""
    return P.transpose(-2, -1) @ P


def _gram_right(R: torch.Tensor) -> torch.Tensor:
    """R R^T of right factors [..., D, M]: [..., D, D]."""
    return R @ R.transpose(-2, -1)


def _product_norm(G_left: torch.Tensor, X: torch.Tensor, G_right: torch.Tensor) -> torch.Tensor:
    """||P X R||_F from the Gram matrices G_left = P^T P and G_right = R R^T, never forming the
    [M, M] product: ||P X R||^2 = tr(X^T G_left X G_right)."""
    return ((G_left @ X) * (X @ G_right)).sum((-2, -1)).clamp(min=0).sqrt()


def _pair_scores(writer: dict, reader: dict, kind: str) -> torch.Tensor:
    """Scores between writer heads [..., a] and reader heads [..., b]: [..., a, b]. Each dict holds
    a head set's factors W_V [.., M, D], W_O [.., D, M], W_Q, W_K [.., M, D] and their Grams."""
    read_left, read_right = {"q": ("W_Q", "G_K"), "k": ("W_K", "G_Q"), "v": ("W_V", "G_O")}[kind]
    X = torch.einsum("...adm,...bme->...abde", writer["W_O"], reader[read_left])
    norm = _product_norm(writer["G_V"][..., :, None, :, :], X, reader[read_right][..., None, :, :, :])
    reader_norm = reader["ov_norm"] if kind == "v" else reader["qk_norm"]
    denom = writer["ov_norm"][..., :, None] * reader_norm[..., None, :]
    return torch.where(denom > 0, norm / denom.clamp(min=1e-300), torch.zeros_like(norm))


def _factors(W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor) -> dict:
    G = {"G_Q": _gram_left(W_Q), "G_K": _gram_left(W_K), "G_V": _gram_left(W_V), "G_O": _gram_right(W_O)}
    return {"W_Q": W_Q, "W_K": W_K, "W_V": W_V, "W_O": W_O, **G,
            "ov_norm": (G["G_V"] * G["G_O"]).sum((-2, -1)).clamp(min=0).sqrt(),
            "qk_norm": (G["G_Q"] * G["G_K"]).sum((-2, -1)).clamp(min=0).sqrt()}


def composition_scores(w: HeadWeights) -> dict[str, torch.Tensor]:
    """{"q", "k", "v"} -> [L, H, L, H] scores: [l1, h1, l2, h2] = how much head (l2, h2) reads,
    with its query, key or value, what head (l1, h1) writes; 0 where l2 <= l1 (the layout of
    TransformerLens' `all_composition_scores`). A head with all-zero weights scores 0."""
    L, H = w.W_Q.shape[:2]
    heads = _factors(w.W_Q, w.W_K, w.W_V, w.W_O)
    out = {kind: torch.zeros(L, H, L, H, dtype=torch.float64) for kind in KINDS}
    for l1 in range(L - 1):
        writer = {k: v[l1] for k, v in heads.items()}
        reader = {k: v[l1 + 1:].reshape(-1, *v.shape[2:]) for k, v in heads.items()}  # later heads, flat
        for kind in KINDS:
            out[kind][l1, :, l1 + 1:, :] = _pair_scores(writer, reader, kind).view(H, L - l1 - 1, H)
    return out


@lru_cache(maxsize=8)
def _haar_blocks(dim: int, k: int, draws: int, seed: int) -> torch.Tensor:
    """[draws, k, k] squared entries of the top-left k x k block of `draws` random orthogonal
    dim x dim matrices (Haar): the first k rows of the orthonormal frame QR makes of a dim x k
    Gaussian matrix (its columns' signs do not matter once squared)."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, draws, 250):
        G = torch.randn(min(250, draws - start), dim, k, generator=gen, dtype=torch.float64)
        parts.append(torch.linalg.qr(G)[0][:, :k, :] ** 2)
    return torch.cat(parts)


def squared_singular_values(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[..., D] squared singular values of left @ right (left [..., M, D], right [..., D, M]),
    largest first: those of R @ right, with left = Q R (QR), never forming the [M, M] product."""
    R = torch.linalg.qr(left)[1]
    return torch.linalg.svdvals(R @ right) ** 2


def null_thresholds(w: HeadWeights, draws: int = BASELINE_DRAWS, quantile: float = BASELINE_QUANTILE,
                    seed: int = BASELINE_SEED) -> dict[str, torch.Tensor]:
    """{"q", "k", "v"} -> [L, H, L, H]: for each pair of a head and a later head, the `quantile` of
    its score under the null of no alignment: both heads' matrices kept as they are (same shapes,
    same singular values, so the same norms) and what the reader reads turned to a random
    orientation against what the writer writes (a Haar-random rotation of the d_model - 1
    dimensional space the folded weights live in). Then score^2 = sum_ij a_i b_j c_ij^2 / (sum a
    sum b), a and b the two matrices' squared singular values and c the top block of a random
    orthogonal matrix; its mean is 1 / (d_model - 1) whatever the heads. Low-rank heads spread
    it widely (two rank-1 heads score |cos| of two random directions), many-dimensional ones
    narrowly. Drawn `draws` times from one seeded set of rotations, shared by every pair and
    checkpoint of a model's shape. 0 where l2 <= l1."""
    L, H, M, D = w.W_Q.shape
    k = min(D, M - 1)
    blocks = _haar_blocks(M - 1, k, int(draws), int(seed))

    def shares(sv: torch.Tensor) -> torch.Tensor:  # each squared singular value's share (a zero head: 0)
        return torch.nan_to_num(sv / sv.sum(-1, keepdim=True))

    writer = shares(squared_singular_values(w.W_V, w.W_O)[..., :k])
    qk = shares(squared_singular_values(w.W_Q, w.W_K.transpose(-2, -1))[..., :k])
    out = {kind: torch.zeros(L, H, L, H, dtype=torch.float64) for kind in KINDS}
    for reader, kinds in ((qk, ("q", "k")), (writer, ("v",))):
        for l1 in range(L - 1):
            s2 = torch.einsum("hi,nij,lgj->nhlg", writer[l1], blocks, reader[l1 + 1:])
            threshold = torch.quantile(s2.clamp(min=0).sqrt(), quantile, dim=0)
            for kind in kinds:
                out[kind][l1, :, l1 + 1:, :] = threshold
    return out


def baseline_definition(d_model: int, draws: int, quantile: float, seed: int) -> str:
    return (f"the score of the same two heads under random relative orientation: what the reader reads turned by a "
            f"Haar-random rotation of the {d_model - 1}-dimensional space the folded weights live in, both heads' "
            f"matrices otherwise kept (same shapes, same singular values, so the same norms); threshold[kind] per "
            f"pair = its {quantile} quantile over {draws} rotations (seed {seed}); chance_rms = the root mean square "
            "of the score under it, 1 / sqrt(d_model - 1) for every pair")


def copying_scores(w: HeadWeights) -> torch.Tensor:
    """[L, H] copying score of each head's full OV circuit W_E W_V W_O W_U [V, V] (Elhage et al.
    2021): sum of its eigenvalues' real parts over the sum of their magnitudes, in [-1, 1]; 1 when
    every eigenvalue is positive (attending to a token raises that token's logit: copying), -1 when
    every one is negative (suppression), near 0 for a random OV circuit. Its nonzero eigenvalues are
    those of the [D, D] matrix W_O (W_U W_E) W_V, so the [V, V] circuit is never formed."""
    E = (w.W_U.float() @ w.W_E.float()).double()  # [M, M]: the one product over the vocabulary
    lam = torch.linalg.eigvals(w.W_O @ E @ w.W_V)  # [L, H, D], complex
    total = lam.abs().sum(-1)
    return torch.where(total > 0, lam.real.sum(-1) / total.clamp(min=1e-300), torch.zeros_like(total))


def nested(t: torch.Tensor, digits: int = 6) -> list:
    """A tensor as nested lists of floats rounded to `digits` (JSON stays small)."""
    if t.dim() == 0:
        return round(float(t), digits)
    return [nested(x, digits) for x in t]


DEFINITION = ("scores[kind][l1][h1][l2][h2] = ||W_OV^1 M^2||_F / (||W_OV^1||_F ||M^2||_F), W_OV^1 = W_V W_O of "
              "head (l1, h1), M^2 of head (l2, h2) in a later layer: W_Q W_K^T (q), (W_Q W_K^T)^T (k) or "
              "W_V W_O (v), row-vector convention (Elhage et al. 2021); 0 where l2 <= l1")
FOLDING = ("LayerNorm folded as TransformerLens folds it: ln1's gain into W_Q, W_K, W_V, centred over d_model; "
           "W_O centred over d_model (fold_ln, center_writing_weights)")


@torch.no_grad()
def composition_result(model: Any) -> dict:
    """The `composition` entry of a result: per kind the [L][H][L][H] scores (layout of
    `composition_scores`), the head names, the chance baseline of every pair (`null_thresholds`)
    and how many pairs of each kind exceed it."""
    w = folded_weights(model)
    L, H, M, D = w.W_Q.shape
    scores, thresholds = composition_scores(w), null_thresholds(w)
    attention = getattr(model.cfg, "attention", "standard")
    note = {"gated": "gated attention: the output gate is not in the weights' OV circuit and is left out",
            "linear": "linear attention: queries and keys meet through a feature map, not a bilinear form; the "
                      "Q- and K-scores read the weights before it"}.get(attention)
    return {"heads": [head_name(l, h) for l in range(L) for h in range(H)],
            **{kind: nested(scores[kind]) for kind in KINDS},
            "above": {kind: int((scores[kind] > thresholds[kind]).sum()) for kind in KINDS},
            "baseline": {"threshold": {kind: nested(thresholds[kind]) for kind in KINDS},
                         "chance_rms": (M - 1) ** -0.5, "quantile": BASELINE_QUANTILE, "draws": BASELINE_DRAWS,
                         "seed": BASELINE_SEED,
                         "definition": baseline_definition(M, BASELINE_DRAWS, BASELINE_QUANTILE, BASELINE_SEED)},
            "definition": DEFINITION, "folding": FOLDING, "note": note}
