"""Corpora and the token pipeline: text:PATH splitting, held-out split, the content-hash token cache,
and the run's data files (canaries planted in the token stream exactly as data.json says)."""
import os

import numpy as np
import pytest

import train.tokens as tokens_mod
from store.runio import read_json
from store.rundata import get_chunks, load_tokens, n_chunks, read_data_meta, sample_chunk_ids, seen_chunk_ids
from store.vocab import load_tokenizer
from train import main
from train.args import BadInput
from train.corpora import Corpus, split_documents, split_held_out, text_corpus
from train.stories import generate_stories


def test_split_on_endoftext():
    text = "Once there was a cat.<|endoftext|>A dog.\n\nIt ran.<|endoftext|>  \n<|endoftext|>The end."
    assert split_documents(text) == ["Once there was a cat.", "A dog.\n\nIt ran.", "The end."]


def test_split_on_blank_lines():
    text = "First story,\nline two.\n\n\nSecond story.\n \t\nThird.\n"
    assert split_documents(text) == ["First story,\nline two.", "Second story.", "Third."]


def test_text_folder_order_and_held_out(tmp_path):
    (tmp_path / "b.txt").write_text("b1\n\nb2\n\nb3")
    (tmp_path / "a.txt").write_text("a1<|endoftext|>a2")
    (tmp_path / "notes.md").write_text("ignored")
    c = text_corpus(str(tmp_path), seed=0, fraction=0.2)
    assert sorted(c.train + c.val) == ["a1", "a2", "b1", "b2", "b3"]
    assert len(c.val) == 1 and not set(c.val) & set(c.train)
    order = ["a1", "a2", "b1", "b2", "b3"]
    assert c.train == [d for d in order if d in c.train]  # file order kept
    assert text_corpus(str(tmp_path), seed=0, fraction=0.2).val == c.val  # seeded


def test_held_out_fraction_is_seeded():
    docs = [f"doc {i}" for i in range(100)]
    tr, va = split_held_out(docs, 3, 0.1)
    assert len(va) == 10 and len(tr) == 90 and split_held_out(docs, 3, 0.1) == (tr, va)
    assert split_held_out(docs, 4, 0.1)[1] != va


@pytest.mark.parametrize("content, problem", [("", "empty"), ("\n\n  \n", "empty"), ("one story only", "single")])
def test_text_corpus_rejects_empty_or_single(tmp_path, content, problem):
    f = tmp_path / "c.txt"
    f.write_text(content)
    with pytest.raises(BadInput, match=problem):
        text_corpus(str(f), 0, 0.1)


def test_text_corpus_rejects_non_utf8(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"\xff\xfe bad \x80\n\nmore")
    with pytest.raises(BadInput, match="UTF-8"):
        text_corpus(str(f), 0, 0.1)


def test_token_cache_is_reused(tmp_path, monkeypatch):
    corpus = Corpus("test", generate_stories(1, "train", 30_000), generate_stories(1, "val", 5_000))
    first = tokens_mod.tokenize(corpus, 512, tmp_path)
    assert not first.cache_hit and first.info["vocab_size"] <= 512
    assert first.dir.parent == tmp_path / ".cache" / "tokens"

    def no_tokenizing(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tokens_mod, "encode_docs", no_tokenizing)
    second = tokens_mod.tokenize(corpus, 512, tmp_path)
    assert second.cache_hit and second.dir == first.dir
    # a different vocabulary size or text is another cache entry
    with pytest.raises(AssertionError, match="cache"):
        tokens_mod.tokenize(corpus, 256, tmp_path)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(AssertionError, match="cache"):
        tokens_mod.tokenize(corpus, 512, tmp_path)


def test_tokens_match_the_tokenizer(tmp_path):
    docs = ["Tom saw a cat.", "The cat said \"meow\" to Tom."]
    corpus = Corpus("t", docs, ["Tom saw the dog."])
    tok = tokens_mod.tokenize(corpus, None, tmp_path)  # full GPT-2 vocabulary
    gpt2 = load_tokenizer()
    train = np.fromfile(tok.dir / "train.bin", dtype=np.uint16).tolist()
    assert train == gpt2.encode(docs[0]) + [50256] + gpt2.encode(docs[1]) + [50256]
    compact = tokens_mod.tokenize(corpus, 64, tmp_path)
    vocab_tok = load_tokenizer(compact.dir / "vocab.json")
    ids = np.fromfile(compact.dir / "train.bin", dtype=np.uint16).tolist()
    assert vocab_tok.decode(ids) == docs[0] + "<|endoftext|>" + docs[1] + "<|endoftext|>"
    val = np.fromfile(compact.dir / "val.bin", dtype=np.uint16).tolist()
    assert vocab_tok.unk_id in val  # "dog" and "the" never occur in training


def test_second_run_on_same_text_does_not_retokenize(tmp_path, monkeypatch):
    corpus_file = tmp_path / "stories.txt"
    corpus_file.write_text("<|endoftext|>".join(generate_stories(5, "train", 60_000)))
    common = ["--data", f"text:{corpus_file}", "--steps", "2", "--batch-size", "2", "--n-layer", "1",
              "--n-embd", "32", "--n-head", "2", "--n-ctx", "32", "--vocab-size", "300", "--eval-batches", "1",
              "--sample-tokens", "2", "--device", "cpu"]
    assert main(["--out", str(tmp_path / "runs" / "a")] + common) == 0
    monkeypatch.setattr(tokens_mod, "encode_docs", lambda *a, **k: pytest.fail("re-tokenized"))
    assert main(["--out", str(tmp_path / "runs" / "b")] + common) == 0
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert read_json(a / "data.json")["cache_key"] == read_json(b / "data.json")["cache_key"]
    assert (a / "data" / "train.bin").read_bytes() == (b / "data" / "train.bin").read_bytes()
    assert os.stat(a / "data" / "train.bin").st_ino == os.stat(b / "data" / "train.bin").st_ino  # hard link
    assert read_json(a / "data.json")["source"] == f"text:{corpus_file}"


def count_occurrences(stream: np.ndarray, pattern: list[int]) -> int:
    """Occurrences of a token sequence in a token stream."""
    p = np.asarray(pattern)
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(p))
    return int(np.all(windows == p, axis=1).sum())


def test_canaries_in_token_stream_exactly_as_recorded(small_run):
    meta = read_data_meta(small_run)
    tok = load_tokenizer(small_run)
    train = np.asarray(load_tokens(small_run, "train", meta), dtype=np.int64)
    val = np.asarray(load_tokens(small_run, "val", meta), dtype=np.int64)
    assert meta["canaries"] and {c["copies"] for c in meta["canaries"]} == {1, 4, 16, 64}
    for c in meta["canaries"]:
        ids = tok.encode(c["text"])
        assert tok.unk_id not in ids
        assert count_occurrences(train, ids) == c["copies"]
        assert count_occurrences(val, ids[:40]) == 0
        assert count_occurrences(train, tok.encode(c["alternatives"][0])) == 0
    assert meta["stats"]["unk_fraction_train"] == 0.0  # the compact vocab covers the corpus


def test_a_data_json_written_before_corpus_rows_per_step_had_its_name_reads_the_same(small_run):
    """Runs written before the rename kept the corpus rows per step as "global_batch" (a name that
    in run.json means every row): they still count seen sequences the same way."""
    from store.rundata import corpus_rows_per_step, seen_chunk_ids
    meta = read_data_meta(small_run)
    old = {k: v for k, v in meta.items() if k != "corpus_rows_per_step"} | {"global_batch": meta["corpus_rows_per_step"]}
    assert corpus_rows_per_step(old) == corpus_rows_per_step(meta) == 8
    for step in (1, 7, 40):
        assert seen_chunk_ids(old, step).tolist() == seen_chunk_ids(meta, step).tolist()


def test_data_json_describes_the_files(small_run):
    meta = read_data_meta(small_run)
    run = read_json(small_run / "run.json")
    for key in ("source", "seed", "dtype", "n_train_tokens", "n_val_tokens", "chunk_len", "corpus_rows_per_step", "canaries"):
        assert key in meta
    assert meta["chunk_len"] == run["model"]["n_ctx"] == 64
    assert meta["corpus_rows_per_step"] == 8 and "global_batch" not in meta and meta["seed"] == run["seed"] == 1234
    assert meta["dtype"] == "uint16"
    assert (small_run / "data" / "train.bin").stat().st_size == 2 * meta["n_train_tokens"]
    assert run["tokenizer"] == {"kind": "compact", "vocab_size": run["model"]["vocab_size"]}
    assert load_tokenizer(small_run).vocab_size == run["model"]["vocab_size"]


def test_training_batches_are_the_seen_chunks(small_run):
    """The loop draws step s's batch as rundata defines it, so seen_chunk_ids is what was trained on."""
    from train.args import make_args
    from train.loop import Dist, Trainer
    from model.config import GPTConfig

    run = read_json(small_run / "run.json")
    args = make_args(run["train"])
    trainer = Trainer(small_run, args, GPTConfig.from_dict(run["model"]), __import__("torch").device("cpu"), Dist())
    meta = read_data_meta(small_run)
    tokens = load_tokens(small_run, "train", meta)
    n = n_chunks(meta["n_train_tokens"], meta["chunk_len"])
    used = []
    for step in (1, 2, 7):
        batch = trainer.step_batches(step)[0].numpy()
        ids = sample_chunk_ids(meta["seed"], n, (step - 1) * 8, step * 8)
        assert np.array_equal(batch, get_chunks(tokens, ids, 64))
    for step in range(1, 5):
        used += sample_chunk_ids(meta["seed"], n, (step - 1) * 8, step * 8).tolist()
    assert np.array_equal(seen_chunk_ids(meta, 4), np.unique(used))


def test_text_corpus_plants_canaries_that_the_probes_measure(tmp_path):
    """text:PATH gets the canaries stories gets (same generator, same record in data.json), each
    copy its own training document, none held out; the memorization probe has exposure rows."""
    from store.runlayout import result_path
    from probes.measure.results import read_result
    from probes.run.runner import run_probes
    from train.stories import make_canaries

    corpus_file = tmp_path / "stories.txt"
    corpus_file.write_text("\n\n".join(generate_stories(5, "train", 60_000)))
    run = tmp_path / "runs" / "text"
    assert main(["--out", str(run), "--data", f"text:{corpus_file}", "--steps", "2", "--batch-size", "2",
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-ctx", "64", "--vocab-size", "2000",
                 "--eval-batches", "1", "--sample-tokens", "2", "--device", "cpu", "--threads", "1", "--seed", "9",
                 "--canary-copies", "1,4", "--canaries-per-count", "2"]) == 0
    meta = read_data_meta(run)
    assert meta["canaries"] == make_canaries(9, (1, 4), 2)  # recorded exactly as stories records them
    assert [c["copies"] for c in meta["canaries"]] == [1, 1, 4, 4]
    tok = load_tokenizer(run)
    train = np.asarray(load_tokens(run, "train", meta), dtype=np.int64)
    val = np.asarray(load_tokens(run, "val", meta), dtype=np.int64)
    for c in meta["canaries"]:
        ids = tok.encode(c["text"])
        assert tok.unk_id not in ids
        assert count_occurrences(train, ids) == c["copies"]
        assert count_occurrences(val, ids[:40]) == 0
    # each copy is its own document: followed by <|endoftext|> and preceded by one (or the start)
    ids = tok.encode(meta["canaries"][2]["text"])
    windows = np.lib.stride_tricks.sliding_window_view(train, len(ids))
    for start in np.flatnonzero(np.all(windows == np.asarray(ids), axis=1)):
        assert train[start + len(ids)] == tok.eot_id and (start == 0 or train[start - 1] == tok.eot_id)

    assert run_probes(run, only="memorization", steps=[2]) == [2]
    groups = read_result(result_path(run, 2))["memorization"]["canaries"]
    assert [g["copies"] for g in groups] == [1, 4]
    items = [it for g in groups for it in g["items"]]
    assert sorted(it["id"] for it in items) == sorted(c["id"] for c in meta["canaries"])
    for it in items:
        assert it["exposure"] is not None and it["n_candidates"] > 1
        assert it["randomness_space_log2"] and it["randomness_space_log2"] > 0  # drawn from R, |R| known
