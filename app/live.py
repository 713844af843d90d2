"""Where a run stands while it trains and its probes follow it: the step, tokens/s, an ETA and the
checkpoints still waiting for probe results, read from the run folder alone (pure functions, no
Streamlit; app/ui.py draws them and reruns the page when the folder changes)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from store.checkpoint import list_checkpoints
from store.runlayout import metrics_jsonl, probes_dir, result_step, run_json, summary_path
from store.runrecord import record_or_none

from .launch import supervisor_of

TAIL_BYTES = 16384   # the last rows of metrics.jsonl: enough for a speed over the latest steps
SPEED_ROWS = 10      # tokens/s = the median over this many of the latest logged steps


@dataclass
class Progress:
    """A run's progress as its files say it now."""

    status: str | None          # run.json's, None before it exists
    step: int | None            # the latest logged step
    steps: int | None           # the steps asked for
    tokens_per_s: float | None
    eta_s: float | None         # seconds of training left at that speed
    checkpoints: int
    probed: int
    background: bool            # a supervisor (app.launch) works on the run

    @property
    def live(self) -> bool:
        """Still changing: training, or probes following it in the background."""
        return self.status == "training" or self.background

    @property
    def pending(self) -> int:
        return max(0, self.checkpoints - self.probed)


def last_rows(path: Path, n_bytes: int = TAIL_BYTES) -> list[dict]:
    """The complete JSON rows at the end of a JSONL file (the first, maybe cut, line is dropped
    unless the read starts at the beginning); [] when it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - n_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").split("\n")
    if size > n_bytes:
        lines = lines[1:]
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def speed(rows: list[dict]) -> tuple[int | None, float | None, float | None]:
    """(latest step, tokens/s, tokens per step) from the latest metrics rows."""
    steps = [r for r in rows if isinstance(r.get("step"), int)]
    if not steps:
        return None, None, None
    rates = [float(r["tok_per_s"]) for r in steps[-SPEED_ROWS:] if isinstance(r.get("tok_per_s"), (int, float))
             and r["tok_per_s"] > 0]
    per_step = None
    with_tokens = [r for r in steps if isinstance(r.get("tokens"), int)]
    if len(with_tokens) >= 2 and with_tokens[-1]["step"] > with_tokens[0]["step"]:
        per_step = (with_tokens[-1]["tokens"] - with_tokens[0]["tokens"]) / (with_tokens[-1]["step"] - with_tokens[0]["step"])
    return steps[-1]["step"], (median(rates) if rates else None), per_step


def progress(run_dir: str | os.PathLike) -> Progress:
    run_dir = Path(run_dir)
    info = record_or_none(run_dir)
    info = info if isinstance(info, dict) else {}
    status = str(info.get("status", "training")) if info else None
    train = info.get("train") if isinstance(info.get("train"), dict) else {}
    total = train.get("steps") if isinstance(train.get("steps"), int) else None
    step, rate, per_step = speed(last_rows(metrics_jsonl(run_dir)))
    eta = None
    if status == "training" and None not in (step, total, rate, per_step) and rate > 0:
        eta = max(0, total - step) * per_step / rate
    probed = 0
    if probes_dir(run_dir).is_dir():
        probed = sum(1 for p in probes_dir(run_dir).iterdir() if result_step(p) is not None)
    return Progress(status=status, step=step, steps=total, tokens_per_s=rate, eta_s=eta,
                    checkpoints=len(list_checkpoints(run_dir)) if run_dir.is_dir() else 0, probed=probed,
                    background=supervisor_of(run_dir.resolve()) is not None)


def fingerprint(run_dir: str | os.PathLike) -> tuple:
    """Changes whenever the pages would draw something new: a logged step, a checkpoint, a probe
    result or summary, or run.json (the status)."""
    run_dir = Path(run_dir)
    out = []
    for p in (metrics_jsonl(run_dir), run_json(run_dir), summary_path(run_dir), probes_dir(run_dir)):
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def caption(p: Progress) -> str:
    """One line: where training and the probes stand."""
    parts = []
    if p.status is None:
        parts.append("starting: no run.json yet")
    elif p.status == "training":
        at = f"step {p.step}" if p.step is not None else "no step logged yet"
        parts.append(f"training: {at}" + (f" of {p.steps}" if p.steps else ""))
        if p.tokens_per_s:
            parts.append(f"{p.tokens_per_s:,.0f} tokens/s")
        if p.eta_s is not None:
            parts.append(f"about {duration(p.eta_s)} left")
    else:
        parts.append(f"training {p.status}")
    parts.append(f"probes: {p.probed} of {p.checkpoints} checkpoints" + (" (following)" if p.background and p.pending
                                                                            else ""))
    return " · ".join(parts)
