"""Speed against references measured in the same process: training tokens/s vs HF and vs
nanoGPT's model.py (bench/nanogpt_ref.py), run_with_cache vs TransformerLens and vs a plain
forward, hook overhead, batched ablation sweep vs per-head loop, KV-cache generation vs
recomputation, and training FLOP/s against this machine's matmul peak."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from model import GPT, GPTConfig
import probes
from model.interop import to_hf, to_transformer_lens
from .common import Goal, Report, interleaved_medians, median_time
from .nanogpt_ref import NanoGPT, config_like


def matmul_peak_flops(n: int = 2048, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Measured FLOP/s of a large square matmul: the machine's practical float32 peak."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def run():
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()

    return 2 * n**3 / median_time(run, repeats=5, warmup=2)


def train_flops_per_token(cfg: GPTConfig) -> float:
    """6 x (matmul parameters incl. the unembedding) + attention scores/mixing (PaLM appendix B)."""
    L, M, T, V = cfg.n_layer, cfg.n_embd, cfg.n_ctx, cfg.vocab_size
    per_layer = 4 * M * M if getattr(cfg, "attn_only", False) else 12 * M * M  # attention 4 M², MLP 8 M²
    matmul_params = L * per_layer + V * M
    return 6 * matmul_params + 12 * L * M * T


def train_step_fn(model: nn.Module, tokens: torch.Tensor, hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # as a data loader hands them over

    def step():
        if hf:
            loss = model(input_ids=x, labels=tokens[:, :-1]).loss
        else:
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_training(report: Report, preset: str, batch: int, ctx: int, vocab: int | None) -> None:

    over = dict(n_ctx=ctx) if vocab is None else dict(n_ctx=ctx, vocab_size=vocab)
    cfg = GPTConfig.preset(preset, **over)
    torch.manual_seed(0)
    ours = GPT(cfg).train()
    hf = to_hf(copy.deepcopy(ours)).train()
    tokens = torch.randint(0, cfg.vocab_size, (batch, ctx + 1))
    t_ours = median_time(train_step_fn(ours, tokens, hf=False), repeats=5, warmup=2)
    t_hf = median_time(train_step_fn(hf, tokens, hf=True), repeats=5, warmup=2)
    n_tok = batch * ctx
    report.add(Goal(f"training tokens/s, `{preset}` (V={cfg.vocab_size}, {batch}x{ctx}) vs HF GPT2LMHeadModel",
                    t_hf / t_ours, 1.2, detail=f"ours {n_tok / t_ours:,.0f} tok/s, HF {n_tok / t_hf:,.0f} tok/s"))
    if preset == "tiny":
        peak = matmul_peak_flops()
        mfu = train_flops_per_token(cfg) * n_tok / t_ours / peak
        report.add(Goal("training MFU, `tiny` (fraction of measured fp32 matmul peak)", 100 * mfu, 40, unit="%",
                        detail=f"peak {peak / 1e9:,.0f} GFLOP/s, model {train_flops_per_token(cfg) * n_tok / t_ours / 1e9:,.0f} GFLOP/s"))


NANOGPT_GOAL = 0.95


def bench_nanogpt(report: Report, preset: str, batch: int, ctx: int, vocab: int | None, repeats: int = 5) -> None:
    """Our training step (forward, backward, AdamW) against nanoGPT's model.py at the same shape,
    the same optimizer for both, steps interleaved so drift falls on both. Ours is the model
    training builds (tanh GELU); nanoGPT's is its own (exact GELU)."""

    over = dict(n_ctx=ctx) if vocab is None else dict(n_ctx=ctx, vocab_size=vocab)
    cfg = GPTConfig.preset(preset, **over)
    torch.manual_seed(0)
    ours = GPT(cfg).train()
    torch.manual_seed(0)
    ref = NanoGPT(config_like(cfg)).train()
    tokens = torch.randint(0, cfg.vocab_size, (batch, ctx + 1))
    t_ours, t_ref = interleaved_medians([train_step_fn(ours, tokens, hf=False), train_step_fn(ref, tokens, hf=False)],
                                        repeats=repeats, warmup=2)
    n_tok = batch * ctx
    report.add(Goal(f"training tokens/s, `{preset}` (V={cfg.vocab_size}, {batch}x{ctx}) vs nanoGPT model.py",
                    t_ref / t_ours, NANOGPT_GOAL,
                    detail=f"ours {n_tok / t_ours:,.0f} tok/s, nanoGPT {n_tok / t_ref:,.0f} tok/s "
                           f"({torch.get_num_threads()} threads)"))


CACHE_GOAL = 1.15


def bench_cache_overhead(report: Report, batch: int = 4, repeats: int = 9) -> None:
    """`run_with_cache` with every hook against a plain forward of the same model (tiny, n_ctx 512),
    interleaved. Caching every hook turns on the explicit attention pattern, the per-head results
    and the spelled-out LayerNorm, so this is the whole price of looking at everything."""
    cfg = GPTConfig.preset("tiny")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.n_ctx))
    with torch.no_grad():
        n_hooks = len(model.run_with_cache(tokens)[1])
        t_cache, t_plain = interleaved_medians([lambda: model.run_with_cache(tokens), lambda: model(tokens)],
                                               repeats=repeats, warmup=1)
    report.add(Goal(f"`run_with_cache` (all {n_hooks} hooks) vs plain forward, `tiny` ({batch}x{cfg.n_ctx})",
                    t_cache / t_plain, CACHE_GOAL, higher_is_better=False,
                    detail=f"{t_cache * 1e3:.0f} ms vs {t_plain * 1e3:.0f} ms"))


def strip_hooks(model: GPT) -> GPT:
    """A copy of the model whose HookPoints are replaced by nn.Identity: the no-hooks reference."""
    from transformer_lens.hook_points import HookPoint

    bare = copy.deepcopy(model)
    for name, module in list(bare.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, HookPoint):
                setattr(module, child_name, _Identity())
    return bare


class _Identity(nn.Module):
    """Stands in for a HookPoint: nothing can be hooked, so the fast paths stay on."""
    fwd_hooks: list = []
    bwd_hooks: list = []

    def forward(self, x):
        return x


def bench_hooks(report: Report) -> None:

    cfg = GPTConfig.preset("tiny", n_ctx=256)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (4, 256))
    with torch.no_grad():
        bridge = to_transformer_lens(model)
        t_ours = median_time(lambda: model.run_with_cache(tokens), repeats=5)
        t_tl = median_time(lambda: bridge.run_with_cache(tokens), repeats=5)
        report.add(Goal("`run_with_cache` (every hook) vs TransformerLens TransformerBridge", t_tl / t_ours, 2.0,
                        detail=f"ours {t_ours * 1e3:.0f} ms, bridge {t_tl * 1e3:.0f} ms (tiny, 4x256)"))
        bare = strip_hooks(model)
        t_hooked = median_time(lambda: model(tokens), repeats=9)
        t_bare = median_time(lambda: bare(tokens), repeats=9)
        report.add(Goal("plain forward with unused hook points vs hooks removed (overhead)",
                        100 * (t_hooked / t_bare - 1), 5, unit="%", higher_is_better=False,
                        detail=f"{t_hooked * 1e3:.1f} ms vs {t_bare * 1e3:.1f} ms"))


def bench_sweep(report: Report) -> None:

    cfg = GPTConfig.preset("nano")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (16, cfg.n_ctx + 1))
    with torch.no_grad():
        t_sweep = median_time(lambda: probes.head_ablation_sweep(model, tokens, "zero"), repeats=3, warmup=1)
        fast = probes.head_ablation_sweep(model, tokens, "zero")

        def naive():
            out = torch.zeros(cfg.n_layer, cfg.n_head)
            for l in range(cfg.n_layer):
                for h in range(cfg.n_head):
                    out[l, h] = probes.ablate(model, tokens, [(l, h)], "zero")["delta"]
            return out

        t_naive = median_time(naive, repeats=3, warmup=1)
        diff = float((torch.as_tensor(fast) - naive()).abs().max())
    report.add(Goal("`probes.head_ablation_sweep` vs one `run_with_hooks` per head", t_naive / t_sweep, 3.0,
                    detail=f"{t_sweep * 1e3:.0f} ms vs {t_naive * 1e3:.0f} ms, max |Δ| {diff:.1e} (nano, 16x128)"))


def bench_generate(report: Report) -> None:
    cfg = GPTConfig.preset("tiny")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 8))
    t_cache = median_time(lambda: model.generate(prompt, 256, temperature=0), repeats=3, warmup=1)
    t_full = median_time(lambda: model.generate(prompt, 256, temperature=0, use_cache=False), repeats=3, warmup=1)
    report.add(Goal("`GPT.generate` 256 tokens, KV cache vs full recomputation", t_full / t_cache, 5.0,
                    detail=f"{t_cache:.2f} s vs {t_full:.2f} s (tiny, n_ctx 512)"))


def run_training(report: Report) -> None:
    bench_training(report, "tiny", batch=8, ctx=256, vocab=None)
    bench_training(report, "nano", batch=16, ctx=128, vocab=4096)


def run_nanogpt(report: Report) -> None:
    bench_nanogpt(report, "tiny", batch=8, ctx=512, vocab=None)
    bench_nanogpt(report, "nano", batch=16, ctx=128, vocab=4096)

