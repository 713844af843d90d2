"""Probes fanned out on Ray: `python -m probes RUN --ray ADDRESS` (probes/run/runner.py dispatches
here when given a `RayCluster`). Ray is an optional extra (`pip install -e '.[ray]'`) and is
imported only inside this module's functions, so the package imports without it.

One Ray task per pending checkpoint, or per (checkpoint, probe) when fewer checkpoints are
pending than the cluster has task slots, so that one big checkpoint still spreads over the
cluster. Every task asks for `threads` CPUs (default 1) and runs that many torch threads: CPU
kernels round differently at different thread counts, so the numbers equal the local runner's at
the same thread count (`--jobs N` workers run 1 thread each) and not otherwise. On a cluster with
GPUs a task gets a GPU, or a share of one when several fit in its memory by `probe_bytes`.

Tasks compute and return the result; only the driver writes, with results.write_result (atomic),
once per checkpoint when all its parts are back. A task that Ray retries (its worker or node died)
therefore never leaves two results or a torn one; Ctrl-C leaves only whole files (see
`probe_on_ray` for why it cancels nothing), and the next run computes what is missing.

Where checkpoints live: workers read the run folder at the driver's path (a filesystem every node
mounts at the same place; it is also what `--watch` needs to follow training on another machine),
or, with `ship=True` (`--ship`), the driver sends the run's data files once and each checkpoint's
verified bytes through Ray's object store, and each worker unpacks them into a private temporary
folder (for clusters without shared storage; bench/ray_probes.py measures what it costs).

Where the code lives: with `ray://HOST:PORT` (Ray Client, the `ray[client]` extra on both sides)
the job carries this checkout's `model` and `probes` packages (`code_env`), so the cluster needs
only the dependencies and runs the driver's probes, never another version; with `auto` this
machine is a node and the cluster imports the installed project. Ray sends no token to an address
it is given: a cluster with token authentication needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN here.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from store.checkpoint import verify_checkpoint
from model.device import set_torch_threads
from model.memory import MARGIN, TooLarge, check_fits
from store.runio import RunFileError, pid_alive
from store.runlayout import (CHECKPOINTS_DIR, DATA_DIR, META, RUN_FILES, RUN_JSON, WEIGHTS, data_dir, step_name,
                             step_of)
from store.vocab import load_tokenizer

from probes.measure.inputs import ProbeSizes, probe_inputs
from probes.measure.results import write_result
from probes.run.runner import checkpoint_result, first_config, probe_bytes

RAY_INSTALL = "pip install -e '.[ray]'"
MAX_RETRIES = 3          # Ray reruns a task whose worker process or node died this many times
MAX_TASKS_PER_GPU = 8    # small models share a GPU; more tasks than this gain nothing but contention
WAIT_S = 0.5             # ray.wait timeout, so Ctrl-C is seen between waits
IN_FLIGHT = 2            # tasks submitted per slot: one running, one queued behind it
CODE_PACKAGES = ("model", "store", "probes")  # what a task imports of this project (probes imports only these)
_URL = re.compile(r"^ray://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?):(\d{1,5})$")


def parse_address(text: str) -> str:
    """`local`, `auto` or `ray://HOST:PORT` (port 1-65535); ValueError with one sentence otherwise."""
    address = str(text).strip()
    if address in ("local", "auto"):
        return address
    m = _URL.match(address)
    if m and 1 <= int(m.group(2)) <= 65535:
        return address
    raise ValueError(f"--ray takes local, auto or ray://HOST:PORT, got {text!r}.")


def check_device(spec: str) -> str:
    """--device with --ray: auto, cpu or cuda (Ray gives each task its GPU); ValueError otherwise.
    Checked before any cluster is joined; which one it means is the cluster's to say (device_kind)."""
    text = str(spec).strip()
    if text not in ("auto", "cpu", "cuda"):
        raise ValueError(f"with --ray, --device takes auto, cpu or cuda (Ray gives each task its GPU), got {spec!r}.")
    return text


def code_env() -> dict:
    """(ray://) The job's runtime_env: this project's packages as the driver has them, sent with the
    job, so that the cluster needs only the dependencies (torch, safetensors, ray[client]) and its
    tasks never run another version of the probes than the driver's."""
    root = Path(__file__).resolve().parents[2]
    return {"py_modules": [str(root / name) for name in CODE_PACKAGES], "excludes": ["__pycache__"]}


def import_ray() -> Any:
    """The ray module, or a one-sentence ValueError (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed here; install it with {RAY_INSTALL}.") from None
    return ray


def tasks_per_gpu(need: int, gpu_bytes: int, what: str = "probing one checkpoint") -> int:
    """How many probe tasks share one GPU: as many as fit in MARGIN of its free memory at `need`
    bytes each (model.memory's margin policy), at most MAX_TASKS_PER_GPU. TooLarge when not one fits."""
    check_fits(what, need, gpu_bytes, where="a GPU of the Ray cluster", advice="probe on larger GPUs")
    return max(1, min(MAX_TASKS_PER_GPU, int(MARGIN * gpu_bytes) // max(1, need)))


def gpu_fraction(tasks: int) -> float:
    """The num_gpus each of `tasks` sharing one GPU asks for, rounded down to Ray's 4 decimals
    so that `tasks` of them always fit on one GPU."""
    return math.floor(10000 / tasks) / 10000


def gpu_free_bytes() -> int:
    """(A Ray task holding one GPU) the free memory of that GPU."""
    return int(torch.cuda.mem_get_info()[0])


# -- the worker side ---------------------------------------------------------------------------
_INPUTS: dict = {}  # per worker process: (run, sizes, stamps) -> (tokenizer, inputs); workers are reused
_KITS: dict = {}    # per worker process: shipped run id -> the private folder holding its files


def _cached_inputs(run: Path, sizes: ProbeSizes | None) -> tuple:
    """The run's tokenizer and probe inputs, built once per worker process (as the local pool's
    initializer does) and rebuilt if the run's data.json or vocab.json changed."""
    stamps = tuple((run / name).stat().st_mtime_ns if (run / name).exists() else None for name in RUN_FILES)
    key = (str(run), sizes, stamps)
    if key not in _INPUTS:
        _INPUTS.clear()
        tokenizer = load_tokenizer(run)
        _INPUTS[key] = tokenizer, probe_inputs(run, sizes, tokenizer)
    return _INPUTS[key]


def _remove_stale_kits(root: Path) -> None:
    """Delete the folders of shipped runs whose worker process is gone (Ray ends its workers with
    SIGKILL at shutdown, so their atexit clean-up never runs)."""
    for p in root.glob("probes-ship-*-*"):
        pid = p.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _unpack_run(kit: tuple[str, Any]) -> Path:
    """The private folder holding a shipped run's files, written on first use in this process."""
    ident, ref = kit
    if ident not in _KITS:
        import ray
        files = ray.get(ref)
        _remove_stale_kits(Path(tempfile.gettempdir()))
        folder = Path(tempfile.mkdtemp(prefix=f"probes-ship-{os.getpid()}-"))
        atexit.register(shutil.rmtree, folder, True)
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        _KITS[ident] = folder
    return _KITS[ident]


def probe_task(run_dir: str, ckpt: str | dict, want: tuple[str, ...], device: str, threads: int,
               sizes: ProbeSizes | None, kit: tuple[str, Any] | None) -> tuple[str, Any]:
    """(A Ray task) the probes `want` of one checkpoint: ("ok", result), ("bad", message) for a
    bad checkpoint, or ("fatal", message) when this node cannot see the run at all. `ckpt` is the
    checkpoint's path, or with `kit` (shipped) its files' bytes."""
    set_torch_threads(threads)  # the thread count decides the rounding: the same as the local runner's
    unpacked = None
    try:
        if kit is None:
            run, path = Path(run_dir), Path(ckpt)
            if not (run / RUN_JSON).is_file():
                import ray
                return "fatal", (f"the run folder {run} is not readable on Ray node "
                                 f"{ray.util.get_node_ip_address()}; put runs/ on storage every node mounts at "
                                 "the same path, or add --ship")
        else:
            run = _unpack_run(kit)
            path = unpacked = run / CHECKPOINTS_DIR / step_name(int(ckpt["step"]))
            path.mkdir(parents=True, exist_ok=True)
            for name in (WEIGHTS, META):
                (path / name).write_bytes(ckpt[name])
        tokenizer, inputs = _cached_inputs(run, sizes)
        return "ok", checkpoint_result(path, tokenizer, inputs, want, device)[1]
    except RunFileError as e:
        where = e.path
        if kit is not None and e.path.is_relative_to(run):  # name the driver's file, not this worker's copy
            where = Path(run_dir) / e.path.relative_to(run)
        return "bad", f"{where}: {e.problem}"
    finally:
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)


# -- the driver side ---------------------------------------------------------------------------
CLIENT_INIT_TRIES = 3  # a Ray Client connection's init, tried again after an empty failure from the server


def client_init(ray: Any, address: str, kwargs: dict) -> None:
    """`ray.init(address)` through Ray Client, tried again when the server fails the client's init
    with no message (seen once in CI on a loaded head); a failure that says why is not retried."""
    for attempt in range(CLIENT_INIT_TRIES):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionAbortedError as e:
            if str(e).strip() != "Initialization failure from server:" or attempt == CLIENT_INIT_TRIES - 1:
                raise
            ray.shutdown()
            time.sleep(1 + attempt)

class RayCluster:
    """A connection to Ray for the length of a `with` block. `local` starts a private instance of
    jobs x threads CPUs on this machine (listening on 127.0.0.1 only) and shuts it down on exit;
    `auto` and `ray://` join a running cluster and only disconnect. When this process is already
    connected (a test, the bench), that connection is used and left up."""

    def __init__(self, address: str, *, jobs: int | None = None, threads: int = 1, ship: bool = False):
        self.address = parse_address(address)
        if jobs is not None and self.address != "local":
            raise ValueError("--jobs sizes a private instance (--ray local) only; on a cluster its CPUs decide "
                             "how many tasks run at once.")
        self.jobs, self.threads, self.ship = jobs or 1, threads, ship
        self.ray: Any = None
        self.owned = False
        self._kits: dict[str, tuple[str, Any]] = {}

    def __enter__(self) -> "RayCluster":
        if self.address == "local" and "ray" not in sys.modules:
            # Ray otherwise binds a private instance to the machine's network address.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = self.ray = import_ray()
        if ray.is_initialized():
            return self
        quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
        no_token = getattr(ray.exceptions, "AuthenticationError", RuntimeError)  # RAY_AUTH_MODE=token, no token
        try:
            if self.address == "local":
                ray.init(address="local", num_cpus=self.jobs * self.threads, include_dashboard=False, **quiet)
            elif self.address == "auto":
                ray.init(address="auto", **quiet)
            else:  # Ray Client: its warning on a failed connect would make the refusal more than a sentence
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    client_init(ray, self.address, dict(runtime_env=code_env(), **quiet))
        except (ConnectionError, RuntimeError, ValueError, no_token) as e:
            if "ray[client]" in str(e):
                raise ValueError(f"--ray {self.address} goes through Ray Client, which is not installed here; "
                                 "install it with pip install 'ray[client]' (on the cluster too).") from None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")
            advice = ("start one with `ray start --head` or use --ray local" if self.address == "auto" else
                      "check that its head runs a Ray Client server on that port (`ray start --head "
                      "--ray-client-server-port`, 10001 by default) that this machine reaches, and for a "
                      "cluster with token authentication (Ray's default once ~/.ray/auth_token exists) set "
                      "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to its token")
            raise ValueError(f"--ray {self.address}: no Ray cluster could be joined ({first}); {advice}.") from None
        except BaseException:  # Ctrl-C while a private instance was starting: take down what did start
            ray.shutdown()
            raise
        self.owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.ray.shutdown()
            self.owned = False

    def device_kind(self, spec: str) -> str:
        """cpu or cuda for the tasks, from --device and the cluster's GPUs (not this machine's)."""
        text = check_device(spec)
        gpus = self.ray.cluster_resources().get("GPU", 0)
        if text == "cuda" and not gpus:
            raise ValueError("--device cuda was requested, but the Ray cluster has no GPU; use --device cpu or auto.")
        return "cuda" if gpus and text != "cpu" else "cpu"

    def task_options(self, todo: list[Path], sizes: ProbeSizes | None, device: str, threads: int) -> dict:
        """Resources each task asks for: `threads` CPUs; on CUDA a GPU or the share of one that
        probe_bytes allows; on CPU probe_bytes of memory, so Ray never packs more tasks on a node
        than fit. TooLarge / ValueError (one sentence) when no node could ever run one."""
        res = self.ray.cluster_resources()
        opts: dict = {"num_cpus": threads, "max_retries": MAX_RETRIES, "retry_exceptions": False}
        if res.get("CPU", 0) < threads:
            raise ValueError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs; each task asks for --threads {threads}.")
        found = first_config(todo)
        if found is None:
            return opts
        path, cfg = found
        need = probe_bytes(cfg, sizes)
        what = f"probing {path} (n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_ctx {cfg.n_ctx}, vocab {cfg.vocab_size})"
        if device == "cuda":
            free = self.ray.get(self.ray.remote(gpu_free_bytes).options(num_gpus=1, num_cpus=0).remote())
            opts["num_gpus"] = gpu_fraction(tasks_per_gpu(need, free, what))
        else:
            largest = max((n["Resources"].get("memory", 0) for n in self.ray.nodes() if n.get("Alive")), default=0)
            check_fits(what, need, largest, where="the largest node of the Ray cluster",
                       advice="add a larger node or probe locally")
            opts["memory"] = need
        return opts

    def slots(self, opts: dict) -> int:
        """How many tasks the cluster runs at once with these options."""
        res = self.ray.cluster_resources()
        if opts.get("num_gpus"):
            return max(1, int(res.get("GPU", 0) / opts["num_gpus"] + 1e-6))
        return max(1, int(res.get("CPU", 0) // opts["num_cpus"]))

    def kit(self, run_dir: Path) -> tuple[str, Any]:
        """The run's files every worker needs for its inputs (run.json, vocab.json, data.json,
        data/*.bin), put in the object store once per connection."""
        key = str(run_dir.resolve())
        if key not in self._kits:
            files = {rel: (run_dir / rel).read_bytes() for rel in (RUN_JSON, *RUN_FILES) if (run_dir / rel).is_file()}
            files.update({f"{DATA_DIR}/{p.name}": p.read_bytes() for p in sorted(data_dir(run_dir).glob("*.bin"))})
            self._kits[key] = (uuid.uuid4().hex, self.ray.put(files))
        return self._kits[key]

    def probe(self, run_dir: Path, todo: list[Path], want: tuple[str, ...], device: str,
              sizes: ProbeSizes | None, report: Callable[[int, str | None], None], threads: int,
              start: Callable[[], Any] = lambda: None) -> None:
        probe_on_ray(self, run_dir, todo, want, device, sizes, report, threads, start)


def merge_parts(parts: list[dict]) -> dict:
    """One result from the results of a checkpoint's probes computed apart (their timings merged)."""
    out: dict = {}
    seconds: dict = {}
    for part in parts:
        out.update(part)
        seconds.update(part.get("seconds", {}))
    out["seconds"] = seconds
    return out


def probe_on_ray(cluster: RayCluster, run_dir: Path, todo: list[Path], want: tuple[str, ...], device: str,
                 sizes: ProbeSizes | None, report: Callable[[int, str | None], None], threads: int,
                 start: Callable[[], Any] = lambda: None) -> None:
    """Compute `want` for every checkpoint of `todo` as Ray tasks; write each checkpoint's result
    here once all its parts are back, and `report` it (or its problem) as the local runner does.
    `start()` is called once the tasks are known to fit the cluster. Checkpoints are submitted as
    slots free up (at most IN_FLIGHT x slots tasks at once), so a shipped run never sits in the
    object store whole.

    Ctrl-C leaves the outstanding tasks to Ray rather than cancelling them: a private instance is
    shut down with everything in it, and on a cluster the driver's exit ends its job, whose
    workers Ray stops. `ray.cancel` here raced the tasks' own replies inside Ray's core worker
    ("Tried to complete task that was not pending", a RAY_CHECK that killed the driver with exit
    status 1 in about a third of the Ctrl-C tests; ray-project/ray#54798 fixes the same race on
    the retry path)."""
    ray = cluster.ray
    probe_inputs(run_dir, sizes)  # bad run data fails here, with its message, not inside a task
    opts = cluster.task_options(todo, sizes, device, threads)
    start()
    slots = cluster.slots(opts)
    groups = [(name,) for name in want] if len(want) > 1 and len(todo) < slots else [want]
    task = ray.remote(probe_task).options(**opts)
    kit = cluster.kit(run_dir) if cluster.ship else None
    waiting = list(reversed(todo))
    refs: dict = {}
    parts: dict[int, list] = {}

    def submit(path: Path) -> None:
        step = step_of(path)
        ckpt: Any = str(path)
        if kit is not None:
            try:
                _, weights = verify_checkpoint(path)  # bad bytes are reported here, never shipped
            except RunFileError as e:
                report(step, f"{e.path}: {e.problem}")
                return
            ckpt = ray.put({"step": step, META: (path / META).read_bytes(), WEIGHTS: weights})
        parts[step] = []
        for probes in groups:
            refs[task.remote(str(run_dir), ckpt, probes, device, threads, sizes, kit)] = step

    while waiting or refs:
        while waiting and len(refs) < IN_FLIGHT * slots:
            submit(waiting.pop())
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=WAIT_S) if refs else ([], [])
        for ref in ready:
            step = refs.pop(ref)
            kind, value = ray.get(ref)
            if kind == "fatal":
                raise ValueError(f"{value}.")
            if step not in parts:
                continue  # another part of this checkpoint was bad: already reported
            if kind == "bad":
                del parts[step]
                report(step, value)
                continue
            parts[step].append(value)
            if len(parts[step]) == len(groups):
                write_result(run_dir, step, merge_parts(parts.pop(step)))
                report(step, None)


__all__ = ["MAX_RETRIES", "RAY_INSTALL", "RayCluster", "TooLarge", "gpu_fraction", "import_ray", "merge_parts",
           "parse_address", "probe_on_ray", "probe_task", "tasks_per_gpu"]
