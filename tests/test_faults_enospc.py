"""A disk that fills up during a checkpoint: the training CLI stops with one clear
sentence (no traceback, a non-zero exit status), every checkpoint and run file written before stays
intact and loadable, nothing half-written is left visible, and once space is free `--resume`
finishes with weights bit-identical to a run that never failed.

The full disk is simulated in-process: while a test runs, every file opened for writing under the
run folder gets a write() that raises OSError(ENOSPC) from the chosen moment on (as a real full
disk does: the file can be created, writing to it fails). "stays full" keeps failing every later
write, including the one that would mark run.json failed; "one write" fails a single write, as a
quota briefly exceeded would.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import pytest

from store.checkpoint import has_state, list_checkpoints, load_checkpoint, load_state, step_of
from store.runio import read_json, read_jsonl
from train import main
from _small_run import small_run_argv

RUN = dict(steps=12, batch_size=4, warmup=4, ckpt_every=4, eval_every=4, n_layer=2, n_head=2, n_embd=32, n_ctx=32,
           corpus_mb=0.05, canary_copies="1,8", eval_batches=1, sample_tokens=4, vocab_size=1024, seed=5)


def strip(rows):
    return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(small_run_argv(out, **RUN)) == 0
    return out


class FullFile:
    """A file on a full disk: it exists, but nothing can be written into it."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writelines = write

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __iter__(self):
        return iter(self._f)


class FullDisk:
    """Patch builtins.open and io.open so that writes under `root` fail with ENOSPC from the first
    open that `fills(path)` on (only that one unless `stays_full`)."""

    def __init__(self, root: Path, fills, stays_full: bool):
        self.root, self.fills, self.stays_full = str(root.resolve()) + os.sep, fills, stays_full
        self.full, self.failed = False, []

    def open(self, file, mode="r", *args, **kwargs):
        f = self.real(file, mode, *args, **kwargs)
        if not isinstance(file, (str, bytes, os.PathLike)) or not any(c in mode for c in "wax+"):
            return f
        path = os.path.abspath(os.fsdecode(file))
        if not path.startswith(self.root):
            return f
        fail = self.full or self.fills(Path(path))
        if fail and not self.failed or (self.full and self.stays_full):
            self.full = True
            self.failed.append(path)
            return FullFile(f)
        return f

    def __enter__(self):
        self.real = builtins.open
        builtins.open = io.open = self.open
        return self

    def __exit__(self, *exc):
        builtins.open = io.open = self.real
        return False


# Where the disk fills: the first write of that file for the checkpoint at step 8.
def at(pattern: str, after: str | None = None):
    def fills(path: Path) -> bool:
        ready = after is None or (path.parents[1] / after).exists() or (path.parent / after).exists()
        return pattern in str(path) and ready
    return fills


WHERE = {
    "weights": at(".tmp-step_000008", None),  # model.safetensors, the first file of the checkpoint
    "meta": lambda p: ".tmp-step_000008" in str(p) and p.name == "meta.json",
    "state": at(".state_000008.pt.tmp-"),
    "latest": lambda p: ".latest.json.tmp-" in p.name and (p.parent / "state_000008.pt").exists(),
    "samples": lambda p: p.name == "samples.jsonl" and (p.parent / "checkpoints" / "step_000004").exists(),
    "metrics": lambda p: p.name == "metrics.jsonl" and (p.parent / "checkpoints" / "step_000004").exists(),
}
CASES = [pytest.param(w, full, id=f"{w}-{'stays-full' if full else 'one-write'}") for w in WHERE for full in (True, False)]


@pytest.mark.parametrize("where, stays_full", CASES)
def test_no_space_left_during_a_checkpoint(reference, tmp_path, capsys, where, stays_full):
    out = tmp_path / "run"
    with FullDisk(out.parent, WHERE[where], stays_full) as disk:
        status = _main(small_run_argv(out, **RUN))
    err = capsys.readouterr().err
    assert disk.failed, "the full disk was never hit"
    # one clear sentence, no traceback, a failure status
    assert status not in (0, None), status
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("train")]
    assert "Traceback" not in err and lines, err
    assert "No space left on device" in lines[-1] and str(out) in lines[-1] and "--resume" in lines[-1], lines[-1]

    # earlier checkpoints and run files are intact
    info = read_json(out / "run.json")
    assert info["status"] == ("training" if stays_full else "failed"), info["status"]
    if not stays_full:
        assert "No space left on device" in info.get("error", "")
    for name in ("data.json", "vocab.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    steps = [step_of(c) for c in list_checkpoints(out)]
    assert {0, 1, 2, 4} <= set(steps) <= {0, 1, 2, 4, 8}
    for ck in list_checkpoints(out):
        load_checkpoint(ck)
        assert (ck / "model.safetensors").read_bytes() == \
            (reference / "checkpoints" / ck.name / "model.safetensors").read_bytes()
    assert has_state(out) and load_state(out)["step"] in steps
    ref_metrics, ref_samples = strip(read_jsonl(reference / "metrics.jsonl")), read_jsonl(reference / "samples.jsonl")
    metrics, samples = strip(read_jsonl(out / "metrics.jsonl")), read_jsonl(out / "samples.jsonl")
    assert metrics == ref_metrics[:len(metrics)] and len(metrics) >= 5
    assert samples == ref_samples[:len(samples)] and samples
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]

    # space is free again: resume finishes the run exactly as if nothing had happened
    assert _main(["--out", str(out), "--resume"]) == 0
    assert read_json(out / "run.json")["status"] == "complete"
    assert [step_of(c) for c in list_checkpoints(out)] == [step_of(c) for c in list_checkpoints(reference)]
    for ck in list_checkpoints(reference):
        assert (out / "checkpoints" / ck.name / "model.safetensors").read_bytes() == \
            (ck / "model.safetensors").read_bytes()
    assert strip(read_jsonl(out / "metrics.jsonl")) == ref_metrics
    assert read_jsonl(out / "samples.jsonl") == ref_samples


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # main must return, not exit; keep the test's own report readable
        return e.code
