"""The "Compare runs" page (attention-variants study) driven by AppTest: two copies of the small
trained run, one relabelled linear with a loss spike written into its metrics, must be overlaid
with the numbers of their own files; one run alone, a run without probe results, an empty runs
folder and a run with nothing logged yet must all draw without an exception."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import probes
from store.runio import read_jsonl

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
SPIKE_STEP = 30


@pytest.fixture(scope="module")
def study(app_roots, tmp_path_factory) -> Path:
    """attn-standard: the small run as trained; attn-linear: the same files, run.json saying
    linear, and the train loss at SPIKE_STEP tripled."""
    root = tmp_path_factory.mktemp("study")
    small = app_roots["computed"] / "small"
    shutil.copytree(small, root / "attn-standard")
    linear = root / "attn-linear"
    shutil.copytree(small, linear)
    info = json.loads((linear / "run.json").read_text())
    info["model"]["attention"] = "linear"
    (linear / "run.json").write_text(json.dumps(info))
    rows = read_jsonl(linear / "metrics.jsonl")
    for row in rows:
        if row["step"] == SPIKE_STEP:
            row["loss"] *= 3
            row["grad_norm"] = 9.5
    (linear / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def open_compare(root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("views/compare.py").run()
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """{title: figure} of every chart on the page."""
    out = {}
    for c in at.get("plotly_chart"):
        fig = json.loads(c.proto.spec)
        out[fig["layout"]["title"]["text"]] = fig
    return out


def trace(fig: dict, name: str) -> dict:
    found = [t for t in fig["data"] if t["name"] == name]
    assert len(found) == 1, [t["name"] for t in fig["data"]]
    return found[0]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)
    assert at.title[0].value == "Compare runs"


def column(rows: list[dict], key: str, step_key: str = "step") -> tuple[list[int], list[float]]:
    kept = [r for r in rows if isinstance(r.get(key), (int, float))]
    return [r[step_key] for r in kept], [r[key] for r in kept]


def test_two_runs_overlaid_with_their_own_numbers(study, monkeypatch):
    at = open_compare(study, monkeypatch)
    assert_clean(at)
    assert at.multiselect(key="compare_runs").value == ["attn-linear", "attn-standard"]  # the study by default
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["attn-linear", "attention"] == "linear" and table.loc["attn-standard", "attention"] == "standard"
    assert table.loc["attn-linear", "loss spikes"] == 1 and table.loc["attn-standard", "loss spikes"] == 0
    val = column(read_jsonl(study / "attn-standard" / "metrics.jsonl"), "val_loss")
    assert table.loc["attn-standard", "final held-out loss"] == pytest.approx(val[1][-1], abs=1e-4)
    assert table.loc["attn-standard", "checkpoints probed"] == len(probes.read_results(study / "attn-standard"))
    assert table.loc["attn-standard", "peak lr"] == json.loads((study / "attn-standard" / "run.json").read_text())["train"]["lr"]
    assert at.subheader[0].value == "When do they part: the text or the loss?"
    pairs = at.dataframe[1].value  # the same probe results: they never part
    assert list(pairs["pair"]) == ["attn-linear vs attn-standard"] and list(pairs["first"]) == ["neither"]
    assert pairs["held-out losses differ at"].isna().all() and pairs["generations differ at"].isna().all()

    figs = charts(at)
    loss = figs["Train and held-out loss"]
    for name in ("attn-linear", "attn-standard"):
        rows = read_jsonl(study / name / "metrics.jsonl")
        label = f"{name} ({'linear' if name == 'attn-linear' else 'standard'})"
        t = trace(loss, f"{label} · train")
        assert (t["x"], t["y"]) == column(rows, "loss")
        v = trace(loss, f"{label} · held-out")
        assert (v["x"], v["y"]) == column(rows, "val_loss")
        g = trace(figs["Gradient norm (before clipping), loss spikes marked"], f"{label} · grad norm")
        assert (g["x"], g["y"]) == column(rows, "grad_norm")
    spike = trace(loss, "attn-linear (linear) · 1 loss spikes")
    assert spike["x"] == [SPIKE_STEP] and spike["y"] == [column(read_jsonl(study / "attn-linear" / "metrics.jsonl"),
                                                                "loss")[1][SPIKE_STEP]]
    assert trace(figs["Gradient norm (before clipping), loss spikes marked"],
                 "attn-linear (linear) · 1 loss spikes")["y"] == [9.5]
    assert "more than 100% above (over 2x) the median of the 20" in texts(at.caption)

    results = probes.read_results(study / "attn-standard")
    steps = sorted(results)
    raw = trace(figs["Mean attention entropy over heads (raw)"], "attn-standard (standard)")
    assert raw["x"] == [0.5 if s == 0 else s for s in steps]  # probes are on log steps: step 0 drawn at 0.5
    assert np.allclose(raw["y"], [np.mean(results[s]["attention_entropy"]["raw"]) for s in steps])
    sink = trace(figs["Mean attention-sink mass over heads (attention on position 0)"], "attn-linear (linear)")
    assert np.allclose(sink["y"], [np.mean(results[s]["attention_entropy"]["sink_mass"]) for s in steps])
    rep = figs["Repeated 4-grams in continuations (seq-rep-4)"]
    for d in ("greedy", "sampled"):
        assert np.allclose(trace(rep, f"attn-standard (standard) · {d}")["y"],
                           [results[s]["repetition"][d]["seq_rep_4"] for s in steps])
    ind = figs["Best head: induction (random tokens) and in-context copying"]
    assert np.allclose(trace(ind, "attn-standard (standard) · induction")["y"],
                       [np.max(results[s]["induction"]["induction"]) for s in steps])
    assert np.allclose(trace(ind, "attn-standard (standard) · copying")["y"],
                       [np.max(results[s]["induction"]["in_context_copying"]) for s in steps])
    icl = figs["In-context-learning score (loss late − early; lower uses context more)"]
    assert np.allclose(trace(icl, "attn-linear (linear)")["y"],
                       [results[s]["induction"]["icl_score"]["value"] for s in steps])

    at.number_input(key="spike_pct").set_value(300).run()  # the tripled loss is not 300% above the median
    assert_clean(at)
    assert at.dataframe[0].value.set_index("run").loc["attn-linear", "loss spikes"] == 0
    assert trace(charts(at)["Train and held-out loss"], "attn-linear (linear) · 0 loss spikes")["x"] == []
    assert "more than 300% above (over 4x)" in texts(at.caption)


def test_run_without_probes_shows_loss_and_a_message(study, monkeypatch, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(study, root)
    shutil.rmtree(root / "attn-linear" / "probes")
    at = open_compare(root, monkeypatch)
    assert_clean(at)
    assert "Run attn-linear has no probe results yet" in texts(at.info)
    figs = charts(at)
    assert trace(figs["Train and held-out loss"], "attn-linear (linear) · train")
    entropy = figs["Mean attention entropy over heads (raw)"]
    assert [t["name"] for t in entropy["data"]] == ["attn-standard (standard)"]

    at.multiselect(key="compare_runs").set_value(["attn-linear"]).run()  # one run, no probes at all
    assert_clean(at)
    assert set(charts(at)) == {"Train and held-out loss", "Gradient norm (before clipping), loss spikes marked"}
    assert len(at.dataframe[0].value) == 1

    at.multiselect(key="compare_runs").set_value([]).run()
    assert_clean(at)
    assert "Pick one or more runs to compare" in texts(at.info) and not charts(at)


@pytest.mark.parametrize("state", ["computed", "empty", "no_checkpoints", "corrupt"])
def test_other_states_draw_without_an_exception(app_roots, state, monkeypatch):
    at = open_compare(app_roots[state], monkeypatch)
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)
    if state == "empty":
        assert "No runs yet" in texts(at.info) and "make study" in texts(at.code)
    elif state == "no_checkpoints":  # still training, nothing logged: the sidebar's run is chosen
        assert at.multiselect(key="compare_runs").value == ["small"]
        assert "still training" in texts(at.info) and "no probe results yet" in texts(at.info)
        assert "logged training metrics" in texts(at.info) and not charts(at)
    else:  # a single run (no attn-* runs): the one chosen in the sidebar, every chart drawn
        assert at.multiselect(key="compare_runs").value == ["small"]
        assert len(charts(at)) == 8
