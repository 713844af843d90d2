"""The GPT-2 itself: config, hooked model, tokenizer, checkpoint I/O and interop.

The names below load on first use (PEP 562), so a process that only reads the run store
(`store.runio`, `store.runlayout`, `store.runrecord`: the app's launcher, for one) does not pay
for torch and TransformerLens, whose import would hold the launcher back seconds before it could
start the app server and training (measured in docs/performance.md)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.config import GPTConfig, PRESETS
    from model.gpt import GPT, GenerationCache

__all__ = ["GPT", "GPTConfig", "GenerationCache", "PRESETS"]
_HOME = {"GPT": "gpt", "GenerationCache": "gpt", "GPTConfig": "config", "PRESETS": "config"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        from importlib import import_module
        return getattr(import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
