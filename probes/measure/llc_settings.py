"""SGLD settings of the llc probe, per model size, and the calibration they come from.

An LLC estimate depends on its sampler settings, so one run's checkpoints are all estimated with
the same settings (their series is what probes/analyse/stages.py reads) and every result records them.
Each setting has a reason, and only the step size is measured per model size:

- localization gamma = 1 / 0.01^2 = 10,000: the Gaussian pull towards the checkpoint has a
  per-weight standard deviation of 1/sqrt(gamma) = 0.01, half of GPT-2's initialization scale (0.02),
  so the chains explore the checkpoint's neighbourhood and not the whole loss landscape. At
  gamma = 100 (devinterp's examples) a nano checkpoint's chains climbed 6-11 nats above its loss of
  1 nat, at 1,000 still 3 nats (measured), that is, far out of the basin the LLC is meant to
  describe; at 10,000 about 0.1 nats.
- n_beta = devinterp.utils.default_nbeta(n) = n / log n, with n the tokens one SGLD batch averages
  its loss over (batch_size x context): the per-token loss is their mean.
- chains 2, draws 96 after a burn-in of 24, batch 16 rows cycling through 64 fixed rows: the cost
  budget (measured by bench/llc.py; see bench/RESULTS.md), with the burn-in over three
  relaxation times 2 / (lr x gamma) of the directions only the localization holds.
- lr (the step size epsilon) is calibrated per model shape as devinterp's calibration notebooks
  advise (the estimate should not depend on the step size): `python -m bench.llc --calibrate RUN`
  estimates the LLC of the run's last checkpoint (its lowest loss, usually its sharpest curvature)
  at each step size of LR_GRID and takes the largest whose estimate is trusted (probes.measure.llc's
  diagnostics) and within CALIBRATION_TOLERANCE of the estimate at the next smaller step size.
  CALIBRATED holds the outcome for the shapes measured so far; another shape gets the step size of
  the calibrated shape nearest in parameter count, and its settings say it is not calibrated.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

LOCALIZATION = 1.0 / 0.01 ** 2
BATCH_SIZE, N_SEQUENCES, CHAINS, BURNIN, DRAWS = 16, 64, 2, 24, 96
LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4)
CALIBRATION_TOLERANCE = 0.2

# (n_layer, n_embd, context) -> (lr, how it was measured). The context is the row length the chains
# sample (min(n_ctx, the run's chunk length)).
CALIBRATED: dict[tuple[int, int, int], tuple[float, str]] = {
    (2, 128, 128): (3e-5, "runs/induction-text step 6000 (rows cut to 128 tokens), one chain of 80 draws per "
                          "step size: LLC 27.1 at 1e-5, 30.9 at 3e-5 (+14%), 46.2 at 1e-4 (+50%)"),
}


@dataclass(frozen=True)
class LLCSettings:
    """One LLC estimate's sampler settings (all recorded with the result)."""

    lr: float                 # SGLD step size epsilon
    localization: float       # gamma: the pull towards the checkpoint's weights
    n_beta: float             # inverse temperature n x beta
    chains: int
    draws: int                # steps per chain after burn-in, all used in the estimate
    burnin: int               # steps per chain before them, not used
    batch_size: int           # rows per SGLD step
    n_sequences: int          # the fixed rows the chains cycle through
    seed: int = 0
    calibrated: bool = False  # whether lr was calibrated on this model shape
    calibration: str = ""     # where lr comes from

    def __post_init__(self) -> None:
        for name in ("chains", "draws", "batch_size", "n_sequences"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LLCSettings.{name} must be a positive integer, got {v!r}.")
        if isinstance(self.burnin, bool) or not isinstance(self.burnin, int) or self.burnin < 0:
            raise ValueError(f"LLCSettings.burnin must be a whole number >= 0, got {self.burnin!r}.")
        for name in ("lr", "n_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"LLCSettings.{name} must be a positive number, got {v!r}.")
        v = self.localization
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"LLCSettings.localization must be a number >= 0, got {v!r}.")
        if self.n_sequences % self.batch_size:
            raise ValueError(f"LLCSettings.n_sequences must be a multiple of batch_size {self.batch_size}, "
                             f"got {self.n_sequences}.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_nbeta(n: int) -> float:
    """devinterp.utils.default_nbeta for n samples: n / log n (1 for n <= 1)."""
    return n / math.log(n) if n > 1 else 1.0


def shape_parameters(n_layer: int, n_embd: int, context: int) -> int:
    """Parameters of a GPT-2 block stack of this shape (embeddings left out: the vocabulary
    differs between runs, and the step size is about the blocks' curvature)."""
    return n_layer * 12 * n_embd * n_embd + context * n_embd


def lr_for(n_layer: int, n_embd: int, context: int) -> tuple[float, bool, str]:
    """(lr, calibrated, where it comes from) for a model shape; see the module docstring."""
    key = (int(n_layer), int(n_embd), int(context))
    if key in CALIBRATED:
        lr, how = CALIBRATED[key]
        return lr, True, f"calibrated on this shape: {how}"
    size = shape_parameters(*key)
    near = min(CALIBRATED, key=lambda k: (abs(math.log(shape_parameters(*k) / size)), k))
    lr = CALIBRATED[near][0]
    return lr, False, (f"not calibrated on this shape: the step size of the nearest calibrated shape (n_layer "
                       f"{near[0]}, n_embd {near[1]}, context {near[2]}); run python -m bench.llc --calibrate RUN")


def settings_for(cfg: Any, context: int, seed: int = 0) -> LLCSettings:
    """The llc probe's settings for a model (`cfg` has n_layers and d_model, as GPTConfig and
    TransformerLens configs do) sampled on rows of `context` tokens."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive integer, got {context!r}.")
    lr, calibrated, how = lr_for(int(cfg.n_layers), int(cfg.d_model), context)
    return LLCSettings(lr=lr, localization=LOCALIZATION, n_beta=default_nbeta(BATCH_SIZE * context), chains=CHAINS,
                       draws=DRAWS, burnin=BURNIN, batch_size=BATCH_SIZE, n_sequences=N_SEQUENCES, seed=int(seed),
                       calibrated=calibrated, calibration=how)
