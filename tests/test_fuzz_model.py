"""Property-based fuzzing (hypothesis) of the model package's public inputs: GPTConfig values,
GPT.generate arguments and prompts, and the tokenizer. The property is always the same: the call
either succeeds with a result that obeys the contract, or raises ValueError with a message; never
another exception, never a hang (every example runs under a deadline).

The example counts are small in `make test` and large in `make stress` (same tests, marked); the
fast set runs on a fixed seed, the stress set on a fresh one, either printed, and HYPOTHESIS_SEED=N
replays it (tests/_fuzzing.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _fuzzing
from model.config import PRESETS, GPTConfig, attention_kinds
from model.gpt import GPT
from model.tokenizer import EOT, build_compact_vocab
from store.vocab import load_tokenizer

FAST, STRESS = 60, 2000
EXAMPLES = [pytest.param(FAST, id="fast"), pytest.param(STRESS, id="stress", marks=pytest.mark.stress)]


def fuzz(n: int, deadline_ms: int = 2000):
    """`n` examples on a fixed, printed seed for the fast set, a fresh one for the stress set, whose
    examples keep a per-example deadline (a hang fails the test); no example database (_fuzzing.fuzz)."""
    return _fuzzing.fuzz(n, stress=n == STRESS, deadline_ms=deadline_ms)


# -- values of every kind a config file, a JSON run.json or a caller could hand over -----------
weird_numbers = st.one_of(
    st.integers(-3, 3), st.integers(-(2 ** 70), 2 ** 70), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 2.0, 1e-320, -0.0, 1e308, math.inf, -math.inf, math.nan]),
)
anything = st.one_of(weird_numbers, st.none(), st.text(max_size=8), st.lists(st.integers(), max_size=2),
                     st.sampled_from(list(attention_kinds()) + ["Standard", "flash", ""]))
small_valid = st.fixed_dictionaries({
    "n_layer": st.integers(1, 2), "n_head": st.sampled_from([1, 2, 4]), "n_ctx": st.integers(1, 12),
    "vocab_size": st.integers(1, 40), "dropout": st.sampled_from([0.0, 0.1, 0.999]),
    "bias": st.booleans(), "attention": st.sampled_from(attention_kinds()),
    "ln_eps": st.sampled_from([1e-5, 1.0, 1e-12]), "tie_embeddings": st.booleans(),
}).flatmap(lambda d: st.integers(1, 4).map(lambda m: {**d, "n_embd": d["n_head"] * m * 2}))
FIELDS = [f.name for f in fields(GPTConfig)]
config_dicts = st.one_of(
    small_valid,  # valid shapes, so the constructor and forward pass are exercised too
    small_valid.flatmap(lambda d: st.dictionaries(st.sampled_from(FIELDS), anything, max_size=3).map(
        lambda bad: {**d, **bad})),  # a few fields spoiled
    st.dictionaries(st.sampled_from(FIELDS), anything, max_size=len(FIELDS)),
)


def is_valid(cfg: GPTConfig) -> None:
    """What a config that was accepted must satisfy (so that acceptance means something)."""
    for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
        v = getattr(cfg, name)
        assert type(v) is int and v > 0, (name, v)
    assert cfg.n_embd % cfg.n_head == 0
    assert type(cfg.dropout) in (int, float) and 0 <= cfg.dropout < 1
    assert type(cfg.ln_eps) in (int, float) and 0 < cfg.ln_eps < math.inf
    assert cfg.attention in attention_kinds()
    assert type(cfg.bias) is bool and type(cfg.tie_embeddings) is bool
    # the run format stores configs as strict JSON (run.json, meta.json): an accepted config
    # must survive that round trip unchanged
    assert GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False))) == cfg


@pytest.mark.parametrize("n", EXAMPLES)
def test_gptconfig_accepts_valid_values_and_names_the_field_of_bad_ones(n):
    @fuzz(n)
    @given(d=config_dicts)
    def check(d):
        try:
            cfg = GPTConfig(**d)
        except ValueError as e:
            msg = str(e)
            assert msg and any(f"GPTConfig.{f}" in msg for f in FIELDS), msg
            return
        is_valid(cfg)
        if cfg.n_layer * cfg.n_embd <= 64 and cfg.vocab_size <= 40 and cfg.n_ctx <= 12:
            torch.manual_seed(0)
            model = GPT(cfg).eval()
            tokens = torch.randint(0, cfg.vocab_size, (2, cfg.n_ctx))
            with torch.no_grad():
                logits = model(tokens)
            assert logits.shape == (2, cfg.n_ctx, cfg.vocab_size) and torch.isfinite(logits).all()

    check()


@pytest.mark.parametrize("n", EXAMPLES)
def test_from_dict_and_presets_refuse_unknown_names_with_a_message(n):
    @fuzz(n)
    @given(name=st.one_of(st.sampled_from(list(PRESETS)), st.text(max_size=10)),
           extra=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), anything, max_size=3))
    def check(name, extra):
        try:
            cfg = GPTConfig.preset(name, **extra)
        except ValueError as e:
            msg = str(e)
            assert msg and (repr(name) in msg or "GPTConfig." in msg or any(repr(k) in msg for k in extra)), msg
            return
        assert name in PRESETS and set(extra) <= set(FIELDS)
        is_valid(cfg)

    check()


# -- generation --------------------------------------------------------------------------------
V = 23


@pytest.fixture(scope="module")
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, n_ctx=6, vocab_size=V)).eval()


prompts = st.one_of(
    st.lists(st.integers(0, V - 1), min_size=1, max_size=9),  # longer than n_ctx is allowed
    st.lists(st.integers(-(2 ** 65), 2 ** 65), max_size=4),
    st.lists(st.lists(st.integers(0, V - 1), min_size=2, max_size=2), min_size=1, max_size=2),  # a batch
    st.just([]), st.just([[]]), st.just([[[1]]]),
)
temperatures = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3),
                         st.sampled_from([0.0, 1e-320, 5e-324, 1e-45, 1e-30, 1e300, 1.0]))
top_ks = st.one_of(st.none(), st.integers(-2, 30), st.just(2 ** 70), st.booleans(), st.just(1.5))
top_ps = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([1e-300, 1e-45, 1e-8, 0.5, 0.9, 1.0, 0.0]))
seeds = st.one_of(st.none(), st.integers(-(2 ** 64), 2 ** 65), st.sampled_from([0, -1, 2 ** 63, 2 ** 64 - 1]))
lengths = st.one_of(st.integers(-3, 8), st.booleans(), st.just(2.0), st.none())


@pytest.mark.parametrize("n", EXAMPLES)
def test_generate_returns_valid_ids_or_raises_valueerror(tiny_model, n):
    @fuzz(n)
    @given(tokens=prompts, max_new=lengths, temperature=temperatures, top_k=top_ks, top_p=top_ps, seed=seeds)
    def check(tokens, max_new, temperature, top_k, top_p, seed):
        try:
            out = tiny_model.generate(tokens, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                                      seed=seed)
        except ValueError as e:
            assert str(e)
            return
        prompt = torch.tensor(tokens)
        prompt = prompt[None] if prompt.dim() == 1 else prompt
        assert out.shape == (prompt.shape[0], prompt.shape[1] + max_new)
        assert torch.equal(out[:, :prompt.shape[1]], prompt)
        assert int(out.min()) >= 0 and int(out.max()) < V
        if seed is not None and temperature != 0:  # seeded sampling is reproducible
            again = tiny_model.generate(tokens, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                                        seed=seed)
            assert torch.equal(out, again)

    check()


def test_vanishing_temperature_and_top_p_behave_as_their_limits(tiny_model):
    """Found by the fuzzer: a temperature so small that logits/temperature overflows, and a top_p
    below float32's smallest number, made every probability NaN (RuntimeError in multinomial).
    Their limits are greedy decoding and keeping only the most likely token."""
    prompt = [3, 1, 4]
    greedy = tiny_model.generate(prompt, 5, temperature=0.0)
    for kw in (dict(temperature=1e-320), dict(temperature=5e-324), dict(top_p=1e-300), dict(top_p=1e-46),
               dict(temperature=1e-320, top_k=3, top_p=0.5)):
        assert torch.equal(tiny_model.generate(prompt, 5, seed=1, **kw), greedy), kw


# -- tokenizer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers():
    gpt2 = load_tokenizer()
    counts = np.bincount(gpt2.encode("Once upon a time, Tom and Mia went to the park. " * 3), minlength=50257)
    return gpt2, load_tokenizer(build_compact_vocab(counts, 16))


texts = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.lists(st.sampled_from(["Once", " upon", EOT, "<|unk|>", "<|endoftext", "\n\n", " ", "é", "🙂",
                              "\x00", "\ufeff", "ab" * 20]), max_size=8).map("".join),
)
id_lists = st.lists(st.one_of(st.integers(0, 50300), st.integers(-(2 ** 70), 2 ** 70)), max_size=8)


@pytest.mark.parametrize("n", EXAMPLES)
def test_gpt2_encode_decode_round_trips_every_text(tokenizers, n):
    gpt2, compact = tokenizers

    @fuzz(n)
    @given(text=texts)
    def check(text):
        ids = gpt2.encode(text)
        assert all(0 <= i < gpt2.vocab_size for i in ids)
        assert gpt2.decode(ids) == text
        small = compact.encode(text)
        assert all(0 <= i < compact.vocab_size for i in small)
        # unknown tokens become <|unk|>, and the text between them is the known tokens' text
        known = set(compact.compact.gpt2_ids) | {gpt2.eot_id}
        pieces, run = [], []
        for i in ids:
            if i in known:
                run.append(i)
            else:
                pieces += [gpt2.decode(run), "<|unk|>"]
                run = []
        assert compact.decode(small) == "".join(pieces + [gpt2.decode(run)])

    check()


@pytest.mark.parametrize("n", EXAMPLES)
def test_decode_of_any_ids_is_text_or_valueerror(tokenizers, n):
    @fuzz(n)
    @given(ids=id_lists, which=st.sampled_from([0, 1]))
    def check(ids, which):
        tok = tokenizers[which]
        try:
            text = tok.decode(ids)
        except ValueError as e:
            assert str(e) and any(not 0 <= i < tok.vocab_size for i in ids), e
            return
        assert isinstance(text, str) and all(0 <= i < tok.vocab_size for i in ids)

    check()


@pytest.mark.parametrize("field", ["attention", "activation"])
@pytest.mark.parametrize("value", [[], {}, 3, None, "Standard"])
def test_kind_fields_of_any_type_are_refused_with_a_sentence(field, value):
    """Found by the stress fuzzer: an unhashable value once crashed the registry lookup."""
    with pytest.raises(ValueError, match=f"GPTConfig.{field} must be one of"):
        GPTConfig(**{field: value})
