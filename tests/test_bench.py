"""The bench's helpers (no benchmark runs here): the nanoGPT reference computes nanoGPT's function
with nanoGPT's init, the interleaved timer interleaves, `--only` picks rows, a row that cannot be
measured says so, and the demo row runs what `make demo` runs."""
from __future__ import annotations

import math
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not an installed package (pyproject lists model, train, probes, app)
    sys.path.insert(0, str(ROOT))

import bench.__main__ as bench_main  # noqa: E402
from bench import common, demo_time, probes_speed  # noqa: E402
from bench.nanogpt_ref import NanoGPT, config_like, from_workbench  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def noisy_gpt(seed: int, **over) -> GPT:
    """A small GPT with weights well away from init, so the exact and tanh GELU differ visibly."""
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=97, **over)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_reference_computes_our_function_with_the_exact_gelu(bias):
    seed = 3
    ours = noisy_gpt(seed, activation="gelu", bias=bias)
    ref = from_workbench(ours).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 97, (3, 16), generator=g)
    y = torch.randint(0, 97, (3, 16), generator=g)
    y[0, :4] = -1  # ignored targets, as both forwards allow
    with torch.no_grad():
        logits, loss = ours(x, y)
        ref_logits, ref_loss = ref(x, y)
        last, none = ref(x)
    assert float((logits - ref_logits).abs().max()) <= 1e-5, f"seed {seed}"
    assert abs(float(loss) - float(ref_loss)) <= 1e-5, f"seed {seed}"
    assert none is None and last.shape == (3, 1, 97)  # nanoGPT's inference path: last position only
    assert float((last[:, 0] - logits[:, -1]).abs().max()) <= 1e-5, f"seed {seed}"
    # the tanh GELU (our default) is a different function here, so the check above can tell them apart
    tanh = noisy_gpt(seed, bias=bias)
    with torch.no_grad():
        assert float((tanh(x) - ref_logits).abs().max()) > 1e-3, f"seed {seed}"


def test_nanogpt_reference_has_nanogpts_init_and_tied_head():
    torch.manual_seed(0)
    cfg = GPTConfig.preset("nano")
    ref = NanoGPT(config_like(cfg))
    assert ref.lm_head.weight is ref.transformer.wte.weight
    assert ref.config.vocab_size == 4096 and ref.config.block_size == 128
    proj = torch.cat([p.detach().flatten() for n, p in ref.named_parameters() if n.endswith("c_proj.weight")])
    other = torch.cat([p.detach().flatten() for n, p in ref.named_parameters()
                       if n.endswith("c_attn.weight") or n.endswith("c_fc.weight")])
    assert float(proj.std()) == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.02)
    assert float(other.std()) == pytest.approx(0.02, rel=0.02)
    assert float(ref.transformer.wpe.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    for name, p in ref.named_parameters():
        if name.endswith(".bias"):
            assert torch.all(p == 0), name
        elif "ln_" in name:
            assert torch.all(p == 1), name
    # same parameter count as ours for the same shape (tied head counted once)
    assert sum(p.numel() for p in ref.parameters()) == GPT(cfg).num_params()


def test_from_workbench_refuses_other_attention():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, n_ctx=8, vocab_size=11, attention="linear"))
    with pytest.raises(ValueError, match="standard attention"):
        from_workbench(model)


def test_interleaved_medians_alternates_and_takes_medians():
    calls: list[str] = []
    now = [0.0]
    durations = {"a": iter([9, 1, 2, 3]), "b": iter([9, 10, 30, 20])}  # first of each is the warm-up

    def timed(name):
        def fn():
            calls.append(name)
            now[0] += next(durations[name])
        return fn

    a, b = common.interleaved_medians([timed("a"), timed("b")], repeats=3, warmup=1, clock=lambda: now[0])
    assert calls == ["a", "b"] * 4
    assert (a, b) == (2, 20)
    with pytest.raises(ValueError, match="repeats"):
        common.interleaved_medians([timed("a")], repeats=0)


def test_only_selects_rows_and_groups_in_run_order():
    assert bench_main.select("attribution, cache_overhead") == ["cache_overhead", "attribution"]
    assert bench_main.select("speed") == list(bench_main.GROUPS["speed"])
    assert bench_main.select("attention,demo") == ["demo", "attention"]
    with pytest.raises(ValueError, match="unknown row 'spede'"):
        bench_main.select("spede")
    with pytest.raises(ValueError, match="names no row"):
        bench_main.select(" , ")
    assert set(bench_main.GROUPS["speed"]) <= set(bench_main.ROWS)


def test_a_partial_run_writes_no_results_unless_asked(monkeypatch, tmp_path, capsys):
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    monkeypatch.setattr(bench_main, "ROWS", {"fake": lambda r: r.add(common.Goal("fake row", 2.0, 1.0))})
    monkeypatch.setattr(bench_main, "TABLES", {})
    assert bench_main.main(["--only", "fake"]) == 0
    assert "| fake row | 2x | ≥ 1x | met |" in capsys.readouterr().out
    assert (results.read_bytes() if results.exists() else None) == before
    out = tmp_path / "r.md"
    assert bench_main.main(["--only", "fake", "--out", str(out)]) == 0
    assert "| fake row | 2x | ≥ 1x | met |" in out.read_text()


def test_sweep_floor_says_not_measured_without_sweep_flops(monkeypatch):
    from probes.measure import ablation

    monkeypatch.delattr(ablation, "sweep_flops", raising=False)
    report = common.Report()
    probes_speed.bench_sweep_floor(report)
    (row,) = report.goals
    assert isinstance(row, common.NotMeasured) and not row.met
    assert row.row().endswith("| — | ≤ 1.5x | not measured | not measured: sweep_flops missing "
                              "(probes.measure.ablation.sweep_flops(cfg, batch, positions) does not exist yet) |")


def makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index(f"{target}: $(STAMP)")
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_demo_row_runs_what_make_demo_runs():
    recipe = " ".join(makefile_recipe("demo"))
    launch = re.fullmatch(r"\$\(PY\) (-m app\.launch) \$\(RUNS\)/demo --serve \$\(PORT\) --address \$\(ADDRESS\) -- (.*)",
                          recipe)
    assert launch, recipe
    assert shlex.split(launch.group(1)) == demo_time.DEMO_LAUNCH
    assert shlex.split(launch.group(2)) == demo_time.DEMO_TRAIN
    assert (demo_time.APP_GOAL_S, demo_time.DEMO_GOAL_MIN) == (20, 3.5)  # the live-demo issue's goals


def test_timed_calls_times_each_call_after_the_warmup():
    now = [0.0]
    durations = iter([5, 1, 2, 4])

    def fn():
        now[0] += next(durations)

    assert common.timed_calls(fn, repeats=3, warmup=1, clock=lambda: now[0]) == [1, 2, 4]
