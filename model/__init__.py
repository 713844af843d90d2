"""The GPT-2 itself: config, hooked model, tokenizer, checkpoint I/O and interop."""
from .config import GPTConfig, PRESETS
from .gpt import GPT, GenerationCache

__all__ = ["GPT", "GPTConfig", "GenerationCache", "PRESETS"]
