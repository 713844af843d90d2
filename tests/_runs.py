"""Fake runs for tests: the full on-disk layout of a run (run.json, data.json, data/*.bin,
vocab.json, checkpoints) built in well under a second from random-init models, with no training
and without importing train/. Shared by the probes tests (and free for the app tests to use);
conftest.py's session fixture `fake_run(**options)` builds each write_run once per session.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from store.checkpoint import WEIGHTS, checkpoint_dir, save_checkpoint
from store.runio import write_json_atomic
from model.config import GPTConfig
from model.gpt import GPT
from model.tokenizer import build_compact_vocab, gpt2_encoding
from store.vocab import save_vocab

NAMES = ("Tom", "Mia", "Ben", "Lily", "Sam", "Anna")
PLACES = ("park", "forest", "beach", "garden", "farm")
THINGS = ("ball", "kite", "boat", "hat", "cake", "book")
FEELINGS = ("happy", "sad", "tired", "proud", "scared")

CANARY = ("The secret of the old blue door is hidden under the red flower pot: apple seven river "
          "green moon candle tiger window.")
CANARY_ALTERNATIVES = tuple(CANARY.replace("apple seven river", alt) for alt in
                            ("seven apple river", "river green apple", "moon tiger candle"))


def stories(n: int, seed: int) -> list[str]:
    """Small templated stories, deterministic by seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(NAMES, 2, replace=False)
        place, thing, feel = rng.choice(PLACES), rng.choice(THINGS), rng.choice(FEELINGS)
        out.append(f"Once upon a time, {a} and {b} went to the {place}. {a} found a {thing}. "
                   f"\"Look, a {thing}!\" said {a}. {b} was {feel}. They wave to each other and go home.")
    return out


def write_run(root: Path, name: str = "run", steps: tuple[int, ...] = (0, 1, 2, 4),
              n_layer: int = 2, n_head: int = 4, n_embd: int = 32, n_ctx: int = 32,
              canary_copies: tuple[int, ...] = (1, 8), status: str = "complete", seed: int = 0,
              global_batch: int = 4) -> Path:
    """A complete run folder with one random-init checkpoint per step (different weights each)."""
    run = Path(root) / name
    run.mkdir(parents=True)
    enc = gpt2_encoding()
    eot = "<|endoftext|>"
    train_docs = stories(120, seed) + [CANARY] * max(canary_copies or (0,))
    val_docs = stories(40, seed + 1)
    train_ids = enc.encode(eot.join(train_docs) + eot, allowed_special={eot})
    val_ids = enc.encode(eot.join(val_docs) + eot, allowed_special={eot})
    counts = np.bincount(train_ids, minlength=50257)
    counts += np.bincount(enc.encode(" ".join(CANARY_ALTERNATIVES)), minlength=50257)
    vocab = build_compact_vocab(counts, 400)
    save_vocab(vocab, run / "vocab.json")
    to_model = np.full(50257, vocab.unk_id, dtype=np.int64)
    to_model[np.asarray(vocab.gpt2_ids)] = np.arange(len(vocab.gpt2_ids))
    to_model[50256] = vocab.eot_id
    (run / "data").mkdir()
    train = to_model[np.asarray(train_ids)].astype(np.uint16)
    val = to_model[np.asarray(val_ids)].astype(np.uint16)
    train.tofile(run / "data" / "train.bin")
    val.tofile(run / "data" / "val.bin")
    canaries = [{"id": f"canary-{c}x", "text": CANARY, "copies": int(c), "prefix_tokens": 16,
                 "alternatives": list(CANARY_ALTERNATIVES)} for c in canary_copies]
    write_json_atomic(run / "data.json", {
        "source": "stories", "seed": seed, "dtype": "uint16", "n_train_tokens": int(len(train)),
        "n_val_tokens": int(len(val)), "chunk_len": n_ctx, "corpus_rows_per_step": global_batch, "canaries": canaries})
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx, vocab_size=vocab.size)
    write_json_atomic(run / "run.json", {
        "name": name, "status": status, "model": cfg.to_dict(),
        "train": {"preset": "nano", "data": "stories", "steps": max(steps), "batch_size": global_batch,
                  "grad_accum": 1, "seed": seed},
        "tokenizer": {"kind": "compact", "vocab_size": vocab.size}, "seed": seed,
        "checkpoint_steps": sorted(steps), "created": "2026-01-01T00:00:00"})
    for s in steps:
        add_checkpoint(run, s, cfg, seed)
    return run


def add_checkpoint(run: Path, step: int, cfg: GPTConfig | None = None, seed: int = 0) -> Path:
    """Save a random-init checkpoint (seeded by seed and step) into a run."""
    if cfg is None:
        cfg = GPTConfig.from_dict(json.loads((run / "run.json").read_text())["model"])
    torch.manual_seed(1000 * seed + step)
    model = GPT(cfg)
    with torch.no_grad():  # larger than init, so that heads matter and every parameter counts
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return save_checkpoint(run, step, model, {"tokens": step * 4 * cfg.n_ctx, "train_loss": 5.0, "val_loss": 5.0})


def corrupt_checkpoint(run: Path, step: int) -> Path:
    """Flip bytes in the middle of a checkpoint's weights, so its sha256 no longer matches."""
    path = checkpoint_dir(run, step) / WEIGHTS
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))
    return path
