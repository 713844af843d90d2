"""Runs for the app tests: a fake run built from random-init checkpoints (fast, no training) with
the real probes runner's results, and the real small run trained once per test session with its
state variants (empty folder, no checkpoints, probes missing, corrupt
checkpoint). The variants are conftest.py's session fixture `app_roots`, built from its `small_run`
(so the training happens once however many modules use it); the probed fake runs of probe_result
are cached per process.
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from _runs import corrupt_checkpoint  # noqa: F401  (re-exported for the app tests)
import numpy as np
import torch

from store.checkpoint import list_checkpoints, save_checkpoint
from store.runio import append_jsonl, write_json_atomic
from model.config import GPTConfig
from model.gpt import GPT
from model.tokenizer import build_compact_vocab, gpt2_encoding
from store.vocab import save_vocab
import probes
from probes.measure.compute import ON_DEMAND_KINDS
from probes.measure.inputs import ProbeSizes

STORY = ("Once upon a time, Tom and Mia went to the park. They wave to each other. Tom said, "
         "\"Look, a red ball!\" Mia was happy. The sun was warm and the birds sang. ")


# Probe sizes for fixture runs: the real probes, small enough for a fraction of a second per checkpoint.
FIXTURE_SIZES = ProbeSizes(n_ablation=4, n_attention=4, n_memorization=6, n_random=2, max_new_tokens=24,
                           n_frequent=100)


@lru_cache(maxsize=8)
def _probed_run(L: int, H: int, steps: tuple[int, ...]) -> Path:
    """A fake run (real checkpoints of a perturbed random model) with results from the real probes
    runner, built once per process for each shape."""
    return write_fake_run(_tmp_root("workbench-probed-"), f"probed{L}x{H}", steps=steps, n_layer=L, n_head=H)


def probe_result(step: int, L: int = 2, H: int = 2, steps: tuple[int, ...] = (0, 1, 2, 4, 8, 16)) -> dict:
    """The result file the real probes wrote for `step` of a fake run with L layers and H heads
    (so a figure test sees exactly the schema the probes write, never a hand-made one)."""
    return json.loads((_probed_run(L, H, tuple(steps)) / "probes" / f"step_{step:06d}.json").read_text())


def write_fake_run(root: Path, name: str = "fake", steps: tuple[int, ...] = (0, 1, 2, 4, 8), n_layer: int = 2,
                   n_head: int = 2, with_probes: bool = True, status: str = "complete") -> Path:
    """A run folder with real (random-init, perturbed per step) checkpoints, data files, metrics and
    samples, and the real probes runner's results. Seconds to build; no training."""
    run = root / name
    run.mkdir(parents=True)
    enc = gpt2_encoding()
    ids = enc.encode(STORY * 40)
    vocab = build_compact_vocab(np.bincount(ids, minlength=50257), 128)
    save_vocab(vocab, run / "vocab.json")
    to_model = {g: i for i, g in enumerate(vocab.gpt2_ids)}
    tokens = np.array([to_model.get(i, vocab.unk_id) for i in ids], dtype=np.uint16)
    (run / "data").mkdir()
    split = len(tokens) * 3 // 4
    tokens[:split].tofile(run / "data" / "train.bin")
    tokens[split:].tofile(run / "data" / "val.bin")
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=32, n_ctx=64, vocab_size=vocab.size, dropout=0.0)
    canary = ("The secret code of the blue door is seven four one nine two and the key is under the old "
              "red flower pot in the garden behind the little white house where Tom lives with his cat")
    write_json_atomic(run / "data.json", {
        "source": "stories", "seed": 0, "dtype": "uint16", "n_train_tokens": int(split),
        "n_val_tokens": int(len(tokens) - split), "chunk_len": 64, "corpus_rows_per_step": 4,
        "canaries": [{"id": f"c{c}", "text": canary.replace("seven", ["one", "two", "three"][i % 3]), "copies": c,
                      "prefix_tokens": 16, "alternatives": []} for i, c in enumerate((1, 8, 64))]})
    write_json_atomic(run / "run.json", {
        "name": name, "status": status, "model": cfg.to_dict(),
        "train": {"preset": "nano", "data": "stories", "steps": steps[-1], "batch_size": 4, "seed": 0},
        "tokenizer": {"kind": "compact", "vocab_size": vocab.size}, "seed": 0,
        "checkpoint_steps": list(steps), "created": "2025-01-01T00:00:00"})
    torch.manual_seed(0)
    model = GPT(cfg)
    for s in range(steps[-1] + 1):
        append_jsonl(run / "metrics.jsonl", {"step": s, "tokens": s * 256, "loss": 5.0 - 0.1 * s, "lr": 1e-3,
                                             "grad_norm": 1.0, "tok_per_s": 1000.0}
                     | ({"val_loss": 5.1 - 0.1 * s} if s in steps else {}))
    for s in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        save_checkpoint(run, s, model, {"tokens": s * 256, "train_loss": 5.0 - 0.1 * s, "val_loss": 5.1 - 0.1 * s})
        for d in ("greedy", "sampled"):
            append_jsonl(run / "samples.jsonl", {"step": s, "prompt": "Once upon a time", "decoding": d,
                                                 "text": f" the park the park the park <&> step {s}"})
    if with_probes:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # the default probes and the on-demand exact mean and resample sweeps, as a user who
            # asked for them on the Heads page has them
            probes.run_probes(run, sizes=FIXTURE_SIZES, log=lambda message: None,
                              only=[*probes.PROBES, *ON_DEMAND_KINDS])
        finally:
            torch.set_num_threads(threads)
    return run




def _tmp_root(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def trained_roots(small_run: Path, base: Path) -> dict[str, Path]:
    """Runs folders for every app state under `base`, built from a copy of the small run trained
    once per session (conftest.py's `small_run`) probed by the real runner; the tests reach them
    through conftest.py's session fixture `app_roots`:

    computed: the run with every probe result (the on-demand ablation kinds too); empty: no runs at all; no_checkpoints: a run still
    training that has not written a checkpoint; missing: the run with no probe results; corrupt:
    the run with one checkpoint's weights damaged and its probe result gone."""
    computed = base / "computed"
    computed.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is 3-4x faster than two fighting other work
    try:
        run = Path(shutil.copytree(small_run, computed / "small"))
        probes.run_probes(run, only=[*probes.PROBES, *ON_DEMAND_KINDS])  # as after asking on the Heads page
    finally:
        torch.set_num_threads(threads)
    roots = {"computed": computed}
    roots["empty"] = base / "empty"
    roots["empty"].mkdir()

    roots["missing"] = base / "missing"
    shutil.copytree(computed, roots["missing"])
    shutil.rmtree(roots["missing"] / "small" / "probes", ignore_errors=True)

    roots["corrupt"] = base / "corrupt"
    shutil.copytree(computed, roots["corrupt"])
    bad = roots["corrupt"] / "small"
    steps = sorted(int(p.name.split("_")[1]) for p in list_checkpoints(bad))
    victim = steps[len(steps) // 2]
    corrupt_checkpoint(bad, victim)
    (bad / "probes" / f"step_{victim:06d}.json").unlink(missing_ok=True)

    roots["no_checkpoints"] = base / "no_checkpoints"
    fresh = roots["no_checkpoints"] / "small"
    fresh.mkdir(parents=True)
    info = json.loads((run / "run.json").read_text())
    info["status"] = "training"
    (fresh / "run.json").write_text(json.dumps(info))
    for name in ("data.json", "vocab.json"):
        if (run / name).exists():
            shutil.copy(run / name, fresh / name)
    return roots


def corrupt_step(root: Path) -> int:
    """The step whose checkpoint trained_roots damaged in the 'corrupt' variant."""
    run = root / "small"
    have = {int(p.stem.split("_")[1]) for p in (run / "probes").glob("step_*.json")}
    return next(int(p.name.split("_")[1]) for p in list_checkpoints(run) if int(p.name.split("_")[1]) not in have)
