"""One prompt through a run (`python -m probes.prompt`, probes.measure.prompt_measures): the command's JSON
against direct forward passes and generation of each checkpoint; the logit lens, direct logit
attribution and activation patching against TransformerLens' own computations on the bridge with
the same weights; the loop entry on hand-made sequences; the cache's keys; and refusals."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # building a bridge must not reach the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import patching

from store.checkpoint import checkpoint_dir, load_checkpoint
from model.interop import to_transformer_lens
from store.runlayout import META, WEIGHTS, probes_dir
from store.vocab import load_tokenizer
from probes.measure.metrics import longest_loop
from probes.prompt import cache_key, main, prompt_timelapse
from probes.measure.prompt_measures import SAMPLE_TEMPERATURE, SAMPLE_TOP_P, checkpoint_entry, loop_entry

from _runs import add_checkpoint, corrupt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "They wave to each other"
STEPS = (0, 1, 2, 4)  # the fake run's checkpoints (_runs.write_run's default)
TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(fake_run) -> Path:
    return fake_run()


@pytest.fixture
def own_run(run, tmp_path) -> Path:
    """A copy of the shared fake run that a test may write its cache into."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def model_at(run: Path, step: int):
    return load_checkpoint(checkpoint_dir(run, step))[0]


def cli(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


# -- loops ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens, period, length, start", [
    ([5, 1, 2, 3, 1, 2, 3, 1, 2, 3], 3, 9, 1),
    ([7] * 10, 1, 10, 0),
    ([1, 2, 3, 4, 4], 1, 2, 3),
    ([1, 2, 1, 2, 9, 1], None, 0, None),   # the repeat does not reach the end: no loop
    ([1, 2, 3, 4, 5], None, 0, None),
])
def test_the_loop_is_the_repetition_probes_longest_loop_with_where_it_starts(tokens, period, length, start):
    entry = loop_entry(tokens)
    assert (entry["period"], entry["length"], entry["start"]) == (period, length, start)
    assert entry["share"] == length / len(tokens)
    assert longest_loop(tokens)[1] == length


# -- the command's JSON against the model itself -------------------------------------------------------
def test_the_command_prints_what_direct_forward_passes_give(own_run, capsys):
    status, out, err = cli(capsys, own_run, TEXT, "--tokens", 12, "--seed", 5)
    assert status == 0, err
    result = json.loads(out)
    tok = load_tokenizer(own_run)
    ids = tok.encode(TEXT)
    P = len(ids)
    assert result["prompt"] == TEXT and result["prompt_ids"] == ids and result["corrupted"] is None
    assert [c["step"] for c in result["checkpoints"]] == list(STEPS)
    for entry in result["checkpoints"]:
        assert {"step", "greedy", "sampled", "token_losses", "loop", "logit_lens", "dla"} <= set(entry)
        assert "patching" not in entry
        model = model_at(own_run, entry["step"])
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0]
            greedy = model.generate(ids, 12, temperature=0)[0, P:].tolist()
            sampled = model.generate(ids, 12, temperature=SAMPLE_TEMPERATURE, top_p=SAMPLE_TOP_P, seed=5)[0, P:].tolist()
        assert entry["greedy_ids"] == greedy and entry["greedy"] == tok.decode(greedy)
        assert entry["sampled_ids"] == sampled and entry["sampled"] == tok.decode(sampled)
        assert entry["loop"] == loop_entry(greedy)
        losses = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
        assert torch.allclose(torch.tensor(entry["token_losses"]), losses, atol=1e-5)
        lens = entry["logit_lens"]  # its last row reads the model's own output
        assert lens["layers"] == ["0_pre", "1_pre", "final_post"]
        assert lens["top"][-1] == logits.argmax(-1).tolist()
        assert torch.allclose(torch.tensor(lens["prob"][-1]), logits.softmax(-1).max(-1).values, atol=1e-5)
        ranks = [int((logits[p] > logits[p, ids[p + 1]]).sum()) for p in range(P - 1)]
        assert lens["next_rank"][-1] == ranks + [None]
        dla = entry["dla"]
        assert dla["position"] == P - 1 and len(dla["positions"]) == P
        for p, at in enumerate(dla["positions"]):
            target = ids[p + 1] if p < P - 1 else int(logits[-1].argmax())
            assert at["target"] == target and at["target_token"] == tok.decode([target])
            assert abs(at["logit"] - float(logits[p, target])) <= TOL
            parts = sum(map(sum, at["heads"])) + sum(at["mlp"]) + at["embed"] + at["bias"]
            assert abs(parts - at["logit"]) <= TOL
    # a subset of the steps: the same entries (now read from the cache the first call wrote)
    status, out, _ = cli(capsys, own_run, TEXT, "--tokens", 12, "--seed", 5, "--steps", "4,1")
    again = json.loads(out)["checkpoints"]
    assert status == 0 and again == [c for c in result["checkpoints"] if c["step"] in (1, 4)]


def test_a_one_token_prompt_has_no_losses_and_no_next_token_but_everything_else(run):
    model, tok = model_at(run, 4), load_tokenizer(run)
    entry = checkpoint_entry(model, tok, [7], 4, 0, [8])
    assert entry["token_losses"] == [] and entry["logit_lens"]["next_rank"] == [[None]] * 3
    assert len(entry["greedy_ids"]) == 4 and entry["dla"]["position"] == 0 and "patching" in entry


# -- against TransformerLens on the bridge --------------------------------------------------------------
def test_logit_lens_and_direct_logit_attribution_equal_transformer_lens(run):
    model, tok = model_at(run, 4), load_tokenizer(run)
    ids = tok.encode("Tom and Mia went to the park. Tom found a")
    entry = checkpoint_entry(model, tok, ids, 2, 0)
    tokens = torch.tensor([ids])
    P, L, H = len(ids), model.cfg.n_layer, model.cfg.n_head

    bridge = to_transformer_lens(model)  # weights as trained: ln_final recomputed per stream
    _, cache = bridge.run_with_cache(tokens)
    with torch.no_grad():
        stack = cache.accumulated_resid(apply_ln=True)[:, 0]  # [L+1, P, M]
        logits = stack @ bridge.W_U + (bridge.b_U if getattr(bridge, "b_U", None) is not None else 0)
    probs = logits.softmax(-1)
    lens = entry["logit_lens"]
    assert lens["top"] == probs.argmax(-1).tolist()
    assert torch.allclose(torch.tensor(lens["prob"]), probs.max(-1).values, atol=TOL)
    nxt = torch.tensor(ids[1:])
    their_next = probs[:, :-1].gather(-1, nxt.expand(L + 1, -1)[..., None])[..., 0]
    assert torch.allclose(torch.tensor([row[:-1] for row in lens["next_prob"]]), their_next, atol=TOL)
    their_ranks = (logits[:, :-1] > logits[:, :-1].gather(-1, nxt.expand(L + 1, -1)[..., None])).sum(-1)
    assert [row[:-1] for row in lens["next_rank"]] == their_ranks.tolist()

    # DLA: TransformerLens' logit_attrs divides by the cached ln_final scale and dots with W_U, so
    # ln_final's gain is folded into W_U as HookedTransformer's fold_ln does (nothing else changed).
    folded = to_transformer_lens(model, compatibility_mode=False)
    folded.enable_compatibility_mode(disable_warnings=True, fold_ln=True, center_writing_weights=False,
                                     center_unembed=False, fold_value_biases=False)
    _, fcache = folded.run_with_cache(tokens)
    targets = torch.tensor([[at["target"] for at in entry["dla"]["positions"]]])
    with torch.no_grad():
        heads = fcache.logit_attrs(fcache.stack_head_results(), tokens=targets)[:, 0]  # [L*H, P]
        parts, labels = fcache.decompose_resid(return_labels=True)
        rest = fcache.logit_attrs(parts, tokens=targets)[:, 0]
    ours = torch.tensor([at["heads"] for at in entry["dla"]["positions"]])  # [P, L, H]
    assert ours.abs().max() > 0.01
    assert torch.allclose(ours, heads.T.reshape(P, L, H), atol=TOL)
    mlp = rest[[labels.index(f"{layer}_mlp_out") for layer in range(L)]]
    assert torch.allclose(torch.tensor([at["mlp"] for at in entry["dla"]["positions"]]), mlp.T, atol=TOL)
    embed = rest[labels.index("embed")] + rest[labels.index("pos_embed")]
    assert torch.allclose(torch.tensor([at["embed"] for at in entry["dla"]["positions"]]), embed, atol=TOL)


def corrupted_pair(model, ids: list[int], position: int) -> list[int]:
    """`ids` with the token at `position` swapped for the first id that changes the top next token
    (the test needs two different answers)."""
    with torch.no_grad():
        answer = int(model(torch.tensor([ids]))[0, -1].argmax())
        for t in range(model.cfg.vocab_size):
            other = ids[:position] + [t] + ids[position + 1:]
            if t != ids[position] and int(model(torch.tensor([other]))[0, -1].argmax()) != answer:
                return other
    raise AssertionError("no single-token swap changes this model's answer")


def test_activation_patching_equals_transformer_lens_patching(run):
    model, tok = model_at(run, 4), load_tokenizer(run)
    ids = tok.encode("When Tom and Mia went to the park, Mia gave a ball to")
    bad = corrupted_pair(model, ids, 1)
    got = checkpoint_entry(model, tok, ids, 2, 0, bad)["patching"]
    assert got["reason"] is None and got["clean_answer"] != got["corrupted_answer"]
    assert got["clean_diff"] > 0 > got["corrupted_diff"]

    bridge = to_transformer_lens(model)
    _, clean_cache = bridge.run_with_cache(torch.tensor([ids]))

    def restored(logits: torch.Tensor) -> torch.Tensor:
        diff = logits[0, -1, got["clean_answer"]] - logits[0, -1, got["corrupted_answer"]]
        return (diff - got["corrupted_diff"]) / (got["clean_diff"] - got["corrupted_diff"])

    corrupted = torch.tensor([bad])
    heads = patching.get_act_patch_attn_head_out_all_pos(bridge, corrupted, clean_cache, restored)
    resid = patching.get_act_patch_resid_pre(bridge, corrupted, clean_cache, restored)
    assert torch.allclose(torch.tensor(got["heads"]), heads, atol=TOL)
    assert torch.allclose(torch.tensor(got["resid"]), resid, atol=TOL)
    assert abs(got["resid"][0][1] - 1) <= TOL and all(abs(v) <= TOL for v in got["resid"][0][:1])  # by construction
    assert torch.tensor(got["heads"]).abs().max() > 0.01

    same = checkpoint_entry(model, tok, ids, 2, 0, ids)["patching"]  # nothing to restore: said, not divided by 0
    assert same["heads"] is None and same["resid"] is None and "same top next token" in same["reason"]


# -- the cache ---------------------------------------------------------------------------------------
def test_cache_keys_change_with_the_prompt_options_and_weights():
    base = {"version": 1, "prompt": TEXT, "tokens": 32, "seed": 0, "corrupted": None, "temperature": 1.0,
            "top_p": 0.9, "weights": "a" * 64, "run_files": {"vocab.json": "b" * 64}}
    changes = [{"prompt": TEXT + "!"}, {"seed": 1}, {"tokens": 33}, {"corrupted": "They wave to each again"},
               {"weights": "c" * 64}, {"run_files": {"vocab.json": "d" * 64}}, {"version": 2}]
    keys = {cache_key(base)} | {cache_key({**base, **c}) for c in changes}
    assert len(keys) == 1 + len(changes) and cache_key(dict(reversed(base.items()))) == cache_key(base)


def plant(run: Path, marker: str) -> int:
    """Write `marker` as the greedy text of every cached entry; the number of entries."""
    files = sorted((probes_dir(run)).rglob("*.json"))
    for f in files:
        data = json.loads(f.read_text())
        data["entry"]["greedy"] = marker
        f.write_text(json.dumps(data))
    return len(files)


def test_a_result_is_reused_only_for_the_same_prompt_options_and_checkpoint(own_run):
    first = prompt_timelapse(own_run, TEXT, tokens=6, seed=1)
    assert plant(own_run, "MARKER") == len(STEPS)  # one file per checkpoint
    greedy = lambda result: [c["greedy"] for c in result["checkpoints"]]  # noqa: E731
    assert greedy(prompt_timelapse(own_run, TEXT, tokens=6, seed=1)) == ["MARKER"] * len(STEPS)  # served from disk
    # ... to another process too: the command as users run it
    done = subprocess.run([sys.executable, "-m", "probes.prompt", str(own_run), TEXT, "--tokens", "6", "--seed", "1",
                           "--steps", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert greedy(json.loads(done.stdout)) == ["MARKER"]
    for other in (dict(text=TEXT, tokens=6, seed=2), dict(text=TEXT + ".", tokens=6, seed=1),
                  dict(text=TEXT, tokens=7, seed=1), dict(text=TEXT, tokens=6, seed=1, corrupted="They wave to each again")):
        assert "MARKER" not in greedy(prompt_timelapse(own_run, **other)), other
    # step 2 refilled with other weights: its entry is computed afresh from them, the others still reused;
    # step 2's entries for the old weights (5 requests so far) are removed once an entry for the new ones is
    # written, and so is the temporary file of a writer that died (a pid no process has)
    folder = probes_dir(own_run) / "prompt"
    assert len(list(folder.glob("step_000002-*.json"))) == 5
    dead = folder / f".step_000002-{'0' * 32}.json.tmp-{2 ** 22 + 1}"
    dead.write_text("{")
    add_checkpoint(own_run, 2, seed=9)
    again = prompt_timelapse(own_run, TEXT, tokens=6, seed=1)
    assert len(list(folder.glob("step_000002-*.json"))) == 1 and not dead.exists()
    assert len(list(folder.glob("step_000000-*.json"))) == 5  # the other checkpoints keep every request's entry
    assert greedy(again) == ["MARKER", "MARKER", again["checkpoints"][2]["greedy"], "MARKER"]
    fresh = checkpoint_entry(model_at(own_run, 2), load_tokenizer(own_run), first["prompt_ids"], 6, 1)
    assert again["checkpoints"][2] == {"step": 2, **json.loads(json.dumps(fresh))}
    assert again["checkpoints"][2]["greedy_ids"] != first["checkpoints"][2]["greedy_ids"] or \
        again["checkpoints"][2]["token_losses"] != first["checkpoints"][2]["token_losses"]


def test_progress_is_reported_per_checkpoint_and_nothing_is_written_without_the_cache(run):
    seen: list[tuple[int, int]] = []
    before = listing(run)
    result = prompt_timelapse(run, TEXT, tokens=3, progress=lambda done, total: seen.append((done, total)), cache=False)
    assert seen == [(i, len(STEPS)) for i in range(len(STEPS) + 1)] and len(result["checkpoints"]) == len(STEPS)
    assert listing(run) == before


def test_a_damaged_checkpoint_gets_an_error_entry_and_the_others_their_results(own_run, capsys):
    corrupt_checkpoint(own_run, 2)
    meta = checkpoint_dir(own_run, 1) / META
    meta.write_text(meta.read_text().replace('"step": 1', '"step": 11'))
    status, out, err = cli(capsys, own_run, TEXT, "--tokens", 3)
    entries = {c["step"]: c for c in json.loads(out)["checkpoints"]}
    assert status == 0 and sorted(entries) == list(STEPS)
    assert set(entries[2]) == {"step", "error"} and WEIGHTS in entries[2]["error"]
    assert set(entries[1]) == {"step", "error"} and META in entries[1]["error"]
    assert entries[0]["greedy_ids"] and entries[4]["greedy_ids"]


# -- refusals ----------------------------------------------------------------------------------------
def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("args, says", [
    (["{missing}", TEXT], "is not a folder"),
    (["{run}", ""], "prompt is empty"),
    (["{run}", "  \n"], "prompt is empty"),
    (["{run}", TEXT, "--corrupted", "They wave"], "same length"),
    (["{run}", TEXT, "--corrupted", ""], "corrupted prompt is empty"),
    (["{run}", TEXT, "--tokens", "0"], "--tokens must be an integer from 1"),
    (["{run}", TEXT, "--tokens", "5000"], "--tokens must be an integer from 1"),
    (["{run}", TEXT, "--tokens", "many"], "--tokens"),
    (["{run}", TEXT, "--seed", "-1"], "--seed"),
    (["{run}", TEXT, "--steps", "3"], "no complete checkpoint at step 3"),
    (["{run}", TEXT, "--steps", "x"], "--steps"),
    (["{run}", "Tom went to the park. " * 8], "more than the model's context of 32"),
])
def test_bad_input_is_refused_in_one_sentence_with_nothing_written(own_run, tmp_path, capsys, args, says):
    before = listing(own_run)
    argv = [a.format(run=own_run, missing=tmp_path / "nowhere") for a in args]
    status, out, err = cli(capsys, *argv)
    assert status == 2 and out == ""
    assert says in err and err.startswith("probes.prompt: ") and err.count("\n") == 1 and err.rstrip().endswith(".")
    assert listing(own_run) == before
