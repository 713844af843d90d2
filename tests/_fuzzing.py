"""What the command-line fuzzers share: seeds and settings, the value strategies, and the checks
that a refusal came before any action (a listing of the test's folder, a count of processes started).

`make test` runs every fuzzer on a fixed seed (FAST_SEED), so one commit gives one result; `make
stress` draws a fresh seed each time, to keep exploring. Either way the seed is printed (pytest
shows it with the captured output of a failure), and HYPOTHESIS_SEED=N replays it:

    HYPOTHESIS_SEED=N .venv/bin/python -m pytest tests/test_fuzz_cli.py -m stress -k probes

No example database is kept (nothing is written into the checkout), so a seed is the whole replay.
"""
from __future__ import annotations

import multiprocessing.process
import os
import secrets
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

SEED_ENV = "HYPOTHESIS_SEED"
FAST_SEED = 20_251_207


def fuzz_seed(stress: bool) -> int:
    """$HYPOTHESIS_SEED, else FAST_SEED in `make test`, else (stress) a fresh one."""
    raw = os.environ.get(SEED_ENV)
    try:
        return int(raw) if raw else (secrets.randbelow(2 ** 32) if stress else FAST_SEED)
    except ValueError:
        raise ValueError(f"${SEED_ENV} must be an integer seed, got {raw!r}.") from None


def fuzz(n: int, stress: bool, deadline_ms: int | None = None, **extra) -> Callable:
    """Decorates a @given test (called with no arguments) to run `n` examples on the seed of
    fuzz_seed, and to print that seed when it ends (after the test's own capsys reads, so `-s`
    shows it) and note it on a failure. The fast set has no deadline: an example slowed by a busy
    hour must not fail it, and pytest-timeout still ends a hang; the stress set keeps
    `deadline_ms`, which catches a hang within its thousands of examples."""
    chosen = fuzz_seed(stress)
    line = f"hypothesis seed {chosen} ({'stress' if stress else 'fixed'}): replay with {SEED_ENV}={chosen}"
    rules = settings(max_examples=n, deadline=deadline_ms if stress else None, database=None, derandomize=False,
                     print_blob=True, suppress_health_check=list(HealthCheck), **extra)

    def decorate(test: Callable) -> Callable[[], None]:
        seeded = seed(chosen)(rules(test))

        def run() -> None:
            try:
                seeded()
            except BaseException as e:
                e.add_note(line)
                raise
            finally:
                print(line)
        return run
    return decorate


def tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `root` with (size, mtime_ns) for a file, None for a folder: two listings
    differ when anything was created, removed or rewritten."""
    found: dict[str, tuple[int, int] | None] = {}
    for p in sorted(root.rglob("*")):
        info = p.lstat()
        found[str(p.relative_to(root))] = None if p.is_dir() else (info.st_size, info.st_mtime_ns)
    return found


def changes(before: dict, after: dict) -> list[str]:
    """What differs between two `tree` listings: '+path' created, '-path' removed, '~path' rewritten."""
    return ([f"+{p}" for p in sorted(set(after) - set(before))] + [f"-{p}" for p in sorted(set(before) - set(after))]
            + [f"~{p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]])


class Starts:
    """Counts the processes and pools a command starts: each patched entry point records its name,
    then does what it did."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def patch(self, monkeypatch, target, name: str) -> None:
        real = getattr(target, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(target, name, counted)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def starts(monkeypatch) -> Starts:
    """Counts every child process started (subprocess, multiprocessing: worker pools included)."""
    counter = Starts()
    counter.patch(monkeypatch, subprocess.Popen, "__init__")
    counter.patch(monkeypatch, multiprocessing.process.BaseProcess, "start")
    return counter


def refused_cleanly(status: int, out: str, err: str, before: dict, after: dict, started: list[str], argv) -> None:
    """A refusal: status 2, one sentence on stderr, and nothing done before it: nothing on stdout,
    no file or folder created, removed or rewritten, no process started."""
    assert status == 2, (argv, status, err)
    one_sentence(err)
    assert out == "", f"printed before refusing: {out!r}: {argv}"
    assert not changes(before, after), f"refused, yet changed {changes(before, after)[:5]}: {argv}"
    assert not started, f"refused, yet started {started}: {argv}"


def one_sentence(err: str) -> str:
    """The error line, after checking there is exactly one and no traceback (progress bars, which
    redraw with carriage returns, are not lines)."""
    assert "Traceback" not in err, err
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip() and not l.lstrip().startswith(("probes:  ", "train:"))
             and "it/s" not in l and "ckpt/s" not in l and "s/ckpt" not in l]
    assert len(lines) == 1, lines
    assert len(lines[0]) > 10 and lines[0].rstrip().endswith((".", ")")), lines[0]
    return lines[0]


# -- value strategies ----------------------------------------------------------------------------
junk = st.one_of(st.text(max_size=6), st.sampled_from(["", " ", "-1", "1e3", "0x10", "nan", "inf", "-inf", "1_000",
                                                       "--", "-", "--help=1", "ü", "\x00"]))
huge = st.sampled_from([str(2 ** 63), str(2 ** 64), str(10 ** 30), "9" * 400, str(-(2 ** 63) - 1)])


def mostly(valid, *bad):
    """A valid value three times in four, so that examples with every flag valid are common."""
    return st.one_of(valid, valid, valid, st.one_of(*bad))


def ints(lo: int, hi: int):
    return mostly(st.integers(lo, hi).map(str), st.integers(-5, 0).map(str), huge, junk)


def floats(lo: float, hi: float):
    return mostly(st.floats(lo, hi).map(repr), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0"]), junk)


def sized(lo: float, hi: float, limit: float):
    """A size argument: small valid values, or values the CLI must refuse (never a huge valid one,
    which would be a legitimately long job rather than a hang)."""
    return mostly(st.floats(lo, hi).map(repr), st.floats(max_value=0).map(repr), st.floats(min_value=limit).map(repr),
                  st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0"]), junk)


class Accepted(Exception):
    """The arguments passed every check and the command reached the stub that replaces its work
    (the trainer, the importer's first checkpoint, the launcher's supervisor)."""
