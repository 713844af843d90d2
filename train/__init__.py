"""Training: corpora (built-in stories with canaries, text files, TinyStories), the token cache,
the loop that leaves checkpoints along the way, exact resume, DDP. CLI: `python -m train`."""
from .cli import main

__all__ = ["main"]
