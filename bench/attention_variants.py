"""Forward+backward time and peak memory of each attention kind against context length."""
from __future__ import annotations

import torch

from model import GPT, GPTConfig
from model.config import ATTENTION
from .common import median_time


def saved_activation_mib(fn) -> float:
    """MiB of tensors autograd saves for the backward pass while fn runs its forward: the memory
    that grows with context (P x P for softmax attention with a materialised pattern, P for linear).
    Counted through saved_tensors_hooks because CPU RSS hides it behind the allocator's cache."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def run(contexts: tuple[int, ...] = (128, 256, 512, 1024, 2048)) -> str:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        contexts = contexts + (4096, 8192)
    rows = ["## Attention variants: forward+backward time / memory saved for backward (CUDA: peak allocated), "
            "batch 1, nano width (4 layers, 128 wide)", "",
            "| kind | " + " | ".join(f"P={p}" for p in contexts) + " |",
            "|---|" + "---|" * len(contexts)]
    for kind in ATTENTION:
        cells = []
        for P in contexts:
            cfg = GPTConfig.preset("nano", n_ctx=P, attention=kind)
            torch.manual_seed(0)
            model = GPT(cfg).to(device).train()
            x = torch.randint(0, cfg.vocab_size, (1, P + 1), device=device)

            def step():
                _, loss = model(x[:, :-1], x[:, 1:])
                loss.backward()
                model.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()

            t = median_time(step, repeats=3, warmup=1)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                step()
                mem = torch.cuda.max_memory_allocated() / 2**20
            else:
                mem = saved_activation_mib(step)
            cells.append(f"{t * 1e3:.0f} ms / {mem:.0f} MiB")
            print(f"{kind:9s} P={P:5d}: {cells[-1]}", flush=True)
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
