"""Random truncations and bit flips of every checkpoint and training-state file (issue 7): the
loaders either raise model.checkpoint.CheckpointError naming the damaged file, or (only where the
damage is harmless or the hash was forged to match) load exactly what the file now says. Never
another exception, never code execution: process-spawning and exec audit events are watched while
loading, and pickles that would run code are planted with matching hashes.

Reproduce a failure with FAULT_SEED=<seed printed in the assertion>.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

from model.checkpoint import (CheckpointError, META, WEIGHTS, checkpoint_dir, load_checkpoint, load_state,
                              save_checkpoint, save_state)
from model.config import GPTConfig
from model.gpt import GPT

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_ctx=8, vocab_size=37)
STEP = 5
FILES = ("model.safetensors", "meta.json", "state_000005.pt", "latest.json")

# -- code execution watch ----------------------------------------------------------------------
DANGEROUS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen", "exec",
             "ctypes.dlopen", "os.startfile")
WATCH: dict = {"on": False, "events": []}


def audit(event: str, args) -> None:
    if WATCH["on"] and event.startswith(DANGEROUS):
        WATCH["events"].append(event)


sys.addaudithook(audit)  # cannot be removed; costs a dict lookup per event while not watching


class watching:
    """Record dangerous audit events raised inside the block."""

    def __enter__(self):
        WATCH["events"] = []
        WATCH["on"] = True
        return WATCH["events"]

    def __exit__(self, *exc):
        WATCH["on"] = False
        return False


# -- a run holding one checkpoint and the training state a real Trainer would save -------------
def trainer_like_state(model: GPT) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, CFG.vocab_size, (2, CFG.n_ctx))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    return {"step": STEP, "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "cuda_rng": [],
            "train_loss": float(loss.detach()), "global_batch": 4}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pristine") / "run"
    torch.manual_seed(0)
    model = GPT(CFG)
    save_checkpoint(run, STEP, model, {"tokens": 640, "train_loss": 3.25, "val_loss": 3.5})
    save_state(run, STEP, trainer_like_state(model))
    return run


def paths(run: Path) -> dict[str, Path]:
    ck = checkpoint_dir(run, STEP)
    return {"model.safetensors": ck / WEIGHTS, "meta.json": ck / META,
            "state_000005.pt": run / "state" / "state_000005.pt", "latest.json": run / "state" / "latest.json"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forge_hash(run: Path, name: str) -> None:
    """Make the hash that guards `name` match its (damaged) bytes, so the parser itself is fuzzed."""
    p = paths(run)
    guard = p["meta.json"] if name == "model.safetensors" else p["latest.json"]
    info = json.loads(guard.read_text())
    info["sha256"] = sha(p[name].read_bytes())
    guard.write_text(json.dumps(info))


def damage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Truncate, flip 1-8 bits, or both; positions biased toward the headers, where parsers live."""
    how = rng.choice(["truncate", "flip", "flip", "both"])
    out = bytearray(data)
    if how in ("flip", "both"):
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(min(len(out), 512)) if rng.random() < 0.5 else rng.randrange(len(out))
            out[pos] ^= 1 << rng.randrange(8)
    if how in ("truncate", "both"):
        cut = rng.choice([0, 1, len(out) // 2, len(out) - 1, rng.randrange(len(out)), rng.randrange(min(len(out), 600))])
        out = out[:cut]
    if bytes(out) == data:  # flips that cancelled out: flip one more
        out[0] ^= 0x01
    return bytes(out), how


def equal_states(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_states(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal_states(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def one_case(pristine: Path, work: Path, rng: random.Random, originals: dict) -> str:
    """Damage one file of a fresh copy of the run, load, and check the outcome. Returns a label."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work)
    p = paths(work)
    name = rng.choice(FILES)
    damaged, how = damage(p[name].read_bytes(), rng)
    p[name].write_bytes(damaged)
    forged = name in ("model.safetensors", "state_000005.pt") and rng.random() < 0.5
    if forged:
        forge_hash(work, name)
    label = f"{name} {how}{' forged' if forged else ''}"
    checkpoint_side = name in ("model.safetensors", "meta.json")
    with watching() as events:
        try:
            if checkpoint_side:
                model, meta = load_checkpoint(checkpoint_dir(work, STEP))
            else:
                state = load_state(work)
        except CheckpointError as e:
            # the damaged file, its partner, or the file a damaged latest.json now names
            folder = p[name].parent
            assert e.path == folder or e.path.parent == folder, (label, e)
            assert str(e.path) in str(e) and e.problem, (label, e)
            if not forged and name in ("model.safetensors", "state_000005.pt"):
                assert e.path == p[name] and "sha256" in e.problem, (label, e)  # the hash catches it
            outcome = "refused"
        else:
            # Loading is allowed only when the damage is harmless, or the hash was forged and the
            # file is still well-formed: then what was loaded is exactly what the file says.
            assert forged or name in ("meta.json", "latest.json"), (label, "damaged file loaded")
            if checkpoint_side:
                want = st_load(p["model.safetensors"].read_bytes()) if forged else originals["weights"]
                got = model.state_dict()
                assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), label
                assert isinstance(meta, dict)
            else:
                if not forged:
                    assert equal_states(state, originals["state"]), label
                assert isinstance(state, dict)
            outcome = "loaded"
    assert not events, (label, events)
    return f"{label}: {outcome}"


@pytest.mark.parametrize("n", [pytest.param(100, id="fast"),
                               pytest.param(2000, id="stress", marks=pytest.mark.stress)])
def test_random_truncations_and_bit_flips_raise_checkpoint_error_naming_the_file(pristine, tmp_path, n):
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    originals = {"weights": st_load(paths(pristine)["model.safetensors"].read_bytes()),
                 "state": load_state(pristine)}
    outcomes = []
    for i in range(n):
        try:
            outcomes.append(one_case(pristine, tmp_path / "work", rng, originals))
        except AssertionError as e:
            raise AssertionError(f"case {i} (FAULT_SEED={seed}): {e}") from None
        except Exception as e:
            raise AssertionError(f"case {i} (FAULT_SEED={seed}): {type(e).__name__} escaped: {e}") from e
    refused = sum(o.endswith("refused") for o in outcomes)
    # unforged damage to a binary file is always caught; the rest mostly
    assert refused >= 0.6 * n, (seed, outcomes)
    for name in FILES:
        assert any(o.startswith(name) for o in outcomes), name


# -- crafted files: code execution and absurd sizes ----------------------------------------------
class Gadget:
    """Unpickling this calls `fn(*args)`: the classic pickle code-execution gadget."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def gadgets(marker: Path) -> list:
    cmd = f"touch {marker}"
    return [Gadget(os.system, cmd), Gadget(eval, f"open({str(marker)!r}, 'w')"),
            Gadget(exec, f"open({str(marker)!r}, 'w')"), Gadget(open, str(marker), "w"),
            Gadget(__import__("subprocess").call, ["touch", str(marker)])]


@pytest.mark.parametrize("where", ["state", "weights"])
def test_pickles_that_would_run_code_are_refused_without_running(pristine, tmp_path, where):
    marker = tmp_path / "pwned"
    for i, gadget in enumerate(gadgets(marker)):
        work = tmp_path / f"w{i}"
        shutil.copytree(pristine, work)
        p = paths(work)
        buf = io.BytesIO()
        torch.save({"step": STEP, "model": {}, "payload": gadget}, buf)
        name = "state_000005.pt" if where == "state" else "model.safetensors"
        p[name].write_bytes(buf.getvalue())
        forge_hash(work, name)  # the hash matches: only the loaders stand in the way
        with watching() as events:
            with pytest.raises(CheckpointError) as e:
                load_state(work) if where == "state" else load_checkpoint(checkpoint_dir(work, STEP))
        assert e.value.path == p[name], e.value
        assert not events and not marker.exists(), (gadget.fn, events)


@pytest.mark.parametrize("field, value", [("n_layer", 10 ** 6), ("n_embd", 2 ** 40), ("vocab_size", 10 ** 12),
                                          ("n_ctx", 10 ** 9)])
def test_a_meta_json_asking_for_a_giant_model_is_refused_before_allocating_it(pristine, tmp_path, field, value):
    """meta.json has no hash of its own: a damaged or crafted config must not make the loader
    build a model the size of the config (minutes of work or an out-of-memory kill) before it
    notices that the weights do not fit."""
    work = Path(shutil.copytree(pristine, tmp_path / "w"))
    meta_path = paths(work)["meta.json"]
    meta = json.loads(meta_path.read_text())
    meta["config"][field] = value
    if field == "n_embd":
        meta["config"]["n_head"] = 1
    meta_path.write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not fit the config") as e:
        load_checkpoint(checkpoint_dir(work, STEP))
    assert e.value.path == paths(work)["model.safetensors"]
    assert time.perf_counter() - t0 < 30  # generous: the point is no giant allocation, not speed
