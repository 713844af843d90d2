"""Per-head attention statistics gathered by hooks on `attn.hook_pattern` while the model reads
held-out text: entropy (raw and normalised), attention-sink mass, and the in-context copying
score. Hooks reduce each pattern to a few numbers per head on the spot, so no [B,H,P,P] pattern
is ever kept, whatever the model size.
"""
from __future__ import annotations

from typing import Any

import torch

from probes.measure.forward import pattern_name
from probes.measure.metrics import attention_entropy, copy_targets, copying_score, sink_mass

COPY_NGRAM = 2  # a copy query's current and previous token repeat an earlier span (and so does the next)


class HeldoutPatternStats:
    """Hooks that record, per layer, what the attention_entropy and induction probes need."""

    def __init__(self, n_layers: int, tokens: torch.Tensor, entropy: bool, copying: bool):
        self.n_layers = n_layers
        self.entropy = entropy
        self.copying = copying
        self.pairs = [copy_targets(row.tolist(), COPY_NGRAM) for row in tokens] if copying else []
        self.layers: list[dict[str, Any]] = [{} for _ in range(n_layers)]
        self.copy_loss: dict[str, float | None] = {"copy_positions": None, "other_positions": None}

    def hook_for(self, layer: int):
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            stats = self.layers[layer]
            if self.entropy:
                stats["raw"], stats["normalized"] = attention_entropy(pattern)
                stats["sink_mass"] = sink_mass(pattern)
            if self.copying:
                stats["copying"], stats["copy_positions"] = copying_score(pattern, self.pairs)
        return hook

    def record_losses(self, losses: torch.Tensor) -> None:
        """Behaviour beside attention: the loss where copying predicts the next token, and elsewhere."""
        if not self.copying:
            return
        mask = torch.zeros_like(losses, dtype=torch.bool)
        for b, pairs in enumerate(self.pairs):
            for q, _ in pairs:
                if q < mask.shape[1]:
                    mask[b, q] = True
        copy, other = losses[mask].double(), losses[~mask].double()
        self.copy_loss = {"copy_positions": float(copy.mean()) if len(copy) else None,
                          "other_positions": float(other.mean()) if len(other) else None}

    def hooks(self) -> list[tuple[str, Any]]:
        if not (self.entropy or self.copying):
            return []
        return [(pattern_name(l), self.hook_for(l)) for l in range(self.n_layers)]

    def matrix(self, key: str) -> list[list[float]]:
        """[L][H] of one statistic."""
        return [[float(v) for v in self.layers[l][key]] for l in range(self.n_layers)]


def attention_entropy_result(stats: HeldoutPatternStats, n_sequences: int) -> dict:
    return {
        "raw": stats.matrix("raw"),
        "normalized": stats.matrix("normalized"),
        "sink_mass": stats.matrix("sink_mass"),
        "n_sequences": int(n_sequences),
    }
