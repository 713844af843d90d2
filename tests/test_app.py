"""The Streamlit app driven by AppTest on a small run trained in this test session, and on every
state that is not an error: empty runs folder, a run without checkpoints, probes missing, a
corrupt checkpoint. No page may show an exception; the interactive ablation must report the
loss change of the heads chosen (and none when none are)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import probes
from probes.measure.results import ablation_key
from app import jobs
from app_fixtures import corrupt_step, write_fake_run
from store.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, step_of
from store.runio import read_json
from store.vocab import load_tokenizer

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
PAGES = ["runs", "heads", "attention", "memorization", "repetition", "induction"]


def open_app(root: Path, monkeypatch, page: str | None = None, query: dict | None = None) -> AppTest:
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def chart_titled(at: AppTest, start: str) -> dict:
    found = [c for c in charts(at) if c["layout"].get("title", {}).get("text", "").startswith(start)]
    assert len(found) == 1, [c["layout"].get("title", {}).get("text") for c in charts(at)]
    return found[0]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def assert_no_exception(at: AppTest, page: str, allow_error: bool = False) -> None:
    assert not at.exception, f"{page}: exception shown: {texts(at.exception)}"
    if not allow_error:
        assert not at.error, f"{page}: error shown: {texts(at.error)}"
    assert "Traceback" not in texts(at.markdown) + texts(at.error)


def close(a, b, atol: float = 1e-9) -> bool:
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=atol)


def metric(at: AppTest, label: str):
    (m,) = [m for m in at.metric if m.label == label]
    return m


# -- the computed run ---------------------------------------------------------------------------
# Every chart each page draws on a run with all probe results (by its Streamlit key).
PAGE_CHARTS = {
    "runs": {"loss_chart"},
    "heads": {"ablation_heatmap", "evolution", "gini"},
    "attention": {"entropy", "sink", "entropy_map", "sink_map", "pattern"},
    "memorization": {"memorization", "canaries_at_step", "canaries_over_training"},
    "repetition": {"seq_rep", "panel0", "panel1", "panel2", "panel3"},
    "induction": {"induction_overview", "per_head", "induction_map", "trajectory", "position_loss"},
}


def chart_keys(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def test_every_page_draws_its_charts_on_the_trained_run(app_roots, monkeypatch):
    at = open_app(app_roots["computed"], monkeypatch)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert_no_exception(at, page)
        assert at.title[0].value == page.capitalize()
        drawn = chart_keys(at)
        missing = PAGE_CHARTS[page] - set(drawn)
        assert not missing, f"{page}: charts missing: {sorted(missing)} (drawn: {sorted(drawn)})"
        for key, spec in drawn.items():  # every chart holds data, not an empty frame
            assert spec.get("data") and any(len(t.get("x") or t.get("z") or t.get("y") or []) for t in spec["data"]), \
                f"{page}: chart {key} is empty"
        assert not at.warning, f"{page}: {texts(at.warning)}"


def test_heatmap_shows_the_probe_values_of_the_chosen_checkpoint(app_roots, monkeypatch):
    run = app_roots["computed"] / "small"
    results = probes.read_results(run)
    steps = sorted(results)
    at = open_app(app_roots["computed"], monkeypatch, "heads")
    for step in (steps[-1], steps[1], steps[0]):
        at.select_slider(key="step").set_value(step).run()
        heat = chart_titled(at, "Loss increase when one head is zero-ablated")
        assert close(heat["data"][0]["z"], results[step]["head_ablation"]["zero"])
        assert f"step {step}" in heat["layout"]["title"]["text"]
    at.radio(key="kind").set_value("mean").run()
    heat = chart_titled(at, "Loss increase when one head is mean-ablated")
    assert close(heat["data"][0]["z"], results[steps[0]]["head_ablation_mean"]["mean"])


def test_interactive_ablation_changes_the_loss_only_when_heads_are_ablated(app_roots, monkeypatch):
    run = app_roots["computed"] / "small"
    results = probes.read_results(run)
    step = max(results)
    at = open_app(app_roots["computed"], monkeypatch, "heads")
    assert at.select_slider(key="step").value == step
    clean = float(metric(at, "Clean held-out loss").value)
    none = metric(at, "Loss with ablation")
    assert float(none.value) == clean and none.delta == "+0.0000"
    assert clean == pytest.approx(results[step]["head_ablation"]["clean_loss"], abs=1e-4)

    at.multiselect(key="ablate_heads").set_value(["L0H0"]).run()
    assert_no_exception(at, "heads")
    one = metric(at, "Loss with ablation")
    assert float(one.value) != clean and one.delta != "+0.0000"
    # the same number the ablation probe found for that head at that checkpoint
    assert float(one.value) - clean == pytest.approx(results[step]["head_ablation"]["zero"][0][0], abs=2e-4)
    assert metric(at, "Heads ablated").value == "1"
    # the with/without generations are shown side by side
    assert any("With L0H0 zero-ablated" in m.value for m in at.markdown)

    at.multiselect(key="ablate_heads").set_value([]).run()
    assert float(metric(at, "Loss with ablation").value) == clean


def test_heads_page_shows_the_attribution_estimate_with_its_agreement(app_roots, monkeypatch):
    """Exact ablation stays the default; the estimate, once chosen, is drawn from the stored
    matrix and always captioned as a first-order estimate with its Spearman and top-3 agreement
    with the exact sweep at that checkpoint."""
    run = app_roots["computed"] / "small"
    results = probes.read_results(run)
    steps = sorted(results)
    at = open_app(app_roots["computed"], monkeypatch, "heads")
    assert at.radio(key="heatmap_source").value == "exact ablation"
    chart_titled(at, "Loss increase when one head is zero-ablated")
    at.radio(key="heatmap_source").set_value("attribution estimate").run()
    for step, kind in ((steps[-1], "zero"), (steps[-1], "resample"), (steps[1], "mean")):
        at.select_slider(key="step").set_value(step).run()
        at.radio(key="kind").set_value(kind).run()
        assert_no_exception(at, f"heads, estimate, {kind}, step {step}")
        stored = results[step][ablation_key(results[step], kind)]
        heat = chart_titled(at, f"Estimated loss increase (first order) when one head is {kind}-ablated")
        assert close(heat["data"][0]["z"], stored["attribution"][kind])
        assert f"step {step}" in heat["layout"]["title"]["text"]
        agree = stored["attribution_agreement"][kind]
        (caption,) = [c.value for c in at.caption if "First-order estimate" in c.value]
        assert f"step {step}" in caption and kind in caption
        assert f"Spearman rank correlation {agree['spearman']:.2f}" in caption, caption
        assert f"top-3 overlap {agree['top3_overlap']:.2f}" in caption, caption
    at.radio(key="heatmap_source").set_value("exact ablation").run()
    heat = chart_titled(at, "Loss increase when one head is mean-ablated")
    assert close(heat["data"][0]["z"], results[steps[1]]["head_ablation_mean"]["mean"])
    assert not [c for c in at.caption if "First-order estimate" in c.value]


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_interactive_ablation_of_every_kind_matches_the_probe(app_roots, monkeypatch, kind):
    """Loss and generation for each kind, on the real run (whose held-out rows carry n_ctx + 1
    tokens): the loss change of one head equals the probe's sweep value for that head and kind,
    and the ablated generation is the one probes.measure.ablation.generation_hooks gives."""
    from probes.measure.ablation import generation_hooks
    from app.analysis import greedy_continuation
    run = app_roots["computed"] / "small"
    results = probes.read_results(run)
    step = max(results)
    at = open_app(app_roots["computed"], monkeypatch, "heads")
    at.radio(key="interactive_kind").set_value(kind)
    at.multiselect(key="ablate_heads").set_value(["L1H2"]).run()
    assert_no_exception(at, f"heads, {kind} ablation")
    clean = float(metric(at, "Clean held-out loss").value)
    delta = float(metric(at, "Loss with ablation").value) - clean
    assert delta == pytest.approx(results[step][ablation_key(results[step], kind)][kind][1][2], abs=2e-4)
    assert any(f"With L1H2 {kind}-ablated" in m.value for m in at.markdown)
    model, _ = load_checkpoint(checkpoint_dir(run, step))
    tok = load_tokenizer(run)
    hooks = generation_hooks(model, [(1, 2)], kind, probes.heldout_tokens(run, n=16))
    _, ids = greedy_continuation(model, tok, "Once upon a time", 48, hooks)
    shown = [m.value for m in at.markdown if "font-family:monospace" in m.value]
    assert len(shown) == 2
    words = [w for w in tok.decode(ids).split() if w.isalpha()][:6]
    assert words and all(w in shown[1] for w in words), (tok.decode(ids), shown[1])


def test_pattern_viewer_shows_the_checkpoints_own_attention(app_roots, monkeypatch):
    run = app_roots["computed"] / "small"
    at = open_app(app_roots["computed"], monkeypatch, "attention")
    prompt = "Tom and Mia went to the park. Tom and Mia"
    at.text_input(key="pattern_prompt").set_value(prompt).run()
    steps = [step_of(p) for p in list_checkpoints(run)]
    at.select_slider(key="pattern_step").set_value(steps[-1]).run()
    at.selectbox(key="pattern_layer").set_value(1).run()
    at.selectbox(key="pattern_head").set_value(1).run()
    assert_no_exception(at, "attention")
    fig = chart_titled(at, "Layer 1 head 1")
    model, _ = load_checkpoint(checkpoint_dir(run, steps[-1]))
    ids = load_tokenizer(run).encode(prompt)
    _, cache = model.run_with_cache(torch.tensor([ids]))
    want = cache["blocks.1.attn.hook_pattern"][0, 1]
    assert torch.allclose(torch.tensor(fig["data"][0]["z"]), want, atol=1e-6)
    assert len(fig["data"][0]["x"]) == len(ids)


# -- states that are not errors -----------------------------------------------------------------
def test_empty_runs_folder_says_how_to_train_the_demo(app_roots, monkeypatch):
    at = open_app(app_roots["empty"], monkeypatch)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert_no_exception(at, page)
        assert "No runs yet" in texts(at.info)
        code = texts(at.code)
        assert "make demo" in code and "python -m train --preset nano --data stories --out runs/demo" in code


def test_run_still_training_without_checkpoints(app_roots, monkeypatch):
    at = open_app(app_roots["no_checkpoints"], monkeypatch)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert_no_exception(at, page)
        assert "still training" in texts(at.info)
        assert [b for b in at.button if b.label == "Refresh"]
        if page != "runs":
            assert "No checkpoint has been written yet" in texts(at.info)
    at.button(key="refresh").click().run()
    assert_no_exception(at, "after refresh")


def test_run_without_probe_results_offers_to_compute_them(app_roots, monkeypatch):
    run = app_roots["missing"] / "small"
    n = len(list_checkpoints(run))
    at = open_app(app_roots["missing"], monkeypatch)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert_no_exception(at, page)
        if page == "runs":
            assert len(charts(at)) == 1  # the loss curves need no probes
            continue
        assert f"{n} checkpoints of this run have no probe results yet" in texts(at.info)
        assert [b for b in at.button if b.label == "Compute probe results"]
        assert not [c for c in charts(at) if "pattern" not in c["layout"]["title"]["text"].lower()
                    and not c["layout"]["title"]["text"].startswith("Layer")]


def test_compute_button_fills_in_the_missing_results(app_roots, monkeypatch, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(app_roots["computed"], root)
    run = root / "small"
    original = probes.read_results(run)
    gone = sorted(original)[-2:]
    for step in gone:
        (run / "probes" / f"step_{step:06d}.json").unlink()
    at = open_app(root, monkeypatch, "heads")
    assert "2 checkpoints of this run have no probe results yet" in texts(at.info)
    at.button(key="compute-heads").click().run()
    assert "being computed" in texts(at.info)  # a background job, watched by every session
    assert jobs.running(run).wait(timeout=120)
    at.run()
    assert_no_exception(at, "heads after computing")
    assert not [b for b in at.button if b.label == "Compute probe results"]
    again = probes.read_results(run)
    assert sorted(again) == sorted(original)
    for step in gone:  # the runner is deterministic: the same numbers as the first time
        assert close(again[step]["head_ablation"]["zero"], original[step]["head_ablation"]["zero"], 1e-6)
    assert at.select_slider(key="step").options[-2:] == [str(s) for s in gone]  # now offered
    at.select_slider(key="step").set_value(gone[-1]).run()
    heat = chart_titled(at, "Loss increase when one head is zero-ablated")
    assert close(heat["data"][0]["z"], again[gone[-1]]["head_ablation"]["zero"])


def test_heads_page_computes_an_exact_ablation_kind_on_demand(app_roots, monkeypatch, tmp_path):
    """Results of the default probes hold only the exact zero sweep: choosing mean on the Heads
    page says so, shows the stored estimate, and its button computes the exact mean sweep at that
    step through the probes runner, with the numbers the runner gives (those of the fixture run)."""
    root = tmp_path / "runs"
    shutil.copytree(app_roots["computed"], root)
    run = root / "small"
    original = probes.read_results(run)
    for step, result in original.items():  # as the default probes left them
        stripped = {k: v for k, v in result.items() if not k.startswith("head_ablation_")}
        (run / "probes" / f"step_{step:06d}.json").write_text(json.dumps(stripped))
    step = max(original)
    at = open_app(root, monkeypatch, "heads")
    at.radio(key="kind").set_value("mean").run()
    assert_no_exception(at, "heads, mean without an exact sweep")
    assert f"No exact mean-ablation sweep at step {step}" in " ".join(c.value for c in at.caption) + texts(at.info)
    assert not [c for c in charts(at) if c["layout"]["title"]["text"].startswith("Loss increase when one head is mean")]
    at.button(key=f"demand-mean-{step}").click().run()
    assert jobs.running(run).wait(timeout=120)
    at.run()
    assert_no_exception(at, "heads after computing mean ablation")
    again = probes.read_results(run)
    assert "head_ablation_mean" in again[step] and "head_ablation_mean" not in again[min(again)]
    assert close(again[step]["head_ablation_mean"]["mean"], original[step]["head_ablation_mean"]["mean"], 1e-6)
    at.radio(key="heatmap_source").set_value("exact ablation").run()
    heat = chart_titled(at, "Loss increase when one head is mean-ablated")
    assert close(heat["data"][0]["z"], again[step]["head_ablation_mean"]["mean"])


def test_corrupt_checkpoint_is_named_and_skipped(app_roots, monkeypatch):
    root = app_roots["corrupt"]
    bad = corrupt_step(root)
    at = open_app(root, monkeypatch)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert_no_exception(at, page)
        warning = texts(at.warning)
        assert f"Checkpoint step {bad} is corrupt and was skipped" in warning
        assert f"step_{bad:06d}" in warning
        assert len(charts(at)) >= 1, f"{page}: the intact checkpoints should still be plotted"
        assert not [b for b in at.button if b.label == "Compute probe results"]
    at.switch_page("views/attention.py").run()
    assert bad not in at.select_slider(key="pattern_step").options and \
        str(bad) not in at.select_slider(key="pattern_step").options


@pytest.mark.parametrize("name", ["../computed", "/etc", "..", "small/../../computed"])
def test_run_names_leaving_the_runs_folder_are_refused(app_roots, monkeypatch, name):
    at = open_app(app_roots["corrupt"], monkeypatch, query={"run": name})
    assert_no_exception(at, "runs", allow_error=True)
    assert "refused" in texts(at.sidebar.error)
    assert at.selectbox(key="run").value == "small"  # stays on a run inside the folder


def test_runs_page_compares_runs_and_switches_to_log_steps(tmp_path, monkeypatch):
    write_fake_run(tmp_path, "alpha", steps=(0, 1, 2, 4))
    write_fake_run(tmp_path, "beta", steps=(0, 2, 4, 8))
    at = open_app(tmp_path, monkeypatch)
    assert at.selectbox(key="run").value == "beta"  # the latest by name when there is no demo
    at.selectbox(key="run").set_value("alpha").run()
    at.multiselect(key="compare").set_value(["beta"]).run()
    assert_no_exception(at, "runs")
    fig = chart_titled(at, "Loss over training")
    names = {t["name"] for t in fig["data"]}
    assert {"alpha train", "alpha held-out", "alpha checkpoints", "beta train", "beta checkpoints"} <= names
    beta_ck = [t for t in fig["data"] if t["name"] == "beta checkpoints"][0]
    assert beta_ck["x"] == [0, 2, 4, 8]
    at.checkbox(key="log_x").check().run()
    fig = chart_titled(at, "Loss over training")
    assert fig["layout"]["xaxis"]["type"] == "log"
    # the generations at a checkpoint, repeated 4-grams highlighted and model text escaped
    at.select_slider(key="sample_step").set_value(2).run()
    shown = [m.value for m in at.markdown if "<mark" in m.value]
    assert shown and all("step 2" in m and "&lt;&amp;&gt;" in m for m in shown)


def test_failed_run_and_unreadable_or_partial_probe_files_still_draw(tmp_path, monkeypatch):
    run = write_fake_run(tmp_path, "broken", steps=(0, 1, 2, 4), status="failed")
    (run / "probes" / "step_000002.json").write_text('{"step": 2, "head_abl')  # cut short
    partial = read_json(run / "probes" / "step_000004.json")
    for key in ("head_ablation", "induction"):  # as if computed with --only
        partial.pop(key)
    (run / "probes" / "step_000004.json").write_text(json.dumps(partial))
    at = open_app(tmp_path, monkeypatch)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        assert_no_exception(at, page)
        warning = texts(at.warning)
        assert "Training of this run failed" in warning
        if page != "runs":
            assert "step_000002.json is unreadable and was skipped" in warning
        assert len(charts(at)) >= 1, page
    at.switch_page("views/heads.py").run()
    assert [int(s) for s in at.select_slider(key="step").options] == [0, 1]  # step 4 has no ablation data


def test_induction_page_shows_each_heads_scores_the_circuit_and_the_trajectory(app_roots, monkeypatch):
    run = app_roots["computed"] / "small"
    results = probes.read_results(run)
    summary = read_json(run / "probes" / "summary.json")
    steps = sorted(results)
    at = open_app(app_roots["computed"], monkeypatch, "induction")
    assert_no_exception(at, "induction")
    drawn = chart_keys(at)
    panels = drawn["per_head"]
    for trace in panels["data"]:
        key = {"induction": "induction", "previous token": "previous_token", "in-context copying": "in_context_copying",
               "induction control (fresh tokens)": "induction_control"}[trace["meta"]["score"]]
        layer, head = trace["meta"]["layer"], trace["meta"]["head"]
        assert close(trace["y"], [results[s]["induction"][key][layer][head] for s in steps])
    l, h = summary["induction_circuit"]["induction_head"]
    assert f"Induction head: L{l}H{h}" in texts(at.caption)
    assert "repeat periods " + ", ".join(map(str, results[steps[-1]]["induction"]["random_periods"])) in texts(at.caption)
    path = drawn["trajectory"]["data"][0]
    assert close(path["x"], summary["trajectory"]["pc1"]) and close(path["y"], summary["trajectory"]["pc2"])
    assert len(drawn["position_loss"]["data"]) == len(steps)
