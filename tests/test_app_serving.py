"""The app listens on this machine only unless asked: `make app` (the command the Makefile runs,
read with `make -n`) and a plain `streamlit run app` (which reads .streamlit/config.toml) both
bind 127.0.0.1, and print no Network URL."""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _serving import free_port, stop_server, wait_healthy

REPO = Path(__file__).resolve().parents[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, p = fields[1].split(":")
            if int(p, 16) == port and fields[3] == "0A":
                raw = bytes.fromhex(addr)
                if name == "tcp":
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def serve(cmd: list[str], port: int, tmp_path: Path) -> tuple[set[str], str]:
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path), PYTHONUNBUFFERED="1")
    log = tmp_path / f"streamlit-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, output=log.read_text)
        time.sleep(0.5)  # the URLs are printed after the server is up
        return listening_addresses(port), log.read_text()
    finally:
        stop_server(proc)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_make_app_listens_on_loopback_only(tmp_path):
    port = free_port()
    dry = subprocess.run(["make", "-s", "-n", "app", f"PORT={port}", "STAMP=Makefile"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    line = next(l for l in dry if "streamlit run app" in l)
    cmd = shlex.split(line)
    cmd[0] = str(Path(sys.executable).parent / "streamlit")
    addresses, log = serve(cmd, port, tmp_path)
    assert addresses == {"127.0.0.1"}, addresses
    assert "Network URL" not in log, log


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_plain_streamlit_run_reads_the_loopback_default(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app", "--server.port", str(port)]
    addresses, log = serve(cmd, port, tmp_path)
    assert addresses == {"127.0.0.1"}, addresses
    assert "Network URL" not in log, log
