"""What an ablated head's output becomes: the ablation kinds (zero, mean, resample), the
replacement of one head's z, and the seeded derangement resample ablation draws from. Shared by
exact ablation (probes.measure.ablation) and its first-order estimate (probes.measure.attribution), so neither
imports the other's module for them.
"""
from __future__ import annotations

import numpy as np
import torch

KINDS = ("zero", "mean", "resample")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"ablation kind must be one of {', '.join(KINDS)}, got {kind!r}.")


def resample_permutation(batch: int, seed: int = 0) -> torch.Tensor:
    """A seeded derangement of the batch: row b takes its replacement from row perm[b] != b."""
    if batch < 2:
        raise ValueError("resample ablation needs at least 2 sequences in the batch, to take each "
                         "head's activation from a different one.")
    order = np.random.default_rng(seed).permutation(batch)
    perm = np.empty(batch, dtype=np.int64)
    perm[order] = np.roll(order, -1)  # each row points at the next one in a random cycle
    return torch.from_numpy(perm)


def replacement(kind: str, z: torch.Tensor, head: int, perm: torch.Tensor | None) -> torch.Tensor:
    """What head `head`'s z [B,P,D] becomes under ablation `kind`, given the clean z [B,P,H,D]."""
    zh = z[:, :, head]
    if kind == "zero":
        return torch.zeros_like(zh)
    if kind == "mean":
        return zh.mean(dim=(0, 1)).expand_as(zh)
    return zh[perm.to(zh.device)]
