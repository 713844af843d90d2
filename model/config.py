"""Model configuration: one dataclass, presets, and validation with messages a user can act on."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

# The attention registry: kind name -> module class. model/attention.py fills it with
# @register_attention (importing the `model` package imports it), so adding a kind is one class and
# its one decorator line, and the config accepts exactly the kinds registered.
ATTENTION: dict[str, type] = {}


def register_attention(name: str):
    def add(cls: type) -> type:
        ATTENTION[name] = cls
        return cls
    return add


def attention_kinds() -> tuple[str, ...]:
    return tuple(ATTENTION)
# MLP activations, by Hugging Face's names: GPT-2's tanh-approximated GELU, and the exact (erf) GELU
# that nanoGPT's model.py uses, so its checkpoints import with identical logits.
ACTIVATIONS = ("gelu_new", "gelu")

PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo: small enough to train in minutes; the vocab is a compact one built from the corpus
    # (vocab_size here is a placeholder the training pipeline replaces with the compact vocab size).
    "nano": dict(n_layer=4, n_head=4, n_embd=128, n_ctx=128, vocab_size=4096),
    # The model of the original write-up.
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, n_ctx=512, vocab_size=50257),
    "small": dict(n_layer=12, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257),
    "medium": dict(n_layer=24, n_head=16, n_embd=1024, n_ctx=1024, vocab_size=50257),
    "large": dict(n_layer=36, n_head=20, n_embd=1280, n_ctx=1024, vocab_size=50257),
}


@dataclass
class GPTConfig:
    """Shape and options of a GPT-2. Defaults are GPT-2 small."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_ctx: int = 1024
    vocab_size: int = 50257
    dropout: float = 0.0
    bias: bool = True
    attention: str = "standard"
    ln_eps: float = 1e-5
    tie_embeddings: bool = True
    activation: str = "gelu_new"
    # Attention-only blocks (Olsson et al. 2022; Hoogland et al. 2024): no MLP and no ln2, so a
    # block is resid_post = resid_pre + attn(ln1(resid_pre)).
    attn_only: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with one sentence naming the bad field and what is allowed."""
        for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"allowed n_head values divide {self.n_embd}."
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}.")
        if not isinstance(self.attention, str) or self.attention not in ATTENTION:
            raise ValueError(
                f"GPTConfig.attention must be one of {', '.join(attention_kinds())}, got {self.attention!r}."
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GPTConfig.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}.")
        if isinstance(self.ln_eps, bool) or not isinstance(self.ln_eps, (int, float)) or not (0 < self.ln_eps < float("inf")):
            raise ValueError(f"GPTConfig.ln_eps must be a positive finite number, got {self.ln_eps!r}.")
        for name in ("bias", "tie_embeddings", "attn_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}.")

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        return 4 * self.n_embd

    # TransformerLens spellings, so code written against HookedTransformer's `cfg` (ActivationCache
    # helpers, probes) reads this config unchanged.
    @property
    def n_layers(self) -> int:
        return self.n_layer

    @property
    def n_heads(self) -> int:
        return self.n_head

    @property
    def d_model(self) -> int:
        return self.n_embd

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named preset (nano, tiny, small, medium, large), optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; allowed presets are {', '.join(PRESETS)}.")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown GPTConfig field {unknown[0]!r}; allowed fields are {', '.join(sorted(known))}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict. `attn_only` is written only when true, so the config
        of every other model (run.json, meta.json and the hashes sealed over them) is the same
        as before attention-only models existed, and a run made then still resumes."""
        d = asdict(self)
        if not d["attn_only"]:
            del d["attn_only"]
        return d

    def misfit(self, shapes: dict[str, tuple[int, ...]]) -> str | None:
        """Why this config cannot describe weights of these shapes (name -> shape), checked on the
        embeddings and the block count before a model is built: a crafted config must not make us
        allocate a model far larger than the file (minutes, or an OOM kill). None when it fits."""
        blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
        want = {"wte.weight": (self.vocab_size, self.n_embd), "wpe.weight": (self.n_ctx, self.n_embd)}
        for name, shape in want.items():
            if shapes.get(name) != shape:
                return f"{name} has shape {shapes.get(name)}, the config needs {shape}"
        if len(blocks) != self.n_layer:
            return f"the file holds {len(blocks)} blocks, the config needs {self.n_layer}"
        has_mlp = any(re.match(r"blocks\.\d+\.(mlp|ln2)\.", k) for k in shapes)
        if self.attn_only and has_mlp:
            return "the file holds MLP weights, the config is attention-only (attn_only true)"
        if not self.attn_only and blocks and not has_mlp:
            return "the file holds no MLP weights (an attention-only model), the config has MLPs (attn_only false)"
        return None
