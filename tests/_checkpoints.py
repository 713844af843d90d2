"""Helpers shared by test_checkpoint.py and test_checkpoint_state.py: a pickle that would run code,
a file's sha256, and editing (optionally resealing) a JSON file as a forger would."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from store import checkpoint as ck


class Evil:
    """Unpickling this would create `marker` (a stand-in for running arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"step": 3, "payload": Evil(marker)}, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def edit_json(path: Path, change, reseal: bool = False) -> None:
    """Apply `change(obj)` to a JSON file; with `reseal`, recompute its self hash (a forgery)."""
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(ck.seal(obj) if reseal else obj))
