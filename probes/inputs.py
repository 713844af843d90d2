"""The fixed inputs every checkpoint of a run is probed on.

Everything here is drawn from the run's own data with seeds derived from the run seed, so every
checkpoint of a run sees exactly the same held-out text, prompts and random tokens, and results
are comparable along training. The one input that depends on the checkpoint is the set of
training sequences it had seen, which `ProbeInputs.seen(step)` computes with
`model.rundata.seen_chunk_ids`, the same function training draws its batches with.

An imported run (`python -m train.importer`) has held-out text only: its training data is unknown,
so it has no seen sequences and no canaries (reported as unknown, never computed on stand-in
data), and the frequent tokens the random-token inputs are drawn from come from its held-out text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import CheckpointError, read_json
from model.rundata import get_chunks, load_tokens, n_chunks, read_data_meta, seen_chunk_ids, training_data_known
from model.tokenizer import Tokenizer, load_tokenizer

# Fixed prompts for the repetition probe. Each is 6 GPT-2 tokens (and so 6 compact-vocab tokens),
# so with the <|endoftext|> that starts a document they batch without padding.
PROMPTS = (
    "Once upon a time, there",
    "They wave to each other.",
    "The dog ran to the park",
    "One day, a little girl",
)

# Sub-seeds mixed with the run seed, one per input, so that adding an input never changes another.
HELDOUT_STREAM, SEEN_STREAM, RANDOM_STREAM, SAMPLING_STREAM = 1, 2, 3, 4


@dataclass(frozen=True)
class ProbeSizes:
    """How much data each probe looks at. The defaults keep all probes of one `nano` checkpoint
    to a few seconds on a 2-core CPU (see the README for the measured times)."""

    n_ablation: int = 16          # held-out sequences for head ablation (3 kinds x every head)
    n_attention: int = 16         # held-out sequences for attention entropy and in-context copying
    n_memorization: int = 64      # seen and held-out sequences for the Pythia score and loss gap
    prefix_len: int = 32          # Pythia memorization: 32-token prefix ...
    suffix_len: int = 32          # ... and 32 greedy tokens compared with the truth
    n_random: int = 8             # repeated-random-token sequences for induction scores
    random_period: int = 63       # length of each random half (1 + 2*63 = 127 tokens)
    n_frequent: int = 1000        # random tokens are drawn from this many most frequent tokens
    max_new_tokens: int = 128     # repetition continuations (capped so prompt + it fit n_ctx)
    exposure_candidates: int = 16  # a canary's exposure ranks it among itself + 15 alternatives
    exposure_per_group: int = 2   # exposure of the first 2 canaries of each copy count (all are extracted)
    count_tokens: int = 5_000_000  # training tokens counted to find the frequent ones
    top_p: float = 0.9            # sampled continuations: nucleus sampling ...
    temperature: float = 1.0      # ... at temperature 1


def sub_seed(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def read_run(run_dir: str | os.PathLike) -> dict:
    """run.json, or ValueError with one sentence when the folder is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a folder; pass a run folder such as runs/demo.")
    if not (run_dir / "run.json").exists():
        raise ValueError(f"{run_dir} is not a run: it has no run.json.")
    run = read_json(run_dir / "run.json")
    if not isinstance(run, dict):
        raise CheckpointError(run_dir / "run.json", "is not a JSON object")
    return run


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


def frequent_tokens(train: np.ndarray, vocab_size: int, exclude: set[int], n: int, count_tokens: int) -> np.ndarray:
    """The `n` most frequent token ids of (the start of) the training split, most frequent first."""
    counts = np.bincount(np.asarray(train[:count_tokens], dtype=np.int64), minlength=vocab_size)
    for t in exclude:
        if 0 <= t < len(counts):
            counts[t] = 0
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[counts[order] > 0][:n]


def repeated_random_tokens(frequent: np.ndarray, n_rows: int, period: int, bos: int, seed: int) -> torch.LongTensor:
    """[n_rows, 1 + 2*period]: a BOS token, `period` random tokens, and the same tokens again.

    Tokens within a half are distinct when there are enough frequent tokens, so every query in
    the second half has exactly one earlier occurrence and one induction target."""
    rng = sub_seed(seed, RANDOM_STREAM)
    replace = len(frequent) < period
    rows = []
    for _ in range(n_rows):
        half = rng.choice(frequent, size=period, replace=replace)
        rows.append(np.concatenate([[bos], half, half]))
    return torch.tensor(np.stack(rows), dtype=torch.long)


@dataclass
class Canary:
    """A planted sequence tokenized with the run tokenizer, split for extraction, with the
    candidate texts its exposure is ranked against (itself first)."""

    id: str
    copies: int
    text: str
    prefix: list[int]
    suffix: list[int]
    candidates: list[list[int]]


def tokenize_canaries(data_meta: dict, tokenizer: Tokenizer, sizes: ProbeSizes, n_ctx: int) -> list[Canary]:
    out = []
    per_group: dict[int, int] = {}
    for i, c in enumerate(data_meta.get("canaries") or []):
        tokens = tokenizer.encode(str(c["text"]))[: n_ctx]
        if len(tokens) < 2:
            continue
        prefix_len = int(c.get("prefix_tokens") or sizes.prefix_len)
        if prefix_len >= len(tokens):
            prefix_len = max(1, len(tokens) // 2)
        copies = int(c.get("copies", 1))
        per_group[copies] = per_group.get(copies, 0) + 1
        alternatives = list(c.get("alternatives") or [])[: max(0, sizes.exposure_candidates - 1)]
        if per_group[copies] > sizes.exposure_per_group:
            alternatives = []  # extraction only: exposure costs a pass over every candidate
        candidates = [tokens] + [tokenizer.encode(str(a))[: n_ctx + 1] for a in alternatives]
        out.append(Canary(id=str(c.get("id", i)), copies=copies, text=str(c["text"]),
                          prefix=tokens[:prefix_len], suffix=tokens[prefix_len: prefix_len + sizes.suffix_len],
                          candidates=[t for t in candidates if len(t) >= 2]))
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
    random_tokens: torch.LongTensor      # [n_random, 1 + 2*period]
    random_period: int
    prompt_texts: list[str]
    prompt_tokens: torch.LongTensor      # [n_prompts, P0], each starting with <|endoftext|>
    canaries: list[Canary]
    eot_id: int
    _train: np.ndarray | None = field(default=None, repr=False)
    _seen_rank: np.ndarray | None = field(default=None, repr=False)

    @property
    def chunk_len(self) -> int:
        return int(self.data_meta["chunk_len"])

    @property
    def ablation_tokens(self) -> torch.LongTensor:
        return self.heldout[: self.sizes.n_ablation]

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
        """Training tokens consumed by `step`; None when the run does not know (an imported run,
        whose checkpoint meta may still say, see probes.runner)."""
        batch = self.data_meta.get("global_batch")
        if not self.training_data_known or batch is None:
            return None
        return int(step) * int(batch) * self.chunk_len

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


def prompt_batch(tokenizer: Tokenizer, texts: tuple[str, ...] = PROMPTS) -> torch.LongTensor:
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
    for key in ("chunk_len", "n_train_tokens", "n_val_tokens", "global_batch"):
        if key not in meta:
            raise CheckpointError(run_dir / "data.json", f"lacks the {key!r} field")
    seed = run_seed(run_dir, meta)
    tokenizer = tokenizer or load_tokenizer(run_dir)
    n_ctx = model_context(run, meta)
    chunk_len = int(meta["chunk_len"])
    order = heldout_order(meta, seed)
    if len(order) == 0:
        raise ValueError(f"{run_dir} has no held-out sequences: the held-out split is shorter than one chunk.")
    val = load_tokens(run_dir, "val", meta)
    n_heldout = max(sizes.n_ablation, sizes.n_attention, sizes.n_memorization)
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
    period = max(2, min(sizes.random_period, (min(n_ctx, chunk_len) - 1) // 2))
    return ProbeInputs(
        run_dir=run_dir, seed=seed, data_meta=meta, sizes=sizes, n_ctx=n_ctx, heldout=heldout,
        random_tokens=repeated_random_tokens(frequent, sizes.n_random, period, tokenizer.eot_id, seed),
        random_period=period, prompt_texts=list(PROMPTS), prompt_tokens=prompt_batch(tokenizer),
        canaries=tokenize_canaries(meta, tokenizer, sizes, n_ctx), eot_id=tokenizer.eot_id, _train=train,
    )
