"""The local learning coefficient (LLC) of one checkpoint, estimated with devinterp (PyPI 2.x).

The LLC (Lau et al. 2023) measures how many effective degrees of freedom the loss has around a
point w*: lambda-hat = n_beta * (E_w[L(w)] - L(w*)), the expectation over a tempered posterior
localized at w*, sampled with SGLD. Over training it rises and falls at developmental stages
(Hoogland et al. 2024); probes/analyse/stages.py finds where its trend changes.

devinterp does the sampling: `devinterp.slt.sampling.sample` runs the SGLD chains (its SGMCMC.sgld
optimizer, seeded per chain) and writes every step's per-token losses to zarr, and
`devinterp.slt.llc.compute_llc` reads them back. Two frictions, and the path taken around them:

- devinterp treats any model whose `cfg` has `n_heads` as a TransformerLens HookedTransformer
  (`model.to(device, print_details=False)`, `model(ids, return_type="logits")`), which our GPT is
  not. It is handed `NextTokenLoss`, a plain module holding the GPT, with devinterp's own hook for
  other models: a custom per-token `loss_fn`.
- `sample()` wants a `datasets.Dataset`, but only indexes it and batches it with a DataLoader, so a
  plain torch Dataset of {"input_ids"} rows (`Rows`) is all it needs; no `datasets` conversion.

Calibrated settings per model size are in probes/measure/llc_settings.py; diagnostics that say whether an
estimate can be trusted are computed here from the chains' loss traces.
"""
from __future__ import annotations

import contextlib
import functools
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from store.rundata import FREQUENT_COUNT_TOKENS, corpus_rows_per_step, frequent_tokens, get_chunks, load_tokens, n_chunks
from probes.measure.llc_settings import LLCSettings, settings_for

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (module, input_ids [B, P+1]) -> per-token loss [B, P]

TRACE_POINTS = 50     # each chain's loss trace is stored downsampled to at most this many points
DRIFT_MAX = 0.1       # settled: the two halves of a chain's draws give LLCs within 10% of its estimate
SPREAD_MAX = 0.2      # chains agree: their standard deviation is at most 20% of the mean estimate
BLOWUP = 2.0          # diverged: a chain's loss exceeded this multiple of the checkpoint's loss


class Rows(torch.utils.data.Dataset):
    """Token rows [N, P+1] as the {"input_ids": row} items devinterp's DataLoader batches."""

    def __init__(self, rows: torch.Tensor):
        self.rows = torch.as_tensor(rows, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i]}


class NextTokenLoss(nn.Module):
    """A GPT (or any model mapping tokens to logits) as devinterp samples it: forward(input_ids
    [B, P+1]) is the per-token cross-entropy [B, P] of predicting input_ids[:, 1:]. It has no
    `cfg`, so devinterp moves and calls it as the plain module it is. The model stays in eval mode
    whatever devinterp asks (it calls .train()): the LLC is about the loss, not dropout's noise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "NextTokenLoss":
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids[:, :-1])
        targets = input_ids[:, 1:]
        return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def module_loss(module: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """devinterp's loss_fn hook: the module itself computes the per-token loss."""
    return module(input_ids)


@contextlib.contextmanager
def quiet_chains() -> Iterator[None]:
    """devinterp draws one tqdm bar per chain on stderr (its `trange` reads no switch); in the
    probes runner, whose own bar counts checkpoints, those would pile up two lines a checkpoint.
    Its module-level `trange` is replaced by a disabled one for the duration, and restored."""
    from devinterp.slt import sampler
    from tqdm.auto import trange

    original = sampler.trange
    sampler.trange = functools.partial(trange, disable=True)
    try:
        yield
    finally:
        sampler.trange = original


def _device_of(module: nn.Module) -> str:
    try:
        return next(module.parameters()).device.type
    except StopIteration:
        return "cpu"


def check_rows(rows: torch.Tensor, s: LLCSettings) -> None:
    if rows.dim() != 2 or rows.shape[1] < 2:
        raise ValueError(f"the LLC needs token rows of shape [sequences, positions + 1], got {tuple(rows.shape)}.")
    if len(rows) < s.batch_size or len(rows) % s.batch_size:
        raise ValueError(f"the LLC needs a whole number of SGLD batches of {s.batch_size} rows, got {len(rows)} rows.")


def sample_llc(module: nn.Module, rows: torch.Tensor, s: LLCSettings, loss_fn: LossFn = module_loss) -> dict:
    """Run devinterp's SGLD chains from `module`'s weights over `rows` and summarize them.

    The chains cycle through the fixed rows in one seeded order, batch after batch, and the
    checkpoint's own loss L(w*) is taken over every row once (devinterp's init loss over
    len(rows) / batch_size batches), so L(w*) and the chains' mean loss are over the same rows.
    Deterministic under `s.seed` (devinterp seeds chain c with seed + c; torch's global RNG is
    restored afterwards). Returns the dict `llc_summary` describes."""
    try:
        from devinterp.slt.llc import compute_llc
        from devinterp.slt.sampling import sample
    except ImportError:
        raise ValueError("the llc probe needs devinterp 2.x; install it with pip install -e '.[llc]'.") from None

    rows = torch.as_tensor(rows, dtype=torch.long).cpu()
    check_rows(rows, s)
    with quiet_chains(), tempfile.TemporaryDirectory(prefix="llc-") as tmp, torch.random.fork_rng(devices=[]), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        samples = sample(module, Rows(rows), {}, lr=s.lr, n_beta=s.n_beta, localization=s.localization,
                         num_chains=s.chains, num_draws=s.draws, num_burnin_steps=s.burnin,
                         batch_size=s.batch_size, num_init_loss_batches=len(rows) // s.batch_size,
                         init_seed=s.seed, device=_device_of(module), loss_fn=loss_fn,
                         output_path=Path(tmp) / "samples.zarr")
        found = compute_llc(samples)
        trace = np.asarray(found["loss_trace"].values, dtype=np.float64)  # [chain, step], burn-in first
        init = float(found["init_loss"])
        reference = float(found["llc_mean"])
    return llc_summary(trace, init, s, devinterp_mean=reference)


def _downsample(values: np.ndarray, points: int) -> tuple[list[int], list[float | None]]:
    """(step indices, means over equal windows) of a trace cut to at most `points` windows."""
    n = len(values)
    edges = np.linspace(0, n, min(points, n) + 1).astype(int)
    steps = [int((a + b - 1) // 2) for a, b in zip(edges, edges[1:])]
    means = [float(values[a:b].mean()) for a, b in zip(edges, edges[1:])]
    return steps, [m if math.isfinite(m) else None for m in means]


def llc_summary(trace: np.ndarray, init_loss: float, s: LLCSettings, devinterp_mean: float | None = None) -> dict:
    """The LLC and its diagnostics from the chains' per-step mean losses [chain, burnin + draws].

    Per chain, lambda = n_beta x (its mean loss over the draws after burn-in - init_loss);
    mean and std (ddof 0, as devinterp's llc_std) are over chains. devinterp's own compute_llc
    averages over the burn-in too (it matches Timaeus' aether); that figure is kept as
    devinterp_mean. Diagnostics, after devinterp's guidance that a trustworthy estimate comes
    from loss traces that rise from the checkpoint's loss and flatten, stay finite, stay above
    it, and agree between chains:

    - diverged: a chain's loss became non-finite (devinterp stops the chain, leaving NaN) or
      exceeded BLOWUP x the checkpoint's (positive) loss: the step size is too large here.
    - negative: the estimate is below 0: the chains found lower loss than the checkpoint's, so
      it is not a local minimum at this temperature (common early in training).
    - settled: every chain's draws give, in their first and second halves, LLCs within DRIFT_MAX
      of that chain's estimate (a trace still climbing at the end fails; so does one too noisy
      for its estimate to mean DRIFT_MAX).
    - chains_agree: the std over chains is at most SPREAD_MAX of |mean| (always, with one chain).

    trusted = settled and chains_agree and neither diverged nor negative."""
    trace = np.asarray(trace, dtype=np.float64)
    draws = trace[:, s.burnin:]
    finite = bool(np.isfinite(trace).all())
    per_chain = [float(s.n_beta * (row.mean() - init_loss)) for row in draws]
    mean = float(np.mean(per_chain)) if finite else None
    std = float(np.std(per_chain)) if finite else None
    half = draws.shape[1] // 2
    drift = [float(s.n_beta * (row[half:].mean() - row[:half].mean()) / abs(lam)) if lam and finite else None
             for row, lam in zip(draws, per_chain)]
    diverged = not finite or bool(init_loss > 0 and np.nanmax(trace) > BLOWUP * init_loss)
    negative = mean is not None and mean < 0
    settled = finite and all(d is not None and abs(d) <= DRIFT_MAX for d in drift)
    agree = finite and (len(per_chain) < 2 or (mean != 0 and std <= SPREAD_MAX * abs(mean)))
    problems = ([f"a chain diverged (its loss became non-finite or exceeded {BLOWUP:g}x the checkpoint's)"] * diverged
                + ["the estimate is negative: the chains found lower loss than the checkpoint's"] * negative
                + [f"a chain has not settled (its two halves differ by more than {DRIFT_MAX:.0%})"] * (finite and not settled)
                + [f"the chains disagree (std above {SPREAD_MAX:.0%} of the mean)"] * (finite and not agree))
    steps, _ = _downsample(trace[0], TRACE_POINTS)
    return {
        "mean": mean, "std": std, "per_chain": per_chain if finite else [None] * len(per_chain),
        "devinterp_mean": devinterp_mean if devinterp_mean is None or math.isfinite(devinterp_mean) else None,
        "init_loss": init_loss,
        "diagnostics": {
            "trusted": not problems, "problems": problems, "diverged": diverged, "negative": negative,
            "settled": settled, "chains_agree": agree, "drift": drift,
            "rules": {"drift_max": DRIFT_MAX, "spread_max": SPREAD_MAX, "blowup": BLOWUP},
        },
        "trace": {"steps": steps, "burnin": s.burnin, "loss": [_downsample(row, TRACE_POINTS)[1] for row in trace]},
        "settings": s.as_dict(),
    }


LLC_STREAM, LLC_PLANT_STREAM = 8, 9  # sub-seeds of the sampling rows (probes.measure.inputs lists the others)


def sampling_rows(inputs: Any, tokenizer: Any, vocab_size: int, n_ctx: int, n: int) -> torch.Tensor:
    """The `n` fixed rows [n, min(chunk_len, n_ctx) + 1] every checkpoint's LLC is sampled on, drawn
    as training drew its batches: training-split chunks in a seeded order (the run seed's LLC
    stream) and, for a run with planted repeats, the same share of rows made as train/planting.py
    makes them (a random span of the training split's most frequent tokens, repeated at a period
    drawn from the planted range), interleaved. The LLC is a property of the training loss, so its
    data is the training distribution; an imported run, whose training data is unknown, uses
    held-out text. Fixed across checkpoints, so their estimates compare."""

    meta, length = inputs.data_meta, min(inputs.chunk_len, n_ctx) + 1
    plan = meta.get("planted_repeats") or {}
    planted = int(plan.get("rows_per_step", 0))
    k = int(round(n * planted / (planted + corpus_rows_per_step(meta)))) if planted else 0
    if inputs.training_data_known:
        train = inputs._train if inputs._train is not None else load_tokens(inputs.run_dir, "train", meta)
        order = np.random.default_rng([int(inputs.seed), LLC_STREAM]).permutation(
            n_chunks(int(meta["n_train_tokens"]), inputs.chunk_len))
        corpus = torch.from_numpy(get_chunks(train, order[: n - k], inputs.chunk_len))
    else:
        train, corpus = None, inputs.heldout[: n - k]
    rows = corpus[:, :length].long()
    if k and train is not None:
        exclude = {tokenizer.eot_id} | ({tokenizer.unk_id} if tokenizer.unk_id is not None else set())
        pool = frequent_tokens(train, vocab_size, exclude, int(plan.get("pool", 1000)), FREQUENT_COUNT_TOKENS)
        lo, hi = (int(v) for v in plan["period"])
        rng = np.random.default_rng([int(inputs.seed), LLC_PLANT_STREAM])
        extra = []
        for _ in range(k):
            span = rng.choice(pool, size=int(rng.integers(lo, hi + 1)), replace=len(pool) < hi)
            extra.append(torch.from_numpy(np.resize(span, length).astype(np.int64)))
        mixed = list(rows)
        for j, row in enumerate(extra):  # interleaved; devinterp's seeded shuffle then draws the batches
            mixed.insert(int(round((j + 0.5) * n / k)), row)
        rows = torch.stack(mixed[:n])
    if len(rows) < n:
        raise ValueError(f"{inputs.run_dir} has {len(rows)} sequences for the LLC, fewer than the {n} its settings need.")
    return rows


def llc_result(model: nn.Module, tokenizer: Any, inputs: Any, settings: LLCSettings | None = None) -> dict:
    """The llc probe of one checkpoint: the estimate with its spread, diagnostics, the loss
    traces and the settings (from probes.measure.llc_settings.settings_for unless given)."""
    cfg = model.cfg
    s = settings or settings_for(cfg, context=min(inputs.chunk_len, int(cfg.n_ctx)), seed=inputs.seed)
    t = time.perf_counter()
    rows = sampling_rows(inputs, tokenizer, int(cfg.d_vocab), int(cfg.n_ctx), s.n_sequences)
    out = sample_llc(NextTokenLoss(model), rows, s)
    out["seconds"] = {"sampling": time.perf_counter() - t}
    return out
