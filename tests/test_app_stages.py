"""The Stages page: what is pending (and the command) while no checkpoint has an LLC estimate, and
once the llc probe has results, the LLC over training with its boundaries beside the held-out loss,
and one checkpoint's SGLD traces; plus its figure builders without Streamlit."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from app import figures_stages as FS
from app_fixtures import write_fake_run
from model.runio import read_json, write_json_atomic
from probes.llc import llc_summary
from probes.llc_settings import LLCSettings
from probes.stages import nearest_boundary
from probes.summary import write_summary
from test_app import chart_keys, open_app, texts, assert_no_exception

STEPS = (0, 1, 2, 4, 8, 16, 32, 64)
LEVELS = [4.0, 12.0, 20.0, 28.0, 36.0, 28.0, 20.0, 12.0]  # a peak at step 8


def fake_llc(level: float, trusted: bool = True) -> dict:
    """An llc result as the probe writes it (probes.llc.llc_summary), from made-up flat traces."""
    s = LLCSettings(lr=3e-5, localization=1e4, n_beta=100.0, chains=2, draws=40, burnin=10, batch_size=16,
                    n_sequences=64)
    spread = 0.0001 if trusted else 0.05  # an untrusted estimate: its chains disagree
    trace = np.stack([np.r_[np.zeros(10), np.full(40, level / 100.0 + d)] + 1.0 for d in (-spread, spread)])
    return llc_summary(trace, 1.0, s)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("stages")
    write_fake_run(base, "fake", steps=STEPS)
    return base


def test_page_says_what_is_pending_and_the_command(root, monkeypatch):
    at = open_app(root, monkeypatch, "stages")
    assert_no_exception(at, "stages")
    assert at.title[0].value == "Stages"
    assert "No checkpoint of this run has an LLC estimate yet" in texts(at.info)
    assert f"python -m probes {root / 'fake'} --only llc" in texts(at.code)
    assert not chart_keys(at)


def test_page_draws_the_llc_its_boundaries_and_a_checkpoints_traces(root, monkeypatch, tmp_path):
    run = tmp_path / "runs" / "fake"

    shutil.copytree(root / "fake", run)
    for step, level in zip(STEPS, LEVELS):
        path = run / "probes" / f"step_{step:06d}.json"
        result = read_json(path)
        result["llc"] = fake_llc(level, trusted=step != 1)
        result["seconds"]["llc"] = 1.0
        write_json_atomic(path, result)
    summary = write_summary(run)
    assert [b["step"] for b in summary["stages"]["boundaries"]] == [8]
    at = open_app(tmp_path / "runs", monkeypatch, "stages")
    assert_no_exception(at, "stages")
    drawn = chart_keys(at)
    assert {"stages", "llc_traces"} <= set(drawn)
    (llc,) = [t for t in drawn["stages"]["data"] if t.get("meta", {}).get("role") == "llc"]
    assert np.allclose(llc["y"], summary["stages"]["llc"]) and llc["customdata"] == list(STEPS)
    assert llc["marker"]["color"][1] == "white"  # step 1's estimate failed its diagnostics
    caption = texts(at.caption)
    assert "peak at step 8 (between steps 4 and 16" in caption
    assert "Stage rule:" in caption and "1 of 8" not in caption and "8 of 8 checkpoints" in caption
    chains = [t for t in drawn["llc_traces"]["data"] if t.get("meta", {}).get("role") == "chain"]
    last = read_json(run / "probes" / "step_000064.json")["llc"]
    assert len(chains) == 2 and np.allclose(chains[0]["y"], last["trace"]["loss"][0])
    assert "LLC 12.00 ± 0.01 over 2 chains (trusted)" in caption and "localization 10000" in caption


def test_figure_marks_boundaries_and_emergence_and_puts_loss_on_the_right():
    fig = FS.llc_over_training([0, 10, 100], [1.0, None, 3.0], [0.1, None, 0.2], loss=([0, 10, 100], [5.0, 4.0, 3.0]),
                               boundaries=[{"step": 10, "kind": "peak"}], marks={"induction change": 100},
                               untrusted=[100], log_x=False)
    spec = json.loads(fig.to_json())
    llc = next(t for t in spec["data"] if t["meta"]["role"] == "llc")
    assert llc["x"] == [0, 100] and llc["y"] == [1.0, 3.0] and llc["marker"]["color"] == ["#6a3d9a", "white"]
    band = next(t for t in spec["data"] if t["meta"]["role"] == "band")
    assert band["y"] == [1.1, 3.2, 2.8, 0.9]
    loss = next(t for t in spec["data"] if t["meta"]["role"] == "loss")
    assert loss["yaxis"] == "y2"
    notes = [a["text"] for a in spec["layout"]["annotations"]]
    assert "stage boundary (peak): step 10" in notes and "induction change: step 100" in notes
    assert sorted(s["x0"] for s in spec["layout"]["shapes"]) == [10, 100]


def test_nearest_boundary_to_the_induction_change():
    found = {"boundaries": [{"step": 300, "kind": "peak"}, {"step": 900, "kind": "trough"}]}
    near = nearest_boundary(found, 1000)
    assert near["boundary"]["step"] == 900 and near["offset"] == pytest.approx(-0.1) and near["within"]
    assert not nearest_boundary(found, 500)["within"]
    assert nearest_boundary({"boundaries": []}, 500) is None and nearest_boundary(found, None) is None
