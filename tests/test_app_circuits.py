"""The Circuits page (app/views/circuits.py) driven by AppTest: on runs without probe results, with
results that lack head roles and composition (its Compute fills them in with the runner's own
numbers), with every result (the small trained run: the role map's cells, the graph's edges and
the events table against the results and summary.json), on a run still training whose next result
lands, and on a run of the hand-built induction circuit (tests/_induction_circuit.py) whose events
are known; then the figure builders (app/figures_circuits.py) on hand-made numbers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import probes
from app import figures_circuits as FX, jobs
from app_fixtures import corrupt_step, write_fake_run
from model.gpt import GPT
from probes.analyse.summary import write_summary
from probes.measure.composition import composition_result
from probes.measure.compute import RESULT_VERSION
from probes.measure.head_roles import head_roles_result
from probes.measure.induction import multi_period_scores
from probes.measure.random_tokens import random_periods, random_token_sets
from probes.measure.results import write_result
from store.checkpoint import save_checkpoint
from store.runio import read_json, write_json_atomic
from store.runlayout import checkpoints_dir, result_path, run_json, summary_path
from test_app import assert_no_exception, chart_keys, close, open_app, texts

from _induction_circuit import BOS, N_CTX, V, circuit_model

pytestmark = pytest.mark.usefixtures("one_thread")
ATTENTION = ("previous_token", "duplicate_token", "induction", "sink", "local")
CIRCUIT_STEPS = tuple(range(0, 160, 10))


def strip(run: Path, steps, version: int | None = None) -> None:
    """Results at `steps` as --only left them (or, with `version`, an older probe version did):
    without head_roles and composition."""
    for s in steps:
        result = read_json(result_path(run, s))
        result = {k: v for k, v in result.items() if k not in ("head_roles", "composition")}
        write_json_atomic(result_path(run, s), result | ({"version": version} if version is not None else {}))


def cell_winners(spec: dict) -> dict[tuple[str, str], tuple[str, float]]:
    """{(head, step): (role, z)} of the role map's attention heatmaps."""
    out = {}
    for trace in spec["data"]:
        if trace["type"] == "heatmap" and trace["meta"]["role"] in ATTENTION:
            for head, row in zip(trace["y"], trace["z"]):
                for step, z in zip(trace["x"], row):
                    if z is not None:
                        assert (head, step) not in out, "two roles coloured the same cell"
                        out[(head, step)] = (trace["meta"]["role"], z)
    return out


def graph_edges(spec: dict) -> dict[str, list[list[str]]]:
    """{kind: [[writer, reader], ...]} drawn in the composition graph's current data."""
    return {t["meta"]["kind"]: t["meta"]["edges"] for t in spec["data"] if "edges" in (t.get("meta") or {})}


# -- the page on the app fixtures' runs --------------------------------------------------------------
def test_without_runs_checkpoints_or_results_the_page_says_what_to_do(app_roots, monkeypatch):
    at = open_app(app_roots["missing"], monkeypatch, "circuits")
    assert_no_exception(at, "circuits")
    assert at.title[0].value == "Circuits"
    assert "have no probe results yet" in texts(at.info)
    assert [b for b in at.button if b.label == "Compute probe results"]
    assert not chart_keys(at)
    at = open_app(app_roots["no_checkpoints"], monkeypatch, "circuits")
    assert_no_exception(at, "circuits")
    assert "No checkpoint has been written yet" in texts(at.info) and not chart_keys(at)
    at = open_app(app_roots["empty"], monkeypatch, "circuits")
    assert_no_exception(at, "circuits")
    assert "No runs yet" in texts(at.info) and not chart_keys(at)
    at = open_app(app_roots["corrupt"], monkeypatch, "circuits")  # named, skipped, the others drawn
    assert_no_exception(at, "circuits")
    assert f"Checkpoint step {corrupt_step(app_roots['corrupt'])} is corrupt and was skipped" in texts(at.warning)
    assert {"role_map", "composition_graph"} <= set(chart_keys(at))


def test_results_without_roles_or_composition_are_offered_and_computed(app_roots, monkeypatch, tmp_path):
    root = Path(shutil.copytree(app_roots["computed"], tmp_path / "runs"))
    run = root / "small"
    original = probes.read_results(run)
    steps = sorted(original)
    strip(run, steps)
    at = open_app(root, monkeypatch, "circuits")
    assert_no_exception(at, "circuits")
    assert "hold no head roles or composition" in texts(at.info) and not chart_keys(at)
    assert f"python -m probes {run} --only head_roles,composition" in texts(at.code)
    strip(run, steps[:1], version=RESULT_VERSION - 1)  # an older file is rewritten whole by the runner
    at.run()
    assert "older version of the probes" in texts(at.caption) and f"python -m probes {run}\n" in texts(at.code) + "\n"
    strip(run, steps[:1], version=RESULT_VERSION)
    strip(run, steps[-2:])  # some: the last two lack them
    for s in steps[:-2]:
        write_result(run, s, {k: original[s][k] for k in ("head_roles", "composition")})
    at.run()
    assert_no_exception(at, "circuits, some")
    drawn = chart_keys(at)
    assert drawn["role_map"]["data"][0]["x"] == [str(s) for s in steps[:-2]]
    assert [f["name"] for f in drawn["composition_graph"]["frames"]] == [str(s) for s in steps[:-2]]
    assert "2 of" in texts(at.caption)
    at.button(key="circuits_compute").click().run()
    assert jobs.running(run).wait(timeout=120)
    at.run()
    assert_no_exception(at, "circuits after computing")
    again = probes.read_results(run)
    for s in steps[-2:]:  # the runner is deterministic: the numbers the fixture's run had
        assert close(again[s]["head_roles"]["induction"], original[s]["head_roles"]["induction"], 1e-6)
        assert close(again[s]["composition"]["k"], original[s]["composition"]["k"], 1e-6)
        assert "memorization" in again[s]  # the other probes' results were kept
    assert not [b for b in at.button if b.key == "circuits_compute"]
    assert chart_keys(at)["role_map"]["data"][0]["x"] == [str(s) for s in steps]


def test_the_page_draws_roles_edges_and_events_of_the_trained_run(app_roots, monkeypatch):
    run = app_roots["computed"] / "small"
    results = probes.read_results(run)
    summary = read_json(summary_path(run))
    steps = sorted(results)
    at = open_app(app_roots["computed"], monkeypatch, "circuits")
    assert_no_exception(at, "circuits")
    drawn = chart_keys(at)
    assert set(drawn) == {"role_map", "composition_graph"}
    cells = cell_winners(drawn["role_map"])
    for s in steps:  # the rule, computed here: the attention role furthest above chance, share of the way to 1
        roles = results[s]["head_roles"]
        for l, row in enumerate(roles["induction"]):
            for h in range(len(row)):
                strength = {r: (roles[r][l][h] - roles["chance"][r]) / (1 - roles["chance"][r]) for r in ATTENTION}
                best = max(strength, key=strength.get)
                got = cells.get((f"L{l}H{h}", str(s)))
                assert got == ((best, pytest.approx(min(1.0, strength[best]))) if strength[best] > 0 else None)
    (copying,) = [t for t in drawn["role_map"]["data"] if t["type"] == "heatmap" and t["meta"]["role"] == "copying"]
    L, H = np.shape(results[steps[0]]["head_roles"]["copying"])
    assert close(copying["z"], [[results[s]["head_roles"]["copying"][l][h] for s in steps] for l in range(L)
                                for h in range(H)])
    graph = drawn["composition_graph"]
    assert [f["name"] for f in graph["frames"]] == [str(s) for s in steps]
    assert graph["layout"]["sliders"][0]["active"] == len(steps) - 1
    for kind, edges in graph_edges(graph).items():  # at the last step: the pairs the probe counts above
        assert len(edges) == results[steps[-1]]["composition"]["above"][kind]
    at.select_slider(key="circuits_step").set_value(steps[0]).run()
    graph = chart_keys(at)["composition_graph"]
    assert graph["layout"]["sliders"][0]["active"] == 0 and f"step {steps[0]}" in graph["layout"]["title"]["text"]
    assert all(len(e) == results[steps[0]]["composition"]["above"][k] for k, e in graph_edges(graph).items())
    c = summary["circuits"]
    (table,) = at.dataframe
    assert len(table.value) == len(c["roles"]) + len(c["handovers"]) + len(c["edges"])
    shown = texts(at.caption)
    assert ("Roles appear" if c["roles"] else "No role appears") in shown
    for role, rise in c["role_rises"].items():
        if role not in {e["role"] for e in c["roles"]}:
            assert rise["reason"] in shown


def test_a_live_run_is_followed_as_its_results_land(app_roots, monkeypatch, tmp_path):
    root = Path(shutil.copytree(app_roots["computed"], tmp_path / "runs"))
    run = root / "small"
    info = read_json(run_json(run))
    write_json_atomic(run_json(run), info | {"status": "training"})
    last = max(probes.read_results(run))
    held = read_json(result_path(run, last))
    result_path(run, last).unlink()
    at = open_app(root, monkeypatch, "circuits")
    assert_no_exception(at, "circuits, live")
    assert "still training" in texts(at.info) and "training" in texts(at.sidebar.caption)
    assert str(last) not in chart_keys(at)["role_map"]["data"][0]["x"]
    write_json_atomic(result_path(run, last), held)  # the probes following the run write the next result
    at.run()
    assert_no_exception(at, "circuits, live")
    assert chart_keys(at)["role_map"]["data"][0]["x"][-1] == str(last)


# -- the hand-built circuit: events the page must show -------------------------------------------
@pytest.fixture(scope="module")
def circuit_root(tmp_path_factory) -> Path:
    """A runs folder with `circuit`: its checkpoints are the hand-built circuit of test_circuits.py
    (L0H0 a previous-token head from step 30, L1H0 an induction head from 60, its weights moved to
    L1H1 at 100), its results those of the probes' own functions on them (as `--only
    induction,head_roles,composition` leaves them; random tokens below the circuit's 40 tokens) and
    its summary the probes' write_summary. The vocabulary and data are a fake run's: this page reads
    neither."""
    run = write_fake_run(tmp_path_factory.mktemp("circuits_app"), "circuit", steps=CIRCUIT_STEPS, with_probes=False)
    shutil.rmtree(checkpoints_dir(run))
    sets = random_token_sets(np.arange(1, V), 4, random_periods(N_CTX), BOS, seed=0)
    model: GPT | None = None
    for step in CIRCUIT_STEPS:
        model = circuit_model(previous=float(step >= 30), induction=float(60 <= step < 100), moved=float(step >= 100),
                              jitter=0.002, jitter_seed=step)
        save_checkpoint(run, step, model, {"tokens": step * 256})
        induction = multi_period_scores(model, sets, N_CTX)
        write_result(run, step, {"step": step, "version": RESULT_VERSION, "induction": induction,
                                 "head_roles": head_roles_result(model, sets, induction=induction),
                                 "composition": composition_result(model)})
    write_json_atomic(run_json(run), read_json(run_json(run)) | {"model": model.cfg.to_dict()})
    write_summary(run)
    return run.parent


def test_the_circuits_events_roles_and_edges_are_shown_where_they_were_built(circuit_root, monkeypatch):
    summary = read_json(summary_path(circuit_root / "circuit"))
    at = open_app(circuit_root, monkeypatch, "circuits")
    assert_no_exception(at, "circuits, hand-built")
    (table,) = at.dataframe
    rows = table.value.to_dict("records")
    assert rows == FX.event_rows(summary["circuits"])
    events = {(r["step"], r["event"], r["what"], r["heads"]) for r in rows}
    assert events >= {(30, "role appears", "previous token", "L0H0"), (60, "role appears", "induction", "L1H0"),
                      (100, "handover", "induction", "L1H0 → L1H1"),
                      (60, "edge rises", "K-composition", "L0H0 → L1H0"),
                      (100, "edge rises", "K-composition", "L0H0 → L1H1")}
    shown = texts(at.caption)
    assert "Induction K-edge L0H0 → L1H0" in shown and "crosses its baseline at step 60" in shown
    cells = cell_winners(chart_keys(at)["role_map"])
    assert cells[("L0H0", "150")][0] == "previous_token" and cells[("L1H0", "60")][0] == "induction"
    assert cells[("L1H1", "150")][0] == "induction" and cells.get(("L1H0", "150"), (None,))[0] != "induction"
    for step, k_edges in ((60, [["L0H0", "L1H0"]]), (100, [["L0H0", "L1H1"]]), (20, [])):
        at.select_slider(key="circuits_step").set_value(step).run()
        assert graph_edges(chart_keys(at)["composition_graph"])["k"] == k_edges


# -- the builders on hand-made numbers -------------------------------------------------------------------
def test_the_role_map_colours_each_cell_by_the_role_furthest_above_chance():
    chance = {"previous_token": 0.1, "duplicate_token": 0.04, "induction": 0.04, "sink": 0.5, "local": 0.1,
              "copying": 0.0}
    # head 0: sink has the highest score (0.6) but previous token stands further above its chance:
    # (0.55 - 0.1) / 0.9 = 0.5 against (0.6 - 0.5) / 0.5 = 0.2. Head 1: induction (0.28 - 0.04) / 0.96 =
    # 0.25 over local (0.3 - 0.1) / 0.9 = 0.222; its copying of 0.9 colours only the panel below. Head 2:
    # every score at or under chance: no role.
    scores = {"previous_token": [[0.55, 0.1, 0.1]], "duplicate_token": [[0.04, 0.04, 0.0]],
              "induction": [[0.04, 0.28, 0.04]], "sink": [[0.6, 0.5, 0.5]], "local": [[0.1, 0.3, 0.05]],
              "copying": [[0.1, 0.9, -0.2]]}
    fig = FX.role_map([0, 10], [scores, scores], [chance, chance], mark_step=10).to_plotly_json()
    cells = cell_winners(fig)
    assert cells[("L0H0", "0")] == ("previous_token", pytest.approx(0.5))
    assert cells[("L0H1", "10")] == ("induction", pytest.approx(0.25))
    assert ("L0H2", "0") not in cells and ("L0H2", "10") not in cells
    (copying,) = [t for t in fig["data"] if t["type"] == "heatmap" and t["meta"]["role"] == "copying"]
    assert copying["z"] == [[0.1, 0.1], [0.9, 0.9], [-0.2, -0.2]]
    assert FX.role_colour("induction", 0.25) == "rgba(214, 39, 40, 0.500)"  # opacity √0.25
    assert FX.role_colour(None, 0.0) == FX.NO_ROLE
    (trace,) = [t for t in fig["data"] if t["type"] == "heatmap" and t["meta"]["role"] == "induction"]
    assert trace["colorscale"][-1] == [1.0, "rgba(214, 39, 40, 1.000)"] and trace["colorscale"][0][1].endswith("0.000)")
    assert {(s["x0"], s["x1"]) for s in fig["layout"]["shapes"] if s["type"] == "rect"} == {(0.5, 1.5)}  # step 10


def composition(k: float, q: float, threshold: float, backwards: float = 0.0) -> dict:
    """A 2-layer, 2-head composition result: K L0H0 -> L1H0 = k, Q L0H1 -> L1H1 = q, every
    threshold `threshold`; `backwards` at the (never read) entry of layer 1 -> layer 0."""
    def scores(pairs: dict) -> list:
        t = np.zeros((2, 2, 2, 2))
        for index, v in pairs.items():
            t[index] = v
        return t.tolist()
    return {"q": scores({(0, 1, 1, 1): q}), "k": scores({(0, 0, 1, 0): k, (1, 0, 0, 0): backwards}),
            "v": scores({}), "baseline": {"threshold": {kind: np.full((2, 2, 2, 2), threshold).tolist()
                                                        for kind in "qkv"}}}


def test_the_composition_graph_draws_only_edges_above_their_baselines():
    # step 0: K 0.3 over 0.2 drawn; Q 0.2 at its threshold not; the layer-1 -> layer-0 entry never
    # (even far above); step 10: K 0.25 and Q 0.21 drawn, thinner than the run's largest excess (0.1)
    comps = [composition(0.3, 0.2, 0.2, backwards=0.9), composition(0.25, 0.21, 0.2)]
    assert [(e["kind"], e["writer"], e["reader"]) for e in FX.edges_above(comps[0])] == [("k", (0, 0), (1, 0))]
    fig = FX.composition_graph([0, 10], comps, start_step=0).to_plotly_json()
    assert graph_edges(fig) == {"q": [], "k": [["L0H0", "L1H0"]], "v": []}
    lines = {(t["meta"]["kind"], t["meta"]["width"]): t for t in fig["data"] if "width" in (t.get("meta") or {})}
    assert [k for k, t in lines.items() if t["x"]] == [("k", FX.EDGE_WIDTHS[-1])]  # the largest excess: widest
    later = {f["name"]: f for f in fig["frames"]}["10"]
    assert graph_edges(later) == {"q": [["L0H1", "L1H1"]], "k": [["L0H0", "L1H0"]], "v": []}
    widths = {t["meta"]["kind"]: t["meta"]["width"] for t in later["data"]
              if "width" in (t.get("meta") or {}) and t["x"]}
    assert widths == {"q": FX.EDGE_WIDTHS[0], "k": FX.EDGE_WIDTHS[1]}  # excess 0.01 and 0.05 of 0.1
    assert FX.edge_width(0.0, 0.0) == FX.EDGE_WIDTHS[0]


def test_the_graph_has_one_frame_and_slider_step_per_checkpoint():
    steps = [0, 10, 20, 40]
    comps = [composition(0.1 * i, 0.0, 0.15) for i in range(4)]
    fig = FX.composition_graph(steps, comps, start_step=20).to_plotly_json()
    assert [f["name"] for f in fig["frames"]] == ["0", "10", "20", "40"]
    (slider,) = fig["layout"]["sliders"]
    assert [s["label"] for s in slider["steps"]] == ["0", "10", "20", "40"] and slider["active"] == 2
    assert [s["args"][0] for s in slider["steps"]] == [["0"], ["10"], ["20"], ["40"]]
    assert len({len(f["data"]) for f in fig["frames"]}) == 1  # frames replace traces by position
    assert fig["data"] == fig["frames"][2]["data"] and "step 20" in fig["layout"]["title"]["text"]
    assert [graph_edges(f)["k"] for f in fig["frames"]] == [[], [], [["L0H0", "L1H0"]], [["L0H0", "L1H0"]]]
    assert FX.composition_graph(steps, comps).to_plotly_json()["layout"]["sliders"][0]["active"] == 3


def test_event_rows_and_captions_say_what_the_summary_found():
    circuits = {"roles": [{"role": "induction", "head": "L1H2", "step": 725, "from_step": 700, "score": 0.357}],
                "handovers": [{"role": "induction", "from_head": "L1H2", "to_head": "L1H0", "step": 900,
                               "from_step": 875, "lead": 0.2, "margin": 0.05}],
                "edges": [{"kind": "k", "from_head": "L0H3", "to_head": "L1H2", "step": 600, "from_step": 575,
                           "score": 0.117, "threshold": 0.116}],
                "role_rises": {"sink": {"reason": "the level never rises"}}}
    rows = FX.event_rows(circuits)
    assert [(r["step"], r["event"], r["heads"]) for r in rows] == [
        (600, "edge rises", "L0H3 → L1H2"), (725, "role appears", "L1H2"), (900, "handover", "L1H2 → L1H0")]
    assert rows[0]["detail"] == "score 0.117 over the baseline 0.116" and rows[2]["detail"].startswith("lead 0.200")
    assert FX.appearances_caption(circuits) == ("Roles appear: induction in L1H2 at step 725 (from 700). Not "
                                                "appearing: sink (first token) (the level never rises).")
    edge = {"from_head": "L0H3", "to_head": "L1H2", "induction_step": 725, "within_share": 0.15, "crossing_step": 600,
            "crossing_from_step": 575, "crossing_lines_up": False, "rise_lines_up": True,
            "rise": {"detected": True, "step": 700, "from_step": 675, "before": 0.11, "after": 0.171}}
    text = FX.k_edge_caption(edge)
    assert "crosses its baseline at step 600 (from 575), not within 15% of the induction change at step 725" in text
    assert "rises at step 700 (from 675, 0.110 → 0.171), within 15%" in text
    assert FX.k_edge_caption({"from_head": None, "reason": "no induction change was detected"}) == \
        "Induction K-edge: no induction change was detected."
    assert FX.event_rows(None) == [] and FX.appearances_caption(None) is None
