"""Whether a run's checkpoint series can be trusted: per-tensor weight digests, and the checkpoints
(or tensors) that two different steps share bit for bit.

A checkpoint's meta.json records the sha256 of every tensor's bytes (TENSOR_DIGESTS, written by
store.checkpoint.save_checkpoint). They name the damaged tensor when a weights file no longer
matches its recorded hash, and they show a stale or mislabelled checkpoint: two training steps never
leave every tensor unchanged (the workbench's learning rate is above 0 from the first optimizer
step on), so two steps with identical weights mean one of them holds the other's files, as 86 of
the 154 step branches of a published Pythia series did.

This module only reads bytes and meta.json dicts; store.checkpoint.run_integrity reads a run's
checkpoints and hands them here.
"""
from __future__ import annotations

import hashlib
import json
from itertools import combinations

TENSOR_DIGESTS = "tensor_sha256"  # meta.json: {tensor name: sha256 of its bytes in model.safetensors}
FROZEN_MIN_CHECKPOINTS = 3  # a tensor equal in every one of at least this many distinct checkpoints is frozen

RULE = ("Two steps have identical weights when model.safetensors has the same sha256 or every tensor's "
        "recorded sha256 is equal; each later step is paired with the earliest step of its weights. "
        "Training changes every trained tensor at every step (the learning rate is above 0 from the first "
        "step), so identical weights mean a stale or mislabelled checkpoint. identical_tensors lists pairs of "
        "steps with different weights that still share some tensors bit for bit (steps of identical "
        "checkpoints counted once, by the earliest); a tensor equal in every checkpoint, when there are at "
        f"least {FROZEN_MIN_CHECKPOINTS} different ones, is frozen by design (a buffer or an untrained "
        "parameter): it is listed in frozen_tensors and not counted as shared. Checkpoints written before "
        "per-tensor digests existed are compared by the whole file only. bad_checkpoints are those whose "
        "meta.json could not be verified (their step is then not compared).")


def tensor_digests(weights: bytes) -> dict[str, str] | None:
    """{name: sha256 of the tensor's bytes} of a safetensors file's bytes (8-byte little-endian header
    length, JSON header of data offsets, data), sorted by name; None when the header is unreadable or
    the file's length is not the one it promises (truncated or extended: no tensor is to blame)."""
    try:
        n = int.from_bytes(weights[:8], "little")
        header = json.loads(bytes(weights[8:8 + n]))
        spans = {name: (8 + n + int(h["data_offsets"][0]), 8 + n + int(h["data_offsets"][1]))
                 for name, h in sorted(header.items()) if name != "__metadata__"}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    if max((end for _, end in spans.values()), default=8 + n) != len(weights):
        return None
    view = memoryview(weights)
    return {name: hashlib.sha256(view[a:b]).hexdigest() for name, (a, b) in spans.items()}


def damaged_tensors(weights: bytes, recorded) -> list[str]:
    """Names of the tensors whose bytes in `weights` differ from their `recorded` digests (missing
    ones included); [] when nothing was recorded or the file's header cannot be read."""
    if not isinstance(recorded, dict) or not recorded:
        return []
    now = tensor_digests(weights)
    if now is None:
        return []
    return sorted(name for name in set(recorded) | set(now) if now.get(name) != recorded.get(name))


def _groups(metas: dict[int, dict]) -> dict[int, int]:
    """{step: the earliest step whose weights it has} (itself when none is earlier)."""
    parent = {s: s for s in metas}

    def root(s: int) -> int:
        while parent[s] != s:
            s = parent[s]
        return s
    for key in ("sha256", TENSOR_DIGESTS):
        first: dict[str, int] = {}
        for s in sorted(metas):
            value = metas[s].get(key)
            if not value:
                continue
            value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            if value in first:
                a, b = root(first[value]), root(s)
                parent[max(a, b)] = min(a, b)
            else:
                first[value] = s
    return {s: root(s) for s in metas}


def compare_checkpoints(metas: dict[int, dict], bad: dict[int, str] | None = None) -> dict:
    """The integrity section of summary.json from {step: verified meta.json} (and {step: problem}
    for checkpoints whose meta.json could not be read): see RULE."""
    group = _groups(metas)
    identical = [[group[s], s] for s in sorted(metas) if group[s] != s]
    reps = [s for s in sorted(metas) if group[s] == s and isinstance(metas[s].get(TENSOR_DIGESTS), dict)]
    digests = {s: metas[s][TENSOR_DIGESTS] for s in reps}
    frozen: list[str] = []
    if len(reps) >= FROZEN_MIN_CHECKPOINTS:
        names = set.intersection(*(set(d) for d in digests.values()))
        frozen = sorted(n for n in names if len({d[n] for d in digests.values()}) == 1)
    shared = []
    for a, b in combinations(reps, 2):
        names = sorted(n for n, d in digests[a].items() if n not in frozen and digests[b].get(n) == d)
        if names:
            shared.append({"steps": [a, b], "tensors": names})
    return {
        "checked": len(metas),
        "with_tensor_digests": sum(isinstance(m.get(TENSOR_DIGESTS), dict) for m in metas.values()),
        "identical_weights": identical,
        "identical_tensors": shared,
        "frozen_tensors": frozen,
        "bad_checkpoints": [{"step": s, "problem": p} for s, p in sorted((bad or {}).items())],
        "rule": RULE,
    }


def identical_sentence(integrity: dict | None) -> str | None:
    """One sentence naming the steps with identical weights, None when there are none."""
    pairs = (integrity or {}).get("identical_weights") or []
    if not pairs:
        return None
    if len(pairs) == 1:
        a, b = pairs[0]
        return f"Steps {a} and {b} have identical weights: one of them is probably stale or mislabelled."
    shown = ", ".join(f"{a} and {b}" for a, b in pairs[:5]) + (", …" if len(pairs) > 5 else "")
    return (f"{len(pairs)} pairs of steps have identical weights ({shown}): in each pair one checkpoint is "
            "probably stale or mislabelled.")
