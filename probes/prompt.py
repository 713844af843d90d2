"""`python -m probes.prompt RUN TEXT [--tokens N] [--steps S,...] [--seed N] [--corrupted TEXT]`: one
prompt followed through every checkpoint of a run, printed as JSON.

For each checkpoint: the greedy and a sampled continuation, the longest loop the greedy one ends in,
the loss of each prompt token, the logit lens, the heads' direct logit attribution and, with
--corrupted, activation patching (probes.measure.prompt_measures defines each). `prompt_timelapse` is the
same for the app, with a progress callback.

Each checkpoint's entry is cached on disk (store.runlayout.prompt_cache_path), written atomically so
that every process and app session shares it, under a key of the prompt, the options and the
checkpoint's weight digest (the sha256 of its weights file, sealed into its meta.json): a checkpoint
refilled or replaced by other weights gets a new key, so an old result is never served for it.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from store.checkpoint import load_checkpoint, read_checkpoint_meta
from model.cliargs import ArgumentParser, run_command
from store.runio import RunFileError, read_json, remove_temporaries, write_json_atomic
from store.runlayout import prompt_cache_path, step_of
from store.runrecord import read_run
from model.tokenizer import Tokenizer
from store.vocab import load_tokenizer

from probes.run.cli import parse_steps, user_error
from probes.measure.prompt_measures import SAMPLE_TEMPERATURE, SAMPLE_TOP_P, checkpoint_entry
from probes.run.runner import check_steps

ESSAY_PROMPT = "They wave to each other"
DEFAULT_TOKENS = 32
MAX_TOKENS = 1024  # continuation tokens a request may ask for: more is a typo, not a study
CACHE_VERSION = 1  # raised whenever an entry's content changes meaning, so older cached entries are not read
Progress = Callable[[int, int], None]


@dataclass
class PromptRequest:
    """A checked request: the run's chosen checkpoints with their verified meta.json, the tokenizer,
    and the prompt (and corrupted prompt) as the run's token ids."""

    run_dir: Path
    text: str
    tokens: int
    seed: int
    corrupted: str | None
    checkpoints: list[Path]
    metas: dict[int, dict]
    tokenizer: Tokenizer
    ids: list[int] = field(default_factory=list)
    corrupted_ids: list[int] | None = None
    problems: dict[int, str] = field(default_factory=dict)  # step: why its meta.json failed verification


def check_count(name: str, value: object, low: int, high: int, high_text: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high_text or high}, got {value!r}.")
    return value


def check_request(run_dir: str | Path, text: str, steps: Sequence[int] | None = None, tokens: int = DEFAULT_TOKENS,
                  seed: int = 0, corrupted: str | None = None) -> PromptRequest:
    """Every argument, before anything is computed or written: the run, the text, --tokens, --seed,
    the steps (complete checkpoints of the run, at least one with a verified meta.json: the others
    get an error entry), the prompt's length in the run's tokens (at most the context) and the
    corrupted prompt's (the prompt's). ValueError or RunFileError, one sentence."""
    run_dir = Path(run_dir)
    read_run(run_dir)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"The prompt is empty; give the text to follow through the run, e.g. {ESSAY_PROMPT!r}.")
    check_count("--tokens", tokens, 1, MAX_TOKENS)
    check_count("--seed", seed, 0, 2**63 - 1, "2**63 - 1")
    checkpoints = check_steps(run_dir, steps)
    if not checkpoints:
        raise ValueError(f"{run_dir} has no complete checkpoint yet.")
    metas, problems, first_error = {}, {}, None
    for path in checkpoints:
        try:
            metas[step_of(path)] = read_checkpoint_meta(path)
        except RunFileError as e:
            problems[step_of(path)], first_error = f"{e.path}: {e.problem}.", first_error or e
    if not metas:
        raise first_error
    tokenizer = load_tokenizer(run_dir)
    request = PromptRequest(run_dir, text, tokens, seed, corrupted, checkpoints, metas, tokenizer,
                            tokenizer.encode(text), problems=problems)
    n_ctx = min(int(meta["config"].get("n_ctx", 0)) for meta in metas.values())
    if len(request.ids) > n_ctx:
        raise ValueError(f"The prompt is {len(request.ids)} tokens long, more than the model's context of {n_ctx}.")
    if corrupted is not None:
        if not isinstance(corrupted, str) or not corrupted.strip():
            raise ValueError("The corrupted prompt is empty; give a text of the prompt's length with one detail changed.")
        request.corrupted_ids = tokenizer.encode(corrupted)
        if len(request.corrupted_ids) != len(request.ids):
            raise ValueError(f"The corrupted prompt is {len(request.corrupted_ids)} tokens long and the prompt "
                             f"{len(request.ids)}; activation patching needs the same length, position for position.")
    return request


# -- the cache ----------------------------------------------------------------------------------------
def cache_spec(request: PromptRequest, meta: dict) -> dict:
    """Everything an entry depends on: the prompt and options, the sampling rule, and the
    checkpoint's weight digest and run files (vocab.json decides the text) from its sealed meta.json."""
    return {"version": CACHE_VERSION, "prompt": request.text, "tokens": request.tokens, "seed": request.seed,
            "corrupted": request.corrupted, "temperature": SAMPLE_TEMPERATURE, "top_p": SAMPLE_TOP_P,
            "weights": meta["sha256"], "run_files": meta.get("run_files")}


def cache_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def cache_path(request: PromptRequest, step: int, spec: dict) -> Path:
    return prompt_cache_path(request.run_dir, step, cache_key(spec))


def read_cached(path: Path, spec: dict) -> dict | None:
    """The cached entry at `path` if it was computed for exactly `spec`, else None (missing,
    unreadable, or another request's whose key collided)."""
    try:
        data = read_json(path)
    except RunFileError:
        return None
    if not isinstance(data, dict) or data.get("spec") != spec or not isinstance(data.get("entry"), dict):
        return None
    return data["entry"]


def write_cached(path: Path, spec: dict, entry: dict) -> None:
    """Store an entry atomically, and remove this checkpoint's entries for other weights (a
    checkpoint refilled or replaced: they can never be served again) and the temporary files of
    writers that died; a run folder that cannot be written (read-only, full) just goes without."""
    try:
        write_json_atomic(path, {"spec": spec, "entry": entry})
        remove_temporaries(path.parent, live_writers_too=False)
        for other in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.json"):
            if other != path and stale(other, spec["weights"]):
                other.unlink(missing_ok=True)
    except OSError:
        pass


def stale(path: Path, weights: str) -> bool:
    """Whether the cached entry at `path` was computed for other weights than `weights` (or is
    unreadable): nothing could ever read it again."""
    try:
        data = read_json(path)
    except RunFileError:
        return True
    return not isinstance(data, dict) or not isinstance(data.get("spec"), dict) or data["spec"].get("weights") != weights


# -- the timelapse -----------------------------------------------------------------------------------
def checkpoint_result(request: PromptRequest, path: Path, cache: bool = True,
                      device: str | torch.device = "cpu") -> dict:
    """One checkpoint's entry: from the cache when it holds one for these weights, else computed
    (and stored). The key is taken again from the meta.json that load_checkpoint verifies, so a
    checkpoint replaced after the request was checked is keyed by its new weights. A checkpoint
    that fails verification gets {"error": the damaged file and its problem} instead, as the
    probes runner reports and skips one."""
    step = step_of(path)
    if step in request.problems:
        return {"error": request.problems[step]}
    spec = cache_spec(request, request.metas[step])
    if cache and (hit := read_cached(cache_path(request, step, spec), spec)) is not None:
        return hit
    try:
        model, meta = load_checkpoint(path, device)
    except RunFileError as e:
        return {"error": f"{e.path}: {e.problem}."}
    spec = cache_spec(request, meta)
    entry = checkpoint_entry(model, request.tokenizer, request.ids, request.tokens, request.seed,
                             request.corrupted_ids)
    if cache:
        write_cached(cache_path(request, step, spec), spec, entry)
    return entry


def timelapse(request: PromptRequest, progress: Progress | None = None, cache: bool = True,
              device: str | torch.device = "cpu") -> dict:
    """The JSON of a checked request: the prompt and options, then one entry per checkpoint, by
    step. `progress(done, total)` is called before the first checkpoint and after each."""
    total, entries = len(request.checkpoints), []
    if progress:
        progress(0, total)
    for path in request.checkpoints:
        entries.append({"step": step_of(path), **checkpoint_result(request, path, cache, device)})
        if progress:
            progress(len(entries), total)
    tok = request.tokenizer
    corrupted = request.corrupted_ids
    return {"prompt": request.text, "prompt_ids": request.ids, "prompt_tokens": tok.token_strings(request.ids),
            "corrupted": request.corrupted, "corrupted_ids": corrupted,
            "corrupted_tokens": None if corrupted is None else tok.token_strings(corrupted),
            "new_tokens": request.tokens, "seed": request.seed,
            "sampling": {"temperature": SAMPLE_TEMPERATURE, "top_p": SAMPLE_TOP_P, "seed": request.seed},
            "checkpoints": entries}


def prompt_timelapse(run_dir: str | Path, text: str, steps: Sequence[int] | None = None, tokens: int = DEFAULT_TOKENS,
                     seed: int = 0, corrupted: str | None = None, progress: Progress | None = None,
                     cache: bool = True, device: str | torch.device = "cpu") -> dict:
    """`text` through the checkpoints of `run_dir` (those of `steps`, or all): see the module's
    docstring and docs/prompt.md for the keys. ValueError or RunFileError (one sentence) for a bad
    request, before anything is computed or written."""
    return timelapse(check_request(run_dir, text, steps, tokens, seed, corrupted), progress, cache, device)


# -- the command line -------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m probes.prompt",
                       description="Follow one prompt through every checkpoint of a run; prints JSON.")
    p.add_argument("run", help="run folder, e.g. runs/demo")
    p.add_argument("text", help=f"the prompt, e.g. {ESSAY_PROMPT!r}")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help=f"continuation tokens, 1 to {MAX_TOKENS} (default {DEFAULT_TOKENS})")
    p.add_argument("--steps", type=parse_steps, help="comma-separated checkpoint steps (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled continuation (default 0)")
    p.add_argument("--corrupted", metavar="TEXT",
                   help="a corrupted prompt of the same token length: adds activation patching")
    return p


def bar() -> tuple[Progress, Callable[[], None]]:
    """A progress bar on stderr (stdout carries the JSON); silent when stderr is not a terminal."""
    state: dict = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, unit="ckpt", desc="prompt", file=sys.stderr, disable=None)
        state["bar"].n = done
        state["bar"].refresh()

    return progress, lambda: state["bar"].close() if "bar" in state else None


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status (2 with one sentence on stderr for bad input, nothing
    computed or written; 130 when the user stopped it)."""
    def body() -> int:
        args = build_parser().parse_args(argv)
        request = check_request(args.run, args.text, args.steps, args.tokens, args.seed, args.corrupted)
        progress, close = bar()
        try:
            result = timelapse(request, progress)
        finally:
            close()
        sys.stdout.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
        return 0

    return run_command(body, (ValueError, RunFileError), prefix="probes.prompt: ", describe=user_error,
                       stops=(KeyboardInterrupt,), stopped=lambda e: "probes.prompt: interrupted.")


if __name__ == "__main__":
    sys.exit(main())
