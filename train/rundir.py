"""Setting up a run folder: refusing to overwrite another run, run.json, the data files and data.json.

Order matters for crash safety: the corpus is tokenized into the shared cache first (outside the
run), then run.json is written (status "training"), then data/ is linked and data.json written.
A run killed anywhere in between has a run.json, so `--resume` can finish the job, and a second
plain invocation refuses to touch it.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from store.checkpoint import has_state, remove_partial_checkpoints
from store.runio import (RunFileError, link_or_copy_atomic, read_json, remove_temporaries, temp_writer,
                         write_json_atomic)
from model.config import GPTConfig
from store.rundata import n_chunks
from model.tokenizer import Tokenizer
from store.runlayout import DATA_JSON, RUN_JSON, SPLITS, VOCAB_JSON, data_dir, split_file, state_dir
from store.runrecord import read_record, set_status, update_record, write_record

from .args import MIN_VOCAB_COVERAGE, BadInput, TrainArgs
from .corpora import held_out_record, load_corpus
from .plan import run_prediction
from .planting import parse_period
from .tokens import Tokenized, tokenize

def check_out_dir(out: Path, resume: bool) -> dict | None:
    """The stored run.json["train"] when resuming; None for a fresh run. Raises BadInput when
    --out holds something we must not overwrite, or holds nothing to resume."""
    run_json = out / RUN_JSON
    if resume:
        if not run_json.exists():
            if has_state(out):
                raise BadInput(f"{out} has a state/ folder but no run.json, so it cannot be resumed.")
            raise BadInput(f"--resume: {out} holds no run with training state to resume.")
        try:
            return dict(read_record(out)["train"])
        except (RunFileError, KeyError, TypeError):
            raise BadInput(f"{run_json} is not a readable run description, so the run cannot be resumed.") from None
    if run_json.exists():
        raise BadInput(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
    if out.exists() and (not out.is_dir() or any(not is_temporary(p) for p in out.iterdir())):
        raise BadInput(f"{out} exists and is not an empty folder; choose another --out.")
    for folder in (out, *out.parents):  # e.g. --out /dev/null/x: fail here, not deep inside setup
        if folder.exists():
            if not folder.is_dir():
                raise BadInput(f"--out {out} lies inside {folder}, which is not a folder.")
            break
    return None


def check_world(out: Path, world: int) -> None:
    """BadInput when the run in `out` was trained by another number of processes: resuming it with
    `world` would change the global batch. Checked before the process group starts."""
    trained = read_record(out).get("world_size", 1)
    if int(trained) != world:
        raise BadInput(f"{out} was trained by {trained} process(es); resume it with the same "
                       "number so that the global batch stays the same.")


def is_temporary(path: Path) -> bool:
    """A file that an atomic write killed before its rename left behind (store.runio.temp_path).
    A run folder killed while writing its first run.json holds only that, and counts as empty."""
    return temp_writer(path) is not None and path.is_file()


def prepare_tokens(args: TrainArgs, vocab_limit: int | None = None) -> tuple[Tokenized, list[dict], str]:
    """(token cache entry, canaries, source) for the run's corpus: generated/read, then tokenized
    unless the cache already has it; at `vocab_limit` when given (a resumed run's own size), else
    at the options' (args.vocab_limit)."""
    corpus = load_corpus(args)
    if not corpus.train or not corpus.val:
        raise BadInput(f"the corpus {args.data} is empty.")
    runs_root = Path(args.out).resolve().parent
    n_ctx = args.largest_model.n_ctx  # the run's context whatever the vocabulary turns out to be
    limit = vocab_limit if vocab_limit is not None else args.vocab_limit
    return (tokenize(corpus, limit, runs_root, check=lambda info: check_chunks(info, n_ctx)),
            corpus.canaries, corpus.source)


def warn_unknown_canary_words(tok: Tokenized, canaries: list[dict], source: str) -> None:
    """A compact vocabulary is built from the corpus; on a text corpus (whose words are not the
    stories' own) it may lack words of the canaries' secret alphabet, which then read as <|unk|>
    and blur their exposure. Say so, once the run is known to start."""
    if not canaries or not source.startswith("text:"):
        return
    vocab = tok.vocab
    if vocab is None:
        return
    t = Tokenizer(vocab)
    alphabet = {w for c in canaries for w in c.get("secret_alphabet") or []}
    unknown = sorted(w for w in alphabet if t.unk_id in t.encode(" " + w))
    if unknown:
        print(f"warning: {len(unknown)} of the {len(alphabet)} canary secret words (e.g. {unknown[0]!r}) are not in "
              f"the {vocab.size}-id vocabulary, built from the training text, which never uses them; their exposure is "
              "measured less sharply (--vocab-size gpt2 keeps every word).",
              file=sys.stderr)


def run_record(args: TrainArgs, cfg: GPTConfig, tok: Tokenized, world: int) -> dict:
    rows = args.batch_size * args.grad_accum * world  # every row of a step, planted repeats included
    return {
        "name": Path(args.out).name, "status": "training", "model": cfg.to_dict(), "train": args.train_dict(),
        "tokenizer": dict(tok.info["tokenizer"]), "seed": args.seed, "data_source": args.data,
        "world_size": world, "global_batch": rows,
        "checkpoint_steps": args.checkpoint_steps,
        "induction_prediction": run_prediction(tok.dir / "train.bin", np.dtype(tok.info["dtype"]), rows, cfg.n_ctx,
                                               args.steps),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def data_record(args: TrainArgs, cfg: GPTConfig, tok: Tokenized, canaries: list[dict], source: str,
                world: int) -> dict:
    info = tok.info
    return {
        "source": source, "seed": args.seed, "dtype": info["dtype"],
        "n_train_tokens": info["n_train_tokens"], "n_val_tokens": info["n_val_tokens"],
        "chunk_len": cfg.n_ctx, "corpus_rows_per_step": corpus_rows_per_step(args, world),
        "planted_repeats": planted_record(args, world),
        "stories": ({"copy_weight": args.copy_weight, "burstiness": args.burstiness,
                     "story_episodes": args.story_episodes} if args.data == "stories" else None),
        **{f"n_{split}_chunks": n_chunks(info[f"n_{split}_tokens"], cfg.n_ctx) for split in SPLITS},
        "canaries": canaries, "cache_key": info["key"],
        "held_out": held_out_record(args.val_data),
        "max_docs": args.max_docs or None,
        "vocab_coverage": vocab_coverage(info),
        "stats": {k: v for k, v in info.items() if k not in ("key", "dtype", "tokenizer")},
    }


def vocab_coverage(info: dict) -> dict:
    """The share of training and held-out tokens inside the model's vocabulary (1.0 for GPT-2's
    own; a compact vocabulary maps the rest to <|unk|>)."""
    return {"train": 1.0 - info.get("unk_fraction_train", 0.0), "held_out": 1.0 - info.get("unk_fraction_val", 0.0),
            "vocab_size": info["vocab_size"], "tokenizer": info["tokenizer"]["kind"]}


def warn_low_coverage(tok: Tokenized) -> None:
    """A compact vocabulary that leaves more than 0.1% of the training tokens out makes the model
    learn <|unk|> as a word, and its generations show it: say so, with the size that would cover."""
    cover = vocab_coverage(tok.info)
    if cover["train"] < MIN_VOCAB_COVERAGE:
        print(f"warning: the {cover['vocab_size']}-id vocabulary covers {cover['train']:.2%} of the training tokens "
              f"(below {MIN_VOCAB_COVERAGE:.1%}): the rest read as <|unk|>, which the model learns and generates; "
              f"--vocab-size {tok.info['distinct_gpt2_tokens'] + 1} or leaving it unset covers them all.",
              file=sys.stderr)


def corpus_rows_per_step(args: TrainArgs, world: int) -> int:
    """Corpus samples one optimizer step consumes (data.json["corpus_rows_per_step"], which
    store.rundata counts seen sequences by): every row of every micro-batch but the planted repeats."""
    return (args.batch_size - args.planted_per_micro) * args.grad_accum * world


def planted_record(args: TrainArgs, world: int) -> dict | None:
    """What data.json says about planted repeats (train.planting), None when there are none."""
    k = args.planted_per_micro
    if k == 0:
        return None
    lo, hi = parse_period(args.repeat_period)
    return {"fraction": args.repeat_fraction, "period": [lo, hi], "pool": args.repeat_pool,
            "per_micro_batch": k, "rows_per_step": k * args.grad_accum * world,
            "tokens": "random spans of the training split's most frequent tokens (store.rundata.frequent_tokens)"}


def check_chunks(info: dict, n_ctx: int) -> None:
    """BadInput when a split of the tokenized corpus (its token counts, `info`) holds less than one
    training sequence: checked before the tokens are cached or the run folder is made."""
    for split in SPLITS:
        if n_chunks(info[f"n_{split}_tokens"], n_ctx) < 1:
            name = "training" if split == "train" else "held-out"
            raise BadInput(f"the {name} split has {info[f'n_{split}_tokens']} tokens, fewer than one "
                           f"sequence of n_ctx + 1 = {n_ctx + 1}; use a larger corpus or a smaller --n-ctx.")


def install_data(run_dir: Path, tok: Tokenized, data: dict) -> None:
    """Link the cached token files (and vocab) into the run, then write data.json last."""
    files = [(tok.dir / f"{split}.bin", split_file(run_dir, split)) for split in SPLITS]
    if (tok.dir / VOCAB_JSON).exists():
        files.append((tok.dir / VOCAB_JSON, run_dir / VOCAB_JSON))
    for cached, linked in files:
        link_or_copy_atomic(cached, linked)
    write_json_atomic(run_dir / DATA_JSON, data)


def data_installed(run_dir: Path) -> bool:
    try:
        meta = read_json(run_dir / DATA_JSON)
        return all(split_file(run_dir, s).stat().st_size == meta[f"n_{s}_tokens"] * (2 if meta["dtype"] == "uint16" else 4)
                   for s in SPLITS)
    except (RunFileError, OSError, KeyError, TypeError):
        return False


def setup_run(out: Path, args: TrainArgs, stored: dict | None, world: int, cpu_threads: int | None) -> GPTConfig:
    """Rank 0: make or check the run folder so that run.json, data/ and data.json are in place, the
    run marked training with the CPU thread count it trains on (`cpu_threads`, None on a GPU: a
    bit-exact resume needs the same count). Returns the model config."""
    threads = {} if cpu_threads is None else {"cpu_threads": cpu_threads}
    if stored is None:
        tok, canaries, source = prepare_tokens(args)
        cfg = args.model_config(tok.info["vocab_size"])
        data = data_record(args, cfg, tok, canaries, source, world)
        warn_unknown_canary_words(tok, canaries, source)
        warn_low_coverage(tok)
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)  # a killed first run.json write's temp file: all a fresh run's folder may hold
        write_record(out, {**run_record(args, cfg, tok, world), **threads})
        install_data(out, tok, data)
        return cfg
    record = read_record(out)
    cfg = GPTConfig.from_dict(record["model"])
    if not data_installed(out):
        # the run's own vocabulary size, not what its options mean today (a nano run recorded
        # vocab_size null when that meant 4,096 ids)
        compact = (record.get("tokenizer") or {}).get("kind") == "compact"
        tok, canaries, source = prepare_tokens(args, cfg.vocab_size if compact else None)
        install_data(out, tok, data_record(args, cfg, tok, canaries, source, world))
    remove_partial_checkpoints(out)
    clean_temporaries(out)
    set_status(out, "training", **threads)
    return cfg


def record_fill_in(run_dir: Path, entry: dict) -> None:
    """Put `entry` (a --fill-in: its windows, the state it started from, the steps it "planned" to
    add and the "steps" it added) into run.json["filled_in"], replacing an entry with the same "id".
    Written before the first checkpoint and after each, so a fill-in killed at any moment leaves a
    run.json that names every checkpoint it may have made (among "planned")."""
    run = read_record(run_dir)
    entries = [e for e in run.get("filled_in") or [] if isinstance(e, dict) and e.get("id") != entry["id"]]
    update_record(run_dir, filled_in=entries + [entry])


def reconcile_fill_ins(run_dir: Path, existing: set[int]) -> None:
    """Make each earlier fill-in's "steps" the checkpoints of its "planned" that exist: a fill-in
    killed between writing a checkpoint and recording it leaves that checkpoint unlisted."""
    run = read_record(run_dir)
    changed = False
    for e in run.get("filled_in") or []:
        if isinstance(e, dict) and isinstance(e.get("planned"), list):
            steps = sorted(set(e["planned"]) & existing)
            if e.get("steps") != steps:
                e["steps"], changed = steps, True
    if changed:
        write_record(run_dir, run)


def clean_temporaries(run_dir: Path) -> None:
    """Temporary files a killed writer left (store.runio.temp_path); only the run's writer calls it."""
    for folder in (run_dir, state_dir(run_dir), data_dir(run_dir)):
        remove_temporaries(folder)
