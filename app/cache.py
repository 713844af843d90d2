"""Everything the pages read, behind Streamlit caches, so switching checkpoint or page redraws
from memory. Keys include each file's (path, mtime_ns, size): a file rewritten by the trainer or
the probes runner is read again, an unchanged one never is.

Models go in `st.cache_resource` (one object shared by every session, on which nothing is ever
hooked: computations run on `GPT.private_copy()`s of it); JSON and small results go in
`st.cache_data` (copied per call, so a page cannot corrupt the cache by mutating what it got).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
import torch

from store.checkpoint import load_checkpoint
from store.runio import RunFileError, CheckpointError, read_json
from model.config import GPTConfig
from model import memory
from store.runlayout import (META, RUN_FILES, WEIGHTS, checkpoint_dir, data_json, metrics_jsonl, summary_path,
                             vocab_json)
from model.tokenizer import Tokenizer
from store.vocab import load_tokenizer
import probes
from probes.measure.ablation import generation_hooks

from . import analysis
from .runfolder import RunFiles, file_key, metrics_series, verify_checkpoint


@st.cache_data(show_spinner=False, max_entries=4096)
def _read_json(key: tuple[str, int, int]) -> Any:
    return read_json(key[0])


def read_json_cached(path: Path) -> Any:
    return _read_json(file_key(path))


@st.cache_data(show_spinner=False, max_entries=64)
def _metrics(key: tuple[str, int, int]) -> dict[str, tuple[list[int], list[float]]]:
    return metrics_series(Path(key[0]).parent)


def metrics(run: RunFiles) -> dict[str, tuple[list[int], list[float]]]:
    """metrics_series of a run, re-read only when metrics.jsonl changes (a compared run's log
    holds a row per step, and the comparison page redraws on every widget change)."""
    try:
        return _metrics(file_key(metrics_jsonl(run.path)))
    except OSError:  # no metrics logged yet
        return metrics_series(run.path)


def probe_results(run: RunFiles) -> tuple[dict[int, dict], list[str]]:
    """({step: result}, problems): every readable probe file of the run; unreadable ones are
    named in `problems` and left out."""
    results, problems = {}, []
    for step, path in run.probe_files.items():
        try:
            data = read_json_cached(path)
        except (RunFileError, OSError) as e:
            problems.append(f"Probe result {path} is unreadable and was skipped ({e}).")
            continue
        if isinstance(data, dict):
            results[step] = data
        else:
            problems.append(f"Probe result {path} is not a JSON object and was skipped.")
    return results, problems


def probe_summary(run: RunFiles) -> dict | None:
    path = summary_path(run.path)
    if not path.is_file():
        return None
    try:
        data = read_json_cached(path)
    except (RunFileError, OSError):
        return None
    return data if isinstance(data, dict) else None


def data_manifest(run: RunFiles) -> dict:
    path = data_json(run.path)
    try:
        data = read_json_cached(path) if path.is_file() else {}
    except (RunFileError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


FileKey = tuple[str, int, int]
CheckpointKey = tuple[FileKey, FileKey, FileKey | None, FileKey | None]


def checkpoint_key(run: RunFiles, step: int) -> CheckpointKey:
    """The versions of every file a checkpoint's verification reads: its meta.json and weights,
    and the run's vocab.json and data.json (absent: None). A cache keyed on it re-verifies, and
    reloads, as soon as any of them changes."""
    folder = checkpoint_dir(run.path, step)
    optional = [file_key(run.path / name) if (run.path / name).is_file() else None for name in RUN_FILES]
    return (file_key(folder / META), file_key(folder / WEIGHTS), *optional)


@st.cache_data(show_spinner=False, max_entries=1024)
def _verify(key: CheckpointKey) -> str | None:
    return verify_checkpoint(Path(key[0][0]).parent)


def checkpoint_problem(run: RunFiles, step: int) -> str | None:
    """None when the checkpoint at `step` is intact, else why it is not (hashes checked once per
    version of its files)."""
    folder = checkpoint_dir(run.path, step)
    try:
        return _verify(checkpoint_key(run, step))
    except OSError as e:
        return f"{folder}: cannot be read ({e.strerror or e})"


def corrupt_checkpoints(run: RunFiles, steps: list[int]) -> dict[int, str]:
    return {s: p for s in steps if (p := checkpoint_problem(run, s)) is not None}


@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=6)
def _load_model(key: CheckpointKey):
    model, meta = load_checkpoint(Path(key[0][0]).parent)
    return model, meta


def _private_model(key: CheckpointKey):
    """The loaded model as a private copy for one computation: every session shares the loaded
    model, and hooks attached to it would fire in every session's forward passes (one user's
    ablation changing another's generation). The copy has its own hook points and the same weight
    tensors, so it costs milliseconds and no memory; a lock around every forward would serialize
    the sessions instead."""
    return _load_model(key)[0].private_copy()


# The app's largest forward: an ablation over the held-out batch (heldout(): 16 sequences), or the
# attention patterns of a prompt, materialised.
APP_ROWS = 16
_FITTED: set = set()  # checkpoint keys that passed check_model_fits (loaded: in use, not available)


def check_model_fits(folder: Path, key: CheckpointKey) -> None:
    """ValueError (TooLarge: one sentence, which the page shows) before loading a checkpoint whose
    weights and largest forward would not fit in the memory available now, from its meta.json
    config. Checked once per checkpoint version: afterwards the loaded model's memory is in use, no
    longer available, and would refuse the very model already loaded. A meta.json that cannot be
    read is left to the loader, which names the problem."""
    if key in _FITTED:
        return
    try:
        cfg = GPTConfig.from_dict(read_json_cached(folder / META)["config"])
    except (RunFileError, OSError, ValueError, TypeError, KeyError):
        return
    need = memory.model_bytes(cfg) + memory.forward_bytes(cfg, APP_ROWS, cfg.n_ctx, explicit_attention=True)
    memory.check_fits(f"Loading the checkpoint {folder.name} (n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, "
                      f"n_ctx {cfg.n_ctx}, vocab {cfg.vocab_size})", need, memory.available_bytes(),
                      where="this server", advice="free some memory or run the app on a larger machine")
    _FITTED.add(key)


def load_model(run: RunFiles, step: int):
    """(model, meta) of a checkpoint, loaded once and shared; CheckpointError when it is corrupt,
    TooLarge (a ValueError) when it would not fit in memory."""
    folder = checkpoint_dir(run.path, step)
    if step not in run.checkpoint_steps:  # the listed ones lie inside the runs folder, files and all
        raise CheckpointError(folder, "is not a checkpoint of this run inside the runs folder (missing, or a "
                                      "symlink leading outside it)")
    try:
        key = checkpoint_key(run, step)
    except OSError:
        raise CheckpointError(folder, "checkpoint folder, its meta.json or its weights are missing") from None
    check_model_fits(folder, key)
    return _load_model(key)


@st.cache_resource(show_spinner=False, max_entries=16)
def _tokenizer(run_dir: str, vocab_key: tuple[str, int, int] | None) -> Tokenizer:
    return load_tokenizer(run_dir)


def tokenizer(run: RunFiles) -> Tokenizer:
    vocab = vocab_json(run.path)
    return _tokenizer(str(run.path), file_key(vocab) if vocab.is_file() else None)


@st.cache_resource(show_spinner="Preparing held-out text…", max_entries=16)
def _heldout(run_dir: str, data_key: tuple[str, int, int], n: int) -> torch.Tensor:
    return probes.heldout_tokens(run_dir, n=n)


def heldout(run: RunFiles, n: int = 16) -> torch.Tensor:
    """The run's fixed held-out batch (the probes' own choice, so the app's ablation numbers are
    comparable with the ablation heatmap)."""
    return _heldout(str(run.path), file_key(data_json(run.path)), n)


@st.cache_data(show_spinner="Ablating…", max_entries=256)
def _ablation(run_dir: str, step: int, key: CheckpointKey, heads: tuple[tuple[int, int], ...],
              kind: str, n: int) -> dict[str, float]:
    run = RunFiles(name=Path(run_dir).name, path=Path(run_dir))
    out = probes.ablate(_private_model(key), heldout(run, n), list(heads), kind=kind, return_logits=False)
    return {"loss": float(out["loss"]), "delta": float(out["delta"])}


def ablation(run: RunFiles, step: int, heads: list[tuple[int, int]], kind: str, n: int = 16) -> dict[str, float]:
    """Held-out loss with `heads` ablated and its change from the clean loss."""
    load_model(run, step)  # raises CheckpointError with the path when the checkpoint is corrupt
    key = checkpoint_key(run, step)
    return _ablation(str(run.path), step, key, tuple(sorted(heads)), kind, n)


@st.cache_data(show_spinner="Generating…", max_entries=256)
def _generation(run_dir: str, step: int, key: CheckpointKey, heads: tuple[tuple[int, int], ...],
                kind: str, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    run = RunFiles(name=Path(run_dir).name, path=Path(run_dir))
    model = _private_model(key)
    tok = tokenizer(run)
    hooks = generation_hooks(model, heads, kind, heldout(run)) if heads else []
    prompt_ids, ids = analysis.greedy_continuation(model, tok, prompt, max_new_tokens, hooks)
    return {"prompt_ids": prompt_ids, "ids": ids, "text": tok.decode(ids)}


def generation(run: RunFiles, step: int, heads: list[tuple[int, int]], kind: str, prompt: str,
               max_new_tokens: int = 48) -> dict[str, Any]:
    """Greedy continuation of `prompt` with `heads` ablated as `probes.measure.ablation.generation_hooks`
    does it: zero, the held-out mean, or a held-out sequence's z at the same position."""
    load_model(run, step)
    key = checkpoint_key(run, step)
    return _generation(str(run.path), step, key, tuple(sorted(heads)), kind, prompt, max_new_tokens)


@st.cache_data(show_spinner="Computing the attention pattern…", max_entries=256)
def _pattern(run_dir: str, key: CheckpointKey, ids: tuple[int, ...]) -> list:
    return analysis.attention_patterns(_private_model(key), ids)


def patterns(run: RunFiles, step: int, ids: list[int]) -> list:
    """Attention patterns [layer][head][query][key] of every head on one prompt."""
    load_model(run, step)
    return _pattern(str(run.path), checkpoint_key(run, step), tuple(ids))
