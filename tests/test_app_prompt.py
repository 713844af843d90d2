"""The Prompt page (app/views/prompt.py) driven by AppTest on the small trained run: its states
without runs or checkpoints, Compute showing every checkpoint's continuations and the heatmaps with
the numbers probes.prompt computes on its own, activation patching with a corrupted prompt, the
one-sentence refusal of one of another length, and the shared job (app/jobs.py); then the figure
builders (app/figures_prompt.py) on hand-made entries."""
from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import probes
from app import figures_prompt as FP, jobs
from app.figures import unique_labels
from store.checkpoint import list_checkpoints, step_of
from store.vocab import load_tokenizer
from probes.prompt import ESSAY_PROMPT, check_request, prompt_timelapse
from test_app import assert_no_exception, chart_keys, close, open_app, texts

pytestmark = pytest.mark.usefixtures("one_thread")
CORRUPTED = "They wave to each dog"  # the essay's prompt with its last word swapped: the same length


@pytest.fixture(scope="module")
def root(app_roots, tmp_path_factory) -> Path:
    """A copy of the probed runs folder: Compute fills probes.prompt's cache inside the run."""
    return Path(shutil.copytree(app_roots["computed"], tmp_path_factory.mktemp("prompt_app") / "computed"))


def reference(run: Path, corrupted: str | None = None) -> dict:
    """What probes.prompt computes for the page's default options, without its cache."""
    steps = [step_of(p) for p in list_checkpoints(run)]
    return prompt_timelapse(run, ESSAY_PROMPT, steps, tokens=32, seed=0, corrupted=corrupted, cache=False)


def table_rows(at) -> dict[int, str]:
    """{step: the continuation table row's HTML}."""
    (table,) = [m.value for m in at.markdown if "<table" in m.value]
    return {int(s): row for s, row in re.findall(r'<tr data-step="(\d+)">(.*?)</tr>', table, re.S)}


def cell_texts(row: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_without_runs_or_checkpoints_the_page_says_what_to_do(app_roots, monkeypatch):
    at = open_app(app_roots["empty"], monkeypatch, "prompt")
    assert_no_exception(at, "prompt")
    assert "No runs yet" in texts(at.info) and "python -m probes runs/demo" in texts(at.code)
    at = open_app(app_roots["no_checkpoints"], monkeypatch, "prompt")
    assert_no_exception(at, "prompt")
    assert "No checkpoint has been written yet" in texts(at.info)
    assert not at.get("text_area"), "no prompt box without a checkpoint to follow it through"


def test_compute_shows_every_checkpoint_and_the_heatmaps_probes_prompt_computes(root, monkeypatch):
    run = root / "small"
    at = open_app(root, monkeypatch, "prompt")
    assert_no_exception(at, "prompt")
    tok = load_tokenizer(run)
    ids = tok.encode(ESSAY_PROMPT)
    shown = texts(at.markdown)
    assert f"Prompt, {len(ids)} tokens" in shown
    for t in tok.token_strings(ids):  # the tokens the model sees, <|unk|> included, before any Compute
        assert html.escape(FP.visible(t)) in shown
    assert not chart_keys(at)
    at.button(key="prompt_compute").click().run()
    assert_no_exception(at, "prompt")
    want = reference(run)
    entries = {e["step"]: e for e in want["checkpoints"]}
    rows = table_rows(at)
    assert sorted(rows) == sorted(entries) and len(rows) == len(list_checkpoints(run))
    for step, e in entries.items():
        _, greedy, loop, sampled = cell_texts(rows[step])
        assert greedy.replace("⟳", "") == e["greedy"] and sampled == e["sampled"]
        assert loop == FP.loop_words(e["loop"])
        if e["loop"]["length"]:  # the mark stands where the loop starts
            assert greedy.split("⟳")[0] == tok.decode(e["greedy_ids"][:e["loop"]["start"]])
        else:
            assert "⟳" not in greedy
    assert any(e["loop"]["length"] for e in entries.values()), "no checkpoint loops: the loop mark is untested"
    drawn = chart_keys(at)
    steps = sorted(entries)
    assert close(drawn["prompt_losses"]["data"][0]["z"], [entries[s]["token_losses"] for s in steps], 1e-6)
    assert drawn["prompt_losses"]["data"][0]["y"] == [f"step {s}" for s in steps]
    for step in (steps[-1], steps[0]):  # the default (last) checkpoint, then the first one picked
        if step != steps[-1]:
            at.select_slider(key="prompt_step").set_value(step).run()
            drawn = chart_keys(at)
        lens = entries[step]["logit_lens"]
        assert close(drawn["prompt_lens"]["data"][0]["z"], lens["prob"], 1e-6)
        assert drawn["prompt_lens"]["data"][0]["text"] == [[FP.visible(t) for t in r] for r in lens["top_token"]]
        assert f"step {step}" in drawn["prompt_lens"]["layout"]["title"]["text"]
        assert close(drawn["prompt_dla"]["data"][0]["z"], entries[step]["dla"]["heads"], 1e-6)
        assert close(drawn["prompt_ablation"]["data"][0]["z"], probes.read_results(run)[step]["head_ablation"]["zero"])
    at.select_slider(key="prompt_position").set_value(1).run()  # the attribution at another position
    assert close(chart_keys(at)["prompt_dla"]["data"][0]["z"], entries[steps[0]]["dla"]["positions"][1]["heads"], 1e-6)
    assert "prompt_patch_heads" not in chart_keys(at)
    assert_no_exception(at, "prompt")


def test_a_corrupted_prompt_adds_the_patching_maps_at_every_checkpoint(root, monkeypatch):
    run = root / "small"
    want = reference(run, CORRUPTED)
    entries = {e["step"]: e for e in want["checkpoints"]}
    differ = [s for s, e in entries.items() if e["patching"]["heads"] is not None]
    assert differ, "the two prompts agree at every checkpoint: nothing to patch, the test proves nothing"
    at = open_app(root, monkeypatch, "prompt")
    at.text_input(key="prompt_corrupted").set_value(CORRUPTED).run()
    at.button(key="prompt_compute").click().run()
    assert_no_exception(at, "prompt")
    at.select_slider(key="prompt_step").set_value(differ[0]).run()
    drawn = chart_keys(at)
    patch = entries[differ[0]]["patching"]
    assert close(drawn["prompt_patch_heads"]["data"][0]["z"], patch["heads"], 1e-6)
    assert close(drawn["prompt_patch_resid"]["data"][0]["z"], patch["resid"], 1e-6)
    layer, head = FP.best_head(patch["heads"])
    assert at.multiselect(key="prompt_patch_follow").value == [f"L{layer}H{head}"]
    (line,) = drawn["prompt_patch_steps"]["data"]
    assert [0 if x == 0.5 else x for x in line["x"]] == [s for s in sorted(entries) if s in differ]
    assert close(line["y"], [entries[s]["patching"]["heads"][layer][head] for s in sorted(differ)], 1e-6)


def test_a_corrupted_prompt_of_another_length_is_refused_in_probes_prompts_sentence(root, monkeypatch):
    run = root / "small"
    longer = CORRUPTED + " and more"
    with pytest.raises(ValueError) as refused:
        check_request(run, ESSAY_PROMPT, None, 32, 0, longer)
    at = open_app(root, monkeypatch, "prompt")
    at.text_input(key="prompt_corrupted").set_value(longer).run()
    at.button(key="prompt_compute").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [str(refused.value)]
    assert not chart_keys(at) and not [m for m in at.markdown if "<table" in m.value]


def test_sessions_asking_the_same_share_one_job_and_a_failed_one_starts_again(root):
    run = root / "small"
    steps = [step_of(p) for p in list_checkpoints(run)][:3]
    first = jobs.start_prompt(run, "Once upon a time", steps, 8, 0, None, version="v")
    assert jobs.start_prompt(run, "Once upon a time", steps, 8, 0, None, version="v") is first
    other = jobs.start_prompt(run, "Once upon a time", steps, 8, 1, None, version="v")  # another seed
    assert other is not first
    assert first.wait(60) and other.wait(60) and first.error is None
    assert first.result == prompt_timelapse(run, "Once upon a time", steps, 8, 0, cache=False)
    assert first.result["checkpoints"][0]["sampled"] != other.result["checkpoints"][0]["sampled"]
    assert jobs.prompt_job(jobs.prompt_key(run, "Once upon a time", steps, 8, 0, None, "v")) is first
    failed = jobs.start_prompt(run, "Once upon a time", [123456], 8, 0, None)
    assert failed.wait(60) and "no complete checkpoint at step 123456" in failed.error
    assert jobs.start_prompt(run, "Once upon a time", [123456], 8, 0, None) is not failed


# -- the figure builders on hand-made entries --------------------------------------------------------
TOKENS = ["<|unk|>", " wave", " to", " each", " other"]
LENS = {"layers": ["0_pre", "1_pre", "final_post"],
        "top": [[1, 2, 3, 4, 5]] * 3,
        "top_token": [[" a", " b", " <b>", " d", " e"], [" f", " g", " h", " i", " j"], [" wave", " to", " to", " k", "."]],
        "prob": [[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1], [0.9, 0.8, None, 0.6, 0.5]],
        "next_rank": [[3, 2, 1, 0, None], [7, 6, 5, 4, None], [0, 0, 9, 1, None]],
        "next_prob": [[0.01, 0.02, 0.03, 0.04, None], [0.1, 0.1, 0.1, 0.1, None], [0.9, 0.8, 0.0, 0.2, None]]}


def test_the_loss_heatmap_holds_the_token_losses_checkpoint_by_token():
    losses = [[5.0, 4.0, 3.0, 2.0], [1.0, None, 0.5, 0.25]]
    (trace,) = FP.token_loss_heatmap([0, 64], TOKENS, losses).data
    z = np.array(trace.z, dtype=float)
    assert np.array_equal(z[0], losses[0]) and np.isnan(z[1, 1]) and z[1, 3] == 0.25
    assert list(trace.x) == unique_labels(TOKENS)[1:] == ["1:␣wave", "2:␣to", "3:␣each", "4:␣other"]
    assert list(trace.y) == ["step 0", "step 64"]


def test_the_logit_lens_shows_the_top_tokens_their_probability_and_the_next_tokens_rank():
    fig = FP.logit_lens_heatmap(LENS, TOKENS, "Logit lens · step 8")
    (trace,) = fig.data
    assert [list(r) for r in trace.text] == [[FP.visible(t) for t in r] for r in LENS["top_token"]]
    assert np.isnan(trace.z[2][2]) and list(trace.z[0]) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert list(trace.y) == LENS["layers"] and list(trace.x) == unique_labels(TOKENS)
    assert [c[1] for c in trace.customdata[1]] == [7, 6, 5, 4, "—"]  # rank of the actual next token
    assert trace.customdata[0][0][0] == "␣wave" and trace.customdata[0][4][0] == "(end of the prompt)"
    assert trace.customdata[2][3][2] == "0.200"
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.title.text == "Logit lens · step 8"


def test_a_continuation_marks_its_repeats_and_where_its_loop_starts_and_escapes_model_text():
    pieces, mask = [" <b>", " x", " y", " x", " y"], [False, False, False, True, True]
    out = FP.continuation_html(pieces, mask, loop_start=1)
    before, after = out.split("⟳")
    assert "&lt;b&gt;" in before and "<b>" not in before.replace('<b title="the loop starts here"', "")
    assert re.sub(r"<[^>]+>", "", after) == " x y x y" and after.count("<mark") == 1
    assert "⟳" not in FP.continuation_html(pieces, mask, None)
    assert FP.continuation_html(pieces, mask, None) == FP.highlight_html(pieces, mask)
    rows = [{"step": 0, "loop": {"period": 2, "length": 4, "start": 1, "share": 0.8}, "greedy": (pieces, mask),
             "sampled": ([" s"], [False])},
            {"step": 8, "loop": {"period": None, "length": 0, "start": None, "share": 0.0},
             "greedy": ([" q"], [False]), "sampled": ([" r"], [False])}]
    table = FP.continuations_table_html(rows, seed=7)
    assert "sampled (seed 7)" in table and table.count("<tr data-step=") == 2 and table.count("⟳") == 1
    assert "from token 1, period 2: 4 tokens (80%)" in table and "no loop" in table


def test_the_tokens_patching_maps_and_the_best_head_over_training():
    chips = FP.token_chips_html(["<|unk|>", " a<"])
    assert chips.count("<span") == 2 and "&lt;|unk|&gt;" in chips and "background:#fde2e1" in chips
    assert "␣a&lt;" in chips and chips.count("#fde2e1") == 1
    resid = [[0.0, 1.0, 0.5], [None, 0.2, 0.9]]
    (trace,) = FP.patching_resid_heatmap(resid, ["a", " b", " c"], "t").data
    assert trace.zmid == 0.0 and list(trace.y) == ["resid_pre 0", "resid_pre 1"] and np.isnan(trace.z[1][0])
    maps = [[[0.1, 0.2], [0.9, None]], None, [[0.3, 0.4], [0.2, 0.1]]]
    assert FP.best_head(maps[0]) == (1, 0) and FP.best_head([[None, None]]) is None
    assert FP.head_over_steps([0, 8, 64], maps, (1, 0)) == ([0, 64], [0.9, 0.2])
    assert FP.head_over_steps([0, 8, 64], maps, (1, 1)) == ([64], [0.1])
