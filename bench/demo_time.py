"""`make demo` as a user meets it: how long until the app answers, until the first probe result
lands, and until the last one does (training and probes running in the background behind the app),
plus all probes on one nano checkpoint. The command is the Makefile's demo recipe
(tests/test_bench.py checks that it still matches)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from store.checkpoint import list_checkpoints
from store.runlayout import probes_dir, result_step, step_of
from store.runrecord import run_status

from .common import Goal, Report

APP_GOAL_S = 20            # the app answers within 20 s of the command
FIRST_PROBE_GOAL_S = 60    # the untrained checkpoint's results are on the pages within a minute
DEMO_GOAL_MIN = 3.5        # every checkpoint trained and probed
# `make demo` with RUNS=<tmp>: $(PY) -m app.launch $(RUNS)/demo --serve $(PORT) --address $(ADDRESS) -- ...
DEMO_LAUNCH = ["-m", "app.launch"]
DEMO_TRAIN = ["--preset", "nano", "--data", "stories"]
DEMO_PROBES = ["-m", "probes"]


def wait_until_idle(limit_s: float = 120.0, below: float = 0.5) -> float:
    """Wait (at most `limit_s`) until the 1-minute load average is under `below`, and return it:
    the goals are stated for an idle machine, and right after the bench's heavy rows the demo
    would share the cores with their leftovers."""
    end = time.time() + limit_s
    while os.getloadavg()[0] >= below and time.time() < end:
        time.sleep(5)
    return os.getloadavg()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def probed(run: Path) -> int:
    """Result files of the run so far (their names by store.runlayout, as the app counts them)."""
    folder = probes_dir(run)
    return sum(result_step(p) is not None for p in folder.iterdir()) if folder.is_dir() else 0


def run(report: Report) -> None:
    load = wait_until_idle()
    with tempfile.TemporaryDirectory() as tmp:
        out, port = Path(tmp) / "demo", free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *DEMO_LAUNCH, str(out), "--serve", str(port), "--address",
                                 "127.0.0.1", "--", *DEMO_TRAIN], stderr=subprocess.DEVNULL)
        marks: dict[str, float] = {}
        try:
            while time.perf_counter() - t0 < 900 and proc.poll() is None:
                now = time.perf_counter() - t0
                if "app" not in marks and answers(port):
                    marks["app"] = now
                if "first" not in marks and probed(out) > 0:
                    marks["first"] = now
                if "trained" not in marks and run_status(out, None) == "complete":
                    marks["trained"] = now
                n_ckpt = len(list_checkpoints(out))
                if "trained" in marks and n_ckpt and probed(out) == n_ckpt:
                    marks["last"] = now
                    break
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGINT)  # the user's Ctrl-C: everything it started stops
            t_stop = time.perf_counter()
            proc.wait(120)
            t_stop = time.perf_counter() - t_stop
        if "last" not in marks:
            raise RuntimeError(f"the demo did not finish: {marks}, exit {proc.returncode}")
        report.add(Goal("`make demo`: the app answers (installed checkout)", marks["app"], APP_GOAL_S, unit=" s",
                        higher_is_better=False, detail=f"1-min load average {load:.2f} at the start"))
        report.add(Goal("`make demo`: the first probe result lands", marks["first"], FIRST_PROBE_GOAL_S, unit=" s",
                        higher_is_better=False, detail="step 0's probes, while training runs"))
        report.add(Goal("`make demo` end to end: the last probe result lands", marks["last"] / 60, DEMO_GOAL_MIN,
                        unit=" min", higher_is_better=False,
                        detail=f"app {marks['app']:.0f} s, training done at {marks['trained']:.0f} s, last of "
                               f"{n_ckpt} checkpoints probed at {marks['last']:.0f} s; Ctrl-C stopped it all in "
                               f"{t_stop:.1f} s (exit {proc.returncode})"))
        last = step_of(list_checkpoints(out)[-1])
        t = time.perf_counter()
        subprocess.run([sys.executable, *DEMO_PROBES, str(out), "--steps", str(last), "--force"],
                       check=True, capture_output=True)
        t_one = time.perf_counter() - t
        report.add(Goal("all probes for one `nano` checkpoint (incl. process start)", t_one, 10, unit=" s",
                        higher_is_better=False))
