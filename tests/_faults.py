"""Fault injection for the kill tests: start a CLI (`python -m MODULE ARGS`) in a child process
that is SIGKILLed at a chosen file-system event, without the code under test knowing.

The hook is a sitecustomize module put first on the child's PYTHONPATH, so it is installed in the
child and in every Python process the child starts (the probes runner's worker processes). It
replaces os.fsync, os.replace and os.mkdir and counts, for paths under ROOT (and containing an
optional substring):
  write   fsyncs of files and folders, and renames (each counted just before and just after);
  tmpdir  .tmp- folders created.
At the N-th counted event of one process, the child's whole process group is killed with SIGKILL
(the child runs in its own session, so nothing else is hit). Mode "count=FILE" injects nothing and
writes each process's event counts to FILE.<pid> at exit; "none" injects nothing.

Every child carries FAULTS_CHILD=<token> in its environment, so processes it leaves behind can be
found (and ended, by pid) with `stragglers(token)`.

Random fault tests draw their seed with `draw_seed` (from the clock unless told) and run under
`replayable`, so that every failure, an escaped exception included, names the seed to replay it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = r'''
import atexit, json, os, signal

_spec = os.environ.get("FAULTS_HOOK")
if _spec:
    _root, _mode, _only, _n = json.loads(_spec)
    _counts = {"write": 0, "tmpdir": 0}

    def _ours(path):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return path.startswith(_root) and _only in path

    def _event(kind, path):
        if _ours(path):
            _counts[kind] += 1
            if kind == _mode and _counts[kind] == _n:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    _fsync, _replace, _mkdir = os.fsync, os.replace, os.mkdir

    def fsync(fd):
        _fsync(fd)
        try:
            _event("write", os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}"))
        except OSError:
            pass

    def replace(src, dst, *a, **k):
        _event("write", dst)
        _replace(src, dst, *a, **k)
        _event("write", dst)

    def mkdir(path, *a, **k):
        _mkdir(path, *a, **k)
        if os.path.basename(os.fsdecode(path)).startswith(".tmp-"):
            _event("tmpdir", path)

    os.fsync, os.replace, os.mkdir = fsync, replace, mkdir
    if _mode.startswith("count="):
        atexit.register(lambda: open(f"{_mode[6:]}.{os.getpid()}", "w").write(json.dumps(_counts)))
'''


SEED_ENV = "WORKBENCH_TEST_SEED"
FIXED_SEED = 4242  # `make test`'s seed: one commit, one result


def draw_seed(var: str, stress: bool = False) -> int:
    """The seed of a random test: $VAR, else $WORKBENCH_TEST_SEED, else FIXED_SEED in `make test`
    and, for a `stress` test (make stress keeps exploring), one drawn from the clock. Printed at
    once, so pytest shows it with the captured output of any failure."""
    raw = os.environ.get(var) or os.environ.get(SEED_ENV)
    try:
        seed = int(raw) if raw else (time.time_ns() % 100_000 if stress else FIXED_SEED)
    except ValueError:
        raise ValueError(f"${var} / ${SEED_ENV} must be an integer seed, got {raw!r}.") from None
    print(f"seed {seed}: replay with {var}={seed} (or {SEED_ENV}={seed})")
    return seed


@contextlib.contextmanager
def replayable(var: str, seed: int) -> Iterator[None]:
    """Re-raise any failure inside the block as an AssertionError that starts with VAR=seed, so
    the seed is in the failure's one-line summary too, whatever was raised."""
    try:
        yield
    except Exception as e:
        raise AssertionError(f"[{var}={seed}] {type(e).__name__}: {e}") from e


@lru_cache(maxsize=1)
def hook_dir() -> str:
    folder = tempfile.mkdtemp(prefix="faults-hook-")
    Path(folder, "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def child_env(token: str, hook: list | None) -> dict:
    """One thread (so numbers match an in-process run with torch.set_num_threads(1)), no torchrun
    variables, the repository importable, the hook armed."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FAULTS_CHILD=token,
             PYTHONPATH=os.pathsep.join([hook_dir(), str(REPO)]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "WORKBENCH_CACHE", "FAULTS_HOOK"):
        e.pop(k, None)
    if hook is not None:
        e["FAULTS_HOOK"] = json.dumps(hook)
    return e


def default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal's shell gives it, whatever this process had
    (an ignored SIGINT would be inherited, and the child would never see the test's Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(root: Path, mode: str, n: int, module: str, argv: list[str]) -> subprocess.Popen:
    """Start `python -m module argv` in its own session; MODE[:SUBSTRING] as described above.
    The Popen gets a `token` attribute for `stragglers`."""
    kind, _, only = mode.partition(":")
    hook = None if kind == "none" else [os.path.abspath(root) + os.sep, kind, only, n]
    token = uuid.uuid4().hex
    p = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=child_env(token, hook),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=default_sigint)
    p.token = token
    return p


def read_counts(file: Path) -> dict[str, int]:
    """Event counts of a `count=FILE` child, summed over its processes."""
    total = {"write": 0, "tmpdir": 0}
    for part in file.parent.glob(file.name + ".*"):
        for k, v in json.loads(part.read_text()).items():
            total[k] += v
    return total


def stragglers(token: str) -> list[int]:
    """Pids of live processes started by the child with this token (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if f"FAULTS_CHILD={token}".encode() in env.split(b"\0") and state != "Z":
            found.append(int(proc.name))
    return found


def finish(p: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for the child and everything holding its stderr; return stderr. Processes it left
    running after its death are ended (by pid) and reported as a failure."""
    try:
        return p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        left = stragglers(p.token)
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        p.kill()
        p.communicate()
        raise AssertionError(f"processes {left} of the killed child were still running {timeout} s later") from None


# `python -c KILL_AT_FSYNC N ARGS...`: `python -m train ARGS...` that SIGKILLs itself at its N-th
# directory fsync, i.e. in the middle of a checkpoint, state or run.json write (atomic writes
# fsync the folder last), so a test can kill training or a fill-in at any write it chooses.
KILL_AT_FSYNC = """
import os, signal, sys
import store.checkpoint as ck, store.runio as runio
n_calls, die_at = 0, int(sys.argv[1])
real = runio.fsync_dir
def fsync_then_maybe_die(path):
    global n_calls
    n_calls += 1
    if n_calls == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path)
ck.fsync_dir = runio.fsync_dir = fsync_then_maybe_die
from train import main
sys.exit(main(sys.argv[2:]))
"""

