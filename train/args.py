"""Training arguments: the CLI, config files, their defaults (= the demo), and validation.

Every argument lands in run.json["train"], so a run records exactly how it was made and
`--resume` can check that it continues the same run. Values come, in rising priority, from the
defaults, a --config file, and the command line; when resuming, the run's own run.json replaces
the defaults and anything given explicitly must agree with it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any

from model.cliargs import UsageError
from model.config import PRESETS, GPTConfig, attention_kinds
from model.device import MAX_THREADS
from model.memory import GPT2_VOCAB
from model.gpt import MAX_NEW_TOKENS

from .planting import parse_period, planted_count
from . import schedule
from .schedule import Window, parse_windows, window_count


class BadInput(UsageError):
    """A user error: the CLI prints its one-sentence message and exits with status 2."""


@dataclass
class TrainArgs:
    preset: str = "nano"
    data: str = "stories"
    out: str = ""
    steps: int = 800
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    warmup: int = 100
    eval_every: int = 100
    ckpt_every: int = 100
    ckpt_window: str = ""  # extra checkpoints: "START:END:EVERY[,START:END:EVERY...]" (train.schedule)
    keep_states: str = "budget"  # training states kept: within --state-budget (train.disk), "all" or "latest"
    state_budget: float = 2.0  # GB of training states a "budget" run keeps (train.disk.DEFAULT_STATE_BUDGET_GB)
    seed: int = 1337
    device: str = "auto"
    compile: bool = False
    attention: str = "standard"
    attn_only: bool = False  # attention-only blocks: no MLP, no ln2 (model.config.GPTConfig.attn_only)
    threads: int = 0  # CPU threads for PyTorch; 0 = auto (see cli.set_threads)
    # model shape overrides (None = the preset's value)
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    n_ctx: int | None = None
    dropout: float | None = None
    # vocabulary: a compact vocab of at most this many ids, or "gpt2"; None = for nano a compact vocab
    # holding every token of the training text (so generations never need <|unk|>), else GPT-2's
    vocab_size: int | str | None = None
    # corpus
    corpus_mb: float = 1.0
    val_fraction: float = 0.05
    val_data: str = ""  # text:PATH of the held-out text; "" = a seeded --val-fraction of the training corpus
    max_docs: int = 0  # text:PATH: train on the file's first N documents only; 0 = all
    canary_copies: str = "1,2,4,8,16,32,64"
    canaries_per_count: int = 4
    copy_weight: float = 1.0
    burstiness: float = 0.0  # stories: chance of a made-up multi-token name per character and object
    story_episodes: int = 1  # stories: plots per story, with the same characters
    # planted repeats (train.planting): share of each micro-batch, period range, token pool size
    repeat_fraction: float = 0.0
    repeat_period: str = "8:32"
    repeat_pool: int = 1000
    # optimization
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1
    beta2: float = 0.99
    eval_batches: int = 8
    sample_tokens: int = 64

    def train_dict(self) -> dict[str, Any]:
        """What run.json["train"] records."""
        return asdict(self)

    # What the options imply, each computed once on first use (the options are not changed after
    # they are checked), so the run folder's setup, the disk check and the loop read one value.
    @cached_property
    def vocab_limit(self) -> int | None:
        """Compact vocab size, or None for the full GPT-2 vocabulary."""
        if self.vocab_size is None:
            return COVERING_VOCAB if self.preset == "nano" else None
        return None if self.vocab_size == "gpt2" else int(self.vocab_size)

    @cached_property
    def canary_counts(self) -> tuple[int, ...]:
        """The copy counts of --canary-copies."""
        return parse_copies(self.canary_copies)

    @cached_property
    def ckpt_windows(self) -> list[Window]:
        """The windows of --ckpt-window."""
        return parse_window_option("--ckpt-window", self.ckpt_window)

    @cached_property
    def checkpoint_steps(self) -> list[int]:
        """Every step the run checkpoints at (train.schedule.checkpoint_steps), as run.json lists them."""
        return schedule.checkpoint_steps(self.steps, self.warmup, self.ckpt_every, self.ckpt_windows)

    @cached_property
    def window_steps(self) -> list[int]:
        """The steps the --ckpt-window windows name (their states are kept, train.disk)."""
        return schedule.window_steps(self.ckpt_windows)

    @cached_property
    def planted_per_micro(self) -> int:
        """Planted-repeat rows in each micro-batch of this run (train.planting.planted_count): the
        loop, data.json's record and the repeat plan all take the count from here."""
        return planted_count(self.batch_size, self.repeat_fraction)

    @cached_property
    def largest_model(self) -> GPTConfig:
        """The model at the largest vocabulary these options allow (the compact size asked for, or
        GPT-2's; the vocabulary is known only once the corpus is tokenized): what the memory and
        disk checks size before anything is written."""
        return self.model_config(min(self.vocab_limit or GPT2_VOCAB, GPT2_VOCAB + 1))

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The preset with the shape options given, at `vocab_size`; BadInput for a shape it refuses."""
        overrides = {k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "n_ctx", "dropout")
                     if getattr(self, k) is not None}
        try:
            return GPTConfig.preset(self.preset, vocab_size=vocab_size, attention=self.attention,
                                    attn_only=self.attn_only, **overrides)
        except ValueError as e:
            raise BadInput(str(e)) from None


MAX_CHECKPOINTS = 100_000  # the planned schedule is listed in run.json
# nano's default compact vocabulary: room for every GPT-2 id and the two specials, so the compact
# vocabulary built from the training text's counts (model.tokenizer.build_compact_vocab keeps only
# ids that occur) holds every token of it, and no training target is ever <|unk|>.
COVERING_VOCAB = GPT2_VOCAB + 2
# Below this share of training tokens inside the vocabulary, the run warns (train.rundir).
MIN_VOCAB_COVERAGE = 0.999

# Arguments that do not change the numbers a run produces, so a resumed run may set them afresh.
RUNTIME_ONLY = {"device", "compile", "out", "threads", "keep_states", "state_budget"}
KEEP_STATES = ("budget", "all", "latest")
FIELD_TYPES = {f.name: f.type for f in fields(TrainArgs)}
# Options that change the run but that run.json files written before them lack; such a run was made
# with the default, so resuming it with another value is another run.
ADDED_LATER = {"attn_only": False, "burstiness": 0.0, "story_episodes": 1, "val_data": "", "max_docs": 0}


def parse_copies(text: str) -> tuple[int, ...]:
    text = str(text).strip()
    if text in ("", "none", "0"):
        return ()
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise BadInput(f"--canary-copies must be comma-separated positive integers, got {text!r}.") from None
    if any(n <= 0 for n in out):
        raise BadInput(f"--canary-copies must be comma-separated positive integers, got {text!r}.")
    return out


def parse_window_option(flag: str, text: str) -> list[Window]:
    """The windows of --ckpt-window or --fill-in, or BadInput naming the option and the bad part."""
    try:
        return parse_windows(text)
    except ValueError as e:
        raise BadInput(f"{flag}: {e} (e.g. 300:600:10, or several: 300:600:10,900:1000:20).") from None


def coerce(name: str, value: Any) -> Any:
    """Check a config-file or run.json value against the field's type."""
    kind = FIELD_TYPES[name]
    if value is None and "None" in str(kind):
        return None
    if name == "vocab_size":
        if value == "gpt2":
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BadInput(f"vocab_size must be a positive integer or gpt2, got {value!r}.") from None
    try:
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if kind.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        return str(value)
    except TypeError:
        raise BadInput(f"option {name} must be of type {kind.split(' ')[0]}, got {value!r}.") from None


def validate(a: TrainArgs) -> None:
    """Raise BadInput naming the first bad value."""
    if not a.out:
        raise BadInput("--out is required (the run folder, e.g. runs/demo).")
    if a.preset not in PRESETS:
        raise BadInput(f"unknown preset {a.preset!r}; choose one of {', '.join(PRESETS)}.")
    if a.attention not in attention_kinds():
        raise BadInput(f"unknown attention kind {a.attention!r}; choose one of {', '.join(attention_kinds())}.")
    positive = ["steps", "batch_size", "grad_accum", "eval_every", "ckpt_every", "eval_batches", "canaries_per_count"]
    for name in positive:
        if getattr(a, name) <= 0:
            raise BadInput(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(a, name)}.")
    for name in ("n_layer", "n_head", "n_embd", "n_ctx"):
        v = getattr(a, name)
        if v is not None and v <= 0:
            raise BadInput(f"--{name.replace('_', '-')} must be a positive integer, got {v}.")
    if a.warmup < 0 or a.sample_tokens < 0 or a.threads < 0:
        raise BadInput("--warmup, --sample-tokens and --threads must not be negative.")
    if a.sample_tokens > MAX_NEW_TOKENS:  # generated at every checkpoint: a typo must not hang the run
        raise BadInput(f"--sample-tokens must be at most {MAX_NEW_TOKENS}, got {a.sample_tokens}.")
    for name, kind in FIELD_TYPES.items():  # so seeds, step counts and sizes fit a machine integer
        v = getattr(a, name)
        if kind.startswith("int") and isinstance(v, int) and v >= 2 ** 63:
            raise BadInput(f"--{name.replace('_', '-')} must be below 2**63, got {v}.")
        if kind.startswith("float") and isinstance(v, float) and not math.isfinite(v):
            raise BadInput(f"--{name.replace('_', '-')} must be a finite number, got {v}.")
    if a.seed < 0:
        raise BadInput(f"--seed must not be negative, got {a.seed}.")
    if not 0 <= a.burstiness <= 1:
        raise BadInput(f"--burstiness must lie in [0, 1], got {a.burstiness}.")
    if not 1 <= a.story_episodes <= 50:
        raise BadInput(f"--story-episodes must be an integer from 1 to 50, got {a.story_episodes}.")
    if a.copy_weight > 1e6:  # the plot weights are normalized: beyond this only overflow changes
        raise BadInput(f"--copy-weight must be at most 1e6, got {a.copy_weight}.")
    if a.threads > MAX_THREADS:
        raise BadInput(f"--threads must be at most {MAX_THREADS}, got {a.threads}.")
    if a.steps // a.ckpt_every > MAX_CHECKPOINTS:
        raise BadInput(f"--steps {a.steps} with --ckpt-every {a.ckpt_every} would plan more than {MAX_CHECKPOINTS} "
                       "checkpoints; raise --ckpt-every.")
    check_windows(a)
    check_repeats(a)
    if not a.lr > 0 or a.lr != a.lr:
        raise BadInput(f"--lr must be a positive number, got {a.lr}.")
    if not 0 < a.corpus_mb < 1e6:
        raise BadInput(f"--corpus-mb must be a positive number, got {a.corpus_mb}.")
    if not 0 < a.val_fraction < 0.5:
        raise BadInput(f"--val-fraction must lie between 0 and 0.5, got {a.val_fraction}.")
    if a.copy_weight < 0 or a.weight_decay < 0 or a.grad_clip < 0 or not 0 <= a.min_lr_ratio <= 1 or not 0 < a.beta2 < 1:
        raise BadInput("--copy-weight, --weight-decay and --grad-clip must be >= 0, --min-lr-ratio in [0, 1] "
                       "and --beta2 in (0, 1).")
    if a.dropout is not None and not 0 <= a.dropout < 1:
        raise BadInput(f"--dropout must lie in [0, 1), got {a.dropout}.")
    v = a.vocab_size
    if v is not None and v != "gpt2" and (not isinstance(v, int) or v < 3):
        raise BadInput(f"--vocab-size must be an integer >= 3 or gpt2, got {v!r}.")
    a.canary_counts  # parsed once, here: what the corpus reads
    kind = a.data.split(":", 1)[0]
    if kind not in ("stories", "tinystories", "text") or (kind != "text" and ":" in a.data):
        raise BadInput(f"unknown data source {a.data!r}; use stories, tinystories or text:PATH.")
    if kind == "text" and not a.data[5:]:
        raise BadInput("--data text:PATH needs a path after 'text:'.")
    if a.val_data and (not a.val_data.startswith("text:") or not a.val_data[5:]):
        raise BadInput(f"--val-data takes text:PATH (a held-out text file or folder), got {a.val_data!r}.")
    if a.max_docs < 0 or (a.max_docs and kind != "text"):
        raise BadInput(f"--max-docs takes a positive number of documents of a --data text:PATH corpus, got {a.max_docs}.")
    a.largest_model  # a shape the preset refuses is bad input; the memory and disk checks size this model


def check_windows(a: TrainArgs) -> None:
    """--ckpt-window inside [0, --steps], and not so dense that the schedule would exceed
    MAX_CHECKPOINTS (run.json lists every planned step); --keep-states one of KEEP_STATES."""
    if a.keep_states not in KEEP_STATES:
        raise BadInput(f"--keep-states must be budget, all or latest, got {a.keep_states!r}.")
    if not (isinstance(a.state_budget, (int, float)) and math.isfinite(a.state_budget) and a.state_budget > 0):
        raise BadInput(f"--state-budget must be a positive number of GB, got {a.state_budget!r}.")
    windows = a.ckpt_windows
    for start, end, every in windows:
        if end > a.steps:
            raise BadInput(f"--ckpt-window {start}:{end}:{every} ends after the last step ({a.steps}); "
                           f"keep END <= --steps.")
    if window_count(windows) + a.steps // a.ckpt_every > MAX_CHECKPOINTS:
        raise BadInput(f"--ckpt-window {a.ckpt_window} would plan more than {MAX_CHECKPOINTS} checkpoints; "
                       "raise its EVERY.")


def check_repeats(a: TrainArgs) -> None:
    """--repeat-fraction in [0, 1), and when repeats are planted: a period range whose longest
    period still repeats once within a sequence, room for a corpus row beside the planted ones,
    and a pool of at least two tokens."""
    if not 0 <= a.repeat_fraction < 1:
        raise BadInput(f"--repeat-fraction must lie in [0, 1), got {a.repeat_fraction}.")
    if a.repeat_fraction == 0:
        return
    try:
        lo, hi = parse_period(a.repeat_period)
    except ValueError as e:
        raise BadInput(str(e)) from None
    n_ctx = a.n_ctx or PRESETS.get(a.preset, {}).get("n_ctx", 0)
    if 2 * hi > n_ctx + 1:
        raise BadInput(f"--repeat-period {a.repeat_period}: a period of {hi} does not repeat within a sequence of "
                       f"n_ctx {n_ctx}; keep MAX <= {(n_ctx + 1) // 2}.")
    if a.batch_size < 2:
        raise BadInput("--repeat-fraction needs --batch-size >= 2: each micro-batch keeps at least one corpus row "
                       "beside the planted ones.")
    if a.repeat_pool < 2:
        raise BadInput(f"--repeat-pool must be at least 2, got {a.repeat_pool}.")


def make_args(values: dict[str, Any]) -> TrainArgs:
    args = TrainArgs(**{k: v for k, v in values.items() if k in FIELD_TYPES})
    validate(args)
    return args


def resolve(explicit: dict[str, Any], stored: dict[str, Any] | None, run_dir: str) -> TrainArgs:
    """Final arguments. With `stored` (run.json["train"] of the run being resumed) the run's own
    values win, and an explicit value that differs from them is an error: that would be another run."""
    if stored is None:
        return make_args(explicit)
    base = {k: coerce(k, v) for k, v in stored.items() if k in FIELD_TYPES}
    for k, v in ADDED_LATER.items():  # a run made before the option existed was made with its default
        base.setdefault(k, v)
    for k, v in explicit.items():
        if k in RUNTIME_ONLY:
            continue
        if k in base and base[k] != v:
            raise BadInput(f"{run_dir} holds a different run: its {k} is {base[k]!r}, not {v!r}.")
    base.update({k: v for k, v in explicit.items() if k in RUNTIME_ONLY})
    base["out"] = explicit.get("out", base.get("out", run_dir))
    return make_args(base)

