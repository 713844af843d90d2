"""The training loop: AdamW + warm-up/cosine, grad accumulation and clipping, bf16 autocast on CUDA,
optional torch.compile, DDP under torchrun, periodic held-out loss, samples and checkpoints on the
schedule, and a training state at every checkpoint that makes --resume (from the latest) and
--fill-in (from any) bit-exact on CPU.

Batches are never drawn from a stateful sampler: optimizer step s consumes global samples
[(s-1)*G, s*G) of the seeded chunk order in store.rundata (G: the corpus rows per step), split
over micro-steps and ranks. So the data position is just the step, probes can recompute what any
step had seen, and a DDP run with the same global batch sees exactly what a single process sees.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from store.checkpoint import drop_state, has_state, kept_state_steps, load_state, save_checkpoint, save_state
from store.runio import append_jsonl, keep_rows_through
from model.config import GPTConfig
from model.gpt import GPT
from store.rundata import FREQUENT_COUNT_TOKENS, frequent_tokens, get_chunks, load_run_data, sample_chunk_ids
from store.runlayout import metrics_jsonl, samples_jsonl
from model.tokenizer import Tokenizer
from store.vocab import load_tokenizer

from .args import TrainArgs
from .planting import RepeatPlan, parse_period, planted_rows
from .disk import capacity, states_to_keep
from .schedule import learning_rate
from .samples import sample_rows

FLUSH_EVERY = 50


@dataclass
class Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    main: bool = field(init=False)  # rank 0: the one that writes

    def __post_init__(self) -> None:
        self.main = self.rank == 0


def configure_optimizer(model: GPT, args: TrainArgs, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only (matrices and embeddings), none on biases and
    LayerNorm gains, as in GPT-2/nanoGPT. Fused on CPU too: one kernel per parameter instead of a
    dozen ops (the nano demo's step 5.1 -> 1.3 ms on two threads, ~3 s of its 800 steps; values
    within one float32 ulp of the unfused update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2), eps=1e-8, **extra)


def repeat_plan(args: TrainArgs, train_tokens: np.ndarray, vocab_size: int, tokenizer: Tokenizer) -> RepeatPlan | None:
    """The planted-repeat plan of --repeat-fraction (None when nothing is planted): spans drawn from
    the training split's most frequent tokens, end-of-text and unknown excluded, as the induction
    probe draws its random tokens."""
    if args.planted_per_micro == 0:
        return None
    lo, hi = parse_period(args.repeat_period)
    special = {tokenizer.eot_id} | ({tokenizer.unk_id} if tokenizer.unk_id is not None else set())
    pool = frequent_tokens(train_tokens, vocab_size, special, args.repeat_pool, FREQUENT_COUNT_TOKENS)
    return RepeatPlan(args.repeat_fraction, lo, hi, pool)


class Trainer:
    def __init__(self, run_dir: Path, args: TrainArgs, cfg: GPTConfig, device: torch.device, d: Dist):
        self.run_dir, self.args, self.cfg, self.device, self.d = run_dir, args, cfg, device, d
        self.n_ctx = cfg.n_ctx  # tokens a row is trained on (a row holds n_ctx + 1: inputs and targets)
        data = load_run_data(run_dir, self.n_ctx)
        self.meta, self.train_tokens, self.val_tokens, self.n_chunks = data.meta, data.train, data.val, data.n_chunks
        self.corpus_rows_per_step = data.corpus_rows_per_step  # planted repeats come on top
        self.n_train = self.n_chunks["train"]
        self.schedule = set(args.checkpoint_steps)
        self.tokenizer = load_tokenizer(run_dir)
        self.plan = repeat_plan(args, self.train_tokens, cfg.vocab_size, self.tokenizer)
        self.n_plant = args.planted_per_micro  # planted rows per micro-batch
        self.rows_per_step = ((self.corpus_rows_per_step // (args.grad_accum * d.world) + self.n_plant)
                              * args.grad_accum * d.world)
        torch.manual_seed(args.seed)
        self.raw = GPT(cfg).to(device)
        self.opt = configure_optimizer(self.raw, args, device)
        self.model: torch.nn.Module = self.raw
        if args.compile:
            self.model = torch.compile(self.model)
        if d.world > 1:
            self.model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())
        self.eval_ids = {split: self.fixed_chunks(split) for split in ("train", "val")}
        self.rows: list[dict] = []
        self.step = 0
        self.last_loss = float("nan")

    # -- data --------------------------------------------------------------------------------
    def fixed_chunks(self, split: str) -> np.ndarray:
        """The chunks every evaluation uses: a seeded sample, the same at every step."""
        n = self.n_chunks[split]
        k = min(n, self.args.eval_batches * self.corpus_rows_per_step)  # so DDP and accumulation agree
        return np.sort(np.random.default_rng([self.args.seed, 5, split == "val"]).permutation(n)[:k])

    def step_batches(self, step: int) -> list[torch.Tensor]:
        """This rank's micro-batches [batch_size, n_ctx + 1] for optimizer step `step` (1-based):
        B corpus rows, then the planted ones. Micro-step k of rank r takes corpus rows
        [(k*world + r)*B, ... + B) of the step's global batch."""
        K, W = self.args.grad_accum, self.d.world
        B = self.args.batch_size - self.n_plant  # corpus rows per micro-batch
        G = self.corpus_rows_per_step
        ids = sample_chunk_ids(self.meta["seed"], self.n_train, (step - 1) * G, step * G)
        out = []
        for k in range(K):
            slot = k * W + self.d.rank
            rows = get_chunks(self.train_tokens, ids[slot * B:(slot + 1) * B], self.n_ctx)
            if self.n_plant:
                planted = planted_rows(self.plan, self.meta["seed"], step, slot * self.n_plant, self.n_plant,
                                       self.n_ctx + 1)
                rows = np.concatenate([rows, planted])
            out.append(torch.from_numpy(rows).to(self.device, non_blocking=True))
        return out

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "model": {k: v.detach().cpu() for k, v in self.raw.state_dict().items()},
            "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "train_loss": self.last_loss, "corpus_rows_per_step": self.corpus_rows_per_step,
        }

    def load(self, step: int | None = None) -> None:
        """Continue from the latest kept training state, or from the one kept at `step`."""
        s = load_state(self.run_dir, step)
        self.raw.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        torch.set_rng_state(s["torch_rng"])
        if self.device.type == "cuda" and s.get("cuda_rng"):
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        self.step = int(s["step"])
        self.last_loss = float(s.get("train_loss", float("nan")))

    # -- measuring ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        """Mean next-token loss over the fixed evaluation chunks of a split."""
        tokens = self.train_tokens if split == "train" else self.val_tokens
        ids = self.eval_ids[split]
        self.raw.eval()
        total, count = 0.0, 0
        for i in range(0, len(ids), self.args.batch_size):
            rows = torch.from_numpy(get_chunks(tokens, ids[i:i + self.args.batch_size], self.n_ctx)).to(self.device)
            with self.autocast:
                _, loss = self.raw(rows[:, :-1], rows[:, 1:])
            total += float(loss) * len(rows)
            count += len(rows)
        self.raw.train()
        return total / count

    def samples(self) -> list[dict]:
        """samples.jsonl's rows of this step (train.samples)."""
        return sample_rows(self.raw, self.tokenizer, self.step, self.args.sample_tokens, self.args.seed)

    # -- writing -----------------------------------------------------------------------------
    def flush(self) -> None:
        if self.rows:
            append_jsonl(metrics_jsonl(self.run_dir), *self.rows)
            self.rows = []

    def checkpoint(self, row: dict) -> None:
        """At a scheduled step: held-out loss into the metrics row, samples, then the checkpoint,
        then the training state last, so a state never points past what was written."""
        self.flush()
        for s in self.samples():
            append_jsonl(samples_jsonl(self.run_dir), s)
        self.save_weights(row.get("loss"), row["val_loss"])
        path = save_state(self.run_dir, self.step, self.state_dict(), model_config=self.cfg.to_dict(),
                          keep_older=self.args.keep_states != "latest")
        if self.args.keep_states == "budget":
            self.thin_states(path.stat().st_size)

    def thin_states(self, one_state: int) -> None:
        """Keep the states train.disk.states_to_keep picks within --state-budget (sized by the
        state just written) and drop the rest, oldest decisions first never undone."""
        kept = kept_state_steps(self.run_dir)
        keep = states_to_keep(kept, self.args.window_steps,
                              capacity(self.args.state_budget * 1e9, one_state))
        for step in kept:
            if step not in keep:
                drop_state(self.run_dir, step)

    def save_weights(self, train_loss: float | None, val_loss: float) -> None:
        """The checkpoint of the current step (weights and meta.json) and nothing else."""
        save_checkpoint(self.run_dir, self.step, self.raw, {
            "tokens": self.step * self.rows_per_step * self.n_ctx, "train_loss": train_loss, "val_loss": val_loss,
            "time": time.time()})

    def begin(self) -> None:
        """Step 0: losses of the initial weights, its samples and checkpoint."""
        if not self.d.main:
            return
        row = {"step": 0, "tokens": 0, "loss": self.evaluate("train"), "lr": 0.0, "val_loss": self.evaluate("val")}
        self.last_loss = row["loss"]
        self.rows.append(row)
        self.checkpoint(row)

    # -- training ----------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step; returns its metrics row (loss averaged over micro-batches and ranks)."""
        t0 = time.perf_counter()
        self.step += 1
        lr = learning_rate(self.step, self.args.lr, self.args.warmup, self.args.steps, self.args.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batches = self.step_batches(self.step)
        loss_sum = torch.zeros((), device=self.device)
        for k, rows in enumerate(batches):
            sync = k == len(batches) - 1 or self.d.world == 1
            ctx = self.model.no_sync() if (self.d.world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with self.autocast:
                    _, loss = self.model(rows[:, :-1], rows[:, 1:])
                (loss / len(batches)).backward()
            loss_sum += loss.detach().float()
        clip = self.args.grad_clip if self.args.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), clip))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss = loss_sum / len(batches)
        if self.d.world > 1:
            dist.all_reduce(loss)
            loss = loss / self.d.world
        self.last_loss = float(loss)
        dt = time.perf_counter() - t0
        return {"step": self.step, "tokens": self.step * self.rows_per_step * self.n_ctx, "loss": self.last_loss,
                "lr": lr, "grad_norm": grad_norm, "tok_per_s": round(self.rows_per_step * self.n_ctx / dt, 1)}

    def replay(self, end: int) -> Iterator[dict]:
        """Train from the loaded state up to step `end`, yielding each step's metrics row and
        writing nothing (--fill-in decides what to keep). The same steps as the original run, so
        on the same device and thread count the same numbers, bit for bit."""
        while self.step < end:
            row = self.train_step()
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"the training loss became {row['loss']} at step {self.step}; "
                                         "try a lower --lr.")
            yield row

    def start(self) -> None:
        """Train the run to its last step: from its newest training state when it has one (the
        logs cut back to that step, so a resumed run logs each step once), else from step 0."""
        fresh = not has_state(self.run_dir)
        if not fresh:
            self.load()
        if self.d.main:
            last = -1 if fresh else self.step
            keep_rows_through([metrics_jsonl(self.run_dir), samples_jsonl(self.run_dir)], last)
        self.run(fresh)

    def run(self, fresh: bool) -> None:
        if fresh:
            self.begin()
        bar = tqdm(total=self.args.steps, initial=self.step, desc="train", unit="step",
                   disable=None if self.d.main else True, dynamic_ncols=True)
        while self.step < self.args.steps:
            row = self.train_step()
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"the training loss became {row['loss']} at step {self.step}; "
                                         "try a lower --lr.")
            if self.d.main:
                at_ckpt = self.step in self.schedule
                if at_ckpt or self.step % self.args.eval_every == 0:
                    row["val_loss"] = self.evaluate("val")
                self.rows.append(row)
                if at_ckpt:
                    self.checkpoint(row)
                elif len(self.rows) >= FLUSH_EVERY:
                    self.flush()
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tok_per_s']:.0f}", refresh=False)
            bar.update(1)
        bar.close()
        if self.d.main:
            self.flush()
