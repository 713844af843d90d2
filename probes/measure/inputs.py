"""The fixed inputs every checkpoint of a run is probed on.

Everything here is drawn from the run's own data with seeds derived from the run seed, so every
checkpoint of a run sees exactly the same held-out text, prompts and random tokens, and results
are comparable along training. The one input that depends on the checkpoint is the set of
training sequences it had seen, which `ProbeInputs.seen(step)` computes with
`store.rundata.seen_chunk_ids`, the same function training draws its batches with.

An imported run (`python -m train.importer`) has held-out text only: its training data is unknown,
so it has no seen sequences and no canaries (reported as unknown, never computed on stand-in
data), and the frequent tokens the random-token inputs are drawn from come from its held-out text.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from store.runio import RunFileError
from store.runlayout import data_json
from store.runrecord import read_run
from store.rundata import (FREQUENT_COUNT_TOKENS, corpus_rows_per_step, frequent_tokens, get_chunks, load_tokens,
                           n_chunks, read_data_meta, seen_chunk_ids, training_data_known)
from model.tokenizer import Tokenizer
from store.vocab import load_tokenizer

from probes.measure.canaries import Canary, RandomnessSpace, canary_space, draw_candidates
from probes.measure.documents import document_rows
from probes.measure.random_tokens import (RANDOM_STREAM, RandomTokenSet, fresh_random_tokens, random_periods,
                            random_stream, random_token_sets, repeated_random_tokens,
                            training_repeat_periods)  # re-exported: the probe inputs' public names

# Fixed prompts for the repetition probe. Each is 6 GPT-2 tokens (and so 6 compact-vocab tokens),
# so with the <|endoftext|> that starts a document they batch without padding.
REPETITION_PROMPTS = (
    "Once upon a time, there",
    "They wave to each other.",
    "The dog ran to the park",
    "One day, a little girl",
)

# Sub-seeds mixed with the run seed, one per input, so that adding an input never changes another.
HELDOUT_STREAM, SEEN_STREAM, SAMPLING_STREAM, CANARY_STREAM = 1, 2, 4, 5  # 3 is RANDOM_STREAM, 6 DOCUMENT_STREAM


# Candidates per canary for exposure: the canary and 31 draws from its randomness space R. Scoring
# them is one batched pass per canary over the secrets only (the shared opening runs once): on the
# nano demo (28 canaries, 69 tokens each) every canary's exposure takes about 1.2 s per checkpoint
# on one CPU thread. 1024 per canary would take about 35 s per checkpoint there, so the rank
# exposure is capped at log2 32 = 5 bits and the extrapolated exposure, which has no such cap, is
# the headline.
EXPOSURE_CANDIDATES = 32


@dataclass(frozen=True)
class ProbeSizes:
    """How much data each probe looks at. The defaults keep all probes of one `nano` checkpoint
    to a few seconds on a 2-core CPU (docs/performance.md has the measured times)."""

    n_ablation: int = 16          # held-out sequences per head-ablation block (3 kinds x every head) ...
    # ... blocks are added until every delta's standard error is <= this (nats). 0.02 keeps heads whose
    # deltas differ by a tenth of a nat apart; 0.01 took the demo's late checkpoints to 48 sequences (its
    # probes from 84 s to about 145 s), 0.005 needed 48 already at step 150 of a nano run.
    ablation_target_se: float = 0.02
    n_ablation_max: int = 64      # ... or this many sequences are used (see probes.measure.ablation.head_ablation_probe)
    n_attention: int = 16         # held-out sequences for attention entropy and in-context copying
    n_memorization: int = 64      # seen and held-out sequences for the Pythia score and loss gap
    n_documents: int = 64         # held-out rows starting at a document start, for the ICL score
    prefix_len: int = 32          # Pythia memorization: 32-token prefix ...
    suffix_len: int = 32          # ... and 32 greedy tokens compared with the truth
    n_random: int = 8             # repeated-random-token sequences for induction scores
    n_periods: int = 4            # repeat periods (lengths of each random half), see random_periods
    n_frequent: int = 1000        # random tokens are drawn from this many most frequent tokens
    max_new_tokens: int = 128     # repetition continuations (capped so prompt + it fit n_ctx)
    exposure_candidates: int = EXPOSURE_CANDIDATES  # every canary and this many - 1 draws from its R
    count_tokens: int = FREQUENT_COUNT_TOKENS  # training tokens counted to find the frequent ones
    top_p: float = 0.9            # sampled continuations: nucleus sampling ...
    temperature: float = 1.0      # ... at temperature 1


def sub_seed(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def run_seed(run_dir: str | os.PathLike, data_meta: dict | None = None) -> int:
    run = read_run(run_dir)
    seed = run.get("seed", (data_meta or {}).get("seed", 0))
    return int(seed if seed is not None else 0)


def heldout_order(data_meta: dict, seed: int) -> np.ndarray:
    """Held-out chunk ids in the seeded order all held-out inputs are taken from."""
    n = n_chunks(data_meta["n_val_tokens"], data_meta["chunk_len"])
    return sub_seed(seed, HELDOUT_STREAM).permutation(n)


def heldout_tokens(run_dir: str | os.PathLike, n: int = 16, seed: int | None = None) -> torch.LongTensor:
    """`n` held-out sequences [n, chunk_len + 1] (inputs and shifted targets), fixed by the run
    seed (or by `seed`). With the default seed these are the sequences head ablation uses."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    read_run(run_dir)
    meta = read_data_meta(run_dir)
    seed = run_seed(run_dir, meta) if seed is None else int(seed)
    order = heldout_order(meta, seed)
    if len(order) == 0:
        raise ValueError(f"{run_dir} has no held-out sequences: the held-out split is shorter than one chunk.")
    val = load_tokens(run_dir, "val", meta)
    return torch.from_numpy(get_chunks(val, order[:n], int(meta["chunk_len"])))


def _sampled_candidates(text_tokens: list[int], space: RandomnessSpace, text: str, tokenizer: Tokenizer,
                        n: int, n_ctx: int, rng: np.random.Generator,
                        word_cache: dict[str, list[int]]) -> tuple[list[list[int]], float, str] | None:
    """(candidates, log2|R| over the tokens the model sees, description), or None when the canary's
    tokens are not its opening's, its words' and its "."'s tokens in a row (then the words could not
    be swapped token by token)."""
    for w in space.alphabet:
        if w not in word_cache:
            word_cache[w] = tokenizer.encode(" " + w)
    head, tail = tokenizer.encode(space.prefix), tokenizer.encode(".")
    words = space.words_of(text) or []
    if head + [t for w in words for t in word_cache[w]] + tail != text_tokens:
        return None
    word_tokens = [word_cache[w] for w in space.alphabet]
    drawn = draw_candidates(head, word_tokens, tail, space.n_words, n - 1, rng)
    limit = n_ctx + 1
    seen_words, pos = 0, len(head)  # words that start inside the scored window vary; later ones are cut
    for w in words:
        if pos >= limit:
            break
        seen_words, pos = seen_words + 1, pos + len(word_cache[w])
    log2 = seen_words * math.log2(len(space.alphabet))
    return [text_tokens[:limit]] + [d[:limit] for d in drawn], log2, space.describe(seen_words)


def tokenize_canaries(data_meta: dict, tokenizer: Tokenizer, sizes: ProbeSizes, n_ctx: int,
                      seed: int = 0) -> list[Canary]:
    """Every canary of data.json with its exposure candidates: `sizes.exposure_candidates` - 1
    draws from its randomness space, seeded by the run seed and the canary's index (so every
    checkpoint ranks it among the same candidates), or, when data.json records no space (older
    runs), the alternatives it lists."""
    out = []
    word_cache: dict[str, list[int]] = {}
    n = max(1, int(sizes.exposure_candidates))
    for i, c in enumerate(data_meta.get("canaries") or []):
        text = str(c["text"])
        full = tokenizer.encode(text)
        tokens = full[: n_ctx]
        if len(tokens) < 2:
            continue
        prefix_len = int(c.get("prefix_tokens") or sizes.prefix_len)
        if prefix_len >= len(tokens):
            prefix_len = max(1, len(tokens) // 2)
        space = canary_space(c)
        rng = np.random.default_rng([int(seed), CANARY_STREAM, i])
        sampled = None
        if space is not None and n > 1:
            sampled = _sampled_candidates(full, space, text, tokenizer, n, n_ctx, rng, word_cache)
        if sampled is not None:
            candidates, log2, described = sampled
            source = "sampled"
        else:
            alternatives = list(c.get("alternatives") or [])[: n - 1]
            candidates = [full[: n_ctx + 1]] + [tokenizer.encode(str(a))[: n_ctx + 1] for a in alternatives]
            candidates = [t for t in candidates if len(t) >= 2]
            log2, described, source = None, None, "listed" if len(candidates) > 1 else "none"
        out.append(Canary(id=str(c.get("id", i)), copies=int(c.get("copies", 1)), text=text,
                          prefix=tokens[:prefix_len], suffix=tokens[prefix_len: prefix_len + sizes.suffix_len],
                          candidates=candidates, source=source, space_log2=log2, space=described))
    return out


@dataclass
class ProbeInputs:
    """Everything the probes of one checkpoint need. Build with `probe_inputs(run_dir)`."""

    run_dir: Path
    seed: int
    data_meta: dict
    sizes: ProbeSizes
    n_ctx: int
    heldout: torch.LongTensor            # [n, chunk_len + 1]; every held-out input is a prefix of it
    random_sets: list[RandomTokenSet]    # one per repeat period, shortest first
    prompt_texts: list[str]
    prompt_tokens: torch.LongTensor      # [n_prompts, P0], each starting with <|endoftext|>
    canaries: list[Canary]
    eot_id: int
    _train: np.ndarray | None = field(default=None, repr=False)
    _seen_rank: np.ndarray | None = field(default=None, repr=False)

    training_periods: tuple[int, int] | None = None  # (MIN, MAX) of the repeats training planted
    # held-out rows [n, chunk_len + 1] that start at a document's <|endoftext|>, and how many leading
    # positions of each predict tokens of that document (probes.measure.induction.icl_score); None: no documents
    documents: tuple[torch.LongTensor, torch.LongTensor] | None = None

    @property
    def chunk_len(self) -> int:
        return int(self.data_meta["chunk_len"])

    @property
    def random_periods(self) -> list[int]:
        return [s.period for s in self.random_sets]

    @property
    def random_tokens(self) -> torch.LongTensor:
        """The first (shortest) period's repeated rows [n_random, 1 + 2*period]."""
        return self.random_sets[0].repeated

    @property
    def random_period(self) -> int:
        return self.random_sets[0].period

    @property
    def ablation_tokens(self) -> torch.LongTensor:
        """The first block of head-ablation sequences (what an unsized sweep runs on)."""
        return self.heldout[: self.sizes.n_ablation]

    @property
    def ablation_pool(self) -> torch.LongTensor:
        """Every sequence head ablation may use when sized by precision: the first
        max(n_ablation, n_ablation_max) held-out sequences, taken block by block."""
        return self.heldout[: max(self.sizes.n_ablation, self.sizes.n_ablation_max)]

    @property
    def attention_tokens(self) -> torch.LongTensor:
        return self.heldout[: self.sizes.n_attention]

    @property
    def memorization_heldout(self) -> torch.LongTensor:
        return self.heldout[: self.sizes.n_memorization]

    @property
    def training_data_known(self) -> bool:
        """False for an imported run: which sequences its training saw is unknown."""
        return training_data_known(self.data_meta)

    def tokens_seen(self, step: int) -> int | None:
        """Training tokens consumed by `step`, planted repeats included (as the checkpoint's meta
        counts them); None when the run does not know (an imported run, whose checkpoint meta may
        still say, see probes.run.runner)."""
        batch = corpus_rows_per_step(self.data_meta)
        if not self.training_data_known or batch is None:
            return None
        planted = (self.data_meta.get("planted_repeats") or {}).get("rows_per_step", 0)
        return int(step) * (int(batch) + int(planted)) * self.chunk_len

    def seen(self, step: int) -> torch.LongTensor:
        """Up to n_memorization training sequences that training had consumed by `step`,
        [n, chunk_len + 1]. They are the seen chunks that come first in one fixed seeded order, so
        neighbouring checkpoints share most of them and, once training has seen enough, every
        checkpoint is scored on the same ones. Empty at step 0, and for an imported run (check
        `training_data_known`: there "empty" means unknown, not none)."""
        if not self.training_data_known:
            return torch.zeros((0, self.chunk_len + 1), dtype=torch.long)
        ids = seen_chunk_ids(self.data_meta, int(step))
        if len(ids) == 0:
            return torch.zeros((0, self.chunk_len + 1), dtype=torch.long)
        if self._seen_rank is None:
            n = n_chunks(self.data_meta["n_train_tokens"], self.chunk_len)
            order = sub_seed(self.seed, SEEN_STREAM).permutation(n)
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            self._seen_rank = rank
        chosen = ids[np.argsort(self._seen_rank[ids], kind="stable")[: self.sizes.n_memorization]]
        if self._train is None:
            self._train = load_tokens(self.run_dir, "train", self.data_meta)
        return torch.from_numpy(get_chunks(self._train, chosen, self.chunk_len))


def model_context(run: dict, data_meta: dict) -> int:
    cfg = run.get("model") or {}
    return int(cfg.get("n_ctx") or data_meta["chunk_len"])


def prompt_batch(tokenizer: Tokenizer, texts: tuple[str, ...] = REPETITION_PROMPTS) -> torch.LongTensor:
    """Prompts as one [n, P0] batch, each preceded by <|endoftext|> (the start of a document, as
    stories follow one in training). Shorter prompts get extra <|endoftext|> on the left so they
    batch; the fixed prompts are all the same length, so this only matters for custom ones."""
    encoded = [[tokenizer.eot_id] + tokenizer.encode(t) for t in texts]
    width = max(len(e) for e in encoded)
    return torch.tensor([[tokenizer.eot_id] * (width - len(e)) + e for e in encoded], dtype=torch.long)


def probe_inputs(run_dir: str | os.PathLike, sizes: ProbeSizes | None = None,
                 tokenizer: Tokenizer | None = None) -> ProbeInputs:
    """Load the fixed probe inputs of a run (see the module docstring)."""
    sizes = sizes or ProbeSizes()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    meta = read_data_meta(run_dir)
    for key in ("chunk_len", "n_train_tokens", "n_val_tokens"):
        if key not in meta:
            raise RunFileError(data_json(run_dir), f"lacks the {key!r} field")
    if "corpus_rows_per_step" not in meta and "global_batch" not in meta:
        raise RunFileError(data_json(run_dir), "lacks the 'corpus_rows_per_step' field")
    seed = run_seed(run_dir, meta)
    tokenizer = tokenizer or load_tokenizer(run_dir)
    n_ctx = model_context(run, meta)
    chunk_len = int(meta["chunk_len"])
    order = heldout_order(meta, seed)
    if len(order) == 0:
        raise ValueError(f"{run_dir} has no held-out sequences: the held-out split is shorter than one chunk.")
    val = load_tokens(run_dir, "val", meta)
    n_heldout = max(sizes.n_ablation, sizes.n_ablation_max, sizes.n_attention, sizes.n_memorization)
    heldout = torch.from_numpy(get_chunks(val, order[:n_heldout], chunk_len))
    if len(heldout) < 2:
        raise ValueError(f"{run_dir} has only {len(heldout)} held-out sequence; probes need at least 2.")
    train = load_tokens(run_dir, "train", meta)
    exclude = {tokenizer.eot_id} | ({tokenizer.unk_id} if tokenizer.unk_id is not None else set())
    # An imported run has no training tokens: its held-out text is the best sample of its language.
    source = train if training_data_known(meta) else val
    frequent = frequent_tokens(source, tokenizer.vocab_size, exclude, sizes.n_frequent, sizes.count_tokens)
    if len(frequent) == 0:
        split = "training" if source is train else "held-out"
        raise ValueError(f"{run_dir} has an empty {split} split; nothing to draw random tokens from.")
    training_periods = training_repeat_periods(run.get("train") or {})
    periods = random_periods(min(n_ctx, chunk_len), sizes.n_periods, training_periods)
    return ProbeInputs(
        run_dir=run_dir, seed=seed, data_meta=meta, sizes=sizes, n_ctx=n_ctx, heldout=heldout,
        random_sets=random_token_sets(frequent, sizes.n_random, periods, tokenizer.eot_id, seed),
        training_periods=training_periods, prompt_texts=list(REPETITION_PROMPTS), prompt_tokens=prompt_batch(tokenizer),
        canaries=tokenize_canaries(meta, tokenizer, sizes, n_ctx, seed), eot_id=tokenizer.eot_id, _train=train,
        documents=document_rows(val, tokenizer.eot_id, chunk_len + 1, sizes.n_documents, seed),
    )
