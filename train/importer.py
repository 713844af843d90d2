"""`python -m train.importer`: checkpoints trained elsewhere as a workbench run.

    python -m train.importer --from hf:DIR | nanogpt:PATH --data SOURCE --out runs/NAME
                             [--seed N] [--seq-len N] [--sample-tokens N]

`hf:DIR` is one `save_pretrained` folder or a Trainer output folder of `checkpoint-N` folders;
`nanogpt:PATH` one nanoGPT checkpoint file or a folder of them (see train.importer_sources). The
run gets run.json (with an "imported" record), data.json and data/ through train.rundir, a
checkpoint per source step through store.checkpoint.save_checkpoint (so every integrity check
holds), the fixed-prompt generations a trained run has, and, from a Trainer's log, metrics.jsonl.

The --data text (any source `python -m train` accepts: every document of text:PATH, or the
held-out documents of stories/tinystories) becomes the held-out split the probes read, tokenized
with the full GPT-2 BPE. The training data is unknown: data.json says "training_data": "unknown",
and the probes report seen sequences and canaries as unknown instead of inventing them.

Everything is checked before anything is written: bad input exits 2 with one sentence, and a new
--out is not created. Running the same command again adds only the checkpoints whose step is new
(and refuses if the source, --data, seed or model differ from the run's). Writes happen in the
order a trained run makes them (run.json, data, then checkpoints), so an import killed midway is
finished by running it again.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from store.checkpoint import list_checkpoints, remove_partial_checkpoints, run_integrity, save_checkpoint, step_of
from model.cliargs import run_command
from model.device import torch_threads
from store.runio import RunFileError, append_jsonl, read_jsonl, write_bytes_atomic
from model.config import GPTConfig
from model.gpt import GPT
from store.integrity import identical_sentence
from model.interop import from_hf
from store.rundata import n_chunks
from store.runlayout import RUN_JSON, metrics_jsonl, samples_jsonl
from store.runrecord import read_record, set_status, write_record
from model.tokenizer import GPT2_VOCAB_SIZE, Tokenizer
from store.vocab import load_tokenizer

from .args import BadInput, TrainArgs, validate
from .options import Parser
from .corpora import Corpus, check_source, load_corpus, split_documents, text_files
from .samples import sample_rows
from .rundir import clean_temporaries, data_installed, data_record, install_data
from .tokens import Tokenized, tokenize
from .importer_nanogpt import nanogpt_checkpoints
from .importer_sources import Source, SourceCheckpoint, hf_checkpoints, parse_from

UNKNOWN = "unknown"


def build_parser() -> Parser:
    p = Parser(prog="python -m train.importer", description="Import checkpoints trained elsewhere as a workbench run.")
    p.add_argument("--from", dest="source", required=True, help="hf:DIR (save_pretrained or Trainer checkpoint-N "
                   "folders) or nanogpt:PATH (a ckpt.pt file or a folder of them)")
    p.add_argument("--data", required=True, help="probe text: stories | tinystories | text:PATH")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/mymodel")
    p.add_argument("--seed", type=int, default=1337, help="seed of the probes' held-out order (default 1337)")
    p.add_argument("--seq-len", type=int, help="tokens per held-out sequence (default: the model's context)")
    p.add_argument("--sample-tokens", type=int, default=64,
                   help="tokens generated from the fixed prompts per checkpoint, 0 for none (default 64)")
    return p


# -- checks (nothing is written) ----------------------------------------------------------------
def model_shape(ck: SourceCheckpoint) -> dict:
    """What must agree between checkpoints of one run: the workbench config and the source's own
    (maybe padded) vocabulary size."""
    return {**ck.gpt_config().to_dict(), "vocab_size": int(ck.config.vocab_size)}


def common_config(ckpts: list[SourceCheckpoint]) -> GPTConfig:
    """The one workbench config every checkpoint shares; BadInput naming the first that differs."""
    first = model_shape(ckpts[0])
    for ck in ckpts[1:]:
        other = model_shape(ck)
        key = next((k for k in first if other[k] != first[k]), None)
        if key is not None:
            raise BadInput(f"{ck.label} has {key} {other[key]}, but {ckpts[0].label} has {first[key]}: the "
                           "checkpoints' shapes disagree, and one run holds one model.")
    return ckpts[0].gpt_config()


def assign_steps(ckpts: list[SourceCheckpoint]) -> list[SourceCheckpoint]:
    """Checkpoints by step. A lone checkpoint that does not know its step is step 0; among several,
    an unknown or repeated step is an error."""
    if len(ckpts) == 1 and ckpts[0].step is None:
        ckpts[0].step = 0
        ckpts[0].notes.append("The source does not record its step; it is stored as step 0.")
    by_step: dict[int, SourceCheckpoint] = {}
    for ck in ckpts:
        if ck.step is None:
            raise BadInput(f"{ck.label} does not record its training step (no iter_num), so it cannot be ordered "
                           "among the other checkpoints.")
        if ck.step in by_step:
            raise BadInput(f"{by_step[ck.step].label} and {ck.label} both hold step {ck.step}; import them separately.")
        by_step[ck.step] = ck
    return [by_step[s] for s in sorted(by_step)]


def check_seq_len(seq_len: int | None, cfg: GPTConfig) -> int:
    if seq_len is None:
        return cfg.n_ctx
    if not 2 <= seq_len <= cfg.n_ctx:
        raise BadInput(f"--seq-len must lie between 2 and the model's context {cfg.n_ctx}, got {seq_len}.")
    return seq_len


def import_record(source: Source, fmt: str, cfg: GPTConfig, ckpts: list[SourceCheckpoint], data: str, seed: int,
                  seq_len: int) -> dict:
    """run.json["imported"]: where the run came from and what it does not know."""
    first = ckpts[0]
    notes = sorted({n for ck in ckpts for n in ck.notes})
    if first.config.vocab_size > GPT2_VOCAB_SIZE:
        notes.append(f"The source vocabulary of {first.config.vocab_size} rows is padded beyond GPT-2's "
                     f"{GPT2_VOCAB_SIZE} tokens; the padding rows (never a GPT-2 token) were dropped, so the "
                     f"logits of all {GPT2_VOCAB_SIZE} real tokens are the source's, and probabilities are "
                     "normalized over the real tokens only.")
    if any(ck.tokens is None for ck in ckpts):
        notes.append("The source does not record the training tokens of every checkpoint; those are unknown.")
    return {"from": source.spec, "format": fmt, "training_data": UNKNOWN, "data": data, "seed": seed,
            "seq_len": seq_len, "source_config": {k: v for k, v in vars(first.config).items() if is_plain(v)},
            "notes": notes}


def is_plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v))


def check_existing(out: Path, record: dict, cfg: GPTConfig) -> dict | None:
    """run.json of an earlier import of the same source into `out`, None when `out` is new;
    BadInput when `out` holds something else."""
    run_json = out / RUN_JSON
    if not run_json.exists():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BadInput(f"{out} exists and is not an empty folder; choose another --out.")
        for folder in out.parents:
            if folder.exists():
                if not folder.is_dir():
                    raise BadInput(f"--out {out} lies inside {folder}, which is not a folder.")
                break
        return None
    try:
        run = read_record(out)
        old = run["imported"]
        model = run["model"]
    except (RunFileError, KeyError, TypeError):
        raise BadInput(f"{out} already holds a run that was not imported; choose another --out.") from None
    for key, what in (("from", "--from"), ("data", "--data"), ("seed", "--seed"), ("seq_len", "--seq-len")):
        if old.get(key) != record[key]:
            raise BadInput(f"{out} holds an import with {what} {old.get(key)!r}, not {record[key]!r}; re-run with the "
                           "same arguments to add new checkpoints, or choose another --out.")
    if model != cfg.to_dict():
        raise BadInput(f"{out} holds an import of another model shape; choose another --out.")
    return run


def probe_corpus(data: str, seed: int, out: Path) -> Corpus:
    """The probe text as a corpus with an empty training split: every document of text:PATH, or
    the held-out documents `python -m train` makes for stories/tinystories."""
    args = TrainArgs(data=data, seed=seed, out=str(out))
    validate(args)
    check_source(args)
    if data.startswith("text:"):
        docs = [d for f in text_files(data[5:]) for d in read_documents(f)]
        source = f"text:{data[5:]}"
    else:
        loaded = load_corpus(args)
        docs, source = loaded.val, loaded.source
    if not docs:
        raise BadInput(f"the probe text from --data {data} is empty.")
    return Corpus(source, [], docs)


def read_documents(path: Path) -> list[str]:
    try:
        return split_documents(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text.") from None


# -- writing -----------------------------------------------------------------------------------
def write_run_json(out: Path, cfg: GPTConfig, record: dict, steps: list[int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, {
        "name": out.name, "status": "importing", "model": cfg.to_dict(),
        "tokenizer": {"kind": "gpt2", "vocab_size": GPT2_VOCAB_SIZE}, "seed": record["seed"],
        "data_source": record["data"], "world_size": 1, "checkpoint_steps": steps, "imported": record,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def tokenize_probe_text(out: Path, record: dict, corpus: Corpus) -> Tokenized:
    """The probe text in the shared token cache, checked to give the probes two sequences before
    it is cached (a refused text leaves nothing behind)."""
    def check(info: dict) -> None:
        if n_chunks(info["n_val_tokens"], record["seq_len"]) < 2:
            raise BadInput(f"the probe text from --data {record['data']} has {info['n_val_tokens']} tokens, too few "
                           f"for two held-out sequences of {record['seq_len']} + 1; give more text or a smaller "
                           "--seq-len.")

    return tokenize(corpus, None, out.resolve().parent, check=check)


def install_probe_data(out: Path, cfg: GPTConfig, record: dict, corpus: Corpus, tok: Tokenized) -> None:
    """data/ and data.json through train.rundir, with sequences of --seq-len tokens."""
    chunk_cfg = replace(cfg, n_ctx=record["seq_len"])
    args = TrainArgs(data=record["data"], seed=record["seed"], out=str(out))
    install_data(out, tok, unknown_training(data_record(args, chunk_cfg, tok, [], corpus.source, 1), record))


def unknown_training(data: dict, record: dict) -> dict:
    """data.json of an imported run: no training split, no rows per step, training data unknown."""
    data.update(corpus_rows_per_step=None, n_train_chunks=0, canaries=[], training_data=UNKNOWN,
                imported={"from": record["from"], "training_data": UNKNOWN})
    return data


def read_model(ck: SourceCheckpoint) -> GPT:
    """Our GPT with the checkpoint's weights through model.interop.from_hf. Rows of a vocabulary
    padded beyond GPT-2's (nanoGPT's 50304) are dropped: no GPT-2 token can reach them as input,
    and every real token's logit depends only on its own row, so those logits are unchanged."""
    sd = ck.read()
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name in sd:
            sd[name] = sd[name][:GPT2_VOCAB_SIZE]
    config = SimpleNamespace(**{**vars(ck.config), "vocab_size": GPT2_VOCAB_SIZE})
    return from_hf(SimpleNamespace(config=config, state_dict=lambda: sd))


def import_checkpoint(out: Path, ck: SourceCheckpoint, args: argparse.Namespace, tokenizer: Tokenizer) -> None:
    """Samples, then the checkpoint (as train.loop orders them)."""
    model = read_model(ck)
    meta = {"time": ck.mtime, "imported_from": ck.label}
    if ck.tokens is not None:
        meta["tokens"] = int(ck.tokens)
    if args.sample_tokens > 0:
        for row in sample_rows(model, tokenizer, ck.step, args.sample_tokens, args.seed):
            append_jsonl(samples_jsonl(out), row)
    save_checkpoint(out, ck.step, model, meta)


def trainer_metrics(history: list[dict]) -> list[dict]:
    """metrics.jsonl rows from a Trainer's log_history: training loss, learning rate, gradient norm
    and its eval loss (as val_loss: a held-out loss on the Trainer's own eval set), by step."""
    rows: dict[int, dict] = {}
    names = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "eval_loss": "val_loss"}
    for entry in history:
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        for theirs, ours in names.items():
            v = entry.get(theirs)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
                rows.setdefault(step, {"step": step})[ours] = float(v)
    return [rows[s] for s in sorted(rows)]


def write_metrics(out: Path, ckpts: list[SourceCheckpoint]) -> None:
    """metrics.jsonl from the log of the latest checkpoint that has one (it holds every earlier row)."""
    logs = [ck.log_history for ck in ckpts if ck.log_history]
    rows = trainer_metrics(logs[-1]) if logs else []
    if rows:
        write_bytes_atomic(metrics_jsonl(out), "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


def keep_sample_rows(path: Path, steps: set[int]) -> None:
    """Drop samples.jsonl rows of steps without a checkpoint (an import killed between the two
    writes), so importing the step again does not duplicate them."""
    rows = read_jsonl(path)
    kept = [r for r in rows if isinstance(r, dict) and r.get("step") in steps]
    if len(kept) != len(rows):
        write_bytes_atomic(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode())


def check_arguments(args: argparse.Namespace) -> None:
    if not 0 <= args.sample_tokens <= 100_000:
        raise BadInput(f"--sample-tokens must lie between 0 and 100000, got {args.sample_tokens}.")
    if not 0 <= args.seed < 2 ** 63:
        raise BadInput(f"--seed must lie in [0, 2**63), got {args.seed}.")
    data = TrainArgs(data=args.data, seed=args.seed, out=args.out)
    validate(data)  # the --data spelling
    check_source(data)  # a text:PATH that does not exist


def scan(source: Source) -> tuple[str, list[SourceCheckpoint]]:
    """(format, checkpoints) of a source, every one checked; BadInput for anything unusable."""
    if not source.path.exists():
        raise BadInput(f"--from {source.spec}: {source.path} does not exist.")
    if source.kind == "hf":
        return hf_checkpoints(source.path)
    return "nanogpt", nanogpt_checkpoints(source.path)


def run_import(args: argparse.Namespace) -> int:
    """Check everything, then write the run (or add the new checkpoints to it)."""
    check_arguments(args)
    source = parse_from(args.source)
    out = Path(args.out)
    fmt, found = scan(source)
    ckpts = assign_steps(found)
    cfg = common_config(ckpts)
    record = import_record(source, fmt, cfg, ckpts, args.data, args.seed, check_seq_len(args.seq_len, cfg))
    existing = check_existing(out, record, cfg)
    steps = [ck.step for ck in ckpts]
    if existing is None or not data_installed(out):
        corpus = probe_corpus(args.data, args.seed, out)
        tok = tokenize_probe_text(out, record, corpus)
        if existing is None:
            write_run_json(out, cfg, record, steps)
        install_probe_data(out, cfg, record, corpus, tok)
    if existing is not None:
        remove_partial_checkpoints(out)
        clean_temporaries(out)
        set_status(out, "importing", imported=record,
                   checkpoint_steps=sorted(set(existing.get("checkpoint_steps") or []) | set(steps)))
    have = {step_of(p) for p in list_checkpoints(out)}
    keep_sample_rows(samples_jsonl(out), have)
    todo = [ck for ck in ckpts if ck.step not in have]
    tokenizer = load_tokenizer(None)
    for ck in tqdm(todo, desc="import", unit="ckpt", dynamic_ncols=True):
        import_checkpoint(out, ck, args, tokenizer)
    write_metrics(out, ckpts)
    set_status(out, "complete")
    done = f" (steps {', '.join(str(ck.step) for ck in todo)})" if todo else ""
    already = f"; {len(ckpts) - len(todo)} already there" if len(todo) < len(ckpts) else ""
    print(f"{out}: imported {len(todo)} checkpoint(s){done}{already}. Next: python -m probes {out}")
    stale = identical_sentence(run_integrity(out))  # from the per-tensor digests just written
    if stale:
        print(stale, file=sys.stderr)
    return 0


def write_failure(e: OSError) -> str:
    """One sentence for an OSError (a full disk, a vanished folder) that stopped the import: what
    was written is intact, and the same command finishes it."""
    where = f" ({e.filename})" if e.filename else ""
    return f"the import stopped: {e.strerror or e}{where}; fix that, then run the same command again to finish it."


def main(argv: list[str] | None = None) -> int:
    """The CLI in-process; returns the exit status (2 with one sentence on stderr for bad input,
    1 for an OSError such as a full disk)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with torch_threads(None):  # main() may run in-process: leave the caller's thread count as it was
        return run_command(lambda: run_import(build_parser().parse_args(argv)), (BadInput,), os_error=write_failure)


if __name__ == "__main__":
    sys.exit(main())
