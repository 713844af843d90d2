"""A held-out file of its own (`--val-data text:PATH`), the first N documents of a text corpus
(`--max-docs`), and nano's default vocabulary covering every training token (no <|unk|> for the
model to learn). The held-out text must reach the evaluation and every probe that reads the
held-out split: both read data/val.bin, so the tests compare that file with the held-out file's
own tokens."""
from __future__ import annotations

import hashlib
import json

from pathlib import Path

import numpy as np
import pytest

from store.runio import read_json
from store.rundata import load_tokens, read_data_meta
from store.vocab import load_tokenizer
from train import main
from train.args import COVERING_VOCAB
from train.corpora import split_documents
from train.stories import generate_stories

TINY = ["--steps", "2", "--batch-size", "2", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-ctx", "32",
        "--eval-batches", "1", "--sample-tokens", "2", "--device", "cpu", "--threads", "1", "--canary-copies", "none"]


@pytest.fixture
def texts(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n\n".join(generate_stories(5, "train", 40_000)))
    val = tmp_path / "valid.txt"
    val.write_text("\n\n".join(generate_stories(6, "val", 12_000)) + "\n\nZyxwvut quorbly flimflam.")
    return train, val


def one_sentence(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_held_out_file_is_the_evaluation_text(tmp_path, texts):
    train, val = texts
    run = tmp_path / "runs" / "r"
    assert main(["--out", str(run), "--data", f"text:{train}", "--val-data", f"text:{val}", *TINY]) == 0
    meta = read_data_meta(run)
    assert meta["held_out"]["source"] == f"text:{val}"
    (entry,) = meta["held_out"]["files"]
    assert entry["sha256"] == hashlib.sha256(val.read_bytes()).hexdigest() and entry["bytes"] == val.stat().st_size
    tok = load_tokenizer(run)
    want = []
    for doc in split_documents(val.read_text()):
        want += tok.encode(doc) + [tok.eot_id]
    assert np.asarray(load_tokens(run, "val", meta), dtype=np.int64).tolist() == want
    # no training document is held out: the training tokens hold every training story
    n_train_docs = len(split_documents(train.read_text()))
    assert meta["stats"]["n_train_docs"] == n_train_docs and meta["stats"]["n_val_docs"] == len(split_documents(val.read_text()))
    # the evaluation read it: step 0's held-out loss is over that text, near ln(vocab) for an untrained model
    first = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r][0]
    assert abs(first["val_loss"] - np.log(read_json(run / "run.json")["model"]["vocab_size"])) < 0.5


def test_without_val_data_the_split_is_unchanged(tmp_path, texts):
    train, _ = texts
    run = tmp_path / "runs" / "r"
    assert main(["--out", str(run), "--data", f"text:{train}", *TINY]) == 0
    meta = read_data_meta(run)
    assert meta["held_out"] is None
    assert meta["stats"]["n_val_docs"] == max(1, round(len(split_documents(train.read_text())) * 0.05))


@pytest.mark.parametrize("which,expect", [
    ("missing", "held-out data path"), ("empty", "is empty"), ("blank", "is empty"), ("same", "is the training text"),
    ("copy", "is the training text"), ("bare", "--val-data takes text:PATH"), ("nopath", "--val-data takes text:PATH"),
])
def test_bad_val_data_is_refused_in_one_sentence_before_anything_is_written(tmp_path, texts, capsys, which, expect):
    train, val = texts
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    (tmp_path / "copy.txt").write_bytes(train.read_bytes())
    value = {"missing": f"text:{tmp_path / 'nope.txt'}", "empty": f"text:{tmp_path / 'empty.txt'}",
             "blank": f"text:{tmp_path / 'blank.txt'}", "same": f"text:{train}", "copy": f"text:{tmp_path / 'copy.txt'}",
             "bare": str(val), "nopath": "text:"}[which]
    out = tmp_path / "runs" / "r"
    assert main(["--out", str(out), "--data", f"text:{train}", "--val-data", value, *TINY]) == 2
    line = one_sentence(capsys)
    assert expect in line and line.endswith(".")
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_max_docs_takes_the_first_documents(tmp_path, texts):
    train, val = texts
    run = tmp_path / "runs" / "r"
    assert main(["--out", str(run), "--data", f"text:{train}", "--val-data", f"text:{val}", "--max-docs", "7", *TINY]) == 0
    meta = read_data_meta(run)
    tok = load_tokenizer(run)
    want = []
    for doc in split_documents(train.read_text())[:7]:
        want += tok.encode(doc) + [tok.eot_id]
    assert np.asarray(load_tokens(run, "train", meta), dtype=np.int64).tolist() == want
    assert meta["max_docs"] == 7


def test_max_docs_is_refused_outside_text_corpora(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "r"), "--data", "stories", "--max-docs", "3", *TINY]) == 2
    assert "--max-docs" in one_sentence(capsys)
    assert main(["--out", str(tmp_path / "r"), "--data", "stories", "--max-docs", "-1", *TINY]) == 2
    assert "--max-docs" in one_sentence(capsys)


def test_nano_default_vocabulary_covers_every_training_token(tmp_path, texts, capsys):
    """Real text has a long tail of tokens; nano's default compact vocabulary holds all of them,
    so no training target is <|unk|> and the model never learns to say it. The held-out file's
    unseen words ("Zyxwvut") are the only <|unk|>s, and data.json states both coverages."""
    train, val = texts
    run = tmp_path / "runs" / "r"
    assert main(["--out", str(run), "--data", f"text:{train}", "--val-data", f"text:{val}", *TINY]) == 0
    assert read_json(run / "run.json")["train"]["vocab_size"] is None
    meta = read_data_meta(run)
    tok = load_tokenizer(run)
    ids = np.asarray(load_tokens(run, "train", meta), dtype=np.int64)
    assert tok.unk_id not in ids.tolist()
    distinct = len(set().union(*tok.enc.encode_ordinary_batch(split_documents(train.read_text()))))
    assert tok.vocab_size < COVERING_VOCAB and tok.vocab_size >= distinct
    cover = meta["vocab_coverage"]
    assert cover["train"] == 1.0 and 0.5 < cover["held_out"] < 1.0 and cover["tokenizer"] == "compact"
    assert "warning" not in capsys.readouterr().err


def test_a_small_vocabulary_on_real_text_warns_with_its_coverage(tmp_path, texts, capsys):
    train, _ = texts
    run = tmp_path / "runs" / "r"
    assert main(["--out", str(run), "--data", f"text:{train}", "--vocab-size", "100", *TINY]) == 0
    cover = read_data_meta(run)["vocab_coverage"]
    assert cover["train"] < 0.999
    err = capsys.readouterr().err
    assert f"covers {cover['train']:.2%} of the training tokens" in err and "<|unk|>" in err


def test_an_unreadable_held_out_file_is_refused_in_one_sentence(tmp_path, texts, capsys, monkeypatch):
    """A file the user may not read (simulated: this suite may run as root, who reads anything)."""
    train, val = texts
    real_read_text, real_open = Path.read_text, open

    def read_text(self, *a, **k):
        if self == val:
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *a, **k)

    def guarded_open(file, *a, **k):
        if Path(file) == val:
            raise PermissionError(13, "Permission denied")
        return real_open(file, *a, **k)
    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr("builtins.open", guarded_open)
    out = tmp_path / "runs" / "r"
    assert main(["--out", str(out), "--data", f"text:{train}", "--val-data", f"text:{val}", *TINY]) == 2
    line = one_sentence(capsys)
    assert f"{val} cannot be read (Permission denied)." in line, line
    assert not out.exists()


def test_a_run_recorded_before_the_covering_vocabulary_resumes_at_its_own_size(tmp_path, texts):
    """A nano run.json written when vocab_size null meant 4,096 ids: killed before its data was
    installed, its resume tokenizes at the model's own size (run.json's model), not at what null
    means today, so the token ids still fit its embedding."""
    train, _ = texts
    run = tmp_path / "runs" / "old"
    common = ["--out", str(run), "--data", f"text:{train}", *TINY]
    assert main(common + ["--vocab-size", "300"]) == 0
    record = json.loads((run / "run.json").read_text())
    record["train"]["vocab_size"] = None  # as such a run recorded it
    record["status"] = "training"
    (run / "run.json").write_text(json.dumps(record))
    vocab_before = (run / "vocab.json").read_bytes()
    for name in ("data.json", "vocab.json"):
        (run / name).unlink()  # killed between run.json and the data install
    for f in (run / "data").iterdir():
        f.unlink()
    assert main(["--out", str(run), "--resume", "--device", "cpu", "--threads", "1"]) == 0
    assert (run / "vocab.json").read_bytes() == vocab_before
    assert read_data_meta(run)["vocab_coverage"]["vocab_size"] == 300 == record["model"]["vocab_size"]
