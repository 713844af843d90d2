"""Heavy work the app starts on a user's request (computing probe results), run at most once per
run at a time whichever session asks.

Every browser session runs its page scripts in a thread of the same server process, so a
module-level registry is shared by all of them: the first session to ask starts a background
thread, and every session (the first one too) watches that job's progress instead of starting a
second computation. The job outlives the script run that started it, so a rerun or a closed tab
does not abort it halfway. The same holds for the Prompt page's jobs (one prompt followed through a
run's checkpoints by probes.prompt), one per run, prompt and options.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import probes
from probes.prompt import prompt_timelapse


@dataclass
class ProbeJob:
    """One computation of probe results for a run: progress as the runner reports it."""

    run_dir: str
    steps: list[int]
    only: tuple[str, ...] | None = None  # the probes asked for (None: the default set)
    done: int = 0
    total: int = 0
    step: int | None = None
    error: str | None = None
    finished: bool = False
    computed: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None

    def progress(self, done: int, total: int, step: int | None = None) -> None:
        self.done, self.total, self.step = done, total, step

    def fraction(self) -> float:
        return min(1.0, self.done / max(self.total, 1))

    def wait(self, timeout: float | None = None, every: float = 0.25,
             tick: Callable[["ProbeJob"], None] | None = None) -> bool:
        """Block until the job ends (True) or `timeout` seconds pass (False), calling `tick(job)`
        every `every` seconds (a page updates its progress bar there)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if tick:
                tick(self)
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if self.thread is not None:
                self.thread.join(every)
        return True


_jobs: dict[str, ProbeJob] = {}
_lock = threading.Lock()


def _key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


def running(run_dir: str | Path) -> ProbeJob | None:
    """The probe computation under way for this run, if any."""
    with _lock:
        job = _jobs.get(_key(run_dir))
    return job if job is not None and not job.finished else None


def start_probes(run_dir: str | Path, steps: Sequence[int], only: Sequence[str] | None = None) -> ProbeJob:
    """Start computing probe results (`only` these probes, by default the default set) for `steps`
    of the run, or return the computation already under way for it, whatever it was asked for:
    one computation per run at a time, and a page asking for something else asks again once it
    has ended."""
    key = _key(run_dir)
    with _lock:
        job = _jobs.get(key)
        if job is not None and not job.finished:
            return job
        job = ProbeJob(run_dir=str(run_dir), steps=list(steps), only=tuple(only) if only else None,
                       total=len(steps))

        def work() -> None:
            try:
                job.computed = probes.run_probes(run_dir, only=job.only, steps=job.steps, progress=job.progress)
            except Exception as e:  # noqa: BLE001 - shown on the page as one sentence
                job.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            finally:
                job.finished = True

        job.thread = threading.Thread(target=work, name=f"probes:{Path(run_dir).name}", daemon=True)
        _jobs[key] = job
        job.thread.start()
        return job


# -- the Prompt page: one prompt through a run's checkpoints ----------------------------------------
PromptKey = tuple  # (run folder, text, steps, tokens, seed, corrupted, version)
KEEP_FINISHED = 16  # finished prompt jobs kept with their results; an older one is recomputed from the disk cache


@dataclass
class PromptJob(ProbeJob):
    """One prompt followed through a run's checkpoints (probes.prompt.prompt_timelapse): a ProbeJob's
    progress and waiting, and the timelapse in `result` once it has finished without error."""

    key: PromptKey = ()
    result: dict | None = None


_prompt_jobs: dict[PromptKey, PromptJob] = {}


def prompt_key(run_dir: str | Path, text: str, steps: Sequence[int], tokens: int, seed: int,
               corrupted: str | None, version: object = None) -> PromptKey:
    """What a prompt job computes: the run, the prompt and options, and `version` (any hashable the
    page derives from the checkpoints' files, so a replaced checkpoint never gets an old result)."""
    return (_key(run_dir), text, tuple(int(s) for s in steps), int(tokens), int(seed), corrupted, version)


def prompt_job(key: PromptKey) -> PromptJob | None:
    """The prompt job of `key`, running or finished, if one is known."""
    with _lock:
        return _prompt_jobs.get(key)


def start_prompt(run_dir: str | Path, text: str, steps: Sequence[int], tokens: int, seed: int,
                 corrupted: str | None, version: object = None) -> PromptJob:
    """Follow `text` through `steps` of the run, or return the job that is doing or has done exactly
    that (a failed one is started again): the first session to ask starts it, every session asking
    the same watches the same job. Each checkpoint's entry lands in probes.prompt's disk cache, so a
    job asked again after it was forgotten only reads it back."""
    key = prompt_key(run_dir, text, steps, tokens, seed, corrupted, version)
    with _lock:
        job = _prompt_jobs.get(key)
        if job is not None and (not job.finished or job.error is None):
            return job
        job = PromptJob(run_dir=str(run_dir), steps=list(key[2]), total=len(key[2]), key=key)

        def work() -> None:
            try:
                job.result = prompt_timelapse(run_dir, text, job.steps, tokens, seed, corrupted,
                                              progress=job.progress)
            except Exception as e:  # noqa: BLE001 - shown on the page as one sentence
                job.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            finally:
                job.finished = True

        job.thread = threading.Thread(target=work, name=f"prompt:{Path(run_dir).name}", daemon=True)
        _prompt_jobs.pop(key, None)
        _prompt_jobs[key] = job
        finished = [k for k, j in _prompt_jobs.items() if j.finished]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del _prompt_jobs[old]
        job.thread.start()
        return job
