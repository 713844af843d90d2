"""GPT-2 from scratch, as a TransformerLens HookedRootModule.

Architecture as OpenAI's GPT-2: learned positional embedding, pre-LN blocks, tanh-GELU MLP (4x),
final LayerNorm, unembedding tied to the token embedding, biases on. Hook names and shapes are
TransformerLens', so `run_with_cache`, `run_with_hooks`, `hooks()` and every probe written for a
HookedTransformer work here too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.HookedRootModule import HookedRootModule
from transformer_lens.hook_points import HookPoint

from model import attention  # noqa: F401  (registers the attention kinds into model.config.ATTENTION)
from model.config import ATTENTION, GPTConfig
from model.layers import Block, LayerNorm, init_scale


@dataclass
class GenerationCache:
    """Per-layer attention state (keys/values, or a recurrent state) carried between calls to
    forward during generation, and the absolute position of the next token."""

    layers: list[dict] = field(default_factory=list)
    offset: int = 0

    @classmethod
    def empty(cls, n_layer: int) -> "GenerationCache":
        return cls(layers=[{} for _ in range(n_layer)], offset=0)


class GPT(HookedRootModule):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, ATTENTION[cfg.attention]) for _ in range(cfg.n_layer)])
        self.ln_final = LayerNorm(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.apply(self._init_weights)
        self.setup()

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, N(0, 0.02/sqrt(2 n_layer)) for the projections that
        write into the residual stream, zero biases, unit LayerNorm gains."""
        if isinstance(module, nn.Linear):
            std = init_scale(self.cfg) if getattr(module, "residual_projection", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def num_params(self) -> int:
        """Parameter count with the tied unembedding counted once (GPT-2 small: 124,439,808)."""
        return sum(p.numel() for p in self.parameters())

    # -- forward -----------------------------------------------------------------------------
    def as_tokens(self, tokens: Any) -> torch.Tensor:
        """Accept [B,P] or [P] ints (tensor or list) and check them against the vocabulary."""
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}.")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}.")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), got ids from "
                             f"{int(tokens.min())} to {int(tokens.max())}.")
        return tokens.to(self.device, torch.long)

    def forward(self, tokens: Any, targets: torch.Tensor | None = None,
                cache: GenerationCache | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [B,P,V]; with targets also the mean cross-entropy (targets -1 are ignored)."""
        logits = self.logits_from_residual(self.residual(tokens, cache))
        if targets is None:
            return logits
        targets = targets.to(logits.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def logits_from_residual(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of the residual stream after the last block: ln_final, then the tied
        (or separate) unembedding."""
        x = self.ln_final(x)
        return F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)

    def residual(self, tokens: Any, cache: GenerationCache | None = None) -> torch.Tensor:
        """The residual stream after the last block [B,P,M] (advancing `cache` by P positions)."""
        tokens = self.as_tokens(tokens)
        B, P = tokens.shape
        offset = cache.offset if cache is not None else 0
        if offset + P > self.cfg.n_ctx:
            raise ValueError(f"Sequence of {offset + P} tokens is longer than the model's context "
                             f"n_ctx={self.cfg.n_ctx}; pass at most {self.cfg.n_ctx} tokens.")
        pos = torch.arange(offset, offset + P, device=tokens.device)
        embed = self.hook_embed(self.wte(tokens))
        pos_embed = self.hook_pos_embed(self.wpe(pos).unsqueeze(0).expand(B, P, -1))
        x = self.drop(embed + pos_embed)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, offset)
        if cache is not None:
            cache.offset += P
        return x

    def private_copy(self) -> "GPT":
        """A model whose modules (and so hook points) are its own, but whose parameters and
        buffers are this model's tensors, not copies.

        Hooks live on modules, so hooks attached to a shared model fire for every thread that
        runs it. The app keeps one loaded model per checkpoint for all browser sessions; each
        computation that hooks (ablation, caching) runs on a private copy instead, which costs
        a copy of the module tree (milliseconds) and no weight memory."""
        if any(hp.fwd_hooks or hp.bwd_hooks for hp in self.hook_dict.values()):
            raise RuntimeError("private_copy() of a model with hooks attached would copy those hooks; "
                               "take the copy before attaching any.")
        shared = {id(t): t for t in (*self.parameters(), *self.buffers())}
        return copy.deepcopy(self, memo=shared)

    def run_with_cache(self, *args: Any, return_cache_object: bool = True, **kwargs: Any):
        """As HookedTransformer.run_with_cache: (output, ActivationCache)."""
        out, cache_dict = super().run_with_cache(*args, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache_dict

    # -- generation --------------------------------------------------------------------------
    def next_logits(self, out: torch.Tensor, feed: torch.Tensor, cache: GenerationCache | None,
                    ) -> tuple[torch.Tensor, GenerationCache | None]:
        """Logits [B,V] of the token after `out` [B,P], and the cache to use next. With a cache only
        `feed` (the tokens not yet in it) runs, and once the window is full the cache restarts over
        the last n_ctx tokens, exactly as generation without a cache does; without one the last
        n_ctx tokens run in full. Only the last position is read out: a prompt of P tokens would
        otherwise make [B, P, V] logits of which one row per sequence is used."""
        n_ctx = self.cfg.n_ctx
        if cache is None:
            x = self.residual(out[:, -n_ctx:])
        else:
            if cache.offset + feed.shape[1] > n_ctx:
                cache, feed = GenerationCache.empty(self.cfg.n_layer), out[:, -n_ctx:]
            x = self.residual(feed, cache=cache)
        return self.logits_from_residual(x[:, -1:])[:, -1], cache

    @torch.no_grad()
    def generate(self, tokens: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Continue `tokens` ([P] or [B,P]) by `max_new_tokens`; returns prompt + continuation [B,P+N].

        Temperature 0 is greedy. Prompts longer than n_ctx are left-truncated as the model's
        input (the returned tensor keeps the whole prompt). With `use_cache` the keys/values of
        earlier positions are reused; once the window is full, positions shift and each step is
        recomputed over the last n_ctx tokens, exactly as generation without a cache does.
        Hooks attached with `hooks()` fire on every step (those of ln_final on the last position,
        the only one read out).
        """
        check_sampling_args(max_new_tokens, temperature, top_k, top_p, seed)
        out = self.as_tokens(tokens)
        if out.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token.")
        was_training = self.training
        self.eval()
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
        cache = GenerationCache.empty(self.cfg.n_layer) if use_cache else None
        feed = out[:, -self.cfg.n_ctx:]
        try:
            for _ in range(max_new_tokens):
                logits, cache = self.next_logits(out, feed, cache)
                nxt = sample_next(logits, temperature, top_k, top_p, gen)
                out = torch.cat([out, nxt], dim=1)
                feed = nxt
        finally:
            self.train(was_training)
        return out


    @torch.no_grad()
    def generate_each(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      temperatures: Sequence[float], top_p: float | None = None,
                      seeds: Sequence[int | None] | None = None) -> list[torch.Tensor]:
        """`generate` for several prompts of any lengths in one batch: row i is decoded at
        `temperatures[i]` with its own generator seeded `seeds[i]`, so it gets the tokens
        generate(prompts[i], ..., seed=seeds[i]) gives, up to the rounding of a batched product,
        for little more than the cost of one row (8 rows of the nano model: 1.6 ms a token against
        0.91 for one). Returns each row's `max_new_tokens` new tokens.

        The rows advance together from the shortest prompt's length, and a row whose prompt is not
        used up yet is fed its own next prompt token instead of a sample: every row has the same
        length at every step, so there is no padding and no mask, and each row's positions are its
        own. A row with a shorter prompt generates past its `max_new_tokens`; those are dropped."""
        n = len(prompts)
        seeds = [None] * n if seeds is None else list(seeds)
        if len(temperatures) != n or len(seeds) != n:
            raise ValueError(f"generate_each needs one temperature and one seed per prompt: {n} prompts, "
                             f"{len(temperatures)} temperatures, {len(seeds)} seeds.")
        for temperature, seed in zip(temperatures, seeds):
            check_sampling_args(max_new_tokens, temperature, None, top_p, seed)
        if n == 0 or any(len(p) == 0 for p in prompts):
            raise ValueError("generate_each needs at least one prompt, each of at least one token.")
        lengths = [len(p) for p in prompts]
        rows = [torch.as_tensor(list(p), dtype=torch.long, device=self.device) for p in prompts]
        gens = [None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed)) for seed in seeds]
        out = torch.stack([r[:min(lengths)] for r in rows])
        was_training = self.training
        self.eval()
        cache, feed = GenerationCache.empty(self.cfg.n_layer), out[:, -self.cfg.n_ctx:]
        try:
            for pos in range(min(lengths), max(lengths) + max_new_tokens):
                logits, cache = self.next_logits(out, feed, cache)
                nxt = torch.stack([rows[i][pos:pos + 1] if pos < lengths[i] else
                                   sample_next(logits[i:i + 1], temperatures[i], None, top_p, gens[i])[0]
                                   for i in range(n)])
                out = torch.cat([out, nxt], dim=1)
                feed = nxt
        finally:
            self.train(was_training)
        return [out[i, lengths[i]:lengths[i] + max_new_tokens] for i in range(n)]


# The most tokens a command generates at once (generate's --max-new-tokens, train's --sample-tokens):
# 10**30 would not be a long job but a hang.
MAX_NEW_TOKENS = 100_000


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                        seed: int | None = None) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if not isinstance(temperature, (int, float)) or not (temperature >= 0) or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not (0 < top_p <= 1)):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -2 ** 63 <= seed < 2 ** 64):
        raise ValueError(f"seed must be an integer in [-2**63, 2**64) or None, got {seed!r}.")


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                gen: torch.Generator | None) -> torch.Tensor:
    """One token per row [B,1] from last-position logits [B,V]."""
    logits = logits.float()
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or a temperature float32 cannot hold apart from 0
        return logits.argmax(dim=-1, keepdim=True)
    # Shift by the row maximum first: softmax is unchanged, and a temperature so small that
    # logits / temperature would overflow to inf (and then NaN) tends to greedy instead.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop_sorted[..., 0] = False  # the most likely token always stays (top_p may round to 0 in float32)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)
