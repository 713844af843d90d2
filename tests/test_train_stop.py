"""Ctrl-C (or SIGTERM) during training is the user's stop, not a failure: one sentence, no traceback, exit 130,
run.json says "stopped" at the last saved step, and --resume finishes the run."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.checkpoint import list_checkpoints
from _small_run import small_run_argv


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, sig):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "train"] + small_run_argv(out, steps=600, ckpt_every=50, eval_every=50)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "state" / "latest.json").exists():
        time.sleep(0.2)
    assert (out / "state" / "latest.json").exists(), "no training state appeared"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "stopped" and "error" not in run
    step = run["stopped_at_step"]
    assert isinstance(step, int) and f"at step {step}" in err and "--resume" in err
    assert max(int(p.name.split("_")[-1]) for p in list_checkpoints(out)) >= step
    resumed = subprocess.run(argv[:3] + small_run_argv(out, steps=600, ckpt_every=50, eval_every=50) + ["--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
