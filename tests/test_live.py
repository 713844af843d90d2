"""Live runs (app/launch.py, app/live.py, the New-run page): a supervisor trains a real small run
in the background while the probes follow it; stopping it marks the run stopped with nothing left
running and nothing half-written; starting it again continues it to the end with every checkpoint
probed; a second start on the same run is refused; the progress line reads the run's own files;
the New-run form refuses a bad value with the command line's own sentence."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import launch, live
from store.runio import pid_alive
from store.checkpoint import list_checkpoints
from store.runio import read_json, read_jsonl
from store.runlayout import launch_record, result_path, step_of
from probes.measure.results import read_result
from train import main as train_main
from _small_run import small_run_argv

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


def wait_for(what, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what.__doc__ or what}")


def status(run: Path) -> str | None:
    try:
        return read_json(run / "run.json").get("status")
    except Exception:  # noqa: BLE001 - not written yet
        return None


def test_background_run_stops_cleanly_and_continues_to_the_end(tmp_path):
    run = tmp_path / "live"
    argv = small_run_argv(run, steps=400, ckpt_every=100)[2:]  # the options after --out RUN
    pid = launch.start_background(run, argv)
    record = launch.supervisor_of(run.resolve())
    assert record is not None and record["pid"] == pid and record["train_argv"] == argv
    with pytest.raises(ValueError, match="already being trained or probed"):
        launch.start_background(run, argv)  # never two on one run

    def first_probed():
        """a probe result of the running run"""
        return status(run) == "training" and (run / "probes").is_dir() and any((run / "probes").glob("step_*.json"))
    wait_for(first_probed, 120)
    children = launch.supervisor_of(run.resolve())["children"]
    assert set(children) == {"train", "probes"}
    assert launch.stop_background(run)
    wait_for(lambda: launch.supervisor_of(run.resolve()) is None, 150)
    assert not launch_record(run).exists()
    wait_for(lambda: all(not pid_alive(p) for p in [pid, *children.values()]), 10)  # nothing left running
    info = read_json(run / "run.json")
    assert info["status"] == "stopped" and isinstance(info["stopped_at_step"], int)
    for path in (run / "probes").iterdir():  # nothing half-written: every file whole, no temporaries
        assert path.suffix == ".json" and read_result(path) is not None, path
    assert not launch.stop_background(run)

    launch.start_background(run, argv)  # the same start continues it (--resume) to the end
    wait_for(lambda: launch.supervisor_of(run.resolve()) is None, 300)
    assert status(run) == "complete"
    steps = [step_of(p) for p in list_checkpoints(run)]
    assert steps[-1] == 400
    for s in steps:
        assert read_result(result_path(run, s)) is not None, f"step {s} has no probe result"
    assert (run / "probes" / "summary.json").exists()
    log = (tmp_path / ".launch" / "live.log").read_text()
    assert "stopped by the user at step" in log and "Traceback" not in log


def test_the_supervisor_starts_training_without_waiting_for_the_app(tmp_path, monkeypatch):
    """Both starts are at once: a server that never answers does not hold training back (the
    supervisor once waited for the app's health check, 3-5 s of the demo's training). (The
    supervisor imports torch: python -m app.launch checks the training options with train.cli's
    refusal before it writes or starts anything.)"""
    run, started = tmp_path / "run", tmp_path / "train-started"
    monkeypatch.setattr(launch, "server_command", lambda port, address: [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(launch, "train_command", lambda run_dir, argv: [
        sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(started)!r}).write_text(repr(time.time()))"])
    sup = launch.Supervisor(run, [], serve=(1, "127.0.0.1"), out=io.StringIO())
    stopper = threading.Timer(20.0, lambda: setattr(sup, "stopping", True))  # should a wait come back
    t0 = time.time()
    stopper.start()
    try:
        sup.run()  # returns once training has ended (no run.json: no probes), the silent server stopped
    finally:
        stopper.cancel()
    assert started.exists(), "training never started"
    assert float(started.read_text()) - t0 < 10, "training waited for the app"
    assert not pid_alive(sup.children["server"].pid)


def test_progress_reads_the_run_files(app_roots, tmp_path):
    run = tmp_path / "small"
    shutil.copytree(app_roots["computed"] / "small", run)
    info = read_json(run / "run.json")
    info["status"] = "training"
    info["train"]["steps"] = 1000
    (run / "run.json").write_text(json.dumps(info))
    rows = read_jsonl(run / "metrics.jsonl")
    p = live.progress(run)
    assert p.status == "training" and p.step == rows[-1]["step"] and p.steps == 1000
    rates = [r["tok_per_s"] for r in rows if "tok_per_s" in r][-live.SPEED_ROWS:]
    assert p.tokens_per_s == pytest.approx(sorted(rates)[len(rates) // 2] if len(rates) % 2 else
                                           (sorted(rates)[len(rates) // 2 - 1] + sorted(rates)[len(rates) // 2]) / 2)
    per_step = (rows[-1]["tokens"] - rows[0]["tokens"]) / (rows[-1]["step"] - rows[0]["step"])
    assert p.eta_s == pytest.approx((1000 - p.step) * per_step / p.tokens_per_s)
    assert p.checkpoints == len(list_checkpoints(run)) and p.probed == p.checkpoints and p.pending == 0
    assert p.live and not p.background
    line = live.caption(p)
    assert f"training: step {p.step} of 1000" in line and "tokens/s" in line and "left" in line
    before = live.fingerprint(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": p.step + 1, "tokens": rows[-1]["tokens"] + 1, "loss": 1.0}) + "\n")
    assert live.fingerprint(run) != before and live.progress(run).step == p.step + 1
    # a torn last line (a writer mid-append) is skipped, not an error
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99')
    assert live.progress(run).step == p.step + 1
    assert live.last_rows(run / "metrics.jsonl", 64)[-1]["step"] == p.step + 1


def test_new_run_form_refuses_with_the_command_lines_sentence(app_roots, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(app_roots["computed"], root)
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/new_run.py").run()
    assert not at.exception
    at.text_input(key="new_name").set_value("fresh")
    at.number_input(key="new_n_ctx").set_value(100_000_000)  # far beyond this machine's memory
    at.button[0].click().run()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train_main(["--preset", "nano", "--data", "stories", "--steps", "800", "--lr", "0.002",
                           "--n-ctx", "100000000", "--out", str(root / "fresh")])
    assert code == 2
    cli = err.getvalue().strip()
    assert [e.value for e in at.error] == [cli]
    assert not (root / "fresh").exists() and not (root / ".launch" / "fresh.json").exists()
    at.text_input(key="new_name").set_value("small")  # an existing run: the CLI's sentence again
    at.number_input(key="new_n_ctx").set_value(0)
    at.button[0].click().run()
    assert [e.value for e in at.error] == [f"error: {root / 'small'} already holds a run; pass --resume to continue "
                                           "it or choose another --out."]
    at.text_input(key="new_name").set_value("../escape")
    at.button[0].click().run()
    assert "refused" in at.error[0].value and not (tmp_path / "escape").exists()
