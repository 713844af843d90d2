"""Probes through Ray Client, for real: `python -m probes RUN --ray ray://127.0.0.1:PORT` (the
command itself, in a child process) against a Ray head that this module starts with its Ray
Client server on 127.0.0.1 (tests/_ray.py `ray_head`: 2 CPUs, every port chosen free, token
authentication as Ray sets it up by default, stopped at the end with every process it started
checked gone). The results, with and without --ship, equal the local runner's (`python -m probes
RUN --jobs 1 --threads 1`) on a copy of the same run, and the job carried this checkout's code
(probes/run/ray_runner.py `code_env`). A cluster not joined (nothing on the port, or no token) is
refused with one sentence and exit status 2.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import probes.run.ray_runner as ray_runner
from store.runlayout import probes_dir, summary_path
from probes.measure.results import read_results

from _ray import check_results, no_stale_kits, run_template, free_ports, ray_head, without_ray_settings, without_timing

pytest.importorskip("ray")
pytest.importorskip("grpc", reason="ray:// needs ray[client] (make install)")

REPO = Path(__file__).resolve().parents[1]
STEPS = (0, 4)  # two checkpoints: one task each on the head's two CPUs
TOKEN = "5e" * 32  # the head's token (Ray's are 64 hex digits); fixed, so every run is alike
QUICK = {"RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"}


def probes_cli(run: Path, *argv: str, token: str | None = TOKEN, timeout: float = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m probes RUN ARGV` in a child process, from the repository, as a user types it;
    with the cluster's `token` as Ray's documentation says a client is given it."""
    e = dict(without_ray_settings(), PYTHONUNBUFFERED="1", **(env or {}))
    if token is not None:
        e.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "probes", str(run), *argv], cwd=REPO, env=e, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


template = run_template(STEPS)


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> dict:
    """The local runner's results and summary, from the command line at one thread."""
    run = Path(shutil.copytree(template, tmp_path_factory.mktemp("reference") / "run"))
    done = probes_cli(run, "--jobs", "1", "--threads", "1", token=None)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"results": {s: without_timing(r) for s, r in read_results(run).items()},
            "summary": json.loads(summary_path(run).read_text())}


@pytest.fixture(scope="module")
def head():
    """The Ray head with its Ray Client server; stopped (and checked gone) after the module. Ray ends
    its workers with SIGKILL, so --ship's private folders outlive them: swept here, none left."""
    with ray_head(TOKEN, num_cpus=2) as h:
        yield h
    no_stale_kits()


def shipped_code(head) -> dict[str, bytes]:
    """The files of this project's packages that the head received as the jobs' py_modules
    (unpacked under its session's runtime_resources), by path within the package's folder."""
    found = {}
    for pkg in head.temp_dir.glob("session_*/runtime_resources/py_modules_files/_ray_pkg_*"):
        if pkg.is_dir():
            found.update({str(p.relative_to(pkg)): p.read_bytes() for p in pkg.rglob("*") if p.is_file()})
    return found


def client_server_logs(head) -> str:
    """The tails of the head's Ray Client logs (the proxy's and each client's own server's): what a
    failed connection's message leaves out."""
    logs = sorted(head.temp_dir.glob("session_*/logs/ray_client_server*.err"))
    return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-1500:] for p in logs)


def check_client_run(run: Path, done: subprocess.CompletedProcess, reference: dict, head=None) -> None:
    assert done.returncode == 0, done.stderr[-3000:] + (client_server_logs(head) if head else "")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.strip() == f"probes: computed {len(STEPS)} checkpoint(s); results in {probes_dir(run)}."
    check_results(run, reference, STEPS)
    assert json.loads(summary_path(run).read_text()) == reference["summary"]


def test_a_cluster_not_joined_is_refused_with_one_sentence(head, template, tmp_path):
    """A port nothing answers, and the head without its token (Ray sends none to an address it is
    given, even where ~/.ray/auth_token exists): Ray Client retries for about 30 s, warning on the
    way, and times out; the refusal is one sentence all the same, and says what to check. The
    retries are shortened here by Ray Client's own environment variables."""
    run = Path(shutil.copytree(template, tmp_path / "run"))
    port, = free_ports(1)
    for address, token in ((f"ray://127.0.0.1:{port}", TOKEN), (head.client, None)):
        done = probes_cli(run, "--ray", address, token=token, timeout=120, env=QUICK)
        err = done.stderr.strip()
        assert done.returncode == 2, err[-3000:]
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "Warning" not in err, err[-3000:]
        assert err.startswith(f"probes: --ray {address}: no Ray cluster could be joined"), err
        assert "--ray-client-server-port" in err and "RAY_AUTH_MODE=token" in err, err
        assert not probes_dir(run).exists()


def test_probes_through_ray_client_equal_the_local_runners(head, template, tmp_path, reference):
    run = Path(shutil.copytree(template, tmp_path / "run"))
    done = probes_cli(run, "--ray", head.client)
    check_client_run(run, done, reference, head)
    code = shipped_code(head)  # what the tasks imported: the driver's own files, whatever the cluster has
    for rel in ("probes/run/ray_runner.py", "probes/measure/compute.py", "store/checkpoint.py"):
        assert code.get(rel) == (REPO / rel).read_bytes(), f"{rel} was not shipped as this checkout has it"
    assert not any("__pycache__" in rel for rel in code)


def test_ship_through_ray_client_equals_the_local_runner(head, template, tmp_path, reference):
    """--ship: the run's data and each checkpoint's verified bytes go into the object store from
    this side of the client (ray.put through the client server), and the tasks unpack them."""
    run = Path(shutil.copytree(template, tmp_path / "run"))
    done = probes_cli(run, "--ray", head.client, "--ship")
    check_client_run(run, done, reference, head)


class FlakyRay:
    """Stands in for the ray module: ray.init fails with each of `failures` in turn, then joins."""

    def __init__(self, *failures: Exception):
        self.failures, self.inits, self.shutdowns = list(failures), 0, 0

    def init(self, address: str, **kwargs) -> None:
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_an_empty_init_failure_from_the_server_is_tried_again_and_any_other_is_not(monkeypatch):
    """The one CI failure of the ship test: the server answered the client's init with a failure and
    no message. client_init connects again (up to CLIENT_INIT_TRIES in all); a failure that says
    something (no token, no server) goes straight to the refusal."""
    monkeypatch.setattr(ray_runner.time, "sleep", lambda s: None)
    empty = ConnectionAbortedError("Initialization failure from server:\n")
    ray = FlakyRay(empty, empty)
    ray_runner.client_init(ray, "ray://h:1", {})
    assert (ray.inits, ray.shutdowns) == (3, 2)
    ray = FlakyRay(*[empty] * ray_runner.CLIENT_INIT_TRIES)
    with pytest.raises(ConnectionAbortedError):
        ray_runner.client_init(ray, "ray://h:1", {})
    assert ray.inits == ray_runner.CLIENT_INIT_TRIES
    said = ConnectionAbortedError("Initialization failure from server:\nCall to `ray.init()` on the server failed")
    ray = FlakyRay(said)
    with pytest.raises(ConnectionAbortedError):
        ray_runner.client_init(ray, "ray://h:1", {})
    assert ray.inits == 1
