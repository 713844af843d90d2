"""The live app in Chromium, as `make demo` serves it (python -m app.launch RUN --serve PORT): the
app answers within 20 s while a real run trains; the step the sidebar shows grows between two
looks without a click; the New-run form refuses a bad value with the command line's sentence and
starts a run that completes and is probed; SIGINT to the supervisor (a terminal's Ctrl-C) leaves
nothing running and the run marked stopped, not failed."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import launch
from store.runio import pid_alive
from store.checkpoint import list_checkpoints
from store.runio import read_json
from store.runlayout import result_path, step_of
from probes.measure.results import read_result
from _small_run import small_run_argv
from _serving import free_port, wait_healthy
from test_browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path, form_is_refused_as_the_cli_refuses, wait_until_idle
from test_live import wait_for

REPO = Path(__file__).resolve().parents[1]
APP_WITHIN_S = 20


def shown_step(page) -> int | None:
    m = re.search(r"training: step (\d+)", page.locator("[data-testid='stSidebar']").inner_text())
    return int(m.group(1)) if m else None


def test_live_demo_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    if chromium is None:
        pytest.skip("No Chromium found (looked for /usr/bin/chromium and chromium on PATH): "
                    "install it with `apt-get install -y chromium` or run .ci/run.")
    root = tmp_path / "runs"
    run = root / "live"
    port = free_port()
    started = time.monotonic()
    sup = subprocess.Popen([sys.executable, "-m", "app.launch", str(run), "--serve", str(port), "--",
                            *small_run_argv(run, steps=100_000, ckpt_every=500)[2:]],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=60, every=0.2, request_timeout=1)
        to_app = time.monotonic() - started
        assert to_app <= APP_WITHIN_S, f"the app answered after {to_app:.1f} s"
        wait_for(lambda: (run / "run.json").exists(), 60)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 2000})
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("heading", name="Runs").first.wait_for(timeout=60_000)
                first = wait_for(lambda: shown_step(page), 60)
                later = wait_for(lambda: (shown_step(page) or 0) > first and shown_step(page), 30)
                assert later > first  # no click in between
                page.locator(".st-key-loss_chart .js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "live-runs.png"), full_page=True)

                page.goto(f"{url}/new_run", wait_until="domcontentloaded")
                page.get_by_role("heading", name="New run").wait_for(timeout=60_000)
                wait_until_idle(page)
                form_is_refused_as_the_cli_refuses(
                    page, (("Layers", "1"), ("Heads", "2"), ("Width", "32"), ("Context", "100000000"), ("Steps", "30")),
                    ["--preset", "nano", "--data", "stories", "--steps", "30", "--lr", "0.002", "--n-layer", "1",
                     "--n-head", "2", "--n-embd", "32", "--n-ctx", "100000000", "--out", str(root / "formrun")])
                page.get_by_label("Context", exact=True).fill("32")
                page.get_by_role("button", name="Start training").click()
                page.get_by_text("is training in the background").wait_for(timeout=60_000)
            finally:
                browser.close()
        form_run = root / "formrun"
        wait_for(lambda: (form_run / "run.json").exists() and launch.supervisor_of(form_run.resolve()) is None, 240)
        assert read_json(form_run / "run.json")["status"] == "complete"
        for p in list_checkpoints(form_run):
            assert read_result(result_path(form_run, step_of(p))) is not None
        assert (form_run / "probes" / "summary.json").exists()
    finally:
        children = (launch.supervisor_of(run.resolve()) or {}).get("children", {})
        sup.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
        out, _ = sup.communicate(timeout=180)
    assert sup.returncode == 130, out
    assert "Traceback" not in out, out
    assert all(not pid_alive(pid) for pid in children.values())
    info = read_json(run / "run.json")
    assert info["status"] == "stopped" and info["stopped_at_step"] >= 0
    assert not (root / ".launch" / "live.json").exists()
