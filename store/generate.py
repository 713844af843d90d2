"""Generate text from a run's checkpoint on the command line.

    python -m store.generate --run runs/NAME [--step S] --prompt TEXT [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--device cpu|cuda]

Prints the continuation (not the prompt). The latest checkpoint is used unless --step names
one; the tokenizer is the run's own (its compact vocab.json, or full GPT-2). Bad input exits
with status 2 and one sentence on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from store.checkpoint import list_checkpoints, load_checkpoint, read_checkpoint_meta, step_of
from store.runio import RunFileError
from model.cliargs import ArgumentParser, UsageError, run_command
from model.config import GPTConfig
from model.device import pick_device
from model.gpt import MAX_NEW_TOKENS, check_sampling_args
from model.memory import check_fits, device_available_bytes, generate_bytes
from model.tokenizer import TokenizerError
from store.vocab import load_tokenizer


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m store.generate", description="Continue a prompt with a run's checkpoint.")
    p.add_argument("--run", required=True, help="run folder, e.g. runs/demo")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def pick_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The checkpoint folder for `step`, or the latest one."""
    if not run_dir.is_dir():
        raise UsageError(f"Run folder {run_dir} does not exist.")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UsageError(f"Run {run_dir} has no checkpoints yet.")
    if step is None:
        return ckpts[-1]
    by_step = {step_of(c): c for c in ckpts}
    if step not in by_step:
        steps = sorted(by_step)
        shown = ", ".join(map(str, steps[:12])) + (", ..." if len(steps) > 12 else "")
        raise UsageError(f"Run {run_dir} has no checkpoint at step {step}; available steps: {shown}.")
    return by_step[step]


def check_memory(ckpt: Path, args: argparse.Namespace, device: torch.device) -> None:
    """Refuse (TooLarge, a ValueError: one sentence, exit 2) before loading a checkpoint whose
    weights, prompt forward and key/value cache would not fit, from its sealed meta.json config.
    The prompt's token count is bounded by its UTF-8 bytes (a GPT-2 token is at least one byte).
    A meta.json that cannot be read is left to load_checkpoint, which names the problem."""
    try:
        cfg = GPTConfig.from_dict(read_checkpoint_meta(ckpt)["config"])
    except (RunFileError, ValueError, TypeError):
        return
    prompt_len = len(args.prompt.encode("utf-8", errors="replace"))
    need = generate_bytes(cfg, 1, prompt_len, args.max_new_tokens)
    check_fits(f"generating from {ckpt} (n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_ctx {cfg.n_ctx}, vocab "
               f"{cfg.vocab_size})", need, device_available_bytes(device),
               where="this GPU" if device.type == "cuda" else "this machine",
               advice="free some memory or use a machine with more")


def check_arguments(args: argparse.Namespace) -> tuple[Path, torch.device]:
    """(checkpoint, device) once every argument has passed, before anything is loaded: the run and
    step, the device, the sampling arguments (model.gpt.check_sampling_args, the check generate
    makes) and the memory it would take. ValueError with one sentence otherwise."""
    ckpt = pick_checkpoint(Path(args.run), args.step)
    device = pick_device(args.device)
    if args.max_new_tokens > MAX_NEW_TOKENS:  # 10**30 would not be a long job but a hang
        raise UsageError(f"--max-new-tokens must be at most {MAX_NEW_TOKENS}, got {args.max_new_tokens}.")
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    check_memory(ckpt, args, device)
    return ckpt, device


def generate_text(args: argparse.Namespace) -> str:
    run_dir = Path(args.run)
    ckpt, device = check_arguments(args)
    model, _ = load_checkpoint(ckpt, device=device)
    tok = load_tokenizer(run_dir)
    if tok.vocab_size != model.cfg.vocab_size:
        raise UsageError(f"The run's tokenizer has {tok.vocab_size} ids but the checkpoint's model has "
                         f"{model.cfg.vocab_size}; vocab.json does not belong to this checkpoint.")
    ids = tok.encode(args.prompt)
    if not ids:
        raise UsageError("The prompt is empty; give at least one character to continue.")
    out = model.generate(torch.tensor([ids], dtype=torch.long), args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    return tok.decode(out[0, len(ids):].tolist())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for bad input)."""
    texts: list[str] = []

    def body() -> int:
        texts.append(generate_text(build_parser().parse_args(argv)))
        return 0

    status = run_command(body, (UsageError, ValueError, RunFileError, TokenizerError))
    for text in texts:  # printed outside: a stdout that cannot take the text is not bad input
        print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
