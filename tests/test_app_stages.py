"""The Stages page: what is pending while no checkpoint has an LLC estimate, with the button that
computes it for the chosen checkpoints (one background job every session shares) and its cost;
once the llc probe has results, the LLC over training with its boundaries beside the held-out
loss, and one checkpoint's SGLD traces; plus its figure builders and cost estimate without Streamlit."""
from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

import probes
from app import figures_stages as FS, jobs
from app_fixtures import write_fake_run
from store.runio import read_json, write_json_atomic
from probes.measure.llc import llc_summary
from probes.measure.llc_settings import LLCSettings
from probes.analyse.stages import nearest_boundary
from probes.analyse.summary import write_summary
from test_app import chart_keys, open_app, texts, assert_no_exception

STEPS = (0, 1, 2, 4, 8, 16, 32, 64)
LEVELS = [4.0, 12.0, 20.0, 28.0, 36.0, 28.0, 20.0, 12.0]  # a peak at step 8


def fake_llc(level: float, trusted: bool = True) -> dict:
    """An llc result as the probe writes it (probes.measure.llc.llc_summary), from made-up flat traces."""
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
    assert "about 45 s per nano checkpoint on a 2-core CPU, one worker on one thread" in texts(at.info)
    assert at.multiselect(key="llc_steps").value == list(STEPS)  # every checkpoint without it, by default
    assert at.button(key="llc_compute").label == f"Compute the LLC at {len(STEPS)} checkpoints"
    assert texts(at.code) == f"python -m probes {root / 'fake'} --only llc"
    at.multiselect(key="llc_steps").set_value([0, 64]).run()
    assert texts(at.code) == f"python -m probes {root / 'fake'} --only llc --steps 0,64"
    each = FS.llc_seconds(read_json(root / "fake" / "run.json")["model"])
    assert f"for the 2 chosen" in texts(at.caption) and f"about {FS.duration(2 * each)} for" in texts(at.caption)
    assert not chart_keys(at)


def test_the_llc_button_computes_the_chosen_checkpoint_in_one_job_every_session_shares(app_roots, monkeypatch,
                                                                                        tmp_path):
    """The smallest trained run, one checkpoint chosen: the button starts the llc probe there in the
    background (held open while a second session looks: it sees the progress, not a second button,
    and asking again joins the same job); once done the page draws the estimate."""
    root = tmp_path / "runs"
    shutil.copytree(app_roots["computed"], root)
    run = root / "small"
    steps = sorted(probes.read_results(run))
    calls, real, release = [], probes.run_probes, threading.Event()

    def held(*args, **kwargs):
        calls.append(kwargs)
        release.wait(60)
        return real(*args, **kwargs)
    monkeypatch.setattr(probes, "run_probes", held)
    first = open_app(root, monkeypatch, "stages")
    first.multiselect(key="llc_steps").set_value([steps[0]]).run()
    first.button(key="llc_compute").click().run()
    assert "being computed" in texts(first.info)
    second = open_app(root, monkeypatch, "stages")
    assert "being computed" in texts(second.info) and not [b for b in second.button if b.key == "llc_compute"]
    job = jobs.running(run)
    assert jobs.start_probes(run, steps, only=["llc"]) is job
    release.set()
    assert job.wait(timeout=300) and job.error is None
    assert len(calls) == 1 and calls[0]["only"] == ("llc",) and calls[0]["steps"] == [steps[0]]
    first.run()
    assert_no_exception(first, "stages after computing the LLC")
    results = probes.read_results(run)
    assert [s for s in steps if "llc" in results[s]] == [steps[0]]
    (llc,) = [t for t in chart_keys(first)["stages"]["data"] if t.get("meta", {}).get("role") == "llc"]
    assert llc["customdata"] == [steps[0]] and np.allclose(llc["y"], [results[steps[0]]["llc"]["mean"]])
    assert f"1 of {len(steps)} checkpoints have an LLC estimate" in texts(first.caption)
    assert first.multiselect(key="llc_steps").value == []  # the rest stays offered, none chosen
    assert steps[0] not in first.multiselect(key="llc_steps").options and first.button(key="llc_compute").disabled


def test_llc_cost_is_the_measured_nano_cost_scaled_by_compute_per_row():
    assert FS.llc_seconds(FS.NANO_SHAPE) == pytest.approx(45.0) and FS.llc_seconds(None) == 45.0
    assert 3 < FS.llc_seconds({**FS.NANO_SHAPE, "n_embd": 256}) / 45.0 < 3.5  # width doubled: 3.2x the compute
    assert FS.llc_seconds({**FS.NANO_SHAPE, "attn_only": True}) < 45.0
    assert [FS.duration(s) for s in (42, 600, 7200)] == ["42 s", "10 min", "2.0 h"]


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
