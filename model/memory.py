"""Memory estimates, so that an absurd but valid request is refused at once with one sentence.

`python -m train --batch-size 100000000` is valid input, but it would run for minutes and then
exhaust memory. Every entry point that allocates in proportion to a user's sizes (training, the
probes runner, generation, the app) asks this module first what the request needs and what the
machine has, and refuses with `TooLarge` (a ValueError: one sentence) before it allocates.

The estimates count float32 tensors (4 bytes a value) and need not be exact: they are checked to
lie within about 2x of the measured peak memory of real nano- and tiny-sized steps
(tests/test_memory.py). Symbols: L layers, H heads, C width, V vocabulary, T context (n_ctx),
B rows (sequences), P positions per row, N parameters.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FLOAT = 4  # bytes of a float32 value: parameters, optimizer states and activations are counted in it
# Refuse when the estimate exceeds this share of the available memory: the estimate is rough, and
# the rest of the machine (the OS, the page cache that others need) should keep some room.
MARGIN = 0.9
# Values kept per position and layer, in units of C, while training (for the backward pass): the
# LayerNorm inputs and outputs, q/k/v, the attention output, the residual sums (about 10 C) and the
# MLP's pre- and post-GELU activations and their gradients' buffers (4 C each, plus scratch).
TRAIN_PER_LAYER = 24
# The same without the MLP and its LayerNorm (attention-only blocks, GPTConfig.attn_only): ln1's
# input and output, q/k/v, the attention output and the residual sum, plus scratch.
TRAIN_PER_LAYER_ATTN_ONLY = 10
# Values alive at once per position during an inference forward (no graph kept): the residual
# stream, one layer's q/k/v and the MLP's 4 C pre- and post-activation.
FORWARD_PER_POSITION = 14
FORWARD_PER_POSITION_ATTN_ONLY = 6  # the same without the MLP's 4 C pre- and post-activation
# Copies of the [B,P,V] logits alive at the peak: in training the logits, their log-softmax (kept
# by cross_entropy) and the two gradients of the backward pass; in inference the logits plus the
# log-softmax / softmax a probe takes of them.
TRAIN_LOGIT_COPIES = 4
FORWARD_LOGIT_COPIES = 3
# Copies of an explicit [B,H,P,P] attention matrix alive at once: scores, mask and softmax.
SCORE_COPIES = 3
LINEAR_CHUNK = 64  # model.attention.LinearAttention.chunk_size: its kernel is [B,H,P,64], not [B,H,P,P]
GPT2_VOCAB = 50257
# Fixed costs PyTorch pays on first use, measured on CPU (torch 2.13): the autograd engine, the
# optimizer and the kernels a backward loads (~100 MB whatever the model's size), and the kernels
# of a first forward (~16 MB). Without them a tiny request would be underestimated 4x.
TRAIN_OVERHEAD = 100 * 2 ** 20
FORWARD_OVERHEAD = 16 * 2 ** 20
CORPUS_PER_CHAR = 8
CORPUS_OVERHEAD = 64 * 2 ** 20


class TooLarge(ValueError):
    """A request that would not fit in memory; the message is one sentence with the estimate."""


# -- what the machine has ---------------------------------------------------------------------
def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's cgroup may still allocate (limit - usage), or None when no limit is set.
    A container's limit can be far below the host's MemAvailable, and the kernel kills at the limit.
    cgroup v2 names them memory.max / memory.current, v1 memory/memory.limit_in_bytes / usage_in_bytes."""
    pairs = [(root / "memory.max", root / "memory.current"),
             (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes")]
    for limit_path, usage_path in pairs:
        try:
            text = limit_path.read_text().strip()
        except OSError:
            continue
        if not text.isdigit() or int(text) >= 2 ** 60:  # "max", or v1's "no limit" (a huge number)
            return None
        try:
            usage = int(usage_path.read_text().strip())
        except (OSError, ValueError):
            usage = 0
        return max(0, int(text) - usage)
    return None


def _fallback_available() -> int:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 ** 62  # unknown: refuse nothing rather than everything


def available_bytes() -> int:
    """Bytes of RAM this process can still allocate: MemAvailable, capped by a cgroup limit.
    (Memory the calling process already holds is not counted: it is in use, not available.)"""
    have = _meminfo_available()
    if have is None:
        have = _fallback_available()
    room = _cgroup_room()
    return have if room is None else min(have, room)


def device_available_bytes(device: Any) -> int:
    """Free memory where tensors on `device` live: the GPU's free memory for CUDA, else RAM."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch
        return int(torch.cuda.mem_get_info(device)[0])
    return available_bytes()


# -- what a request needs ---------------------------------------------------------------------
def param_count(cfg: Any) -> int:
    """Parameters of model.GPT(cfg), exactly: embeddings V*C + T*C; per block two LayerNorms,
    the attention's qkv 3C*C and output C*C projections (plus the gate's C*C + C for `gated`),
    and the MLP's 4C*C twice (one LayerNorm and no MLP for `attn_only`); a final LayerNorm; an
    untied unembedding V*C."""
    C, bias = cfg.n_embd, int(cfg.bias)
    norm = C * (1 + bias)
    attn = 3 * C * C + 3 * C * bias + C * C + C * bias
    if cfg.attention == "gated":
        attn += C * C + C
    mlp = 4 * C * C + 4 * C * bias + 4 * C * C + C * bias
    block = norm + attn if attn_only(cfg) else 2 * norm + attn + mlp
    unembed = 0 if cfg.tie_embeddings else cfg.vocab_size * C
    return cfg.vocab_size * C + cfg.n_ctx * C + cfg.n_layer * block + norm + unembed


def attn_only(cfg: Any) -> bool:
    """Whether the blocks are attention-only (a config from before the option is not)."""
    return bool(getattr(cfg, "attn_only", False))


def train_per_layer(cfg: Any) -> int:
    return TRAIN_PER_LAYER_ATTN_ONLY if attn_only(cfg) else TRAIN_PER_LAYER


def forward_per_position(cfg: Any) -> int:
    return FORWARD_PER_POSITION_ATTN_ONLY if attn_only(cfg) else FORWARD_PER_POSITION


def model_bytes(cfg: Any) -> int:
    """The weights in float32: 4 N."""
    return FLOAT * param_count(cfg)


def _attention_keys(cfg: Any, positions: int, explicit: bool) -> int:
    """Keys per query of the attention matrix that is materialised: P when the pattern is explicit
    (hooked, or no fused kernel), a chunk of 64 for linear attention, none for fused SDPA."""
    if cfg.attention == "linear" and not explicit:
        return min(positions, LINEAR_CHUNK)
    return positions if explicit else 0


def forward_bytes(cfg: Any, rows: int, positions: int, explicit_attention: bool = False) -> int:
    """Transient memory of one inference forward (no autograd graph) of `rows` x `positions`:

        4 * (B*P*(14*C + 3*V) + 3*B*H*P*K)  +  16 MiB

    The residual stream and one layer's intermediates (14 C per position; 6 C for attention-only
    blocks), the logits with the (log-)softmax a caller takes of them (3 V), and with an explicit
    attention pattern its scores, mask and softmax (K = P keys; 64 for linear attention's chunks; 0 for fused SDPA); plus the
    kernels' fixed cost (FORWARD_OVERHEAD)."""
    B, P = int(rows), int(positions)
    keys = _attention_keys(cfg, P, explicit_attention)
    per_row = P * (forward_per_position(cfg) * cfg.n_embd + FORWARD_LOGIT_COPIES * cfg.vocab_size)
    per_row += SCORE_COPIES * cfg.n_head * P * keys
    return FLOAT * B * per_row + FORWARD_OVERHEAD


def kv_cache_bytes(cfg: Any, rows: int, positions: int) -> int:
    """Keys and values kept by cached generation: 4 * 2*L*B*P*C."""
    return FLOAT * 2 * cfg.n_layer * int(rows) * int(positions) * cfg.n_embd


def train_bytes(cfg: Any, micro_batch: int, seq_len: int | None = None, explicit_attention: bool = False) -> int:
    """Peak memory of one training step of a micro-batch of B sequences of P = seq_len (default
    n_ctx) positions:

        4 * (4 N  +  B*P*(24*L*C + 4*V)  +  3*L*B*H*P*K)  +  100 MiB

    Weights, gradients and AdamW's two states (4 N floats); the activations autograd keeps for
    the backward pass (24 C per position and layer; 10 C for attention-only blocks); the logits,
    their log-softmax and the two gradients of the backward (4 V per position); and, when
    attention is materialised, each layer's [B,H,P,K] scores (K as in forward_bytes: 0 for fused
    SDPA, which keeps only the output and a log-sum-exp); plus autograd's fixed cost
    (TRAIN_OVERHEAD)."""
    B = int(micro_batch)
    P = int(seq_len if seq_len is not None else cfg.n_ctx)
    state = 4 * param_count(cfg)
    keys = _attention_keys(cfg, P, explicit_attention)
    acts = B * P * (train_per_layer(cfg) * cfg.n_layer * cfg.n_embd + TRAIN_LOGIT_COPIES * cfg.vocab_size)
    acts += SCORE_COPIES * cfg.n_layer * B * cfg.n_head * P * keys
    return FLOAT * (state + acts) + TRAIN_OVERHEAD


def corpus_bytes(chars: int) -> int:
    """Preparing a generated corpus of `chars` characters: the text, its documents and their token
    arrays are in memory together (measured on the stories corpus: about 7.7 bytes a character
    beyond a fixed ~60 MB for the tokenizer), so 8 bytes a character plus 64 MiB."""
    return CORPUS_PER_CHAR * int(chars) + CORPUS_OVERHEAD


def generate_bytes(cfg: Any, rows: int, prompt_len: int, max_new_tokens: int) -> int:
    """Cached generation: the weights, the prompt's forward (at most n_ctx positions) and the
    key/value cache of the window (at most n_ctx positions)."""
    window = max(1, min(cfg.n_ctx, int(prompt_len) + int(max_new_tokens)))
    first = max(1, min(cfg.n_ctx, int(prompt_len)))
    return model_bytes(cfg) + forward_bytes(cfg, rows, first) + kv_cache_bytes(cfg, rows, window)


# -- the refusal ------------------------------------------------------------------------------
def format_bytes(n: int | float) -> str:
    """A byte count as a person reads it: 812.4 GiB, 3.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "PiB" and value >= 1e5:
        return f"{value:.3g} PiB"
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def check_training_fits(cfg: Any, batch_size: int, device: Any, processes: int = 1,
                        corpus_mb: float | None = None, val_fraction: float = 0.0) -> None:
    """TooLarge (one sentence) when a training step of `batch_size` sequences would not fit in the
    device's memory (`processes` local ranks sharing a CPU machine's memory each need their share),
    or when generating a stories corpus of `corpus_mb` MB (and its held-out share) in memory would
    not fit in RAM: `--batch-size 100000000` is valid input that would otherwise run for minutes,
    then exhaust memory."""
    gpu = getattr(device, "type", device) == "cuda"
    what = (f"training with --batch-size {batch_size} (n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_ctx {cfg.n_ctx}, "
            f"vocab {cfg.vocab_size}" + (f", {processes} processes" if processes > 1 else "") + ")")
    check_fits(what, train_bytes(cfg, batch_size) * max(1, processes), device_available_bytes(device),
               where="this GPU" if gpu else "this machine",
               advice="use a smaller --batch-size (with --grad-accum for the same global batch), --n-ctx or model")
    if corpus_mb is not None:
        chars = int(corpus_mb * 1_000_000 * (1 + val_fraction))
        check_fits(f"preparing the stories corpus with --corpus-mb {corpus_mb:g}", corpus_bytes(chars),
                   available_bytes(), advice="use a smaller --corpus-mb")


def fits(need: int, have: int) -> bool:
    """The margin policy: a request fits when it needs at most MARGIN (90%) of what is available."""
    return need <= MARGIN * have


def check_fits(what: str, need: int, have: int | None = None,
               advice: str = "use smaller sizes or a smaller model", where: str = "this machine") -> None:
    """Raise TooLarge, one sentence, when `need` bytes do not fit in `have` (default: the RAM
    available now), e.g. "training with --batch-size 100000000 needs about 812.4 GiB of memory
    (estimate), but this machine has 21.3 GiB available; use a smaller --batch-size."."""
    have = available_bytes() if have is None else int(have)
    if not fits(need, have):
        raise TooLarge(f"{what} needs about {format_bytes(need)} of memory (estimate), but {where} has "
                       f"{format_bytes(have)} available; {advice}.")
