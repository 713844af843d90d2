"""A Streamlit server under test: a free local port to serve it on, and waiting until its health
endpoint answers. Shared by test_app_serving.py, test_browser.py and test_browser_live.py."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout: float = 2.0) -> bool:
    """One look at the server's health endpoint: True when it answers `ok`."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=timeout) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 90.0, every: float = 0.3,
                 request_timeout: float = 2.0, output: Callable[[], str] | None = None) -> None:
    """Poll `url`'s health endpoint until it answers `ok`; AssertionError when `timeout` seconds pass
    first or when `proc` (the server, if given) exits before. The message ends with `output()`, the
    server's log, if given; else, when the server exited, with what it wrote to its stdout pipe."""
    def said(exited: bool) -> str:
        if output is not None:
            return output()
        piped = proc is not None and proc.stdout is not None
        return proc.stdout.read() if exited and piped else ""  # a live server's pipe would block

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with status {proc.returncode} before it answered at {url}: "
                                 f"{said(True)}")
        if healthy(url, request_timeout):
            return
        time.sleep(every)
    raise AssertionError(f"the server did not answer at {url} within {timeout} s: {said(False)}")


def stop_server(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to a server under test, SIGKILL if it has not exited `grace` seconds later."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
