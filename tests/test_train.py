"""The training loop and CLI: run layout, overfitting, exact resume after SIGKILL, DDP equivalence,
config files, and bad input (exit 2, one sentence, nothing overwritten)."""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from store.checkpoint import list_checkpoints, load_checkpoint, step_of
from store.runio import read_json, read_jsonl
from model.config import GPTConfig
from store.rundata import get_chunks, load_tokens
from train import main
from train.args import make_args
from train.loop import Dist, Trainer
from train.schedule import checkpoint_steps
from train.samples import SAMPLE_PROMPTS

from _ddp import assert_same_training, failure_report, launch_ddp
from _faults import KILL_AT_FSYNC

# A very small run for subprocess tests: many checkpoints, so a kill often lands in a write.
TINY = ["--steps", "24", "--batch-size", "4", "--warmup", "4", "--ckpt-every", "4", "--eval-every", "4",
        "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-ctx", "32", "--corpus-mb", "0.05",
        "--canaries-per-count", "1", "--canary-copies", "1,8", "--eval-batches", "1", "--sample-tokens", "4",
        "--vocab-size", "1024", "--seed", "11", "--device", "cpu", "--threads", "1"]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("RANK", None), e.pop("WORLD_SIZE", None)
    return e


def cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "train", *args], env=env(), capture_output=True, text=True, **kw)


def weights(run: Path, step: int) -> bytes:
    return (run / "checkpoints" / f"step_{step:06d}" / "model.safetensors").read_bytes()


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


# -- run layout ------------------------------------------------------------------------------
def test_small_run_layout(small_run):
    run = read_json(small_run / "run.json")
    assert run["status"] == "complete"
    assert run["checkpoint_steps"] == checkpoint_steps(40, 8, 10) == [0, 1, 2, 4, 8, 10, 20, 30, 40]
    assert [step_of(p) for p in list_checkpoints(small_run)] == run["checkpoint_steps"]
    for key in ("preset", "data", "steps", "batch_size", "grad_accum", "lr", "warmup", "eval_every",
                "ckpt_every", "seed", "device", "compile", "attention"):
        assert key in run["train"]
    assert run["model"]["n_layer"] == 2 and run["model"]["n_embd"] == 64

    rows = read_jsonl(small_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(41))
    assert all({"step", "tokens", "loss", "lr"} <= set(r) for r in rows)
    assert all({"grad_norm", "tok_per_s"} <= set(r) for r in rows[1:])
    assert rows[5]["tokens"] == 5 * 8 * 64
    evaluated = [r["step"] for r in rows if "val_loss" in r]
    assert evaluated == run["checkpoint_steps"]  # eval_every 10 falls on checkpoints here
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0  # it learned something

    samples = read_jsonl(small_run / "samples.jsonl")
    assert len(samples) == len(run["checkpoint_steps"]) * len(SAMPLE_PROMPTS) * 2
    assert {"Once upon a time", "They wave to each other"} <= {s["prompt"] for s in samples}
    assert {s["decoding"] for s in samples} == {"greedy", "sampled"}
    for p in list_checkpoints(small_run):
        model, meta = load_checkpoint(p)
        row = rows[meta["step"]]
        assert meta["val_loss"] == row["val_loss"] and meta["train_loss"] == row["loss"]
        assert meta["tokens"] == row["tokens"]


def test_lr_follows_schedule(small_run):
    from train.schedule import learning_rate
    rows = read_jsonl(small_run / "metrics.jsonl")
    assert [r["lr"] for r in rows[1:]] == [learning_rate(s, 3e-3, 8, 40, 0.1) for s in range(1, 41)]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds contention
    yield
    torch.set_num_threads(n)


def test_tiny_model_overfits_one_batch(small_run, monkeypatch, one_thread):
    """The real train step, fed the same 4 sequences every step, drives their loss below 0.1."""
    torch.manual_seed(0)
    run = read_json(small_run / "run.json")
    args = make_args({**run["train"], "steps": 120, "lr": 3e-3, "warmup": 5, "weight_decay": 0.0,
                      "min_lr_ratio": 1.0, "batch_size": 4})
    trainer = Trainer(small_run, args, GPTConfig.from_dict(run["model"]), torch.device("cpu"), Dist())
    batch = torch.from_numpy(get_chunks(load_tokens(small_run, "train"), np.array([3, 17, 29, 41]), 64))
    monkeypatch.setattr(trainer, "step_batches", lambda step: [batch])
    losses = [trainer.train_step()["loss"] for _ in range(120)]
    assert losses[0] > 5
    trainer.raw.eval()
    with torch.no_grad():
        _, loss = trainer.raw(batch[:, :-1], batch[:, 1:])
    assert float(loss) < 0.1


def test_grad_accumulation_matches_a_bigger_batch(tmp_path):
    base = TINY + ["--steps", "6", "--ckpt-every", "100", "--eval-every", "100"]
    assert main(["--out", str(tmp_path / "a")] + base) == 0
    assert main(["--out", str(tmp_path / "b")] + base + ["--batch-size", "2", "--grad-accum", "2"]) == 0
    a = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(7))
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)


# -- resume ----------------------------------------------------------------------------------


def kill_when_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as metrics.jsonl shows `step` (or it exits on its own)."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        rows = read_jsonl(metrics) if metrics.exists() else []
        if rows and rows[-1].get("step", 0) >= step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()


def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    seed = int(os.environ.get("KILL_SEED", 4242))  # fixed in make test; KILL_SEED=N tries another
    print(f"seed {seed}")
    rng, seed_note = random.Random(seed), f"(reproduce with KILL_SEED={seed})"
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli(["--out", str(full)] + TINY).returncode == 0

    # 1) die inside a write: at the N-th directory fsync of the run (run.json, data.json, then ~4
    #    per checkpoint: checkpoint folder, state file, latest.json; 40 in all with this config)
    die_at = rng.randint(1, 36)
    p = subprocess.run([sys.executable, "-c", KILL_AT_FSYNC, str(die_at), "--out", str(cut)] + TINY, env=env(),
                       capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-500:], seed_note)
    assert read_json(cut / "run.json")["status"] == "training"
    for ck in list_checkpoints(cut):  # every checkpoint written before the kill loads, and is right
        model, meta = load_checkpoint(ck)
        assert weights(cut, meta["step"]) == weights(full, meta["step"]), seed_note

    # 2) resume, and SIGKILL it from outside at a random step
    proc = subprocess.Popen([sys.executable, "-m", "train", "--out", str(cut), "--resume"], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_step(proc, cut / "metrics.jsonl", rng.randint(6, 22))
    for ck in list_checkpoints(cut):
        load_checkpoint(ck)

    # 3) resume to the end
    r = cli(["--out", str(cut), "--resume"])
    assert r.returncode == 0, r.stderr[-800:]
    assert read_json(cut / "run.json")["status"] == "complete"
    assert weights(cut, 24) == weights(full, 24), f"final weights differ {seed_note}"
    assert [step_of(c) for c in list_checkpoints(cut)] == [step_of(c) for c in list_checkpoints(full)]

    strip = lambda rows: [{k: v for k, v in r.items() if k != "tok_per_s"} for r in rows]
    assert strip(read_jsonl(cut / "metrics.jsonl")) == strip(read_jsonl(full / "metrics.jsonl")), seed_note
    assert read_jsonl(cut / "samples.jsonl") == read_jsonl(full / "samples.jsonl"), seed_note
    assert not [p for p in cut.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_resume_of_a_complete_run_changes_nothing(small_run, capsys, tmp_path):
    run = Path(shutil.copytree(small_run, tmp_path / "small"))  # the session's run is shared: a copy
    before = tree_digest(run / "checkpoints")
    assert main(["--out", str(run), "--resume"]) == 0
    assert tree_digest(run / "checkpoints") == before
    assert len(read_jsonl(run / "metrics.jsonl")) == 41


def test_failure_marks_the_run_failed_and_resume_finishes(tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = Trainer.train_step

    def flaky(self):
        if self.step == 9:
            raise RuntimeError("disk on fire")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", flaky)
    with pytest.raises(RuntimeError):
        main(["--out", str(out)] + TINY)
    run = read_json(out / "run.json")
    assert run["status"] == "failed" and "disk on fire" in run["error"]
    monkeypatch.setattr(Trainer, "train_step", real)
    assert main(["--out", str(out), "--resume"]) == 0
    run = read_json(out / "run.json")
    assert run["status"] == "complete" and "error" not in run
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(25))


# -- DDP -------------------------------------------------------------------------------------
DDP_STEPS = 8
DDP_ARGS = TINY + ["--steps", str(DDP_STEPS), "--ckpt-every", "100", "--eval-every", "2"]
DDP_LAUNCHES = 2  # each must exit 0: shutdown used to abort rank 1 in ~1 launch of 3 (see _ddp.py)


def test_ddp_two_processes_match_one_process(tmp_path):
    one = tmp_path / "one"
    assert cli(["--out", str(one)] + DDP_ARGS).returncode == 0
    results = []
    for i in range(DDP_LAUNCHES):
        two = tmp_path / f"two_{i}"
        results.append((i, launch_ddp(two, DDP_ARGS + ["--batch-size", "2"])))
        assert results[-1][1].returncode == 0, failure_report(results)
        assert read_json(two / "data.json")["corpus_rows_per_step"] == read_json(one / "data.json")["corpus_rows_per_step"] == 4
        assert_same_training(one, two, DDP_STEPS)


# -- config files ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_config_file(tmp_path, suffix):
    cfg = tmp_path / f"c{suffix}"
    if suffix == ".toml":
        cfg.write_text('steps = 3\nlr = 0.004\nbatch-size = 2\nn_embd = 32\nn_head = 2\nn_layer = 1\n'
                       'n_ctx = 32\ncorpus_mb = 0.05\nsample_tokens = 2\neval_batches = 1\n')
    else:
        cfg.write_text('steps: 3\nlr: 0.004\nbatch_size: 2\nn_embd: 32\nn_head: 2\nn_layer: 1\n'
                       'n_ctx: 32\ncorpus_mb: 0.05\nsample_tokens: 2\neval_batches: 1\n')
    out = tmp_path / "run"
    assert main(["--out", str(out), "--config", str(cfg), "--steps", "2"]) == 0  # the CLI wins
    train = read_json(out / "run.json")["train"]
    assert train["steps"] == 2 and train["lr"] == 0.004 and train["batch_size"] == 2
    assert read_json(out / "run.json")["model"]["n_embd"] == 32


# -- bad input -------------------------------------------------------------------------------
def bad(argv, capsys, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: ")


@pytest.fixture
def empty_text(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "nofiles").mkdir()
    (tmp_path / "cfg_bad.toml").write_text("steps = [")
    (tmp_path / "cfg_key.toml").write_text("stepz = 3")
    return tmp_path


@pytest.mark.parametrize("argv, needle", [
    (["--data", "text:{t}/missing.txt"], "does not exist"),
    (["--data", "text:{t}/empty.txt"], "is empty"),
    (["--data", "text:{t}/nofiles"], "no .txt files"),
    (["--data", "wikipedia"], "unknown data source"),
    (["--preset", "gigantic"], "unknown preset"),
    (["--attention", "psychic"], "unknown attention kind"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps", "-5"], "--steps must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--steps", "many"], "invalid int value"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--n-embd", "30", "--n-head", "4"], "n_embd"),
    (["--vocab-size", "two"], "vocab_size"),
    (["--config", "{t}/cfg_bad.toml"], "cannot be parsed"),
    (["--config", "{t}/cfg_key.toml"], "unknown option 'stepz'"),
    (["--config", "{t}/nope.toml"], "does not exist"),
    (["--n-ctx", "8000", "--batch-size", "1", "--corpus-mb", "0.05"], "fewer than one sequence"),
    (["--n-ctx", "100000"], "needs about"),  # 171 GiB at the default batch: refused before any work
    (["--frobnicate"], "Unrecognized arguments"),
    (["--threads", "-1"], "must not be negative"),
])
def test_bad_input_exits_2_with_one_sentence(empty_text, capsys, argv, needle):
    out = empty_text / "run"
    bad(["--out", str(out)] + [a.replace("{t}", str(empty_text)) for a in argv], capsys, needle)
    assert not out.exists()  # nothing was created


def test_cuda_when_there_is_none(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the message is only reachable without one
    bad(["--out", str(tmp_path / "r"), "--device", "cuda"], capsys, "no CUDA GPU")


def test_tinystories_offline_says_so_without_touching_the_network(tmp_path, capsys, monkeypatch):
    import train.corpora as corpora
    monkeypatch.setattr(corpora, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    bad(["--out", str(tmp_path / "r"), "--data", "tinystories"], capsys, "pass --data text:PATH")
    assert not (tmp_path / "r").exists()


def test_resume_without_state(tmp_path, capsys):
    bad(["--out", str(tmp_path / "nothing"), "--resume"], capsys, "no run with training state")
    (tmp_path / "empty").mkdir()
    bad(["--out", str(tmp_path / "empty"), "--resume"], capsys, "no run with training state")


def test_never_overwrites_an_existing_run(small_run, capsys, tmp_path):
    run = Path(shutil.copytree(small_run, tmp_path / "small"))  # should the CLI write, the shared run stays whole
    before = tree_digest(run)
    bad(["--out", str(run)], capsys, "already holds a run")
    bad(["--out", str(run), "--resume", "--lr", "0.5"], capsys, "holds a different run")
    bad(["--out", str(run), "--resume", "--preset", "tiny"], capsys, "holds a different run")
    assert tree_digest(run) == before
    other = tmp_path / "stuff"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    bad(["--out", str(other)], capsys, "not an empty folder")
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_cli_subprocess_bad_input_has_no_traceback(tmp_path):
    r = cli(["--out", str(tmp_path / "r"), "--steps", "0"])
    assert r.returncode == 2 and r.stderr.strip() == "error: --steps must be a positive integer, got 0."


def test_resume_from_an_edited_state_is_one_sentence_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out)] + TINY[:1] + ["4"] + TINY[2:]
    assert main(args) == 0
    latest = out / "state" / "latest.json"
    info = json.loads(latest.read_text())
    info["step"] = 3  # an edit the seal catches
    latest.write_text(json.dumps(info))
    capsys.readouterr()
    code = main(args + ["--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "latest.json" in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_threads_follow_the_free_cores_and_a_resume_keeps_the_recorded_count(tmp_path, monkeypatch):
    from model import device
    from model.device import free_cores
    from train import cli as train_cli
    from train.args import TrainArgs
    assert free_cores(cores=2, load=0.2) == 2 and free_cores(cores=2, load=1.4) == 1
    assert free_cores(cores=2, load=7.0) == 1 and free_cores(cores=16, load=3.0) == 13
    one = Dist(rank=0, local_rank=0, world=1)
    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(device, "free_cores", lambda: 2)
        cpu = torch.device("cpu")
        assert train_cli.set_threads(TrainArgs(threads=0), one, cpu, None) == 2  # a fresh run: free cores
        assert train_cli.set_threads(TrainArgs(threads=0), one, cpu, 1) == 1     # a resume: what was recorded
        assert train_cli.set_threads(TrainArgs(threads=3), one, cpu, 1) == 3     # --threads wins
        out = tmp_path / "run"
        assert TINY[-2:] == ["--threads", "1"]
        assert main(["--out", str(out)] + TINY[:-2] + ["--steps", "2"]) == 0  # no --threads: the machine decides
        assert read_json(out / "run.json")["cpu_threads"] == 2
    finally:
        torch.set_num_threads(threads)
