"""The llc probe (probes/measure/llc.py on devinterp): the estimator on models whose learning coefficient
is known, its diagnostics, determinism under a seed, and the probe on a tiny real run through the
probes runner (--only llc, merged results, is_done, the worker-process pool)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import probes
from _runs import write_run
from store.runlayout import result_path
from store.vocab import load_tokenizer
from probes.measure.compute import OPTIONAL_PROBES, PROBES, check_only
from probes.measure.inputs import probe_inputs
from probes.measure.llc import llc_summary, sample_llc, sampling_rows
from probes.measure.llc_settings import CALIBRATED, LLCSettings, settings_for
from probes.measure.results import is_done, read_result
from probes.run.runner import pending_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


class Regression(nn.Module):
    """Half the squared error of a regression on a fixed table (x, y), per row: input_ids rows
    [i, i] pick sample i, so devinterp's per-token loss of row i is 0.5 (y_i - f(x_i))^2. With
    Gaussian noise of variance 1 that is the negative log-likelihood up to a constant."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None):
        super().__init__()
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        if w is not None:  # linear regression f(x) = w . x, started at its least-squares minimum
            self.w = nn.Parameter(w.clone())
        else:  # f(x) = a b x, started at a = b = 0
            self.a, self.b = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        i = input_ids[:, 0]
        pred = self.x[i] @ self.w if hasattr(self, "w") else self.a * self.b * self.x[i, 0]
        return (0.5 * (self.y[i] - pred) ** 2)[:, None]


N = 256
ROWS = torch.arange(N)[:, None].repeat(1, 2)


def toy_settings(**kw) -> LLCSettings:
    base = dict(lr=2e-3, localization=0.0, n_beta=100.0, chains=2, draws=1000, burnin=100, batch_size=N,
                n_sequences=N, seed=0)
    return LLCSettings(**{**base, **kw})


def linear_model(d: int = 4) -> Regression:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g)
    y = x @ torch.linspace(-2, 3, d) + torch.randn(N, generator=g)
    return Regression(x, y, torch.linalg.lstsq(x, y[:, None]).solution[:, 0])


def test_regular_model_at_a_nondegenerate_minimum_has_llc_d_over_2():
    """Linear regression with d = 4 parameters at its least-squares minimum: the tempered posterior
    is Gaussian and n_beta E[L - L(w*)] = d/2 = 2 exactly (SGLD's step adds about +5% here:
    lr x n_beta x curvature / 4 = 0.05)."""
    found = sample_llc(linear_model(4), ROWS, toy_settings())
    assert found["mean"] == pytest.approx(2.0, abs=0.45), found["per_chain"]
    assert not found["diagnostics"]["diverged"] and not found["diagnostics"]["negative"]


def tempered_expectation(n_beta: float, gamma: float, c: float) -> float:
    """n_beta E[K] for K = c a^2 b^2 under exp(-n_beta K - gamma |w|^2 / 2), on a grid."""
    s = 5 / np.sqrt(gamma)
    a = np.linspace(-s, s, 1201)
    A, B = np.meshgrid(a, a)
    K = c * A ** 2 * B ** 2
    w = np.exp(-n_beta * K - gamma * (A ** 2 + B ** 2) / 2)
    return float((n_beta * K * w).sum() / w.sum())


def test_degenerate_model_has_llc_below_its_parameter_count_over_2():
    """f(x) = a b x on data with truth 0 (y = 0), started at a = b = 0: K = c (ab)^2, whose learning
    coefficient is 1/2 (with multiplicity 2), not d/2 = 1. At a finite temperature the estimate
    approaches 1/2 from below by about 1/log(n_beta); the target is the tempered expectation,
    integrated here on a grid (0.38 at n_beta 1000, localization 1)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, generator=g)
    model = Regression(x, torch.zeros(N), None)
    s = toy_settings(lr=3e-4, n_beta=1000.0, localization=1.0, draws=1200, burnin=300)
    found = sample_llc(model, ROWS, s)
    exact = tempered_expectation(1000.0, 1.0, 0.5 * float((x ** 2).mean()))
    assert 0.3 < exact < 0.45
    assert found["mean"] == pytest.approx(exact, abs=0.12), (found["per_chain"], exact)
    assert found["mean"] < 0.7  # far from the regular count d/2 = 1


def test_the_estimate_is_deterministic_under_a_seed():
    """The same seed gives the same chains: the same noise, the same batches, the same losses, up to
    float32 rounding (BLAS kernels may round the last bit differently with a buffer's alignment,
    measured here at 2e-6 relative); another seed gives other chains."""
    s = toy_settings(draws=60, burnin=10)
    one, two = (sample_llc(linear_model(), ROWS, s) for _ in range(2))
    assert one["per_chain"] == pytest.approx(two["per_chain"], rel=1e-5)
    assert np.allclose(one["trace"]["loss"], two["trace"]["loss"], rtol=1e-6, atol=0)
    other = sample_llc(linear_model(), ROWS, dataclasses.replace(s, seed=1))
    assert all(abs(a - b) > 1e-3 for a, b in zip(other["per_chain"], one["per_chain"]))
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    sample_llc(linear_model(), ROWS, s)  # leaves torch's global RNG as it found it
    assert torch.rand(1) == before


def trace_of(excess: list[float], init: float = 1.0) -> np.ndarray:
    return init + np.asarray(excess, dtype=float)


def test_diagnostics_flag_unsettled_diverged_negative_and_disagreeing_chains():
    s = toy_settings(chains=2, draws=100, burnin=20, n_beta=10.0)
    flat = trace_of([0.0] * 20 + [0.5] * 100)
    good = llc_summary(np.stack([flat, flat]), 1.0, s)
    assert good["mean"] == pytest.approx(5.0) and good["diagnostics"]["trusted"], good["diagnostics"]
    climbing = trace_of([0.0] * 20 + list(np.linspace(0.1, 1.0, 100)))
    assert not llc_summary(np.stack([flat, climbing]), 1.0, s)["diagnostics"]["settled"]
    blown = flat.copy()
    blown[-5:] = 2.5  # above 2x the checkpoint's loss
    assert llc_summary(np.stack([flat, blown]), 1.0, s)["diagnostics"]["diverged"]
    failed = flat.copy()
    failed[60:] = np.nan  # devinterp stops a chain whose loss is not finite; the rest stays NaN
    out = llc_summary(np.stack([flat, failed]), 1.0, s)
    assert out["diagnostics"]["diverged"] and out["mean"] is None
    below = llc_summary(np.stack([trace_of([-0.2] * 120)] * 2), 1.0, s)
    assert below["diagnostics"]["negative"] and not below["diagnostics"]["trusted"]
    apart = llc_summary(np.stack([flat, trace_of([0.0] * 20 + [1.0] * 100)]), 1.0, s)
    assert not apart["diagnostics"]["chains_agree"] and apart["std"] == pytest.approx(2.5)
    assert len(good["trace"]["loss"]) == 2 and len(good["trace"]["loss"][0]) == 50  # downsampled


def test_settings_come_from_the_calibration_and_bad_values_are_refused():
    class Cfg:
        n_layers, d_model, n_ctx = 2, 128, 128
    s = settings_for(Cfg, context=128, seed=3)
    assert s.calibrated and s.lr == CALIBRATED[(2, 128, 128)][0] and s.seed == 3
    assert s.n_beta == pytest.approx(16 * 128 / np.log(16 * 128))
    other = settings_for(Cfg, context=256)
    assert not other.calibrated and "bench.llc --calibrate" in other.calibration
    for bad in (dict(lr=0.0), dict(chains=0), dict(burnin=-1), dict(n_sequences=17), dict(localization=float("nan"))):
        with pytest.raises(ValueError, match="LLCSettings"):
            toy_settings(**bad)


def test_check_only_accepts_llc_and_the_default_set_leaves_it_out():
    assert "llc" in OPTIONAL_PROBES and "llc" not in PROBES
    assert check_only(None) == PROBES
    assert check_only("llc") == ("llc",)
    assert check_only("induction,llc") == ("induction", "llc")
    with pytest.raises(ValueError, match="and head_ablation_mean, head_ablation_resample, llc when named"):
        check_only("lcc")


@pytest.fixture(scope="module")
def tiny(fake_run, tmp_path_factory):
    """A copy of the session's fake run with steps 0 and 4 (the tests here probe it)."""
    return Path(shutil.copytree(fake_run(steps=(0, 4)), tmp_path_factory.mktemp("llc") / "run"))


def test_sampling_rows_follow_the_training_mix_of_planted_repeats(tiny, tmp_path):
    rows = sampling_rows(probe_inputs(tiny), load_tokenizer(tiny), 400, 32, 64)
    assert rows.shape == (64, 33)
    planted = tmp_path / "planted"
    write_run(tmp_path, "planted")
    meta = json.loads((planted / "data.json").read_text())
    meta["planted_repeats"] = {"fraction": 0.5, "period": [8, 12], "pool": 50, "per_micro_batch": 4, "rows_per_step": 4}
    (planted / "data.json").write_text(json.dumps(meta))
    mixed = sampling_rows(probe_inputs(planted), load_tokenizer(planted), 400, 32, 64)
    periodic = [r for r in mixed.tolist() if any(all(r[i] == r[i - p] for i in range(p, len(r))) for p in range(8, 13))]
    assert len(periodic) == 32  # global batch 4 corpus rows + 4 planted: half
    assert torch.equal(mixed, sampling_rows(probe_inputs(planted), load_tokenizer(planted), 400, 32, 64))


def test_llc_probe_on_a_tiny_run_through_the_runner(tiny):
    assert [p.name for p in pending_checkpoints(tiny, ("llc",), None, False)] == ["step_000000", "step_000004"]
    assert probes.run_probes(tiny, only="attention_entropy", log=print) == [0, 4]
    assert not is_done(read_result(result_path(tiny, 0)), ("llc",))  # a result without llc is not done for llc
    assert probes.run_probes(tiny, only="llc", steps=[0], log=print) == [0]
    result = read_result(result_path(tiny, 0))
    llc = result["llc"]
    assert isinstance(llc["mean"], float) and isinstance(llc["std"], float) and llc["std"] >= 0
    assert result["seconds"]["llc"] > 0 and "attention_entropy" in result and "attention_entropy" in result["seconds"]  # merged
    assert llc["settings"]["chains"] == len(llc["per_chain"]) == len(llc["trace"]["loss"])
    assert set(llc["diagnostics"]) >= {"trusted", "settled", "diverged", "negative", "chains_agree", "problems"}
    assert is_done(result, ("llc", "attention_entropy"))
    assert [p.name for p in pending_checkpoints(tiny, ("llc",), None, False)] == ["step_000004"]
    # the worker-process pool computes the same estimate as this process
    assert probes.run_probes(tiny, only="llc", jobs=2, force=True, log=print) == [0, 4]
    again = read_result(result_path(tiny, 0))["llc"]
    assert again["per_chain"] == pytest.approx(llc["per_chain"], rel=1e-4)
    summary = json.loads((tiny / "probes" / "summary.json").read_text())
    assert summary["stages"]["llc"] == pytest.approx([llc["mean"], read_result(result_path(tiny, 4))["llc"]["mean"]],
                                                    rel=1e-4)
