"""The natural-text phase change's tools: the burstiness knob of the stories, the planner's bigram
statistics (against hand counts) and formation law (against the paper's numbers), and the ICL
score's windows at several context lengths, on document-aligned rows."""
import hashlib
import math
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from model.tokenizer import gpt2_encoding
from model import GPT, GPTConfig
from probes.measure import induction
from probes.measure.forward import token_stats
from probes.measure.induction import ICL_MIN_LATE, icl_score
from probes.measure.documents import document_rows
from train.plan import (FORMATION_T, bigram_repetition, formation_step, formation_tokens, prediction,
                        window_repetition)
from train.stories import generate_stories
from train.words import made_up_word
from train.story_plots import Pen


# -- burstiness -------------------------------------------------------------------------------
def test_default_stories_are_unchanged_by_the_new_options():
    """burstiness 0 and one episode draw nothing extra: the corpus every earlier run and figure
    rests on is byte-identical (digest taken before the options existed)."""
    docs = generate_stories(1337, "train", 300_000)
    assert hashlib.sha256("|".join(docs).encode()).hexdigest()[:16] == "9b0861f29d12a290"
    assert docs == generate_stories(1337, "train", 300_000, 1.0, 0.0, 1)


def hero_of(story: str) -> str | None:
    """The hero's name, from whichever of the intro's forms the story opens with."""
    m = re.search(r"(?:named|called) ([A-Z]\w+)", story.split(".")[0]) or re.match(r"([A-Z]\w+) was ", story)
    return m.group(1) if m else None


def test_made_up_words_are_several_tokens_and_new_per_story():
    enc = gpt2_encoding()
    pen = Pen(np.random.default_rng(0))
    words = [made_up_word(pen, capital=True) for _ in range(200)]
    assert all(len(enc.encode(" " + w)) >= 2 for w in words)
    assert all(w[0].isupper() and w[1:].islower() for w in words)
    assert len(set(words)) > 190  # new in (nearly) every story


def test_bursty_stories_repeat_their_made_up_names_within_and_not_across():
    docs = generate_stories(3, "train", 60_000, 1.0, 1.0, 3)
    enc = gpt2_encoding()
    hero = [hero_of(d) for d in docs]
    assert None not in hero
    multi = [h for h in hero if len(enc.encode(" " + h)) >= 2]
    assert len(multi) == len(hero)  # burstiness 1: every hero has a made-up, multi-token name
    for d, h in zip(docs, hero):
        assert d.count(h) >= 5, (h, d[:200])  # recurs through the story's three episodes
    across = Counter(h for h in hero)
    assert across.most_common(1)[0][1] <= 2  # and (almost) never in another story


def test_episodes_make_longer_stories_and_burstiness_scales_made_up_names():
    enc = gpt2_encoding()
    one = generate_stories(5, "train", 40_000, 1.0, 0.0, 1)
    three = generate_stories(5, "train", 40_000, 1.0, 0.0, 3)
    assert np.median([len(enc.encode(d)) for d in three]) > 2.5 * np.median([len(enc.encode(d)) for d in one])
    half = generate_stories(5, "train", 80_000, 1.0, 0.5, 1)
    known = set(__import__("train.words", fromlist=["GIRLS"]).GIRLS + __import__("train.words", fromlist=["BOYS"]).BOYS
                + __import__("train.words", fromlist=["PET_NAMES"]).PET_NAMES)
    made = [hero_of(d) not in known for d in half]
    assert 0.35 < np.mean(made) < 0.65  # about half the characters


def test_train_records_the_story_options_and_refuses_bad_ones(tmp_path):
    from train.cli import main
    assert main(["--preset", "nano", "--n-layer", "1", "--steps", "1", "--burstiness", "1.5", "--out",
                 str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()
    assert main(["--preset", "nano", "--n-layer", "1", "--steps", "1", "--story-episodes", "0", "--out",
                 str(tmp_path / "r")]) == 2


# -- the planner ------------------------------------------------------------------------------
def test_window_repetition_matches_a_hand_count():
    # tokens 1 2 3 1 2 4 1 5: positions 0..6 have a next token (7). Position 3 (1, seen before at 0,
    # whose successor was 2; next is 2: reliable), 4 (2, seen at 1 -> 3; next 4: not), 6 (1, seen at
    # 0 and 3 -> {2}; next 5: not). So 3 events, 1 reliable.
    assert window_repetition(np.array([1, 2, 3, 1, 2, 4, 1, 5])) == (7, 3, 1)
    assert window_repetition(np.array([7, 8, 9])) == (2, 0, 0)
    # a period-2 repeat: every position from 2 on repeats with the same successor
    assert window_repetition(np.array([1, 2, 1, 2, 1, 2])) == (5, 3, 3)


def test_bigram_repetition_pools_the_windows_training_reads():
    toks = np.array([1, 2, 3, 1, 2, 4, 1, 5, 7, 8, 9, 7, 8, 9, 7, 8, 0])  # windows of 8: [0:8], [8:16]
    rep = bigram_repetition(toks, 8)
    # window 1: (7, 3, 1); window 2 = 7 8 9 7 8 9 7 8: positions 3..6 repeat, all reliable: (7, 4, 4)
    assert rep.n_windows == 2
    assert rep.frequency == pytest.approx(7 / 14)
    assert rep.reliability == pytest.approx(5 / 7)
    one = bigram_repetition(toks, 1)  # --n-ctx 1: windows without a bigram
    assert (one.frequency, one.reliability) == (0.0, 0.0)
    with pytest.raises(ValueError, match="shorter than one context"):
        bigram_repetition(np.arange(5), 8)


def test_formation_law_matches_the_paper():
    """N_pt = T sqrt(B C) training tokens with T = 10^5.7 (Aoyama et al.): their batch 16 x context 64
    gives sqrt(1024) = 32, so 32 * 10^5.7 = 1.60e7 tokens; B 1024 x C 4096 gives 1.03e9."""
    assert FORMATION_T == pytest.approx(501187.2, rel=1e-6)
    assert formation_tokens(16, 64) == pytest.approx(1.604e7, rel=1e-3)
    assert formation_tokens(1024, 4096) == pytest.approx(1.026e9, rel=1e-3)
    # steps = tokens / (B C) = T / sqrt(B C): quadrupling the batch halves the steps, doubles the tokens
    assert formation_step(16, 256) == math.ceil(FORMATION_T / 64) == 7832
    assert formation_step(64, 256) == math.ceil(FORMATION_T / 128)
    assert formation_tokens(64, 256) == pytest.approx(2 * formation_tokens(16, 256))
    p = prediction(16, 256, 6000, None, 20_000.0)
    assert p["reaches_formation"] is False and p["seconds_to_formation"] == pytest.approx(formation_tokens(16, 256) / 2e4)


def test_plan_answers_in_seconds_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "train", "--plan", "--preset", "nano", "--n-layer", "2", "--n-ctx",
                           "128", "--burstiness", "1", "--story-episodes", "2", "--corpus-mb", "0.3", "--steps", "500",
                           "--batch-size", "8", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "predicted induction-head formation" in proc.stdout
    assert f"step {formation_step(8, 128):,}" in proc.stdout
    m = re.search(r"frequency ([\d.]+), reliability ([\d.]+)", proc.stdout)
    assert m and 0 < float(m.group(1)) < 1 and 0 < float(m.group(2)) < 1
    assert re.search(r"speed here: [\d,]+ tokens/s", proc.stdout)
    assert "ends before the predicted step" in proc.stdout  # 500 steps < the predicted formation
    assert not out.exists()


# -- ICL windows ------------------------------------------------------------------------------
@pytest.mark.parametrize("P, early, late, meaningful", [(64, (26, 36), (54, 64), False),
                                                        (128, (45, 55), (118, 128), False),
                                                        (256, (45, 55), (246, 256), True),
                                                        (1024, (45, 55), (491, 501), True)])
def test_icl_windows_at_several_context_lengths(P, early, late, meaningful):
    losses = torch.zeros(4, P)
    losses[:, late[0]:late[1]] = -0.5  # late tokens cheaper by half a nat
    r = icl_score(losses)
    assert (tuple(r["early_positions"]), tuple(r["late_positions"])) == (early, late)
    assert r["value"] == pytest.approx(-0.5)
    assert r["meaningful"] is meaningful and (late[1] - 1 >= ICL_MIN_LATE) is meaningful
    assert (r["note"] is None) == (P > 500)
    assert f"positions {late[0]}-{late[1] - 1}" in r["definition"]


def test_icl_on_documents_ignores_the_next_story():
    """Rows start at a document start; positions past a document's end (the next, unrelated story,
    loss 100 here) never enter the score, and the late window ends where half the documents reach."""
    P = 256
    losses = torch.ones(8, P)
    valid = torch.tensor([256, 256, 256, 240, 240, 240, 100, 100])
    for i, v in enumerate(valid):
        losses[i, int(v):] = 100.0
    r = icl_score(losses, valid)
    assert r["aligned"] == "document start"
    assert r["late_position"] == 239  # the 4th longest document covers positions 0..239
    assert r["n_sequences"] == 6 and r["value"] == pytest.approx(0.0)
    assert "documents" in r["note"]
    # the chunk version would have counted the next story
    assert icl_score(losses)["value"] > 10


@pytest.mark.parametrize("chunked", [True, False])
def test_icl_from_window_losses_equals_icl_from_every_loss(chunked, monkeypatch):
    """The probes read out only the ICL windows of the rows that reach them; the score must be the
    one every per-position loss gives (a random GPT, documents of random lengths; seed printed).
    chunked=False takes the path of a model without a readout to apply to chosen positions."""
    seed = int(os.environ.get("TEST_SEED", 4242))  # fixed in make test; TEST_SEED=N tries another
    print("seed", seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=256, vocab_size=97)).eval()
    rows = torch.randint(0, 97, (9, 257))
    valid = torch.randint(60, 257, (9,)).clamp(max=256)
    if not chunked:
        monkeypatch.setattr(induction, "readout", lambda model: None)
    with torch.no_grad():
        full = token_stats(model, rows[:, :-1], rows[:, 1:]).losses
    windowed = induction.document_window_losses(model, rows, valid)
    want, got = icl_score(full, valid), icl_score(windowed, valid)
    assert got["n_sequences"] == want["n_sequences"] >= 1
    assert got["value"] == pytest.approx(want["value"], abs=1e-5)
    assert torch.isnan(windowed).float().mean() > 0.8  # most positions were never read out


def test_document_rows_start_at_documents_and_count_their_positions():
    eot = 0
    val = np.array([0, 5, 6, 7, 0, 8, 9, 10, 11, 12, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    rows, valid = document_rows(val, eot, 6, 10, seed=1)
    assert (rows[:, 0] == eot).all() and rows.shape == (3, 6)
    assert rows.tolist() == [[0, 5, 6, 7, 0, 8], [0, 8, 9, 10, 11, 12], [0, 1, 2, 3, 4, 5]]
    assert valid.tolist() == [4, 5, 5]  # 5 6 7 + the closing <|endoftext|>; the others fill the row
    assert document_rows(np.array([3, 4, 5, 6]), eot, 3, 4, seed=1) is None


# -- the trajectory's turn --------------------------------------------------------------------
def test_trajectory_turn_finds_the_corner_and_ignores_jitter_at_rest():
    from probes.analyse.trajectory import trajectory_turn
    steps = list(range(0, 3000, 100))
    pc1 = list(range(10)) + [9] * 10 + [9.0] * 10
    pc2 = [0] * 10 + list(range(1, 11)) + [10.0] * 10
    rng = np.random.default_rng(0)
    pc1[20:] = [9 + 0.01 * x for x in rng.standard_normal(10)]  # at rest: tiny moves, any direction
    pc2[20:] = [10 + 0.01 * x for x in rng.standard_normal(10)]
    t = trajectory_turn(steps, pc1, pc2)
    assert t["turn_step"] == 900 and t["angle_deg"] == pytest.approx(90.0)
    assert all(int(s) < 2000 for s in t["angles"])  # the jitter never qualifies
    straight = trajectory_turn(steps[:10], list(range(10)), [0.0] * 10)
    assert straight["angle_deg"] == pytest.approx(0.0, abs=1e-6)
    assert trajectory_turn(steps[:5], [0, 1, 2, 3, 4], [0] * 5)["reason"].startswith("5 checkpoints")
