"""Shared by the Ray tests: results compared with the local runner's, the processes of a Ray
session, and a Ray head with its Ray Client server on 127.0.0.1 that a test starts and stops.

The head is `ray start --head --block` in a session of its own, stopped with SIGTERM (it drains
and stops every process it started) rather than `ray stop`, which stops every Ray process of the
machine: the clusters of other tests running beside this one too. Whatever survives the head is
found by its session id and its environment mark and killed by pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import probes.run.ray_runner as ray_runner
from store.runio import pid_alive
from probes.measure.results import read_results

MARK_VAR = "PROBES_TEST_RAY_HEAD"  # marks the head's processes, so none can hide from stop_head


def without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def check_results(run: Path, reference: dict, steps=None) -> None:
    """Exactly the reference's numbers (every key but the timings) at `steps` (default: all of the
    reference's) and no temporary file. `reference["results"]` maps steps to results without timings."""
    steps = sorted(reference["results"]) if steps is None else steps
    got = read_results(run)
    assert sorted(got) == sorted(steps)
    for s in steps:
        assert without_timing(got[s]) == reference["results"][s], f"step {s} differs from the local runner's"
    assert [p.name for p in (run / "probes").iterdir() if p.name.startswith(".")] == []


def run_template(steps: tuple[int, ...]):
    """A module fixture `template`: the session's fake run with `steps` (conftest.py `fake_run`),
    shared, so every test of the module copies it."""
    @pytest.fixture(scope="module")
    def template(fake_run) -> Path:
        return fake_run(steps=steps)
    return template


def no_stale_kits() -> None:
    """Ray SIGKILLs its workers at shutdown, so --ship's private folders outlive them until the next
    --ship sweeps them: sweep now and check that none of a dead worker is left."""
    tmp = Path(tempfile.gettempdir())
    ray_runner._remove_stale_kits(tmp)
    assert [p for p in tmp.glob("probes-ship-*-*") if not pid_alive(int(p.name.split("-")[2]))] == []


def session_processes(session: str) -> list[int]:
    """Pids of live processes whose command line names this Ray session (its GCS, raylets, agents)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and session.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 now (held together while chosen, so all differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def without_ray_settings() -> dict:
    """This process's environment without the Ray variables that would point a child elsewhere
    (RAY_ADDRESS) or decide its authentication (RAY_AUTH_*): each test sets its own."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH_")}


def head_processes(sid: int, mark: str) -> list[int]:
    """Live (not zombie) processes of the head's session, or carrying its environment mark."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
            mine = (int(fields[3]) == sid
                    or f"{MARK_VAR}={mark}".encode() in (proc / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError, IndexError):
            continue
        if mine and fields[0] != "Z":
            found.append(int(proc.name))
    return found


@dataclass
class RayHead:
    """A running head: `client` is its ray://127.0.0.1:PORT, `temp_dir` Ray's root for its files,
    `mark` the value of MARK_VAR in its processes' environment."""
    client: str
    temp_dir: Path
    process: subprocess.Popen
    mark: str

    def log(self) -> str:
        return Path(self.temp_dir, "head.log").read_text(errors="replace")[-3000:]


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def ray_head(token: str, num_cpus: int = 2, start_s: float = 180) -> Iterator[RayHead]:
    """A Ray head of `num_cpus` CPUs on 127.0.0.1 with token authentication by `token` (Ray's own
    default once a token exists, e.g. after any `ray.init()` of a local instance wrote
    ~/.ray/auth_token; set here, so the test never depends on that file), every port chosen free,
    its files in a fresh short temporary folder (Ray's socket paths must stay short); ready once its
    Ray Client server accepts connections. On exit it is stopped, and the exit fails if any of its
    processes is left."""
    gcs, client, dashboard, agent = free_ports(4)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    mark = uuid.uuid4().hex
    env = dict(without_ray_settings(), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **{MARK_VAR: mark})
    ray_cli = str(Path(sys.executable).with_name("ray"))
    argv = [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            f"--ray-client-server-port={client}", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--include-dashboard=false", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
            "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    with open(temp_dir / "head.log", "w") as log:
        p = subprocess.Popen(argv, cwd=temp_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    head = RayHead(f"ray://127.0.0.1:{client}", temp_dir, p, mark)
    try:
        deadline = time.time() + start_s
        while not _reachable(client):
            assert p.poll() is None, f"ray start exited with status {p.returncode}:\n{head.log()}"
            assert time.time() < deadline, f"the Ray Client server was not up {start_s} s later:\n{head.log()}"
            time.sleep(0.5)
        yield head
    finally:
        stop_head(head)


def stop_head(head: RayHead, grace_s: float = 60) -> None:
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL, by pid, to whatever
    of its session is still alive; fails naming the survivors, after they are killed."""
    p, sid = head.process, head.process.pid
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    while (p.poll() is None or head_processes(sid, head.mark)) and time.time() < deadline:
        time.sleep(0.2)
    left = head_processes(sid, head.mark)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert left == [], f"processes {left} of the Ray head were alive {grace_s} s after its SIGTERM"
