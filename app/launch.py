"""Training and its probes as background work, one supervisor process per run:

    python -m app.launch RUN_DIR [--serve PORT [--address ADDR]] [-- TRAIN_OPTION ...]

`make demo` runs it in the foreground with --serve (the app is up within seconds while the run
trains and the probes follow it); the app's New-run form starts it in a session of its own, so a
closed browser tab or a server rerun never touches it. The supervisor
- checks every argument first, the training options with the trainer's own checks
  (train.cli.refusal, which costs it the import of torch), so bad input writes and starts nothing;
- starts the app server (with --serve) and, without waiting for it, trains RUN_DIR (continuing
  it with --resume when it holds a run, skipping training when the run is complete), and has the
  probes follow it (`python -m probes RUN_DIR --watch`) from the moment run.json exists;
- records itself in <runs>/.launch/NAME.json (store.runlayout.launch_record) while it lives, so
  the app can show that a run is being worked on, offer to stop it, and refuse to start it twice;
- on SIGINT or SIGTERM stops training first (the trainer marks the run stopped at its last saved
  state: `make demo` again continues it), then the probes (a result file is whole or absent), then
  the server, and exits with status 130. Its children live in sessions of their own, so a Ctrl-C
  in the terminal reaches them once, through the supervisor, in that order.
"""
from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from model.cliargs import ArgumentParser, UsageError, run_command
from store.runio import RunFileError, pid_alive, read_json, write_json_atomic
from store.runlayout import launch_log, launch_record, run_json
from store.runrecord import run_status
from train.cli import refusal

REPO_ROOT = Path(__file__).resolve().parents[1]
POLL = 0.5              # seconds between the supervisor's looks at its children
PROBES_POLL = 0.5       # seconds between the probes watcher's looks for new checkpoints (a look: ~4 ms)
STOP_WAIT = {"train": 120.0, "probes": 60.0, "server": 15.0}  # grace before SIGKILL, per child
START_WAIT = 30.0       # how long start_background waits for the supervisor to record itself (it checks the
                        # training options first, importing torch: seconds on a busy machine)


# -- processes ---------------------------------------------------------------------------------
def command_line(pid: int) -> list[str] | None:
    """The process's argv (Linux /proc), None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def supervisor_of(run_dir: str | os.PathLike) -> dict | None:
    """The launch record of the live supervisor working on `run_dir`, or None: no record, or a
    stale one (its process is gone, or the pid now belongs to another program)."""
    try:
        record = read_json(launch_record(run_dir))
    except RunFileError:
        return None
    pid = record.get("pid") if isinstance(record, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or not pid_alive(pid):
        return None
    argv = command_line(pid)
    if argv is not None and "app.launch" not in argv:  # the pid was reused by another program
        return None
    return record


def python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def train_options(run_dir: Path, train_argv: list[str]) -> list[str]:
    """`python -m train`'s options for `run_dir`: with --resume when it holds a run (stopped,
    failed, or killed) to continue."""
    argv = [*train_argv, "--out", str(run_dir)]
    if run_json(run_dir).exists() and "--resume" not in train_argv:
        argv.append("--resume")
    return argv


def train_command(run_dir: Path, train_argv: list[str]) -> list[str] | None:
    """The training command for `run_dir`: None when the run is complete."""
    if run_status(run_dir, None) == "complete":
        return None
    return python("train", *train_options(run_dir, train_argv))


def server_command(port: int, address: str) -> list[str]:
    return python("streamlit", "run", str(REPO_ROOT / "app"), "--server.address", address, "--server.port", str(port),
                  "--server.headless", "true", "--browser.gatherUsageStats", "false",
                  "--client.toolbarMode", "minimal")


# -- the supervisor --------------------------------------------------------------------------
class Supervisor:
    """Starts, watches and stops one run's training, probes and (optionally) the app server."""

    def __init__(self, run_dir: Path, train_argv: list[str], serve: tuple[int, str] | None = None,
                 out: IO | None = None):
        self.run_dir, self.train_argv, self.serve = run_dir.resolve(), list(train_argv), serve
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.log: IO | None = None
        self.out = out or sys.stderr

    def say(self, message: str) -> None:
        print(f"launch: {message}", file=self.out, flush=True)

    def on_signal(self, signum: int, frame) -> None:  # noqa: ARG002
        self.stopping = True

    def start(self, name: str, argv: list[str], quiet: bool, env: dict | None = None) -> None:
        """A child in a session of its own (a terminal's Ctrl-C reaches the supervisor only)."""
        out = self.log if quiet else None
        self.children[name] = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=out, env=env,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
        self.record()

    def record(self) -> None:
        write_json_atomic(launch_record(self.run_dir), {
            "pid": os.getpid(), "run_dir": str(self.run_dir), "started": self.started, "train_argv": self.train_argv,
            "children": {k: p.pid for k, p in self.children.items() if p.poll() is None},
            "serving": None if self.serve is None else {"port": self.serve[0], "address": self.serve[1]},
            "log": str(launch_log(self.run_dir))})

    def finished(self, name: str) -> bool:
        p = self.children.get(name)
        return p is not None and p.poll() is not None

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        self.started = time.time()
        launch_record(self.run_dir).parent.mkdir(parents=True, exist_ok=True)
        self.log = open(launch_log(self.run_dir), "a", buffering=1)
        try:
            return self.supervise()
        finally:
            self.stop_all()
            launch_record(self.run_dir).unlink(missing_ok=True)
            self.log.close()

    def supervise(self) -> int:
        if self.serve is not None:
            env = {**os.environ, "WORKBENCH_RUNS": str(self.run_dir.parent)}
            self.start("server", server_command(*self.serve), quiet=True, env=env)
            host = "localhost" if self.serve[1] == "127.0.0.1" else self.serve[1]
            self.say(f"the app is starting at http://{host}:{self.serve[0]} (Ctrl-C stops everything)")
        command = train_command(self.run_dir, self.train_argv)
        if command is None:
            self.say(f"{self.run_dir.name} is complete: no training")
        else:
            self.start("train", command, quiet=self.serve is None)
        while not self.stopping:
            trained = command is None or self.finished("train")
            # The watcher ends at a stopped, failed or complete status, which a resumed run still
            # shows until its trainer starts: it waits for "training" (or for the trainer's end).
            if "probes" not in self.children and run_json(self.run_dir).exists() and (
                    trained or run_status(self.run_dir, None) == "training"):
                self.start("probes", python("probes", str(self.run_dir), "--watch", "--poll", str(PROBES_POLL)),
                           quiet=True)
                self.say(f"probes follow the run (their output: {launch_log(self.run_dir)})")
            if trained and "probes" not in self.children:
                return self.children["train"].returncode if "train" in self.children else 2
            if trained and run_status(self.run_dir, None) == "training":  # killed without a word: nothing more will come
                self.stop("probes", signal.SIGINT)
            if trained and self.finished("probes"):
                if self.serve is None:
                    return self.children["train"].returncode if "train" in self.children else 0
                if not getattr(self, "_said_done", False):
                    self._said_done = True
                    self.say(f"training and probes of {self.run_dir.name} are done; the app keeps running")
            if self.finished("server"):
                self.say("the app server ended")
                break
            time.sleep(POLL)
        return 130 if self.stopping else 0

    def stop(self, name: str, sig: int) -> None:
        """Ask child `name` to stop with `sig`; SIGKILL after its grace period."""
        p = self.children.get(name)
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(STOP_WAIT[name])
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stop_all(self) -> None:
        """Training first (it marks the run stopped), then the probes, then the server."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        self.stop("train", signal.SIGTERM)
        self.stop("probes", signal.SIGINT)
        self.stop("server", signal.SIGTERM)


# -- starting and stopping from the app ----------------------------------------------------------
def start_background(run_dir: str | os.PathLike, train_argv: list[str]) -> int:
    """Start a supervisor for `run_dir` in a session of its own and return its pid once it has
    recorded itself. ValueError (one sentence) when one already works on this run. A lock beside
    the record makes the check and the start one step, so two sessions cannot both start it."""
    run_dir = Path(run_dir).resolve()
    record = launch_record(run_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = supervisor_of(run_dir)
        if found is not None:
            raise ValueError(f"Run {run_dir.name!r} is already being trained or probed (process {found['pid']}); "
                             "stop it first.")
        record.unlink(missing_ok=True)
        with open(launch_log(run_dir), "a") as log:
            proc = subprocess.Popen(python("app.launch", str(run_dir), "--", *train_argv), cwd=REPO_ROOT,
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline and proc.poll() is None and supervisor_of(run_dir) is None:
            time.sleep(0.05)
        if supervisor_of(run_dir) is None and proc.poll() is not None:
            raise ValueError(f"Run {run_dir.name!r} could not be started; see {launch_log(run_dir)}.")
        return proc.pid


def stop_background(run_dir: str | os.PathLike) -> bool:
    """Ask the supervisor working on `run_dir` to stop (SIGTERM); False when none is."""
    found = supervisor_of(Path(run_dir).resolve())
    if found is None:
        return False
    os.kill(found["pid"], signal.SIGTERM)
    return True


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m app.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the run folder, e.g. runs/demo")
    p.add_argument("--serve", type=int, metavar="PORT", help="also serve the app on this port until Ctrl-C")
    p.add_argument("--address", default="127.0.0.1", help="the address the app listens on (default 127.0.0.1)")
    return p


HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def check_arguments(args: argparse.Namespace, train_argv: list[str]) -> Path:
    """The run folder (resolved) once every argument has passed, before anything is printed,
    written or started: the port and address, no supervisor already on the run, and the training
    options as `python -m train` would take them (train.cli.refusal, the trainer's own checks).
    UsageError (one sentence, exit 2) otherwise."""
    if args.serve is not None and not 1 <= args.serve <= 65535:
        raise UsageError(f"--serve takes a port from 1 to 65535, got {args.serve}.")
    try:
        ipaddress.ip_address(args.address)
    except ValueError:
        if not HOST_NAME.match(args.address):
            raise UsageError(f"--address takes an IP address or a host name, got {args.address!r}.") from None
    if any(a == "--out" or a.startswith("--out=") for a in train_argv):
        raise UsageError("the run folder is the launcher's RUN_DIR; leave --out out of the training options.")
    if not args.run.strip() or "\x00" in args.run:
        raise UsageError(f"RUN_DIR must name a run folder, e.g. runs/demo, got {args.run!r}.")
    run_dir = Path(args.run).resolve()
    if supervisor_of(run_dir) is not None:
        raise UsageError(f"{args.run} is already being trained or probed by another process "
                         f"(see {launch_record(run_dir)}).")
    sentence = refusal(train_options(run_dir, train_argv))
    if sentence is not None:
        raise UsageError(f"training options: {sentence}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """The supervisor in the foreground; returns its exit status (2 with one sentence on stderr,
    nothing written or started, for bad arguments; 130 when stopped)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, train_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])

    def body() -> int:
        args = build_parser().parse_args(ours)
        run_dir = check_arguments(args, train_argv)
        serve = (args.serve, args.address) if args.serve is not None else None
        return Supervisor(run_dir, train_argv, serve).run()

    return run_command(body, (UsageError,), prefix="error: ")


if __name__ == "__main__":
    sys.exit(main())
