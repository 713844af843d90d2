"""Random truncations, bit flips and deletions of every file a checkpoint or the training state
depends on ("every byte that changes behaviour is verified"): the weights, meta.json,
the state file, latest.json, and the run files they record (vocab.json, data.json, run.json's model
config). The loaders either raise store.checkpoint.CheckpointError naming the damaged file, or load
exactly what was saved: config, meta, weights and state compared in full. The only damage allowed
to load is damage that changes no content a reader gets (JSON whitespace, a trailing newline cut),
and run.json for a checkpoint (which does not read it). Never another exception, never code
execution: process-spawning and exec audit events are watched while loading, and pickles that
would run code are planted with matching hashes.

Half of the damaged binaries and a third of the damaged JSON files are "forged": the hash that
guards them (or their own seal) recomputed, as someone who edits on purpose would. That fuzzes the
parsers behind the hashes; such a case may load, and then must load exactly what the files now say.

The counts per file (refused / loaded-equal, and the forged ones) are printed (see them with -s)
and included in the message of any failing assertion. Reproduce a failure with FAULT_SEED=<seed>
(or WORKBENCH_TEST_SEED), printed at the start of the test and in every failure message.
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
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

from store.checkpoint import META, WEIGHTS, checkpoint_dir, load_checkpoint, load_state, save_checkpoint, save_state, seal
from store.runio import CheckpointError
from model.config import GPTConfig
from model.gpt import GPT

import _faults as faults

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_ctx=8, vocab_size=37)
STEP = 5
CHECKPOINT_FILES = ("model.safetensors", "meta.json")
STATE_FILES = ("state_000005.pt", "latest.json")
RUN_FILES = ("vocab.json", "data.json", "run.json")  # read by both loaders (run.json: only by load_state)
FILES = CHECKPOINT_FILES + STATE_FILES + RUN_FILES
JSON_FILES = ("meta.json", "latest.json") + RUN_FILES

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
    x = torch.randint(0, CFG.vocab_size, (2, CFG.n_ctx), generator=torch.Generator().manual_seed(0))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    return {"step": STEP, "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "cuda_rng": [],
            "train_loss": float(loss.detach()), "global_batch": 4}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A run with the files a trained run has before its first checkpoint, one checkpoint, and
    the training state saved with the model config (as train/loop.py saves it)."""
    run = tmp_path_factory.mktemp("pristine") / "run"
    run.mkdir()
    (run / "vocab.json").write_text(json.dumps({"format": "compact-gpt2", "gpt2_ids": list(range(100, 135)),
                                                "special": {"<|unk|>": 35, "<|endoftext|>": 36}}))
    (run / "data.json").write_text(json.dumps({"source": "stories", "seed": 3, "dtype": "uint16",
                                               "n_train_tokens": 4096, "n_val_tokens": 512, "chunk_len": 8,
                                               "global_batch": 4, "canaries": []}, indent=1))
    (run / "run.json").write_text(json.dumps({"name": "run", "status": "complete", "model": CFG.to_dict(),
                                              "seed": 3}, indent=1))
    torch.manual_seed(0)
    model = GPT(CFG)
    save_checkpoint(run, STEP, model, {"tokens": 640, "train_loss": 3.25, "val_loss": 3.5})
    save_state(run, STEP, trainer_like_state(model), model_config=CFG.to_dict())
    return run


def paths(run: Path) -> dict[str, Path]:
    ck = checkpoint_dir(run, STEP)
    return {"model.safetensors": ck / WEIGHTS, "meta.json": ck / META,
            "state_000005.pt": run / "state" / "state_000005.pt", "latest.json": run / "state" / "latest.json",
            **{name: run / name for name in RUN_FILES}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forge_hash(run: Path, name: str) -> None:
    """Make the hash that guards `name` match its (damaged) bytes, and reseal that guard, so the
    parser behind it is fuzzed."""
    p = paths(run)
    guard = p["meta.json"] if name == "model.safetensors" else p["latest.json"]
    info = json.loads(guard.read_text())
    info["sha256"] = sha(p[name].read_bytes())
    guard.write_text(json.dumps(seal(info)))


def forge_seal(path: Path) -> bool:
    """Reseal a damaged meta.json/latest.json that still parses as an object; False if it does not."""
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(obj, dict):
        return False
    path.write_text(json.dumps(seal(obj)))
    return True


def damage(data: bytes, rng: random.Random) -> tuple[bytes | None, str]:
    """Delete (None), truncate, flip 1-8 bits, or both; positions biased toward the headers,
    where parsers live."""
    how = rng.choice(["truncate", "flip", "flip", "both", "delete"] if rng.random() < 0.1 else
                     ["truncate", "flip", "flip", "both"])
    if how == "delete":
        return None, how
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


def same_json_content(data: bytes | None, original: bytes) -> bool:
    """Whether damaged bytes still parse to exactly the original JSON value (whitespace only)."""
    if data is None:
        return False
    try:
        return json.dumps(json.loads(data), sort_keys=True) == json.dumps(json.loads(original), sort_keys=True)
    except (ValueError, UnicodeDecodeError):
        return False


def check_checkpoint(model: GPT, meta: dict, want_meta: dict, want_weights: dict, label: str) -> None:
    """The loaded checkpoint is exactly `want_*`: meta in full, the model's config, every tensor."""
    assert meta == want_meta, (label, "meta differs")
    assert model.cfg.to_dict() == want_meta["config"], (label, "config differs")
    got = model.state_dict()
    assert got.keys() == want_weights.keys(), (label, "weight names differ")
    for k, want in want_weights.items():
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), (label, k)


def one_case(pristine: Path, work: Path, rng: random.Random, originals: dict) -> list[tuple[str, str]]:
    """Damage one file of a fresh copy of the run, load what depends on it, and check each
    outcome. Returns [(file or 'file via loader', outcome)]."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work)
    p = paths(work)
    name = rng.choice(FILES)
    original = p[name].read_bytes()
    damaged, how = damage(original, rng)
    if damaged is None:
        p[name].unlink()
    else:
        p[name].write_bytes(damaged)
    forged = False
    if damaged is not None and name in ("model.safetensors", "state_000005.pt") and rng.random() < 0.5:
        forge_hash(work, name)
        forged = True
    elif damaged is not None and name in ("meta.json", "latest.json") and rng.random() < 1 / 3:
        forged = forge_seal(p[name])
    label = f"{name} {how}{' forged' if forged else ''}"
    loaders = (["checkpoint"] if name in CHECKPOINT_FILES else ["state"] if name in STATE_FILES
               else ["checkpoint", "state"])
    results = []
    for loader in loaders:
        key = name if len(loaders) == 1 else f"{name} via {loader}"
        with watching() as events:
            try:
                if loader == "checkpoint":
                    model, meta = load_checkpoint(checkpoint_dir(work, STEP))
                else:
                    state = load_state(work)
            except CheckpointError as e:
                assert str(e.path) in str(e) and e.problem, (label, loader, e)
                if forged:  # a resealed guard may now point at any file of the run
                    assert e.path == work or work in e.path.parents, (label, loader, e)
                else:  # the damaged file itself, never a neighbour
                    assert e.path == p[name], (label, loader, e)
                outcome = "forged-refused" if forged else "refused"
            else:
                if forged:  # loads exactly what the files now say
                    if loader == "checkpoint":
                        now_meta = json.loads(p["meta.json"].read_bytes())
                        now_weights = st_load(p["model.safetensors"].read_bytes())
                        check_checkpoint(model, meta, now_meta, now_weights, label)
                    else:
                        want = torch.load(io.BytesIO(p["state_000005.pt"].read_bytes()), map_location="cpu",
                                          weights_only=True)  # as the loader reads it
                        assert equal_states(state, want), label
                    outcome = "forged-loaded"
                else:  # nothing a reader gets was changed, and what loads is what was saved
                    harmless = same_json_content(damaged, original) or (name == "run.json" and (
                        loader == "checkpoint" or same_json_content(
                            json.dumps(json.loads(damaged)["model"]).encode(), json.dumps(CFG.to_dict()).encode())))
                    assert harmless, (label, loader, "a damaged file loaded")
                    if loader == "checkpoint":
                        check_checkpoint(model, meta, originals["meta"], originals["weights"], label)
                    else:
                        assert equal_states(state, originals["state"]), label
                    outcome = "loaded-equal"
        assert not events, (label, events)
        results.append((key, outcome))
    return results


def summary(counts: Counter) -> str:
    keys = sorted({k for k, _ in counts}, key=lambda k: (FILES.index(k.split(" via ")[0]), k))
    kinds = ("refused", "loaded-equal", "forged-refused", "forged-loaded")
    return "\n".join(f"{k:32s} " + "  ".join(f"{kind} {counts[(k, kind)]:4d}" for kind in kinds) for k in keys)


@pytest.mark.parametrize("n", [pytest.param(100, id="fast"),
                               pytest.param(2000, id="stress", marks=pytest.mark.stress)])
def test_random_damage_is_refused_naming_the_file_or_loads_what_was_saved(pristine, tmp_path, n):
    seed = faults.draw_seed("FAULT_SEED", stress=n > 100)
    rng = random.Random(seed)
    p = paths(pristine)
    originals = {"weights": st_load(p["model.safetensors"].read_bytes()),
                 "meta": json.loads(p["meta.json"].read_bytes()), "state": load_state(pristine)}
    counts: Counter = Counter()
    for i in range(n):
        with faults.replayable("FAULT_SEED", seed):
            try:
                counts.update(one_case(pristine, tmp_path / "work", rng, originals))
            except AssertionError as e:
                raise AssertionError(f"case {i}: {e}\ncounts so far:\n{summary(counts)}") from None
    table = summary(counts)
    print(f"\nFAULT_SEED={seed}, {n} cases:\n{table}")
    with faults.replayable("FAULT_SEED", seed):
        for name in FILES:
            assert any(k.startswith(name) for k, _ in counts), (name, table)
        unforged = sum(v for (k, kind), v in counts.items() if not kind.startswith("forged"))
        loaded = sum(v for (k, kind), v in counts.items() if kind == "loaded-equal" and k != "run.json via checkpoint")
        assert loaded <= 0.1 * unforged, ("too much damage was harmless: is the fuzz damaging anything?", table)


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
    """A crafted config, resealed by whoever crafted it (an edit without the seal is refused at
    meta.json, see test_checkpoint), must not make the loader build a model the size of the
    config (minutes of work or an out-of-memory kill) before it notices that the weights do not fit."""
    work = Path(shutil.copytree(pristine, tmp_path / "w"))
    meta_path = paths(work)["meta.json"]
    meta = json.loads(meta_path.read_text())
    meta["config"][field] = value
    if field == "n_embd":
        meta["config"]["n_head"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="edited or is corrupt") as e:
        load_checkpoint(checkpoint_dir(work, STEP))
    assert e.value.path == meta_path
    meta_path.write_text(json.dumps(seal(meta)))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not fit the config") as e:
        load_checkpoint(checkpoint_dir(work, STEP))
    assert e.value.path == paths(work)["model.safetensors"]
    assert time.perf_counter() - t0 < 30  # generous: the point is no giant allocation, not speed
