"""Forward+backward time and peak memory of each attention kind against context length (issue 6)."""
from __future__ import annotations

import gc
import resource
import threading
import time

import torch

from model import GPT, GPTConfig
from model.attention import ATTENTION
from .common import median_time


def peak_rss_during(fn) -> float:
    """Peak extra resident memory (MiB) while fn runs, sampled from a thread (CPU has no
    allocator statistics like torch.cuda.max_memory_allocated)."""
    import psutil

    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return (peak[0] - base) / 2**20


def run(contexts: tuple[int, ...] = (128, 256, 512, 1024, 2048)) -> str:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        contexts = contexts + (4096, 8192)
    rows = ["## Attention variants: forward+backward, batch 1, nano width (4 layers, 128 wide)", "",
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
                mem = peak_rss_during(step)
            cells.append(f"{t * 1e3:.0f} ms / {mem:.0f} MiB")
            print(f"{kind:9s} P={P:5d}: {cells[-1]}", flush=True)
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
